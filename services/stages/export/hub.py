"""Publishing a Hugging Face export: the one network action of the export stage, taken only when asked
(`export --format hf --push-to-hub ORG/NAME`). The Hub's reachability is checked first, so an offline machine
is told in seconds, not after the client's minute of retries. The token comes from the environment (`HF_TOKEN`)
or the Hub client's own login, and is never shown or logged."""

from __future__ import annotations

import os
import re
from pathlib import Path

from services.core.errors import WorkbenchError
from services.io.pulls import PullError, check_reachable

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class HubPushError(WorkbenchError):
    """The export could not be published; the message says why and what to do."""

    error_class = "hub_push"


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def push_to_hub(out: Path, repo_id: str, private: bool = True) -> str:
    """Upload the Parquet export in `out` as the dataset repository `repo_id`; returns the repository's URL."""
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise HubPushError(f"{repo_id[:100]!r}: a Hub repository is OWNER/NAME (letters, digits, '.', '_', '-')")
    if not (out / "data").is_dir():
        raise HubPushError(f"{out}: no Hugging Face export here (export with --format hf first)")
    endpoint = hub_endpoint()
    try:
        check_reachable(endpoint)
    except PullError as exc:
        raise HubPushError(
            f"{exc}. Publishing needs the Hub: run this where {endpoint} can be reached (the export itself is "
            f"complete in {out})"
        ) from None
    import datasets

    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset(str(out), split="train")
        dataset.push_to_hub(repo_id, private=private, token=os.environ.get("HF_TOKEN") or None)
    except Exception as exc:  # the Hub client's errors (auth, permissions, quota) are many classes
        raise HubPushError(f"the Hub refused {repo_id}: {type(exc).__name__}: {str(exc)[:300]}") from None
    return f"{endpoint.rstrip('/')}/datasets/{repo_id}"

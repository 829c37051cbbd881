"""The CLIP model picker shared by Embed & Train and Describe's zero-shot categories: every model whose
weights are on this machine in one list (the workspace's own checkpoints, the demo's among them, and pulled
tags), or any other model name, tag or checkpoint typed in. The choice is checked at once: missing weights
and a checkpoint that does not fit its architecture are said here, in seconds, before any job starts."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from services.core.workspace import Workspace
from services.io.clip_models import (
    CheckpointMismatchError,
    ClipSpec,
    ModelNameError,
    ModelUnavailableError,
    WeightsNotPulledError,
    activation_note,
    local_clip_models,
    pull_weights,
    resolve_weights,
)
from services.io.pulls import page_pulls_allowed
from ui.auth import sign_in_configured
from ui.page_state import BIND
from ui.server_path import checkpoint_input, display_path
from ui.text import code, md

OTHER = "Another model, tag or checkpoint…"


@dataclass
class PickedClip:
    spec: ClipSpec
    error: str | None  # why it cannot be used now; None when its weights are here and fit

    @property
    def ok(self) -> bool:
        return self.error is None


def clip_model_picker(ws: Workspace, key: str, label: str = "CLIP model") -> PickedClip:
    """Widgets keyed `{key}-pick`, and for other models `{key}-model`, `{key}-pretrained`, `{key}-checkpoint`
    and `{key}-pull`. Returns the chosen spec and, when it cannot be used, why (already shown)."""
    settings = ws.settings
    local = local_clip_models(settings, ws.root)
    labels = [m.label for m in local] + [OTHER]
    configured = ClipSpec.from_settings(settings)
    default = next((i for i, m in enumerate(local) if _same(m.spec, configured)), 0 if local else len(local))
    choice = st.selectbox(
        label,
        labels,
        index=default,
        bind=BIND,
        key=f"{key}-pick",
        help="Models whose weights are on this machine: checkpoints in the workspace, the models its embeddings "
        "were made with, and tags pulled into the Hugging Face cache (`python -m services models pull`).",
    )
    if choice == OTHER:
        c1, c2, c3 = st.columns([2, 2, 3])
        model = c1.text_input("open_clip model", value=settings.clip.model, bind=BIND, key=f"{key}-model")
        pretrained = c2.text_input(
            "Pretrained tag", value=settings.clip.pretrained or "", bind=BIND, key=f"{key}-pretrained"
        )
        # a path typed on a team server goes through the server-path guard (server_paths), like every path input
        checkpoint = checkpoint_input(ws, "Or a checkpoint file on the server", f"{key}-checkpoint", container=c3)
        try:  # the names are checked before anything reads or writes a file (ClipSpec is the guard)
            spec = ClipSpec.from_settings(settings, model or None, pretrained or None, checkpoint or None)
        except ModelNameError as exc:
            st.error(md(exc), icon=":material/error:")
            return PickedClip(configured, str(exc))
    else:
        spec = local[labels.index(choice)].spec
    try:
        weights, _ = resolve_weights(spec)
    except CheckpointMismatchError as exc:
        st.error(md(exc), icon=":material/error:")
        return PickedClip(spec, str(exc))
    except ModelUnavailableError as exc:
        st.warning(md(exc))
        if isinstance(exc, WeightsNotPulledError):  # a pull can fetch only a tag open_clip knows
            _pull_button(ws, spec, key)
        return PickedClip(spec, str(exc))
    note = activation_note(spec)
    st.caption(f"Weights: {code(display_path(ws, weights))}" + (f" · {md(note)}" if note else ""))
    return PickedClip(spec, None)


def _same(a: ClipSpec, b: ClipSpec) -> bool:
    return a.model == b.model and a.checkpoint == b.checkpoint and (bool(a.checkpoint) or a.pretrained == b.pretrained)


def _pull_button(ws: Workspace, spec: ClipSpec, key: str) -> None:
    """Pull explicitly; with no route to the hub the answer comes in seconds, in red, with the fix."""
    what = f"{spec.model}/{spec.pretrained}"
    if not page_pulls_allowed(ws.settings, sign_in_configured(ws.settings)):
        st.caption(
            f"Pulling weights from this page is off on this server (`allow_page_pulls`): an administrator pulls "
            f"them with {code(f'python -m services models pull {what}')}."
        )
        return
    timeout = ws.settings.clip.pull_timeout_seconds
    if st.button(f"Pull {md(what)}", key=f"{key}-pull", icon=":material/download:"):
        failed: ModelUnavailableError | None = None
        with st.spinner(f"Downloading {md(what)} (gives up after {timeout:.0f}s) ..."):
            try:
                path = pull_weights(spec, timeout)
            except ModelUnavailableError as exc:  # shown until the next action on the page, like any button's answer
                failed = exc
        if failed is not None:
            st.error(f"Pull failed: {md(failed)}", icon=":material/cloud_off:")
            return
        st.toast(f"{md(what)} saved to {code(display_path(ws, path))}")
        st.rerun()

"""Search the catalog's images by text, by an example image, or by a stored image ("more like this"), with the
CLIP model the images were embedded with.

The query is encoded by that model (its weights must be local, as for every stage) and looked up in the
model's vector index (`vector_index.py`). Both run in the workspace's worker when one serves (its CLIP model
and index stay loaded between queries), else in the caller's process. Every argument is checked here: a
text of at most `MAX_TEXT_CHARS`, k in 1..`MAX_K`, a dataset by name, an image within the pixel bound.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import TypeAdapter, ValidationError

from services.core.datasets import DatasetError, dataset_id_of
from services.core.errors import WorkbenchError
from services.core.names import check_name
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, load_clip
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore, embedding_key, list_embedding_keys
from services.io.imaging import decode_image
from services.jobs.worker_requests import RequestHandler, ask_worker
from services.stages.explore.browse import BrowseFilter, chosen_dataset_ids, matching_hashes
from services.stages.explore.vector_index import VectorIndex

SEARCH_OP = "search"
MAX_TEXT_CHARS = 300
MAX_K = 1000
MAX_WITHIN = 1_000_000  # a filter's images a query ranks (a filter passing more is ranked over its first million)


class SearchError(WorkbenchError):
    """A query that cannot be answered as asked (no vectors, an unknown image, a bad argument)."""

    http_status = 422


@dataclass(frozen=True)
class SearchHit:
    image_hash: str
    score: float  # cosine similarity between the query and the image


@dataclass(frozen=True)
class SearchResult:
    key: str  # the embedding model searched
    hits: list[SearchHit]
    seconds: float  # encoding and search where it ran (a model or index load included the first time)
    index: str  # "exact" or "ivf"


def pick_key(ws: Workspace, dataset: str | None = None, spec: ClipSpec | None = None) -> str:
    """The embedding model to search: the one asked for, else the one that embedded most of the dataset, else
    the one holding most vectors in the workspace."""
    keys = list_embedding_keys(ws)
    if spec is not None:
        key = embedding_key(spec)
        if key not in keys:
            raise SearchError(f"no vectors from {spec.label} in this workspace (embed a dataset with it first)")
        return key
    if not keys:
        raise SearchError("no image has a CLIP vector yet: embed a dataset first (Embed & Train, or `embed`)")
    if dataset is not None:
        dataset_id = dataset_id_of(ws.catalog, dataset)
        counts = {
            r["settings_hash"]: r["images"]
            for r in ws.catalog.query(
                """SELECT settings_hash, images FROM dataset_stage_counts
                   WHERE dataset_id = ? AND stage = ? AND status = 'ok' AND images > 0""",
                (dataset_id, EMBED_STAGE),
            )
            if r["settings_hash"] in keys
        }
        if not counts:
            raise SearchError(f"dataset {dataset!r} has no CLIP vectors yet: embed it first")
        return str(max(counts, key=lambda k: (counts[k], k)))
    return max(keys, key=lambda k: (EmbeddingStore(ws, k).count(), k))


def spec_of_key(ws: Workspace, key: str) -> ClipSpec:
    """The CLIP model that made a store's vectors (to encode queries the same way)."""
    spec = EmbeddingStore(ws, key).read_spec()
    if not spec:
        raise SearchError(f"the vectors of {key!r} do not say which model made them; text and image queries need it")
    return ClipSpec(**{k: spec[k] for k in ("model", "pretrained", "checkpoint", "device") if k in spec})


def search_here(
    ws: Workspace,
    key: str,
    *,
    text: str | None = None,
    image: bytes | None = None,
    like: str | None = None,
    dataset: str | None = None,
    k: int = 20,
    within: BrowseFilter | None = None,
) -> SearchResult:
    """One query (exactly one of text, image, like) in this process; `within`: only the images a Browse filter
    selects (filters combined with search: the filtered grid ranked by the query)."""
    _check_query(text, image, like, k)
    started = time.perf_counter()
    index = VectorIndex(ws, key)
    state = index.sync()
    query = _query_vector(ws, index, key, text, image, like)
    allowed = _members(ws, dataset) if dataset is not None else None
    if within is not None:
        selected = set(matching_hashes(ws, within, MAX_WITHIN))
        allowed = selected if allowed is None else allowed & selected
    extra = 1 if like is not None else 0  # the image itself is its own nearest neighbour: leave it out
    hits = [h for h in index.search(query, k + extra, allowed)[0] if h.image_hash != like][:k]
    return SearchResult(
        key=key,
        hits=[SearchHit(h.image_hash, round(h.score, 5)) for h in hits],
        seconds=round(time.perf_counter() - started, 3),
        index=str(state["mode"]),
    )


def search(
    ws: Workspace,
    *,
    text: str | None = None,
    image: bytes | None = None,
    like: str | None = None,
    dataset: str | None = None,
    k: int = 20,
    key: str | None = None,
    within: BrowseFilter | None = None,
) -> tuple[SearchResult, Literal["worker", "here"]]:
    """The query answered by the worker when one serves, else here; and where it ran."""
    _check_query(text, image, like, k)
    if dataset is not None:
        check_name(dataset, "dataset")
        dataset_id_of(ws.catalog, dataset)  # an unknown name is an error that lists the datasets
    if within is not None:
        for name in within.datasets:
            check_name(name, "dataset")
        chosen_dataset_ids(ws, within.datasets, within.kinds)  # an unknown name is an error that lists the datasets
    key = key or pick_key(ws, dataset or (within.one_dataset if within else None))
    args = {"key": key, "text": text, "like": like, "dataset": dataset, "k": k,
            "within": None if within is None else dataclasses.asdict(within)}  # fmt: skip
    answer = ask_worker(ws, SEARCH_OP, image or b"", args)
    if answer is not None and within is not None and not answer.pop("filtered", False):
        answer = None  # a worker started before filters were understood ranked everything: answer here instead
    if answer is None:
        return search_here(ws, key, text=text, image=image, like=like, dataset=dataset, k=k, within=within), "here"
    hits = [SearchHit(**h) for h in answer.pop("hits")]
    return SearchResult(hits=hits, **answer), "worker"


def search_handler(ws: Workspace) -> RequestHandler:
    """The worker's side: its CLIP models and indexes stay loaded between queries."""

    def handle(body: bytes, args: dict[str, Any]) -> dict[str, Any]:
        key = str(args.get("key") or "")
        if key not in list_embedding_keys(ws):
            raise SearchError(f"no vectors for embedding model {key!r}")
        dataset = args.get("dataset")
        if dataset is not None:
            check_name(str(dataset), "dataset")
        result = search_here(
            ws,
            key,
            text=args.get("text"),
            image=body or None,
            like=args.get("like"),
            dataset=dataset,
            k=int(args.get("k") or 20),
            within=_filter_from(args.get("within")),
        )
        answer = dataclasses.asdict(result)
        if args.get("within") is not None:
            answer["filtered"] = True  # said only when asked, so a caller that never filters reads the same reply
        return answer

    return handle


def _filter_from(data: object) -> BrowseFilter | None:
    """A Browse filter sent to the worker as a dict, rebuilt (its lists as the tuples the filter holds)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise SearchError("a search filter is an object of Browse's fields")
    if unknown := sorted(set(data) - {field.name for field in dataclasses.fields(BrowseFilter)}):
        raise SearchError(f"a search filter that is not Browse's: no field {str(unknown[0])[:40]!r}")
    try:
        f = TypeAdapter(BrowseFilter).validate_python(data)
    except ValidationError as exc:
        raise SearchError(f"a search filter that is not Browse's: {exc.errors()[0]['msg']}") from None
    for name in f.datasets:
        check_name(name, "dataset")
    return f


def _check_query(text: str | None, image: bytes | None, like: str | None, k: int) -> None:
    given = [name for name, v in (("text", text), ("image", image), ("like", like)) if v]
    if len(given) != 1:
        raise SearchError("give exactly one query: a text, an image, or an image hash to find more like it")
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise SearchError(f"a text query has at most {MAX_TEXT_CHARS} characters ({len(text)} given)")
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k is 1 to {MAX_K} ({k} given)")


def _query_vector(
    ws: Workspace, index: VectorIndex, key: str, text: str | None, image: bytes | None, like: str | None
) -> np.ndarray:
    if like is not None:
        vector = index.vector_of(like)
        if vector is None:
            raise SearchError(f"image {like[:16]}... has no vector from {key} (embed its dataset with this model)")
        return vector[None, :]
    loaded = load_clip(spec_of_key(ws, key))
    if text is not None:
        return loaded.embed_texts([text])
    decoded, _, _, _ = decode_image(image or b"", ws.settings.download.max_pixels)
    return loaded.embed_images([decoded.convert("RGB")], 1)


def _members(ws: Workspace, dataset: str) -> set[str]:
    try:
        dataset_id = dataset_id_of(ws.catalog, dataset)
    except DatasetError as exc:
        raise SearchError(str(exc)) from None
    rows = ws.catalog.query("SELECT image_hash FROM dataset_members WHERE dataset_id = ?", (dataset_id,))
    return {r[0] for r in rows}


def hit_names(ws: Workspace, hashes: list[str], dataset: str | None = None) -> dict[str, str]:
    """What the input called each image (its name in `dataset`, else in the first dataset that holds it)."""
    out: dict[str, str] = {}
    for start in range(0, len(hashes), 500):
        part = hashes[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = ws.catalog.query(
            f"""SELECT m.image_hash, m.name, d.name AS dataset
                FROM dataset_members m JOIN datasets d ON d.id = m.dataset_id
                WHERE m.image_hash IN ({marks}) ORDER BY (d.name = ?) DESC, m.dataset_id""",
            (*part, dataset or ""),
        )
        for r in rows:
            out.setdefault(r["image_hash"], f"{r['dataset']}: {r['name']}")
    return out


def embedded_datasets(ws: Workspace) -> list[str]:
    """Datasets with at least one CLIP vector (counters: one small query), by name."""
    rows = ws.catalog.query(
        """SELECT DISTINCT d.name FROM dataset_stage_counts c JOIN datasets d ON d.id = c.dataset_id
           WHERE c.stage = ? AND c.status = 'ok' AND c.images > 0 ORDER BY d.name""",
        (EMBED_STAGE,),
    )
    return [r[0] for r in rows]

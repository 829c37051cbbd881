"""Embed stage: open_clip image embeddings for a dataset, as a resumable job, stored once per (image, model).

The model runs in the job process (loaded once through `clip_models.load_clip`, CUDA with fp16 autocast when
there is a GPU); a torch `DataLoader` whose worker processes decode and resize images feeds it batches, so
decoding overlaps the forward pass. Every few batches the vectors go to a shard of the embedding store and
the items are journaled and committed; a killed run loses at most the batches since the last shard.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, LoadedClip, autocast_for, load_clip, resolve_weights
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore, embedding_key
from services.jobs.image_stage import ImageStageTask, require_images
from services.jobs.manager import ItemResult, JobManager, PendingItem, RunContext
from services.jobs.params import ClipJobParams, JobParams, executor_of, job_params
from services.jobs.stage import ResultLog

if TYPE_CHECKING:
    from torch.utils.data import Dataset

log = logging.getLogger(__name__)
BATCHES_PER_SHARD = 8


def auto_loader_workers(device: str, cpus: int | None = None) -> int:
    """Decoding processes beside the model. A GPU waits for images, so feed it from several cores; on a CPU
    the forward pass already uses every core, and on 2 cores a decoding process measured 0.78x against
    decoding in the main loop (BENCHMARKS.md), so small CPU machines decode in-process."""
    cpus = cpus or os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else cpus // 4


def start_embed(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    spec: ClipSpec,
    batch_size: int | None = None,
    loader_workers: int | None = None,
) -> int:
    """Checks the weights are on this machine first (an error in seconds, never a failed job later)."""
    resolve_weights(spec)
    dataset_id = require_images(ws, dataset)
    with job_params("embed"):
        params = EmbedParams(
            dataset=dataset,
            spec=dataclasses.asdict(spec),
            key=embedding_key(spec),
            batch_size=batch_size or ws.settings.clip.batch_size,
            loader_workers=loader_workers if loader_workers is not None else ws.settings.clip.loader_workers,
        )
    return manager.create("embed", f"Embed: {dataset} with {spec.label}", params, dataset_id)


class ImageFiles:
    """Map-style dataset for the DataLoader: (index, tensor or None, error) per stored image."""

    def __init__(self, root: str, items: list[tuple[str, str]], preprocess: Any, draft_side: int = 224) -> None:
        self.root = root
        self.items = items
        self.preprocess = preprocess
        self.draft_side = draft_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        from PIL import Image, ImageOps, UnidentifiedImageError

        path = Path(self.root) / self.items[index][1]
        try:
            with Image.open(path) as img:
                # JPEG: let the decoder scale down by 1/2, 1/4 or 1/8 while staying >= the model's input size
                img.draft("RGB", (self.draft_side, self.draft_side))
                rgb = ImageOps.exif_transpose(img).convert("RGB")
            return index, self.preprocess(rgb), None
        except FileNotFoundError:
            return index, None, f"missing: {path} is gone from the workspace"
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            return index, None, f"not_image: {path}: cannot decode ({exc})"


def collate(batch: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack the decoded images; pass the failures through by index."""
    import torch

    ok = [(i, t) for i, t, err in batch if err is None]
    failed = [(i, err) for i, _, err in batch if err is not None]
    tensors = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensors, failed


class EmbedParams(ClipJobParams):
    """An embed run: the dataset, the CLIP model (spec and key) and the loader's batch and workers."""

    dataset: str


class EmbedTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = EmbedParams
    kind: ClassVar[str] = "embed"
    holds_model: ClassVar[bool] = True

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        return [(EMBED_STAGE, EmbedParams.model_validate(params).key)]

    def process(self, ws: Workspace, job_id: int, params: dict[str, Any], items: Any, ctx: RunContext) -> None:
        p = EmbedParams.model_validate(params)
        store = EmbeddingStore(ws, p.key)
        store.write_spec(p.spec)
        executor = executor_of(params)
        with ResultLog(ws, job_id, ctx) as log:
            if executor is not None:  # a cluster: workers load the model and embed whole chunks
                embed_on_executor(ws, store, p, executor, items, ctx, log)
                return
            loaded = load_clip(ClipSpec(**p.spec))
            while not log.stopping:
                block = list(itertools.islice(items, 20_000))  # pending items are paged from the catalog
                if not block:
                    break
                embed_block(ws, loaded, store, p, block, ctx, log)

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        store = EmbeddingStore(ws, EmbedParams.model_validate(params).key)
        if len(store.shards()) > 64:
            store.compact()


def embed_block(
    ws: Workspace,
    loaded: LoadedClip,
    store: EmbeddingStore,
    params: ClipJobParams,
    block: list[PendingItem],
    ctx: RunContext,
    on_results: Callable[[list[ItemResult]], None],
) -> None:
    """Embed a block of items with a DataLoader; write a shard and hand its results on every few batches."""
    import torch
    from torch.utils.data import DataLoader

    pairs = [(item.key, item.locator or "") for item in block]
    configured = params.loader_workers
    workers = auto_loader_workers(loaded.device) if configured is None else configured
    if workers and not loaded.device.startswith("cuda"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))  # leave the decoders their cores
    files = cast(
        "Dataset[tuple[int, Any, str | None]]", ImageFiles(str(ws.root), pairs, loaded.preprocess, loaded.image_side)
    )
    loader: DataLoader[tuple[int, Any, str | None]] = DataLoader(
        files,
        batch_size=params.batch_size,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="forkserver" if workers else None,  # the job process has threads
        prefetch_factor=4 if workers else None,
        pin_memory=loaded.device.startswith("cuda"),
    )
    pending_hashes: list[str] = []
    pending_vectors: list[np.ndarray] = []
    failures: list[ItemResult] = []

    def flush() -> None:
        results = list(failures)
        if pending_hashes:
            vectors = np.concatenate(pending_vectors)
            shard = store.write_shard(pending_hashes, vectors)
            info = {"shard": shard, "dim": int(vectors.shape[1])}
            results += [
                ItemResult(key=h, status="ok", image_hash=h, stages=[(EMBED_STAGE, params.key, "ok", info, None)])
                for h in pending_hashes
            ]
        on_results(results)
        pending_hashes.clear()
        pending_vectors.clear()
        failures.clear()

    for batches, (indices, tensors, failed) in enumerate(loader, start=1):
        if ctx.stop_requested:
            break
        for index, error in failed:
            image_hash = pairs[index][0]
            error_class, _, message = error.partition(": ")
            failures.append(
                ItemResult(
                    key=image_hash,
                    status="failed",
                    error_class=error_class,
                    error_message=message,
                    image_hash=image_hash,
                    stages=[(EMBED_STAGE, params.key, "failed", None, error)],
                )  # fmt: skip
            )
        if tensors is not None:
            with torch.inference_mode(), autocast_for(loaded.device):
                features = loaded.model.encode_image(tensors.to(loaded.device, non_blocking=True))
            features = features.float()
            features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            pending_vectors.append(features.cpu().numpy())
            pending_hashes.extend(pairs[i][0] for i in indices)
        if batches % BATCHES_PER_SHARD == 0:
            flush()
    flush()


# --- on a cluster ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EmbedChunkOptions:
    workspace: str
    spec: ClipSpec
    batch_size: int


def embed_chunk(
    items: list[tuple[str, str | None]], opts: EmbedChunkOptions
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """On a worker: decode and embed a chunk with the worker's own cached model; (hashes, vectors, failures)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    loaded = load_clip(opts.spec)
    images, hashes, failures = [], [], []
    for image_hash, rel in items:
        path = Path(opts.workspace) / (rel or "")
        try:
            with Image.open(path) as img:
                img.draft("RGB", (loaded.image_side, loaded.image_side))
                images.append(ImageOps.exif_transpose(img).convert("RGB"))
            hashes.append(image_hash)
        except FileNotFoundError:
            failures.append((image_hash, f"missing: {path} is gone from the workspace"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            failures.append((image_hash, f"not_image: {path}: cannot decode ({exc})"))
    vectors = loaded.embed_images(images, opts.batch_size) if images else np.zeros((0, 0), dtype=np.float32)
    return hashes, vectors, failures


def embed_on_executor(
    ws: Workspace,
    store: EmbeddingStore,
    params: ClipJobParams,
    executor: Executor,
    items: Any,
    ctx: RunContext,
    log: ResultLog,
) -> None:
    """Chunks of images to the executor's workers; each returned chunk becomes a shard, journaled and reported."""
    from services.jobs.manager import dispatch_chunks

    opts = EmbedChunkOptions(str(ws.root), ClipSpec(**params.spec), params.batch_size)

    def submit(chunk: list[PendingItem]) -> Any:
        future = executor.submit(embed_chunk, [(i.key, i.locator) for i in chunk], opts)
        return _as_results(future, store, params.key, log)

    dispatch_chunks(items, submit, ctx, chunk_size=params.chunk_size or 256, max_in_flight=params.in_flight or 8)


def _as_results(future: Any, store: EmbeddingStore, key: str, log: ResultLog | None) -> Any:
    """A future of ItemResults from a future of (hashes, vectors, failures): the shard is written here."""
    from concurrent.futures import Future

    out: Future[list[ItemResult]] = Future()

    def done(f: Any) -> None:
        try:
            hashes, vectors, failures = f.result()
            results = [
                ItemResult(
                    key=h, status="failed", error_class=e.partition(": ")[0], error_message=e.partition(": ")[2],
                    image_hash=h, stages=[(EMBED_STAGE, key, "failed", None, e)],
                )
                for h, e in failures
            ]  # fmt: skip
            if hashes:
                shard = store.write_shard(hashes, vectors)
                info = {"shard": shard, "dim": int(vectors.shape[1])}
                results += [
                    ItemResult(key=h, status="ok", image_hash=h, stages=[(EMBED_STAGE, key, "ok", info, None)])
                    for h in hashes
                ]
            if log is not None:  # journaled here; dispatch_chunks reports them
                log.journal(results)
            out.set_result(results)
        except Exception as exc:  # a lost worker: the chunk's items stay pending for the next run
            out.set_exception(exc)

    future.add_done_callback(done)
    return out


def embed_missing_on_executor(
    store: EmbeddingStore, params: ClipJobParams, executor: Executor, items: list[PendingItem], workspace: str,
    on_results: Callable[[list[ItemResult]], None],
) -> None:  # fmt: skip
    """Classify's path on a cluster: embed these items there, chunk by chunk, handing each chunk's results on."""
    from concurrent.futures import as_completed

    opts = EmbedChunkOptions(workspace, ClipSpec(**params.spec), params.batch_size)
    size = params.chunk_size or 256
    futures = [
        _as_results(executor.submit(embed_chunk, [(i.key, i.locator) for i in items[s : s + size]], opts), store,
                    params.key, None)
        for s in range(0, len(items), size)
    ]  # fmt: skip
    for future in as_completed(futures):
        on_results(future.result())

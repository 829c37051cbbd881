"""Classify stage: every selected tag model on every image of a folder, zip or dataset, in one vectorised pass.

`start_classify` imports a folder or zip (a folder-import job, run first inside the classify job) or takes an
existing dataset. The job embeds only images with no vector for the models' embedding model yet (the same
loader and store as `embed`), scores each block with all models at once (`scoring.score`) and stores one
probability per image per model version in `tag_scores`. `finish` writes the outputs: seed 004's
`output_bins` histogram (exactly n equal bins), a CSV, an `output.json` (with each model's decision
threshold and whether the image reaches it), and optionally copies of the images in `{type}/{tag}/{bin}/`
folders.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from services.core import csv_safety
from services.core.catalog import SCORE_BINS, score_bin_sql
from services.core.datasets import (
    STORED_PATH,
    DatasetError,
    dataset_entries,
    dataset_id_of,
    get_dataset,
    image_count,
    stage_count,
)
from services.core.names import file_name
from services.core.workspace import Workspace, write_atomic
from services.io.clip_models import ClipSpec, load_clip, resolve_weights
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore
from services.jobs.image_stage import ImageStageTask
from services.jobs.manager import ItemResult, JobManager, RunContext
from services.jobs.params import ClipJobParams, JobParams, executor_of
from services.jobs.stage import ResultLog
from services.stages.classify.scoring import StackedModels, bin_edges, bin_index, histogram, score, stack_models
from services.stages.download.folder_import import start_folder_import
from services.stages.embed.stage import embed_block, embed_missing_on_executor
from services.stages.train.models import ModelFileError, TagModel, list_models, load_models_from

CLASSIFY_STAGE = "classify"


def resolve_models(ws: Workspace, models: Path | None, dataset: str | None = None) -> list[TagModel]:
    """Models from a folder (or one file), or every model in the workspace (optionally of one dataset)."""
    found = load_models_from(models) if models is not None else list_models(ws, dataset)
    if not found:
        raise ModelFileError("no trained models found; train some (python -m services train) or pass --models DIR")
    return found


def start_classify(
    ws: Workspace,
    manager: JobManager,
    source: str,
    models: list[TagModel],
    *,
    bins: int = 10,
    out: Path | None = None,
    copy: bool = False,
    dataset: str | None = None,
) -> int:
    """For the person at the shell and Python code (the CLI, `services.library`): `source` is a folder, a zip
    or a dataset name, whichever exists. Pages never call this: a name picked on a page is not a path
    (`start_classify_dataset`), and a path typed on a page has been through `ServerPaths.check`
    (`start_classify_path`)."""
    path = Path(source).expanduser()
    if get_dataset(ws.catalog, source) is not None and not path.exists():
        return start_classify_dataset(ws, manager, source, models, bins=bins, out=out, copy=copy)
    if path.exists():
        return start_classify_path(ws, manager, path, models, bins=bins, out=out, copy=copy, dataset=dataset)
    raise DatasetError(f"{source}: neither an image, a folder, a zip, nor a dataset name")


def start_classify_dataset(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    models: list[TagModel],
    *,
    bins: int = 10,
    out: Path | None = None,
    copy: bool = False,
) -> int:
    """Classify a dataset, by name only: the name is never read as a path (a dataset named `~` or `docs` is
    that dataset, not a folder). Model files and weights are checked before queueing."""
    if get_dataset(ws.catalog, dataset) is None:
        raise DatasetError(f"no dataset named {dataset!r}")
    return _queue(ws, manager, dataset, None, models, bins, out, copy)


def start_classify_path(
    ws: Workspace,
    manager: JobManager,
    path: Path,
    models: list[TagModel],
    *,
    bins: int = 10,
    out: Path | None = None,
    copy: bool = False,
    dataset: str | None = None,
) -> int:
    """Import a folder or zip the caller has checked (a page: an upload, or a path through
    `ServerPaths.check`) as dataset `classify-NAME` (or `dataset`), then classify it."""
    _check(models, bins)  # a mismatched model set or a bad bin count fails before anything is imported
    name = _free_name(ws, dataset or f"classify-{path.stem}", str(path.resolve()))
    import_job = start_folder_import(ws, manager, path, name, kind="classify")
    return _queue(ws, manager, name, import_job, models, bins, out, copy)


def _queue(
    ws: Workspace,
    manager: JobManager,
    name: str,
    import_job: int | None,
    models: list[TagModel],
    bins: int,
    out: Path | None,
    copy: bool,
) -> int:
    stacked, spec = _check(models, bins)
    missing = _unembedded_count(ws, name, stacked.embedding_key) if import_job is None else 1
    if missing:
        resolve_weights(spec)  # images to embed: the weights must be here
    params = ClassifyParams(
        dataset=name,
        import_job=import_job,
        after_job=import_job,  # the manager runs the import first (JobParams.after_job)
        models=[str(m.path) for m in models],
        spec=dataclasses.asdict(spec),
        key=stacked.embedding_key,
        bins=bins,
        out=str(out) if out else None,
        copy=copy,
        batch_size=ws.settings.clip.batch_size,
        loader_workers=ws.settings.clip.loader_workers,
    )
    dataset_id = ws.catalog.scalar("SELECT id FROM datasets WHERE name = ?", (name,))
    title = f"Classify: {name} with {len(models)} models ({stacked.embedding_key})"
    return manager.create("classify", title, params, dataset_id)


def _check(models: list[TagModel], bins: int) -> tuple[StackedModels, ClipSpec]:
    """The models stacked (they must share one embedding model) and their CLIP spec; a bad bin count refused."""
    stacked = stack_models(models)
    spec = _spec_of(models[0])
    if bins < 1:
        raise DatasetError(f"bins {bins}: need at least one")
    return stacked, spec


def _free_name(ws: Workspace, base: str, source: str) -> str:
    """`base`, or `base-2`, `base-3`... when the name already holds another folder or zip."""
    name, n = base, 1
    while (existing := get_dataset(ws.catalog, name)) is not None and existing.source != source:
        n += 1
        name = f"{base}-{n}"
    return name


def _spec_of(model: TagModel) -> ClipSpec:
    spec = model.manifest.get("embedding_spec")
    if not spec:
        raise ModelFileError(f"{model.name}: its manifest does not say which CLIP model made its embeddings")
    return ClipSpec(**spec)


def _unembedded_count(ws: Workspace, dataset: str, key: str) -> int:
    """Images of the dataset without an embed result for this model (counters, not a read of the dataset)."""
    return image_count(ws, dataset) - stage_count(ws, dataset, EMBED_STAGE, key)


def _models(paths: list[str]) -> list[TagModel]:
    return [m for path in paths for m in load_models_from(Path(path))]


class ClassifyParams(ClipJobParams):
    """A classify run: the dataset (after its import job, if any), the model files, the CLIP model, outputs."""

    dataset: str
    import_job: int | None = None
    models: list[str]
    bins: int = Field(ge=1, le=100, description="Equal score bins over [0, 1].")
    out: str | None = None
    copy_images: bool = Field(default=False, alias="copy")


class ClassifyTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = ClassifyParams
    kind: ClassVar[str] = "classify"
    holds_model: ClassVar[bool] = True

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        return [(CLASSIFY_STAGE, _models_hash(ClassifyParams.model_validate(params).models))]

    def prerequisite(self, params: dict[str, Any]) -> int | None:
        """The import of a folder or zip this run classifies (`after_job`; older rows name it `import_job`)."""
        p = ClassifyParams.model_validate(params)
        return p.after_job or p.import_job

    def process(self, ws: Workspace, job_id: int, params: dict[str, Any], items: Any, ctx: RunContext) -> None:
        p = ClassifyParams.model_validate(params)
        stacked = stack_models(_models(p.models))
        models_hash = _models_hash(p.models)
        store = EmbeddingStore(ws, p.key)
        executor = executor_of(params)
        loaded = None
        with ResultLog(ws, job_id, ctx) as log:
            while not log.stopping:
                block = list(itertools.islice(items, 10_000))
                if not block:
                    break
                have = store.stored_hashes()
                missing = [i for i in block if i.key not in have]
                failed: list[ItemResult] = []
                record = partial(_record_embeddings, ws, failed=failed)
                if missing and executor is not None:  # embed on the cluster's workers
                    embed_missing_on_executor(store, p, executor, missing, str(ws.root), record)
                elif missing:
                    loaded = loaded or load_clip(ClipSpec(**p.spec))
                    embed_block(ws, loaded, store, p, missing, ctx, record)
                if log.stopping:
                    break
                vectors = store.load([i.key for i in block])
                log(failed + _score_and_store(ws, stacked, vectors.hashes, vectors.vectors, models_hash))

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        write_outputs(ws, params, export_dir(ws, ClassifyParams.model_validate(params).dataset, job_id))


def export_dir(ws: Workspace, dataset: str, job_id: int | None = None) -> Path:
    """`exports/classify-NAME[-jobN]`; a dataset this stage imported is already `classify-NAME`, and is not
    prefixed a second time."""
    base = dataset if dataset.startswith("classify-") else f"classify-{dataset}"
    return ws.root / "exports" / file_name(base, "" if job_id is None else f"-job{job_id}")


def _models_hash(paths: list[str]) -> str:
    import hashlib

    shas = sorted(str(m.manifest["sha256"]) for m in _models(paths))
    return hashlib.sha256(json.dumps(shas).encode()).hexdigest()[:12]


def _record_embeddings(ws: Workspace, results: list[ItemResult], *, failed: list[ItemResult]) -> None:
    """Embedding results of a classify run: vectors' stage rows recorded; images that failed to decode are
    the classify items' failures."""
    with ws.catalog.write() as conn:
        for r in results:
            for stage, settings_hash, status, data, error in r.stages:
                ws.catalog.record_stage(conn, r.key, stage, settings_hash, status, data, error)
    failed.extend(dataclasses.replace(r, stages=[]) for r in results if r.status == "failed")


def _score_and_store(
    ws: Workspace, stacked: StackedModels, hashes: list[str], vectors: np.ndarray, models_hash: str
) -> list[ItemResult]:
    if not hashes:
        return []
    probabilities = score(vectors, stacked)
    now = time.time()
    with ws.catalog.write() as conn:
        conn.executemany(
            """INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (image_hash, model_sha) DO UPDATE SET model = excluded.model, tag = excluded.tag,
               score = excluded.score, updated_at = excluded.updated_at""",  # an update: the histogram follows
            [
                (h, stacked.shas[m], stacked.names[m], stacked.tags[m], float(probabilities[i, m]), now)
                for i, h in enumerate(hashes)
                for m in range(len(stacked))
            ],
        )
    return [
        ItemResult(
            key=h,
            status="ok",
            image_hash=h,
            stages=[(CLASSIFY_STAGE, models_hash, "ok", {"models": len(stacked)}, None)],
        )
        for h in hashes
    ]


# --- results ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Classification:
    hashes: list[str]
    names: list[str]  # what the input called each image
    paths: list[str]  # stored path, relative to the workspace
    stacked: StackedModels
    scores: np.ndarray  # images x models; NaN where not scored

    def column(self, model_name: str) -> np.ndarray:
        return self.scores[:, self.stacked.names.index(model_name)]


def classification(ws: Workspace, dataset: str, models: list[TagModel]) -> Classification:
    """The stored scores of a dataset's images for these model versions (read per 500 images)."""
    stacked = stack_models(models)
    entries = dataset_entries(ws, dataset)
    column = {sha: m for m, sha in enumerate(stacked.shas)}
    scores = np.full((len(entries), len(stacked)), np.nan, dtype=np.float32)
    row_of = {h: i for i, (h, _, _) in enumerate(entries)}
    marks = ",".join("?" * len(stacked.shas))
    for start in range(0, len(entries), 500):
        part = [h for h, _, _ in entries[start : start + 500]]
        rows = ws.catalog.query(
            f"""SELECT image_hash, model_sha, score FROM tag_scores
                WHERE image_hash IN ({",".join("?" * len(part))}) AND model_sha IN ({marks})""",
            (*part, *stacked.shas),
        )
        for r in rows:
            scores[row_of[r["image_hash"]], column[r["model_sha"]]] = r["score"]
    return Classification([e[0] for e in entries], [e[2] for e in entries], [e[1] for e in entries], stacked, scores)


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """One model's scores over a dataset, as the page shows them."""

    scored: int  # images of the dataset with a score from this model
    counts: list[int]  # per bin (`bin_edges(bins)`)
    reach_model_threshold: int
    at_least: int  # images scoring at least the threshold asked for


def score_summary(
    ws: Workspace, dataset: str, model_sha: str, bins: int, model_threshold: float, threshold: float
) -> ScoreSummary:
    """Bin counts and threshold counts from the dataset's fine score histogram (`dataset_score_bins`, 1,000 bins
    kept as scores are written): a count of scores at or above x is the fine bins above x's plus an exact count
    of the few scores inside x's own fine bin, so any number of bins and any threshold cost a few small reads."""
    if bins < 1:
        raise ValueError("bins must be at least 1")
    dataset_id = dataset_id_of(ws.catalog, dataset)
    fine = dict(
        ws.catalog.conn.execute(
            "SELECT bin, images FROM dataset_score_bins WHERE dataset_id = ? AND model_sha = ? AND images > 0",
            (dataset_id, model_sha),
        ).fetchall()
    )
    scored = sum(fine.values())

    def at_least(x: float) -> int:
        if x <= 0.0:
            return scored
        if x > 1.0:
            return 0
        bin_of = score_bin_sql("?")
        edge = int(ws.catalog.scalar(f"SELECT {bin_of}", (x,) * bin_of.count("?")))
        above = sum(n for b, n in fine.items() if b > edge)
        below = "AND t.score < ?" if edge < SCORE_BINS - 1 else ""  # the last bin holds 1.0 too
        inside = ws.catalog.scalar(
            f"""SELECT COUNT(*) FROM tag_scores t INDEXED BY tag_scores_model
                CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = t.image_hash
                WHERE t.model_sha = ? AND t.score >= ? {below}""",
            (dataset_id, model_sha, x, *([(edge + 1) / SCORE_BINS] if below else [])),
        )
        result: int = above + int(inside)
        return result

    edges = [at_least(k / bins) for k in range(bins)] + [0]
    return ScoreSummary(
        scored=scored,
        counts=[edges[k] - edges[k + 1] for k in range(bins)],
        reach_model_threshold=at_least(model_threshold),
        at_least=at_least(threshold),
    )


@dataclasses.dataclass(frozen=True)
class ScoredImage:
    image_hash: str
    name: str
    path: str
    score: float


def top_scored(ws: Workspace, dataset: str, model_sha: str, threshold: float, limit: int) -> list[ScoredImage]:
    """The dataset's best-scoring images at or above the threshold, best first: read down the scores index."""
    rows = ws.catalog.query(
        f"""SELECT m.image_hash, m.name, t.score, {STORED_PATH} AS path
            FROM tag_scores t INDEXED BY tag_scores_model
            CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = t.image_hash
            JOIN images i ON i.hash = m.image_hash
            WHERE t.model_sha = ? AND t.score >= ? ORDER BY t.score DESC LIMIT ?""",
        (dataset_id_of(ws.catalog, dataset), model_sha, threshold, limit),
    )
    return [ScoredImage(r["image_hash"], r["name"], r["path"] or "", r["score"]) for r in rows]


def image_scores(ws: Workspace, image_hash: str, model_shas: list[str]) -> dict[str, float]:
    """One image's score from each of these model versions that scored it."""
    marks = ",".join("?" * len(model_shas))
    rows = ws.catalog.query(
        f"SELECT model_sha, score FROM tag_scores WHERE image_hash = ? AND model_sha IN ({marks})",
        (image_hash, *model_shas),
    )
    return {r["model_sha"]: r["score"] for r in rows}


def scores_version(ws: Workspace, dataset: str) -> tuple[int, int, str]:
    """Changes when a classify job of the dataset makes progress: what a page caches score summaries by."""
    row = ws.catalog.conn.execute(
        """SELECT COALESCE(MAX(id), 0), COALESCE(SUM(n_ok), 0), COALESCE(GROUP_CONCAT(state), '') FROM jobs
           WHERE kind = 'classify' AND json_extract(params, '$.dataset') = ?""",
        (dataset,),
    ).fetchone()
    return int(row[0]), int(row[1]), str(row[2])


def write_outputs(ws: Workspace, params: dict[str, Any], default_out: Path) -> Path:
    """bins.json (per model histogram), scores.csv, output.json, and optional `{type}/{tag}/{bin}/` copies."""
    out = Path(params["out"]) if params.get("out") else default_out
    out.mkdir(parents=True, exist_ok=True)
    result = classification(ws, params["dataset"], _models(params["models"]))
    bins = int(params["bins"])
    scored = ~np.isnan(result.scores).any(axis=1)
    scores = result.scores[scored]
    edges = bin_edges(bins)
    counts = histogram(scores, bins) if len(scores) else np.zeros((len(result.stacked), bins), dtype=int)
    labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in edges]
    thresholds = result.stacked.thresholds
    tagged = (scores >= thresholds).sum(axis=0) if len(scores) else np.zeros(len(result.stacked), dtype=int)
    summary = {
        name: {"tag": tag, "model_type": kind, "bins": dict(zip(labels, counts[m].tolist(), strict=True)),
               "threshold": round(float(thresholds[m]), 6), "tagged": int(tagged[m])}
        for m, (name, tag, kind) in enumerate(zip(result.stacked.names, result.stacked.tags, result.stacked.types,
                                                 strict=True))
    }  # fmt: skip
    write_atomic(out / "bins.json", json.dumps({"output_bins": bins, "models": summary}, indent=1).encode())
    idx = bin_index(scores, bins) if len(scores) else np.zeros_like(scores, dtype=int)
    kept = [i for i, ok in enumerate(scored) if ok]
    with csv_safety.open_for_write(out / "scores.csv", csv_safety.guard_enabled(ws.settings, params)) as writer:
        writer.writerow(["image_name", "image_hash", *result.stacked.names])
        for row, i in enumerate(kept):
            writer.writerow([result.names[i], result.hashes[i], *[f"{p:.6f}" for p in scores[row]]])
    records = []
    for row, i in enumerate(kept):
        records.append({
            "hash_id": result.hashes[i],
            "file_name": Path(result.names[i].split("!")[-1]).name,
            "file_path": result.names[i],
            "classifiers": [
                {"model_type": kind, "tag": tag, "tag_score": round(float(scores[row, m]), 6),
                 "bin": labels[idx[row, m]], "threshold": round(float(thresholds[m]), 6),
                 "tagged": bool(scores[row, m] >= thresholds[m])}
                for m, (tag, kind) in enumerate(zip(result.stacked.tags, result.stacked.types, strict=True))
            ],
        })  # fmt: skip
    write_atomic(out / "output.json", json.dumps(records, indent=1).encode())
    if params.get("copy"):
        for row, i in enumerate(kept):
            src = ws.abspath(result.paths[i])
            for m, (tag, kind) in enumerate(zip(result.stacked.tags, result.stacked.types, strict=True)):
                target = out / kind / (file_name(tag) if tag else tag) / labels[idx[row, m]]  # a folder name
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / f"{result.hashes[i][:16]}{src.suffix}")
    return out

"""Train stage: per tag, a logistic regression and a calibrated linear SVM on the stored embeddings, tag
images against the negatives, with a seeded stratified split, optional k-fold CV and full metrics.

Negatives are seed 004's `other-training` images (and `other-validation` ones, used only for testing); a
dataset without them uses every image that does not carry the tag. One job item per tag, so a long run
resumes per tag and a tag with too few images fails alone with the reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from services.datasets import NEGATIVE_TAGS, DatasetError, dataset_tags
from services.embeddings import Embeddings, EmbeddingStore
from services.jobs import ChunkedTask, ItemResult, JobManager, Journal
from services.tag_models import MODEL_TYPES, generate_model_path, save_model
from services.workspace import Workspace

MIN_PER_CLASS = 2
PR_POINTS = 200


@dataclass(frozen=True)
class TrainOptions:
    workspace: str
    dataset: str
    embedding_key: str
    types: tuple[str, ...]
    test_size: float
    seed: int
    cv_folds: int
    threshold: float
    journal_dir: str


def trainable_tags(ws: Workspace, dataset: str) -> dict[str, int]:
    """Tags with their image counts, negatives excluded."""
    counts: dict[str, int] = {}
    for tags in dataset_tags(ws, dataset).values():
        for tag in tags - set(NEGATIVE_TAGS):
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items()))


def start_training(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    embedding_key: str,
    tags: list[str] | None = None,
    types: list[str] | None = None,
    test_size: float = 0.1,
    seed: int = 0,
    cv_folds: int = 0,
    threshold: float = 0.5,
) -> int:
    """Checks before queueing: known tags and types, and a vector for every image of the dataset."""
    available = trainable_tags(ws, dataset)
    chosen = tags or list(available)
    unknown = [t for t in chosen if t not in available]
    if unknown or not chosen:
        known = ", ".join(available) or "none"
        raise DatasetError(f"tags {unknown or chosen} not in dataset {dataset!r} (tags: {known})")
    types = types or list(MODEL_TYPES)
    bad = [t for t in types if t not in MODEL_TYPES]
    if bad:
        raise DatasetError(f"model types {bad}: use {', '.join(MODEL_TYPES)}")
    if not 0.0 < test_size < 1.0:
        raise DatasetError(f"test size {test_size}: give a fraction between 0 and 1")
    hashes = list(dataset_tags(ws, dataset))
    have = len(EmbeddingStore(ws, embedding_key).stored_hashes() & set(hashes))
    if have < len(hashes):
        raise DatasetError(
            f"{len(hashes) - have} of {len(hashes)} images of {dataset!r} have no {embedding_key} embedding; "
            "run `embed` first with the same model"
        )
    params = {
        "dataset": dataset,
        "embedding_key": embedding_key,
        "tags": chosen,
        "types": types,
        "test_size": test_size,
        "seed": seed,
        "cv_folds": cv_folds,
        "threshold": threshold,
        "workers": 0,
        "chunk_size": 1,
    }
    dataset_id = ws.catalog.scalar("SELECT id FROM datasets WHERE name = ?", (dataset,))
    title = f"Train: {dataset} ({len(chosen)} tags x {'+'.join(types)}) on {embedding_key}"
    return manager.create("train_tags", title, params, dataset_id)


class TrainTask(ChunkedTask):
    kind: ClassVar[str] = "train_tags"
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"too_few"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        JobManager(ws).add_items(job_id, [(tag, None) for tag in params["tags"]])

    def chunk_function(self) -> Any:
        return train_chunk

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> TrainOptions:
        return TrainOptions(
            workspace=str(ws.root),
            dataset=params["dataset"],
            embedding_key=params["embedding_key"],
            types=tuple(params["types"]),
            test_size=float(params["test_size"]),
            seed=int(params["seed"]),
            cv_folds=int(params["cv_folds"]),
            threshold=float(params["threshold"]),
            journal_dir=str(ws.job_dir(job_id)),
        )

    def release(self) -> None:
        _DATA.clear()


_DATA: dict[tuple[str, str, str], tuple[Embeddings, dict[str, set[str]]]] = {}
_DATA_LOCK = threading.Lock()


def _data(ws: Workspace, opts: TrainOptions) -> tuple[Embeddings, dict[str, set[str]]]:
    key = (opts.workspace, opts.dataset, opts.embedding_key)
    with _DATA_LOCK:
        if key not in _DATA:
            tags = dataset_tags(ws, opts.dataset)
            _DATA[key] = (EmbeddingStore(ws, opts.embedding_key).load(list(tags)), tags)
        return _DATA[key]


def train_chunk(items: list[tuple[str, str | None]], opts: TrainOptions) -> list[ItemResult]:
    from services.settings import load_settings

    ws = Workspace(Path(opts.workspace), load_settings(workspace=opts.workspace))
    journal = Journal(opts.journal_dir)
    results = []
    try:
        embeddings, tags = _data(ws, opts)
        for tag, _ in items:
            try:
                summary = train_tag(ws, opts, tag, embeddings, tags)
                result = ItemResult(key=tag, status="ok", result=summary)
            except TooFewError as exc:
                result = ItemResult(key=tag, status="failed", error_class="too_few", error_message=str(exc))
            journal.write(result)
            results.append(result)
    finally:
        journal.close()
        ws.close()
    return results


class TooFewError(ValueError):
    pass


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    negatives: str


def split_for_tag(embeddings: Embeddings, tags: dict[str, set[str]], tag: str, test_size: float, seed: int) -> Split:
    """Tag images (positives) against negatives, stratified; `other-validation` goes to the test set only."""
    index = {h: i for i, h in enumerate(embeddings.hashes)}
    pos = [index[h] for h, t in tags.items() if tag in t and h in index]
    train_neg = [index[h] for h, t in tags.items() if "other-training" in t and tag not in t and h in index]
    test_neg = [index[h] for h, t in tags.items() if "other-validation" in t and tag not in t and h in index]
    negatives = "other-training"
    if not train_neg:
        train_neg = [index[h] for h, t in tags.items() if tag not in t and h in index and not t & set(NEGATIVE_TAGS)]
        negatives = "all images without the tag"
    if len(pos) < 2 * MIN_PER_CLASS or len(train_neg) < 2 * MIN_PER_CLASS:
        raise TooFewError(
            f"tag {tag!r}: {len(pos)} images and {len(train_neg)} negatives; at least {2 * MIN_PER_CLASS} of each"
        )
    # Stratified by hand so the test set always holds at least one image of each class, however small.
    rng = np.random.default_rng(seed)
    pos_order, neg_order = rng.permutation(pos), rng.permutation(train_neg)
    n_pos, n_neg = max(1, round(test_size * len(pos))), max(1, round(test_size * len(train_neg)))
    train_rows = np.concatenate([pos_order[n_pos:], neg_order[n_neg:]]).astype(int)
    test_rows = np.concatenate([pos_order[:n_pos], neg_order[:n_neg], np.array(test_neg, dtype=int)]).astype(int)
    y_train = np.array([1] * (len(pos) - n_pos) + [0] * (len(train_neg) - n_neg))
    y_test = np.array([1] * n_pos + [0] * (n_neg + len(test_neg)))
    return Split(embeddings.vectors[train_rows], y_train, embeddings.vectors[test_rows], y_test, negatives)


def make_estimator(model_type: str, y_train: np.ndarray, seed: int) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if model_type == "lr":
        return LogisticRegression(max_iter=2000, random_state=seed)
    folds = int(min(3, np.bincount(y_train).min()))
    return CalibratedClassifierCV(LinearSVC(random_state=seed), method="sigmoid", cv=folds, ensemble=False)


def evaluate(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Average precision, ROC AUC, F1, precision and recall at the threshold, confusion counts, PR curve."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_recall_curve,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    precision, recall, _ = precision_recall_curve(y_true, scores)
    step = max(1, len(precision) // PR_POINTS)
    return {
        "average_precision": float(average_precision_score(y_true, scores)),
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "threshold": threshold,
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "pr_curve": {"precision": precision[::step].round(4).tolist(), "recall": recall[::step].round(4).tolist()},
    }


def cross_validate(model_type: str, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> dict[str, float]:
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(folds, np.bincount(y).min()))
    if folds < 2:
        return {}
    aps = []
    for tr, te in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        est = make_estimator(model_type, y[tr], seed).fit(x[tr], y[tr])
        aps.append(average_precision_score(y[te], est.predict_proba(x[te])[:, 1]))
    return {"cv_folds": folds, "cv_ap_mean": float(np.mean(aps)), "cv_ap_std": float(np.std(aps))}


def train_tag(
    ws: Workspace, opts: TrainOptions, tag: str, embeddings: Embeddings, tags: dict[str, set[str]]
) -> dict[str, Any]:
    """Both model types for one tag: fit, evaluate, save (skops + manifest), and a seed-style text report."""
    split = split_for_tag(embeddings, tags, tag, opts.test_size, opts.seed)
    summary: dict[str, Any] = {}
    for model_type in opts.types:
        started = time.monotonic()
        estimator = make_estimator(model_type, split.y_train, opts.seed).fit(split.x_train, split.y_train)
        metrics = evaluate(split.y_test, estimator.predict_proba(split.x_test)[:, 1], opts.threshold)
        if opts.cv_folds >= 2:
            x = np.concatenate([split.x_train, split.x_test])
            y = np.concatenate([split.y_train, split.y_test])
            metrics.update(cross_validate(model_type, x, y, opts.cv_folds, opts.seed))
        metrics.update(
            n_train_positive=int(split.y_train.sum()),
            n_train_negative=int(len(split.y_train) - split.y_train.sum()),
            n_test_positive=int(split.y_test.sum()),
            n_test_negative=int(len(split.y_test) - split.y_test.sum()),
            negatives=split.negatives,
            train_seconds=round(time.monotonic() - started, 3),
        )
        path = generate_model_path(ws, opts.dataset, opts.embedding_key, model_type, tag)
        manifest = {
            "tag": tag,
            "model_type": MODEL_TYPES[model_type],
            "dataset": opts.dataset,
            "embedding_key": opts.embedding_key,
            "embedding_spec": EmbeddingStore(ws, opts.embedding_key).read_spec(),
            "dim": int(split.x_train.shape[1]),
            "test_size": opts.test_size,
            "seed": opts.seed,
            "metrics": metrics,
            "created_at": time.time(),
        }
        save_model(path, estimator, manifest)
        path.with_name(path.stem.replace("model-", "report-") + ".txt").write_text(_report(manifest), encoding="utf-8")
        summary[model_type] = {k: metrics[k] for k in ("average_precision", "roc_auc", "f1")}
    return summary


def _report(manifest: dict[str, Any]) -> str:
    """Seed 004's text report: tag, model, set sizes, accuracy and the confusion matrix, plus our metrics."""
    m = manifest["metrics"]
    lines = [
        f"tag: {manifest['tag']}",
        f"model type: {manifest['model_type']}",
        f"embedding: {manifest['embedding_key']}",
        f"training images: {m['n_train_positive']} tagged, {m['n_train_negative']} negative ({m['negatives']})",
        f"test images: {m['n_test_positive']} tagged, {m['n_test_negative']} negative",
        f"accuracy: {m['accuracy']:.4f}",
        f"confusion matrix [[tn fp] [fn tp]]: [[{m['tn']} {m['fp']}] [{m['fn']} {m['tp']}]]",
        f"average precision: {m['average_precision']:.4f}",
        f"ROC AUC: {m['roc_auc']:.4f}",
        f"at threshold {m['threshold']}: precision {m['precision']:.4f}, recall {m['recall']:.4f}, F1 {m['f1']:.4f}",
    ]
    if "cv_ap_mean" in m:
        lines.append(f"{m['cv_folds']}-fold CV average precision: {m['cv_ap_mean']:.4f} +/- {m['cv_ap_std']:.4f}")
    return "\n".join(lines) + "\n"

"""Train stage: per tag, a logistic regression and a calibrated linear SVM on the stored embeddings, tag
images against the negatives, with a seeded stratified split, cross-validation and metrics with intervals.

Both models standardise the features (CLIP vectors are L2-normalised, so every coordinate is small and an
unscaled `C=1` model barely moves from 0.5), weigh the classes (a tag is usually rare), pick `C` by inner
cross-validation on average precision, and pick the decision threshold that maximises F1 on the inner
folds' held-out scores. The scaler folds into the model's linear form, so Classify still scores every
model with one matrix product. When the test split holds fewer than 30 tagged images, cross-validated
metrics (pooled held-out scores of k outer folds) are reported by default; every AP and F1 carries a
bootstrap 95% interval (`tag_metrics`).

Negatives are seed 004's `other-training` images (and `other-validation` ones, used only for testing); a
dataset without them uses every image that does not carry the tag. One job item per tag, so a long run
resumes per tag and a tag with too few images fails alone with the reason.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from services.core.datasets import NEGATIVE_TAGS, DatasetError, dataset_tags, tag_counts
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.embedding_store import Embeddings, EmbeddingStore
from services.jobs.manager import ItemResult, JobManager
from services.jobs.params import JobParams
from services.jobs.stage import ChunkedTask
from services.stages.train.metrics import SMALL_TEST_POSITIVES, best_f1_threshold, evaluate
from services.stages.train.models import MODEL_TYPES, generate_model_path, headline_metrics, linear_form, save_model

MIN_PER_CLASS = 2
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)  # on standardised features
INNER_FOLDS = 3  # for choosing C and the threshold
AUTO_CV_FOLDS = 5  # outer folds when the test split is too small to trust


@dataclass(frozen=True)
class TrainOptions:
    workspace: str
    dataset: str
    embedding_key: str
    types: tuple[str, ...]
    test_size: float
    seed: int
    cv_folds: int | None  # None: cross-validate when the test split has < 30 tagged images; 0: never
    threshold: float | None  # None: the F1-best threshold on validation folds
    journal_dir: str


def trainable_tags(ws: Workspace, dataset: str) -> dict[str, int]:
    """Tags with their image counts, negatives excluded (the catalog's per-tag counters)."""
    return {tag: n for tag, n in tag_counts(ws, dataset).items() if tag not in NEGATIVE_TAGS}


def has_trainable_tags(ws: Workspace, dataset: str) -> bool:
    """Whether any stored image of the dataset sits in a tag folder (a negatives folder does not count): one
    indexed lookup, so a page can ask it of every dataset."""
    hit = ws.catalog.scalar(
        """SELECT 1 FROM dataset_tag_counts c JOIN datasets d ON d.id = c.dataset_id
           WHERE d.name = ? AND c.tag NOT IN (?, ?) AND c.images > 0 LIMIT 1""",
        (dataset, *NEGATIVE_TAGS),
    )
    return hit is not None


def start_training(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    embedding_key: str,
    *,
    tags: list[str] | None = None,
    types: list[str] | None = None,
    test_size: float = 0.1,
    seed: int = 0,
    cv_folds: int | None = None,
    threshold: float | None = None,
) -> int:
    """Checks before queueing: known tags and types, and a vector for every image of the dataset.
    `cv_folds`: None cross-validates when a tag's test split holds fewer than 30 tagged images, 0 never,
    k >= 2 always with k folds. `threshold`: None picks it on validation folds; a number fixes it."""
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
    if cv_folds is not None and (cv_folds < 0 or cv_folds == 1):
        raise DatasetError(f"cv folds {cv_folds}: give 0 (none), k >= 2, or leave it to choose")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise DatasetError(f"threshold {threshold}: give a probability between 0 and 1, or leave it to choose")
    hashes = list(dataset_tags(ws, dataset))
    have = len(EmbeddingStore(ws, embedding_key).stored_hashes() & set(hashes))
    if have < len(hashes):
        raise DatasetError(
            f"{len(hashes) - have} of {len(hashes)} images of {dataset!r} have no {embedding_key} embedding; "
            "run `embed` first with the same model"
        )
    params = TrainParams(
        dataset=dataset,
        embedding_key=embedding_key,
        tags=chosen,
        types=types,
        test_size=test_size,
        seed=seed,
        cv_folds=cv_folds,
        threshold=threshold,
        workers=0,
        chunk_size=1,
    )
    dataset_id = ws.catalog.scalar("SELECT id FROM datasets WHERE name = ?", (dataset,))
    title = f"Train: {dataset} ({len(chosen)} tags x {'+'.join(types)}) on {embedding_key}"
    return manager.create("train_tags", title, params, dataset_id)


class TrainParams(JobParams):
    """A training run: the tagged dataset, its embedding, the tags and model types, split and folds."""

    dataset: str
    embedding_key: str
    tags: list[str]
    types: list[str]
    test_size: float = Field(gt=0.0, lt=1.0, description="Fraction held out for testing, between 0 and 1.")
    seed: int = Field(ge=0, le=2**31 - 1, description="Split and model seed.")
    cv_folds: int | None = Field(
        default=None, ge=0, description="Cross-validation folds (0: none; default: chosen for the tag's size)."
    )
    threshold: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Fixed decision threshold between 0 and 1 (default: chosen)."
    )


class TrainTask(ChunkedTask):
    params_model: ClassVar[type[JobParams]] = TrainParams
    kind: ClassVar[str] = "train_tags"
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"too_few"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        JobManager(ws).add_items(job_id, [(tag, None) for tag in TrainParams.model_validate(params).tags])

    def batch_work(self) -> Any:
        return train_batch

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> TrainOptions:
        p = TrainParams.model_validate(params)
        return TrainOptions(
            workspace=str(ws.root),
            dataset=p.dataset,
            embedding_key=p.embedding_key,
            types=tuple(p.types),
            test_size=p.test_size,
            seed=p.seed,
            cv_folds=p.cv_folds,
            threshold=p.threshold,
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


def train_batch(
    items: list[tuple[str, str | None]], opts: TrainOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """One model per tag of the chunk (items are tags), on the embeddings loaded once per worker."""
    from services.core.settings import load_settings

    ws = Workspace(Path(opts.workspace), load_settings(workspace=opts.workspace))
    try:
        embeddings, tags = _data(ws, opts)
        for tag, _ in items:
            if cancelled():
                return
            try:
                summary = train_tag(ws, opts, tag, embeddings, tags)
                yield ItemResult(key=tag, status="ok", result=summary)
            except TooFewError as exc:
                yield ItemResult(key=tag, status="failed", error_class="too_few", error_message=str(exc))
    finally:
        ws.close()


class TooFewError(WorkbenchError, ValueError):
    error_class = "too_few"
    http_status = 400


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    negatives: str
    validation_only: int = 0  # `other-validation` rows at the end of the test set (never trained on)

    def pool(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image that may be trained on (train + test, without `other-validation`): the CV pool."""
        keep = len(self.y_test) - self.validation_only
        return np.concatenate([self.x_train, self.x_test[:keep]]), np.concatenate([self.y_train, self.y_test[:keep]])


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
    vectors = embeddings.vectors
    return Split(vectors[train_rows], y_train, vectors[test_rows], y_test, negatives, len(test_neg))


def make_estimator(model_type: str, y_train: np.ndarray, seed: int, C: float = 1.0) -> Any:
    """An unfitted model: standardised features, balanced class weights; the SVM sigmoid-calibrated on
    held-out folds (one refit SVM, so the model stays one linear form)."""
    from sklearn.calibration import CalibratedClassifierCV

    if model_type == "lr":
        return _ranker("lr", C, seed)
    folds = int(max(2, min(3, np.bincount(y_train).min())))
    return CalibratedClassifierCV(_ranker("svm", C, seed), method="sigmoid", cv=folds, ensemble=False)


def _classifier(model_type: str, C: float, seed: int, warm_start: bool = False) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if model_type == "lr":
        return LogisticRegression(C=C, class_weight="balanced", max_iter=5000, random_state=seed, warm_start=warm_start)
    return LinearSVC(C=C, class_weight="balanced", max_iter=20_000, random_state=seed)


def _ranker(model_type: str, C: float, seed: int) -> Any:
    """The uncalibrated linear model whose decision function ranks images (what C is chosen on)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("classify", _classifier(model_type, C, seed))])


@dataclass
class FittedModel:
    estimator: Any
    threshold: float
    threshold_source: str
    C: float
    inner_folds: int
    validation_ap: float | None  # the chosen C's average precision on the inner folds' held-out scores


def held_out_decisions(model_type: str, x: np.ndarray, y: np.ndarray, seed: int, folds: int) -> dict[float, np.ndarray]:
    """For every C of the grid, each image's decision value from the fold model that did not train on it.
    The scaler is fitted once per fold, and logistic regression walks the grid warm-started (small C first),
    as LogisticRegressionCV does."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    out = {C: np.empty(len(y), dtype=np.float64) for C in C_GRID}
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        scaler = StandardScaler().fit(x[train])
        x_train, x_test = scaler.transform(x[train]), scaler.transform(x[test])
        classifier = _classifier(model_type, C_GRID[0], seed, warm_start=True)
        for C in C_GRID:
            classifier.set_params(C=C).fit(x_train, y[train])
            out[C][test] = classifier.decision_function(x_test)
    return out


def fit_tag_model(
    model_type: str, x: np.ndarray, y: np.ndarray, seed: int, threshold: float | None = None
) -> FittedModel:
    """Choose C on inner folds (AP of held-out decision values), refit on everything, then choose the
    threshold that maximises F1 on those held-out scores mapped through the final model's probability link."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import average_precision_score
    from threadpoolctl import threadpool_limits

    folds = int(min(INNER_FOLDS, np.bincount(y, minlength=2).min()))
    # Many small fits: one BLAS thread each. Two threads per fit measured 10x slower on a busy 2-core machine.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # liblinear at large C: the AP decides, not the log
        if folds < 2:
            estimator = make_estimator(model_type, y, seed).fit(x, y)
            return FittedModel(estimator, 0.5 if threshold is None else threshold, "default", 1.0, 0, None)
        best: tuple[float, float, np.ndarray] | None = None
        for C, held_out in held_out_decisions(model_type, x, y, seed, folds).items():
            ap = float(average_precision_score(y, held_out))
            if best is None or ap > best[0] + 1e-12:  # ties keep the smaller C (more regularised)
                best = (ap, C, held_out)
        assert best is not None
        ap, C, held_out = best
        estimator = make_estimator(model_type, y, seed, C).fit(x, y)
    if threshold is not None:
        return FittedModel(estimator, threshold, "given", C, folds, ap)
    link = linear_form(estimator)
    probabilities = 1.0 / (1.0 + np.exp(-(link["scale"] * held_out + link["shift"])))
    chosen = best_f1_threshold(y, probabilities)
    return FittedModel(estimator, chosen, f"max F1 on {folds} validation folds", C, folds, ap)


def cross_validated(
    model_type: str, x: np.ndarray, y: np.ndarray, folds: int, seed: int, threshold: float | None
) -> dict[str, Any]:
    """k outer folds, each trained exactly like the final model (its own C and threshold); metrics of the
    pooled held-out scores, each image decided by its own fold's threshold, with bootstrap intervals."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold

    scores = np.empty(len(y), dtype=np.float64)
    thresholds = np.empty(len(y), dtype=np.float64)
    fold_aps = []
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        fitted = fit_tag_model(model_type, x[train], y[train], seed, threshold)
        scores[test] = fitted.estimator.predict_proba(x[test])[:, 1]
        thresholds[test] = fitted.threshold
        fold_aps.append(float(average_precision_score(y[test], scores[test])))
    metrics = evaluate(y, scores, thresholds, seed)
    metrics.update(
        folds=folds,
        n_positive=int(y.sum()),
        n_negative=int(len(y) - y.sum()),
        fold_ap_mean=float(np.mean(fold_aps)),
        fold_ap_std=float(np.std(fold_aps)),
    )
    return metrics


def _cv_folds(opts: TrainOptions, split: Split) -> tuple[int, str | None]:
    """How many outer folds to run (0: none) and why not, when CV was wanted but is impossible."""
    n_test_positive = int(split.y_test.sum())
    if opts.cv_folds == 0 or (opts.cv_folds is None and n_test_positive >= SMALL_TEST_POSITIVES):
        return 0, None
    wanted = opts.cv_folds or AUTO_CV_FOLDS
    _, y = split.pool()
    folds = int(min(wanted, np.bincount(y, minlength=2).min()))
    if folds < 2:
        return 0, f"too few images for {wanted}-fold cross-validation"
    return folds, None


def train_tag(
    ws: Workspace, opts: TrainOptions, tag: str, embeddings: Embeddings, tags: dict[str, set[str]]
) -> dict[str, Any]:
    """Both model types for one tag: fit, evaluate, save (skops + manifest), and a seed-style text report."""
    split = split_for_tag(embeddings, tags, tag, opts.test_size, opts.seed)
    folds, no_cv_reason = _cv_folds(opts, split)
    summary: dict[str, Any] = {}
    for model_type in opts.types:
        started = time.monotonic()
        fitted = fit_tag_model(model_type, split.x_train, split.y_train, opts.seed, opts.threshold)
        test_scores = fitted.estimator.predict_proba(split.x_test)[:, 1]
        metrics = evaluate(split.y_test, test_scores, fitted.threshold, opts.seed)
        metrics.update(
            n_train_positive=int(split.y_train.sum()),
            n_train_negative=int(len(split.y_train) - split.y_train.sum()),
            n_test_positive=int(split.y_test.sum()),
            n_test_negative=int(len(split.y_test) - split.y_test.sum()),
            negatives=split.negatives,
            small_test=int(split.y_test.sum()) < SMALL_TEST_POSITIVES,
            reported="test",
        )
        if folds:
            x_pool, y_pool = split.pool()
            cv = cross_validated(model_type, x_pool, y_pool, folds, opts.seed, opts.threshold)
            metrics.update(cv=cv, reported="cv", cv_folds=folds, cv_ap_mean=cv["fold_ap_mean"],
                           cv_ap_std=cv["fold_ap_std"])  # fmt: skip
        elif no_cv_reason:
            metrics["no_cv_reason"] = no_cv_reason
        metrics["train_seconds"] = round(time.monotonic() - started, 3)
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
            "threshold": fitted.threshold,
            "threshold_source": fitted.threshold_source,
            "training": {
                "features": "standardised (the scaler is folded into the linear form)",
                "class_weight": "balanced",
                "C": fitted.C,
                "C_grid": list(C_GRID),
                "inner_folds": fitted.inner_folds,
                "validation_ap": fitted.validation_ap,
            },
            "metrics": metrics,
            "created_at": time.time(),
        }
        save_model(path, fitted.estimator, manifest)
        path.with_name(path.stem.replace("model-", "report-") + ".txt").write_text(_report(manifest), encoding="utf-8")
        shown = headline_metrics(manifest)
        summary[model_type] = {"average_precision": shown.average_precision, "roc_auc": shown.roc_auc,
                               "f1": shown.f1, "metrics": shown.source}  # fmt: skip
    return summary


def _interval(ci: list[float] | None) -> str:
    return f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""


def _report(manifest: dict[str, Any]) -> str:
    """Seed 004's text report: tag, model, set sizes, accuracy and the confusion matrix, plus our metrics."""
    m = manifest["metrics"]
    training = manifest.get("training", {})
    lines = [
        f"tag: {manifest['tag']}",
        f"model type: {manifest['model_type']}",
        f"embedding: {manifest['embedding_key']}",
        f"training: {training.get('features', '')}, class weight {training.get('class_weight', '')}, "
        f"C {training.get('C')} (chosen from {training.get('C_grid')} on {training.get('inner_folds')} inner folds)",
        f"decision threshold: {manifest['threshold']:.4f} ({manifest['threshold_source']})",
        f"training images: {m['n_train_positive']} tagged, {m['n_train_negative']} negative ({m['negatives']})",
        f"test images: {m['n_test_positive']} tagged, {m['n_test_negative']} negative",
        "",
        "test split:",
        f"accuracy: {m['accuracy']:.4f}",
        f"confusion matrix [[tn fp] [fn tp]]: [[{m['tn']} {m['fp']}] [{m['fn']} {m['tp']}]]",
        f"average precision: {m['average_precision']:.4f}{_interval(m.get('ap_ci'))}",
        f"ROC AUC: {m['roc_auc']:.4f}",
        f"at threshold {m['threshold']:.4f}: precision {m['precision']:.4f}, recall {m['recall']:.4f}, "
        f"F1 {m['f1']:.4f}{_interval(m.get('f1_ci'))}",
    ]
    cv = m.get("cv")
    if cv:
        lines += [
            "",
            f"{cv['folds']}-fold cross-validation ({cv['n_positive']} tagged, {cv['n_negative']} negative; pooled "
            "held-out scores, each fold with its own C and threshold):",
            f"average precision: {cv['average_precision']:.4f}{_interval(cv.get('ap_ci'))} "
            f"(per fold {cv['fold_ap_mean']:.4f} +/- {cv['fold_ap_std']:.4f})",
            f"ROC AUC: {cv['roc_auc']:.4f}",
            f"precision {cv['precision']:.4f}, recall {cv['recall']:.4f}, "
            f"F1 {cv['f1']:.4f}{_interval(cv.get('f1_ci'))}",
            f"confusion matrix [[tn fp] [fn tp]]: [[{cv['tn']} {cv['fp']}] [{cv['fn']} {cv['tp']}]]",
        ]
    warning = headline_metrics(manifest).warning
    if warning:
        lines += ["", f"WARNING: {warning}"]
    lines.append(f"intervals: bootstrap 95% over {m.get('bootstrap_resamples', 0)} stratified resamples")
    return "\n".join(lines) + "\n"

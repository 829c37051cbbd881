"""Metrics of a tag model with their uncertainty: AP, ROC AUC and F1 at the model's threshold, the threshold
that maximises F1 on validation scores, and bootstrap 95% intervals.

A tag may have 3 tagged images in a 10% test split; a single AP from those is mostly noise, so every figure
comes with an interval. The bootstrap is stratified (tagged and untagged images are resampled separately, so
every resample keeps both classes) and drawn as multinomial counts:

    rng = np.random.default_rng(seed)
    counts[:, positives] = rng.multinomial(n_pos, [1 / n_pos] * n_pos, size=resamples)
    counts[:, negatives] = rng.multinomial(n_neg, [1 / n_neg] * n_neg, size=resamples)

Resample b holds image i `counts[b, i]` times. AP over a resample is average precision with ties grouped
(scikit-learn's definition) computed for all resamples at once; the interval is the 2.5th and 97.5th
percentile (numpy's linear interpolation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
SMALL_TEST_POSITIVES = 30  # under this many tagged test images, cross-validated metrics are reported
PR_POINTS = 200
_CELLS_PER_CHUNK = 4_000_000  # resamples x images held at once


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 on (validation) scores: halfway between the lowest score
    called positive and the next lower score, so a new image scoring like a validation one is decided the
    same way. Ties never split: a threshold only falls between distinct scores."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any() or y.all():
        return 0.5
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each group of equal scores
    tp = np.cumsum(y)[ends]
    called = ends + 1
    f1 = 2 * tp / (called + y.sum())
    best = int(np.argmax(f1))
    if best == len(ends) - 1:  # everything positive: just below the lowest score
        return float(np.nextafter(s[-1], -np.inf))
    return float((s[ends[best]] + s[ends[best] + 1]) / 2)


def resample_counts(y_true: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Stratified bootstrap as a resamples x n matrix of counts (see the module docstring)."""
    y = np.asarray(y_true).astype(bool)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(y)), dtype=np.int64)
    for members in (np.flatnonzero(y), np.flatnonzero(~y)):
        if len(members):
            counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
    return counts


def weighted_average_precision(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision for each row of `weights` (k x n): sum over distinct thresholds, highest first, of
    (recall gained) x (precision there), ties grouped, as scikit-learn defines it with sample weights."""
    y = np.asarray(y_true).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    w = np.asarray(weights, dtype=np.float64)[:, order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(w * y, axis=1)[:, ends]
    called = np.cumsum(w, axis=1)[:, ends]
    positives = tp[:, -1:]
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    gained = np.diff(tp, axis=1, prepend=0.0)
    return np.asarray(np.sum(gained * precision, axis=1) / np.maximum(positives[:, 0], 1e-300))


def weighted_f1(y_true: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """F1 for each row of `weights` (k x n); 0 where nothing is tagged or called (scikit-learn's zero_division=0)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(predicted).astype(bool)
    w = np.asarray(weights, dtype=np.float64)
    tp = w @ (y & p).astype(np.float64)
    wrong = w @ (y ^ p).astype(np.float64)  # false positives + false negatives
    denominator = 2 * tp + wrong
    result: np.ndarray = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return result


def bootstrap_intervals(
    y_true: np.ndarray,
    scores: np.ndarray,
    predicted: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95% percentile intervals of AP and F1 over stratified bootstrap resamples of the evaluated images."""
    counts = resample_counts(y_true, resamples, seed)
    step = max(1, _CELLS_PER_CHUNK // max(1, len(y_true)))
    ap = np.concatenate(
        [weighted_average_precision(y_true, scores, counts[i : i + step]) for i in range(0, resamples, step)]
    )
    f1 = weighted_f1(y_true, predicted, counts)
    return {
        "ap_ci": [round(float(v), 4) for v in np.percentile(ap, [2.5, 97.5])],
        "f1_ci": [round(float(v), 4) for v in np.percentile(f1, [2.5, 97.5])],
    }


def evaluate(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float | np.ndarray,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """AP, ROC AUC, F1, precision, recall and accuracy at the threshold (one, or one per image when pooled
    from cross-validation folds), the confusion counts, a PR curve, and bootstrap intervals of AP and F1."""
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
        "threshold": float(np.mean(threshold)),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        **bootstrap_intervals(y_true, scores, predicted, resamples, seed),
        "bootstrap_resamples": resamples,
        "pr_curve": {"precision": precision[::step].round(4).tolist(), "recall": recall[::step].round(4).tolist()},
    }

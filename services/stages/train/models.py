"""Trained per-tag classifiers on disk: skops files (never pickle) with a JSON manifest beside each.

`models/<dataset>/<embedding key>/model-{type}-tag-{tag}.skops` holds the fitted estimator; the `.json`
manifest holds its metrics, the embedding model it expects, the file's sha256 (checked before loading), its
decision threshold (chosen on validation folds; 0.5 for manifests written before thresholds existed) and
the model reduced to one linear form, p = sigmoid(scale * (x . w + bias) + shift), which is what scoring
uses: every model of a folder stacks into one matrix and one pass scores all tags at once. A standardising
scaler in front of the model folds into that form (w' = w / sigma, bias' = bias - sum(w * mu / sigma)); its
mean is kept beside as `center`, which scoring subtracts first so float32 products stay exact to 1e-6
(CLIP coordinates have means several times their spread, and x . w' would cancel against bias').
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import WorkbenchError
from services.core.names import MAX_FILE_NAME_BYTES, file_name
from services.core.workspace import Workspace, write_atomic

MODEL_TYPES = {"lr": "ovr-logistic-regression", "svm": "ovr-svm"}
DEFAULT_THRESHOLD = 0.5  # manifests from before thresholds were chosen on validation data
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Types a model file may contain beyond skops' built-in trusted set; anything else refuses to load.
ALLOWED_TYPES = frozenset({"sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"})


class ModelFileError(WorkbenchError, ValueError):
    """A model file that is missing, altered since training, or holds types we do not load."""

    error_class = "model_file"
    http_status = 400


@dataclass
class TagModel:
    path: Path
    manifest: dict[str, Any]

    @property
    def tag(self) -> str:
        return str(self.manifest["tag"])

    @property
    def model_type(self) -> str:
        return str(self.manifest["model_type"])

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def threshold(self) -> float:
        """The decision threshold on the probability: a score at or above it means the image has the tag."""
        return float(self.manifest.get("threshold", DEFAULT_THRESHOLD))

    @property
    def linear(self) -> tuple[np.ndarray, float, float, float]:
        lin = self.manifest["linear"]
        return np.asarray(lin["w"], dtype=np.float64), float(lin["bias"]), float(lin["scale"]), float(lin["shift"])

    @property
    def center(self) -> np.ndarray | None:
        """The mean the model's scaler subtracted (None for models without one)."""
        center = self.manifest["linear"].get("center")
        return None if center is None else np.asarray(center, dtype=np.float64)


def models_dir(ws: Workspace, dataset: str, embedding_key: str) -> Path:
    return _models_root(ws, dataset) / _folder_name(embedding_key, "embedding")


def _folder_name(value: str, what: str) -> str:
    """A dataset or embedding key as one folder name under `models/`: separators become `_`, and `.`, `..`
    (which would leave `models/`) are refused."""
    folder = _SAFE.sub("_", value)
    if folder in ("", ".", ".."):
        raise ModelFileError(f"{what} {value[:40]!r} cannot name a model folder")
    return file_name(folder) if len(folder.encode("utf-8")) > MAX_FILE_NAME_BYTES else folder


def _models_root(ws: Workspace, dataset: str) -> Path:
    return ws.root / "models" / _folder_name(dataset, "dataset")


def generate_model_path(ws: Workspace, dataset: str, embedding_key: str, model_type: str, tag: str) -> Path:
    """Seed 004's `model-{type}-tag-{tag}` naming, as a `.skops` file."""
    full_type = MODEL_TYPES.get(model_type, model_type)
    stem = file_name(f"model-{full_type}-tag-{_SAFE.sub('_', tag)}", ".skops")  # a tag may be a long folder name
    return models_dir(ws, dataset, embedding_key) / stem


def _linear_decision(estimator: Any) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(w, bias, center) of a linear model's decision function on raw vectors; a StandardScaler in front of it
    (in a Pipeline) is folded in: (x - mu) / sigma . w + b = x . (w / sigma) + (b - sum(w * mu / sigma)), and
    mu is returned as the center (None without a scaler)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(estimator, Pipeline):
        *front, (_, last) = estimator.steps
        w, bias, center = _linear_decision(last)
        for _, step in reversed(front):
            if not isinstance(step, StandardScaler):
                raise ModelFileError(f"no linear form for a pipeline step {type(step).__name__}")
            sigma = step.scale_ if step.scale_ is not None else np.ones_like(w)
            mu = step.mean_ if step.mean_ is not None else np.zeros_like(w)
            w = w / sigma
            bias = bias - float(np.sum(w * mu))
            center = np.asarray(mu, dtype=np.float64)
        return w, bias, center
    if hasattr(estimator, "coef_") and hasattr(estimator, "intercept_") and np.shape(estimator.coef_)[0] == 1:
        return np.asarray(estimator.coef_[0], dtype=np.float64), float(estimator.intercept_[0]), None
    raise ModelFileError(f"no linear form for {type(estimator).__name__}")


def linear_form(estimator: Any) -> dict[str, Any]:
    """Reduce a fitted binary LogisticRegression or sigmoid-calibrated LinearSVC (each optionally behind a
    StandardScaler) to (w, bias, scale, shift)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, LogisticRegression) or (
        isinstance(estimator, Pipeline) and isinstance(estimator.steps[-1][1], LogisticRegression)
    ):
        w, bias, center = _linear_decision(estimator)
        form = {"w": w.tolist(), "bias": bias, "scale": 1.0, "shift": 0.0}
    elif isinstance(estimator, CalibratedClassifierCV) and len(estimator.calibrated_classifiers_) == 1:
        calibrated = estimator.calibrated_classifiers_[0]
        w, bias, center = _linear_decision(calibrated.estimator)
        calibrator = calibrated.calibrators[0]
        form = {"w": w.tolist(), "bias": bias, "scale": -float(calibrator.a_), "shift": -float(calibrator.b_)}
    else:
        raise ModelFileError(f"no linear form for {type(estimator).__name__}")
    if center is not None:
        form["center"] = center.tolist()  # not part of the formula: where scoring centres vectors first
    return form


@dataclass
class Headline:
    """The metrics a page or report leads with: cross-validated when the model has them, else the test split's."""

    source: str  # "cross-validated (5 folds)" or "test split"
    average_precision: float
    ap_ci: list[float] | None
    f1: float
    f1_ci: list[float] | None
    roc_auc: float
    precision: float
    recall: float
    n_positive: int
    n_negative: int
    threshold: float
    warning: str | None


def headline_metrics(manifest: dict[str, Any]) -> Headline:
    """What to show first for a model, with a warning when its test split is too small to trust."""
    from services.stages.train.metrics import SMALL_TEST_POSITIVES

    m = manifest.get("metrics", {})
    cv = m.get("cv") if m.get("reported") == "cv" else None
    shown = cv or m
    n_test = int(m.get("n_test_positive", 0))
    warning = None
    if n_test < SMALL_TEST_POSITIVES:
        if cv:
            warning = (
                f"only {n_test} tagged images in the test split (under {SMALL_TEST_POSITIVES}): {cv['folds']}-fold "
                f"cross-validated metrics over {cv['n_positive']} tagged images are shown instead"
            )
        else:
            why = m.get("no_cv_reason") or "cross-validation was turned off"
            warning = (
                f"only {n_test} tagged images in the test split (under {SMALL_TEST_POSITIVES}) and {why}: AP and F1 "
                "are uncertain, read the 95% intervals"
            )
        if cv and cv["n_positive"] < SMALL_TEST_POSITIVES:
            warning += f"; even so, {cv['n_positive']} tagged images in all is few: read the 95% intervals"
    return Headline(
        source=f"cross-validated ({cv['folds']} folds)" if cv else "test split",
        average_precision=float(shown.get("average_precision", float("nan"))),
        ap_ci=shown.get("ap_ci"),
        f1=float(shown.get("f1", float("nan"))),
        f1_ci=shown.get("f1_ci"),
        roc_auc=float(shown.get("roc_auc", float("nan"))),
        precision=float(shown.get("precision", float("nan"))),
        recall=float(shown.get("recall", float("nan"))),
        n_positive=int(cv["n_positive"] if cv else n_test),
        n_negative=int(cv["n_negative"] if cv else m.get("n_test_negative", 0)),
        threshold=float(manifest.get("threshold", DEFAULT_THRESHOLD)),
        warning=warning,
    )


def save_model(path: Path, estimator: Any, manifest: dict[str, Any]) -> TagModel:
    import skops.io as sio

    data = sio.dumps(estimator)
    write_atomic(path, data)
    full = {**manifest, "linear": linear_form(estimator), "sha256": hashlib.sha256(data).hexdigest(), "file": path.name}
    write_atomic(path.with_suffix(".json"), json.dumps(full, indent=1).encode("utf-8"))
    return TagModel(path, full)


def list_models(ws: Workspace, dataset: str | None = None, embedding_key: str | None = None) -> list[TagModel]:
    """Every trained model with a manifest (optionally of one dataset and embedding model)."""
    root = ws.root / "models"
    if dataset is not None:
        root = _models_root(ws, dataset)
        if embedding_key is not None:
            root = root / _folder_name(embedding_key, "embedding")
    if not root.is_dir():
        return []
    out = []
    for manifest in sorted(root.rglob("model-*.json")):
        skops_file = manifest.with_suffix(".skops")
        if skops_file.is_file():
            out.append(TagModel(skops_file, json.loads(manifest.read_text(encoding="utf-8"))))
    return out


def load_models_from(folder: Path) -> list[TagModel]:
    """Models of any folder (or one `.skops` file) with manifests: for classifying with models from elsewhere."""
    files = [folder] if folder.is_file() else sorted(folder.rglob("model-*.skops"))
    out = []
    for f in files:
        manifest = f.with_suffix(".json")
        if not manifest.is_file():
            raise ModelFileError(f"{f}: no manifest {manifest.name} beside it")
        out.append(TagModel(f, json.loads(manifest.read_text(encoding="utf-8"))))
    return out


def load_estimator(model: TagModel) -> Any:
    """The fitted estimator, after checking the file's hash and that it holds only allowed types."""
    import skops.io as sio

    try:
        data = model.path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelFileError(f"{model.path} does not exist") from exc
    if hashlib.sha256(data).hexdigest() != model.manifest.get("sha256"):
        raise ModelFileError(f"{model.path.name}: contents differ from its manifest (changed after training?)")
    untrusted = set(sio.get_untrusted_types(data=data))
    if not untrusted <= ALLOWED_TYPES:
        raise ModelFileError(f"{model.path.name}: holds types that are not loaded: {sorted(untrusted - ALLOWED_TYPES)}")
    return sio.loads(data, trusted=sorted(untrusted))

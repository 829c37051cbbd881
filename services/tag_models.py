"""Trained per-tag classifiers on disk: skops files (never pickle) with a JSON manifest beside each.

`models/<dataset>/<embedding key>/model-{type}-tag-{tag}.skops` holds the fitted estimator; the `.json`
manifest holds its metrics, the embedding model it expects, the file's sha256 (checked before loading) and
the model reduced to one linear form, p = sigmoid(scale * (x . w + bias) + shift), which is what scoring
uses: every model of a folder stacks into one matrix and one pass scores all tags at once.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.workspace import Workspace, write_atomic

MODEL_TYPES = {"lr": "ovr-logistic-regression", "svm": "ovr-svm"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Types a model file may contain beyond skops' built-in trusted set; anything else refuses to load.
ALLOWED_TYPES = frozenset({"sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"})


class ModelFileError(ValueError):
    """A model file that is missing, altered since training, or holds types we do not load."""


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
    def linear(self) -> tuple[np.ndarray, float, float, float]:
        lin = self.manifest["linear"]
        return np.asarray(lin["w"], dtype=np.float64), float(lin["bias"]), float(lin["scale"]), float(lin["shift"])


def models_dir(ws: Workspace, dataset: str, embedding_key: str) -> Path:
    return _models_root(ws, dataset) / _folder_name(embedding_key, "embedding")


def _folder_name(value: str, what: str) -> str:
    """A dataset or embedding key as one folder name under `models/`: separators become `_`, and `.`, `..`
    (which would leave `models/`) are refused."""
    folder = _SAFE.sub("_", value)
    if folder in ("", ".", ".."):
        raise ModelFileError(f"{what} {value[:40]!r} cannot name a model folder")
    return folder


def _models_root(ws: Workspace, dataset: str) -> Path:
    return ws.root / "models" / _folder_name(dataset, "dataset")


def generate_model_path(ws: Workspace, dataset: str, embedding_key: str, model_type: str, tag: str) -> Path:
    """Seed 004's `model-{type}-tag-{tag}` naming, as a `.skops` file."""
    full_type = MODEL_TYPES.get(model_type, model_type)
    return models_dir(ws, dataset, embedding_key) / f"model-{full_type}-tag-{_SAFE.sub('_', tag)}.skops"


def linear_form(estimator: Any) -> dict[str, Any]:
    """Reduce a fitted binary LogisticRegression or sigmoid-calibrated LinearSVC to (w, bias, scale, shift)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    if isinstance(estimator, LogisticRegression):
        return {"w": estimator.coef_[0].tolist(), "bias": float(estimator.intercept_[0]), "scale": 1.0, "shift": 0.0}
    if isinstance(estimator, CalibratedClassifierCV) and len(estimator.calibrated_classifiers_) == 1:
        calibrated = estimator.calibrated_classifiers_[0]
        svm, calibrator = calibrated.estimator, calibrated.calibrators[0]
        return {
            "w": svm.coef_[0].tolist(),
            "bias": float(svm.intercept_[0]),
            "scale": -float(calibrator.a_),
            "shift": -float(calibrator.b_),
        }
    raise ModelFileError(f"no linear form for {type(estimator).__name__}")


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

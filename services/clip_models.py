"""open_clip models: find weights on disk, load once per process, embed images and texts.

Weights come only from the local Hugging Face cache (filled by `python -m services models pull M/TAG`) or a
checkpoint file the user names; loading never downloads. With no local weights the error comes at once and
names both fixes. A checkpoint of a custom architecture carries its config beside it as
`open_clip_config.json` (the layout open_clip pushes to the Hub), which is registered under the model name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.settings import Settings

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_CACHE: dict[tuple[Any, ...], LoadedClip] = {}
_CACHE_LOCK = threading.Lock()


class ModelUnavailableError(RuntimeError):
    """No usable weights on this machine; the message says how to provide them."""


@dataclass(frozen=True)
class ClipSpec:
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    device: str = "auto"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        model: str | None = None,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        device: str | None = None,
    ) -> ClipSpec:
        clip = settings.clip
        use_checkpoint = checkpoint or (None if (model or pretrained) else clip.checkpoint)
        return cls(
            model=model or clip.model,
            pretrained=None if use_checkpoint else (pretrained or clip.pretrained),
            checkpoint=str(Path(use_checkpoint).expanduser().resolve()) if use_checkpoint else None,
            device=device or clip.device,
        )

    @property
    def label(self) -> str:
        return f"{self.model} ({Path(self.checkpoint).name if self.checkpoint else self.pretrained})"

    def identity(self) -> str:
        """What the weights are, for cache keys: tag name, or checkpoint path + size + mtime."""
        if self.checkpoint:
            st = Path(self.checkpoint).stat()
            return f"{self.model}|file:{self.checkpoint}|{st.st_size}|{int(st.st_mtime)}"
        return f"{self.model}|{self.pretrained}"

    def identity_hash(self) -> str:
        return hashlib.sha256(self.identity().encode("utf-8")).hexdigest()[:12]


def pull_hint(spec: ClipSpec) -> str:
    return (
        f"fetch them once with `python -m services models pull {spec.model}/{spec.pretrained}` on a machine with "
        "internet (the Hugging Face cache can be copied), or pass a local checkpoint with --checkpoint FILE "
        "(settings: clip.checkpoint)"
    )


def resolve_weights(spec: ClipSpec) -> tuple[str, dict[str, Any]]:
    """The local weight file for `spec` and its pretrained config; never touches the network."""
    import open_clip

    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise ModelUnavailableError(f"checkpoint {path} does not exist")
        _register_sidecar_config(spec.model, path)
        if spec.model not in open_clip.list_models():
            raise ModelUnavailableError(
                f"unknown open_clip model {spec.model!r} for {path.name}: put its open_clip_config.json beside "
                "the checkpoint or use a built-in name (python -m services models list)"
            )
        return str(path), {}
    if spec.model not in open_clip.list_models():
        raise ModelUnavailableError(f"unknown open_clip model {spec.model!r}")
    if not spec.pretrained:
        raise ModelUnavailableError(f"{spec.model}: no pretrained tag and no checkpoint; give one of them")
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.model)) or "none"
        raise ModelUnavailableError(f"{spec.model} has no pretrained tag {spec.pretrained!r} (tags: {tags})")
    found = _cached_file(cfg)
    if found is None:
        raise ModelUnavailableError(f"no local weights for {spec.model}/{spec.pretrained}; {pull_hint(spec)}")
    return found, cfg


def _cached_file(cfg: dict[str, Any]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        candidates = [filename] if filename else list(HF_WEIGHT_FILES)
        for name in candidates:
            hit = try_to_load_from_cache(repo_id=repo, filename=name)
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
    url = cfg.get("url", "")
    if url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _config_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "image-workbench" / "open_clip_configs"


_REGISTERED: set[str] = set()
_CONFIG_LOCK = threading.Lock()


def _register_sidecar_config(model: str, checkpoint: Path) -> None:
    """Make a custom architecture known to open_clip under `model`. open_clip rescans every config folder it
    was ever given, so the folder must outlive the call (a temporary one broke concurrent page runs)."""
    import open_clip

    sidecar = checkpoint.parent / "open_clip_config.json"
    if model in open_clip.list_models() or not sidecar.is_file():
        return
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    model_cfg = data.get("model_cfg", data)
    folder = _config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{model}.json"
    tmp = folder / f".{model}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(model_cfg), encoding="utf-8")
    os.replace(tmp, target)
    with _CONFIG_LOCK:
        if str(target) not in _REGISTERED:
            _REGISTERED.add(str(target))
            open_clip.add_model_config(target)  # a file that stays: later rescans can always read it


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelUnavailableError(f"device {requested!r} asked for, but CUDA is not available here")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedClip:
    spec: ClipSpec
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str

    def embed_images(self, images: list[Any], batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 image embeddings of PIL images, in batches."""
        import torch

        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(img) for img in images[start : start + batch_size]]).to(self.device)
            with torch.inference_mode(), autocast_for(self.device):
                features = self.model.encode_image(batch)
            out.append(_normalise(features.float().cpu().numpy()))
        width = int(getattr(self.model, "embed_dim", 0) or (out[0].shape[1] if out else 0))
        return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode(), autocast_for(self.device):
            features = self.model.encode_text(tokens)
        return _normalise(features.float().cpu().numpy())

    @property
    def image_side(self) -> int:
        """The model's input size (224 for ViT-B-32)."""
        size = getattr(getattr(self.model, "visual", None), "image_size", 224)
        return int(max(size) if isinstance(size, tuple | list) else size)

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def autocast_for(device: str) -> Any:
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def load_clip(spec: ClipSpec) -> LoadedClip:
    """Load once per process (and per device); later calls return the same model."""
    device = pick_device(spec.device)
    key = (spec.identity(), device)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        weights, cfg = resolve_weights(spec)
        import open_clip

        extra = {k: cfg[k] for k in ("mean", "std") if k in cfg}
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=weights,
            device=device,
            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            image_mean=extra.get("mean"),
            image_std=extra.get("std"),
            image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"),
        )
        model.eval()
        loaded = LoadedClip(spec, model, preprocess, open_clip.get_tokenizer(spec.model), device)
        _CACHE[key] = loaded
        log.info("loaded %s on %s", spec.label, device)
        return loaded


def pull_weights(spec: ClipSpec, timeout: float) -> str:
    """Download a pretrained tag's weights into the Hugging Face cache (the only place that downloads)."""
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained or "")
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.model)) or "none"
        raise ModelUnavailableError(f"{spec.model} has no pretrained tag {spec.pretrained!r} (tags: {tags})")
    from services.pulls import PullError, pull_with_timeout

    try:
        return pull_with_timeout(lambda: download_pretrained(cfg), timeout, f"{spec.model}/{spec.pretrained}")
    except PullError as exc:
        raise ModelUnavailableError(str(exc)) from None

"""open_clip models: find weights on disk, load once per process, embed images and texts.

Weights come only from the local Hugging Face cache (filled by `python -m services models pull M/TAG`) or a
checkpoint file the user names; loading never downloads. With no local weights the error comes at once and
names both fixes. A checkpoint of a custom architecture carries its config beside it as
`open_clip_config.json` (the layout open_clip pushes to the Hub), which is registered under the model name.

A checkpoint is checked against the architecture it is loaded as before any job starts (the model is built
on PyTorch's meta device, so the check costs a file read, not a model): a mismatch is a clear error, not an
assertion deep in open_clip after a slow load. The activation is never guessed from the weights (GELU and
QuickGELU weights look the same): a pretrained tag brings its own, a `*-quickgelu` name or
`"quick_gelu": true` in the checkpoint's `open_clip_config.json` gives QuickGELU, anything else GELU, and
`activation_note` says so where a checkpoint is chosen. `local_clip_models` lists every model whose weights
are on this machine, for the pages' model picker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import WorkbenchError
from services.core.names import MAX_NAME_CHARS, InvalidNameError, is_name, name_problem, resolve_in
from services.core.settings import Settings
from services.io.resident_models import RESIDENT, weight_bytes

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_FAMILY = "clip"


def set_resident_limit(models: int) -> None:
    """How many CLIP models (per model and device) this process keeps loaded; the least recently used goes
    first. The workspace's worker sets it from `clip.resident_models` (services.io.resident_models)."""
    RESIDENT.set_limits({CLIP_FAMILY: models}, None)


def clip_load_count() -> int:
    """CLIP models loaded from disk in this process so far (a cache hit is not a load)."""
    return RESIDENT.load_count(CLIP_FAMILY)


def resident_clips() -> list[str]:
    """The CLIP models this process holds now, least recently used first."""
    return RESIDENT.held(CLIP_FAMILY)


class ModelUnavailableError(WorkbenchError, RuntimeError):
    """No usable weights on this machine; the message says how to provide them."""

    error_class = "model_unavailable"
    http_status = 503


class CheckpointMismatchError(ModelUnavailableError):
    """A checkpoint file that does not fit the architecture it was to be loaded as."""

    error_class = "checkpoint_mismatch"
    http_status = 422


class WeightsNotPulledError(ModelUnavailableError):
    """A known model and pretrained tag whose weights are not on this machine yet: an explicit pull fetches them."""

    error_class = "weights_not_pulled"
    http_status = 503


class ModelNameError(ModelUnavailableError, ValueError):
    """A model or pretrained tag name that is not a safe name (a path, `hf-hub:`/`local-dir:` forms, ...)."""

    error_class = "invalid_name"


def model_name_problem(value: object, what: str) -> str | None:
    """Why `value` cannot be an open_clip model name or pretrained tag, or None. Every name open_clip ships
    (`ViT-B-32`, `ViT-B-32-quickgelu`, `convnext_base_w`; tags `openai`, `laion2b_s34b_b79k`) and every custom
    architecture name is a safe name (services/core/names.py). open_clip's `hf-hub:ORG/NAME` and `local-dir:PATH`
    forms are refused: they make open_clip download or read a folder, and this product loads weights only
    from a pulled tag or a checkpoint file that went through the server-path guard."""
    problem = name_problem(value)
    if problem is None:
        return None
    hint = (
        "; Hub and folder models load from their checkpoint file instead"
        if isinstance(value, str) and value.startswith(("hf-hub:", "local-dir:"))
        else ""
    )
    shown = f" {value[:40]!r}{'...' if len(value) > 40 else ''}" if isinstance(value, str) and value else ""
    return f"{what}{shown} {problem}{hint} (python -m services models list shows the names)"


@dataclass(frozen=True)
class ClipSpec:
    """Which open_clip weights to use. The names are checked when a spec is made, so no model or tag name
    that could be a path (`../x`, `/tmp/x`, `hf-hub:...`) ever reaches a file name, a cache lookup or
    open_clip: this is the one guard for names typed on a page, given to the CLI or stored in a job."""

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        problem = model_name_problem(self.model, "open_clip model")
        if problem is None and self.pretrained:
            problem = model_name_problem(self.pretrained, "pretrained tag")
        if problem is not None:
            raise ModelNameError(problem)

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
            raise ModelUnavailableError(f"checkpoint {path.name} does not exist")  # no server path on a page
        _register_sidecar_config(spec.model, path)
        if spec.model not in open_clip.list_models():
            raise ModelUnavailableError(
                f"unknown open_clip model {spec.model!r} for {path.name}: put its open_clip_config.json beside "
                "the checkpoint or use a built-in name (python -m services models list)"
            )
        check_checkpoint_fits(spec)
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
        raise WeightsNotPulledError(f"no local weights for {spec.model}/{spec.pretrained}; {pull_hint(spec)}")
    return found, cfg


def _cached_file(cfg: dict[str, Any]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = _hub_repo(hub)
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


def _hub_repo(hub: str) -> tuple[str, str]:
    """open_clip's `hf_hub` entry as (repository, file name): `org/name/` names a repository, `org/name/f.bin`
    one file of it."""
    return os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")


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
    try:  # open_clip registers a config under its file's stem, so the file is named after the model
        target = resolve_in(folder, model, ".json", what="open_clip model")
    except InvalidNameError as exc:
        raise ModelNameError(str(exc)) from None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(model_cfg), encoding="utf-8")
    os.replace(tmp, target)
    with _CONFIG_LOCK:
        if str(target) not in _REGISTERED:
            _REGISTERED.add(str(target))
            open_clip.add_model_config(target)  # a file that stays: later rescans can always read it


def _sidecar_model_cfg(checkpoint: Path) -> dict[str, Any] | None:
    sidecar = checkpoint.parent / "open_clip_config.json"
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_cfg = data.get("model_cfg", data)
    return model_cfg if isinstance(model_cfg, dict) else None


def wants_quick_gelu(spec: ClipSpec, cfg: dict[str, Any] | None = None) -> bool:
    """QuickGELU when the pretrained tag says so, or the checkpoint's config does (a `*-quickgelu` model name
    gets it from open_clip's own config)."""
    if cfg and cfg.get("quick_gelu"):
        return True
    if spec.checkpoint:
        model_cfg = _sidecar_model_cfg(Path(spec.checkpoint))
        return bool(model_cfg and model_cfg.get("quick_gelu"))
    return False


def activation_of(model: Any) -> str:
    """ "QuickGELU" or "GELU": what the built network actually uses."""
    from open_clip.transformer import QuickGELU

    return "QuickGELU" if any(isinstance(m, QuickGELU) for m in model.modules()) else "GELU"


def activation_note(spec: ClipSpec) -> str | None:
    """What a checkpoint will run with, said where it is chosen: the weights cannot tell GELU from QuickGELU."""
    import open_clip

    if not spec.checkpoint:
        return None
    if wants_quick_gelu(spec) and not spec.model.endswith("-quickgelu"):
        return f"{spec.model} runs with QuickGELU activations, as the checkpoint's open_clip_config.json says."
    if spec.model.endswith("-quickgelu"):
        return f"{spec.model} runs with QuickGELU activations (what OpenAI's released CLIP weights need)."
    twin = f"{spec.model}-quickgelu"
    if twin in open_clip.list_models():
        return (
            f"{spec.model} runs with GELU activations. Weights trained with QuickGELU (OpenAI's released "
            f"{spec.model} among them) need the name {twin}: with the wrong one they load and run, but every "
            "vector differs."
        )
    return None


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs 'No pretrained weights loaded' and torch warns about meta copies: neither matters here."""

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    drop = Drop()
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)


_FITS: dict[str, str | None] = {}


def check_checkpoint_fits(spec: ClipSpec) -> None:
    """CheckpointMismatchError, naming the first differing tensor and the fix, when the checkpoint does not
    load into `spec.model`. Runs open_clip's own loading steps against the model built on the meta device,
    so what passes here loads for real; the verdict is cached per file version."""
    if not spec.checkpoint:
        return
    key = f"{spec.identity()}|{wants_quick_gelu(spec)}"
    if key not in _FITS:
        _FITS[key] = _checkpoint_problem(spec)
    if _FITS[key]:
        raise CheckpointMismatchError(str(_FITS[key]))


def _checkpoint_problem(spec: ClipSpec) -> str | None:
    import open_clip
    import torch
    from open_clip.factory import load_state_dict

    path = Path(str(spec.checkpoint))
    with _quiet_open_clip(), torch.device("meta"):
        model = open_clip.create_model(
            spec.model, pretrained=None, device="meta", force_quick_gelu=wants_quick_gelu(spec), load_weights=False
        )
    try:
        with _quiet_open_clip():
            open_clip.load_checkpoint(model, str(path))
        return None
    except Exception as exc:  # open_clip reports a misfit as AssertionError, RuntimeError, KeyError ...
        problem = exc
    try:
        with _quiet_open_clip():
            found = {k: tuple(v.shape) for k, v in load_state_dict(str(path)).items()}
    except Exception as exc:
        return f"checkpoint {path.name} cannot be read ({type(exc).__name__}: {exc}); is it a CLIP state dict?"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = [k for k in expected if k in found and found[k] != expected[k]]
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]

    def shape(s: tuple[int, ...]) -> str:
        return "x".join(map(str, s)) or "scalar"

    if differ:
        k = differ[0]
        detail = f"{k} is {shape(found[k])} in the file but {shape(expected[k])} in {spec.model}"
    elif missing:
        detail = f"{missing[0]} is missing from the file"
    elif extra:
        detail = f"the file has {extra[0]}, which {spec.model} does not"
    else:
        detail = f"{type(problem).__name__}: {problem}"
    counts = f"{len(differ)} tensors of other shapes, {len(missing)} missing, {len(extra)} unexpected"
    if _sidecar_model_cfg(path) is not None:
        fix = (
            "an open_clip_config.json beside it describes the architecture it was saved for: pick that model in the "
            "list, or give it a name that is not a built-in model (a built-in name ignores the config)"
        )
    else:
        fix = "give the open_clip model it was saved for (python -m services models list), or put its "
        fix += "open_clip_config.json beside it"
    return f"checkpoint {path.name} does not fit {spec.model}: {detail} ({counts}). Fix: {fix}."


@dataclass(frozen=True)
class LocalClip:
    """A CLIP model whose weights are on this machine, as the model picker offers it."""

    spec: ClipSpec
    origin: str  # where it was found

    @property
    def label(self) -> str:
        return f"{self.spec.label} · {self.origin}"


def local_clip_models(settings: Settings, workspace_root: Path | None = None) -> list[LocalClip]:
    """Every model with local weights: those the workspace's embeddings were made with, checkpoints with an
    `open_clip_config.json` under the workspace's `models/` folder (the demo's among them), the configured
    checkpoint, and pulled tags in the Hugging Face cache. Weights only, no model is built."""
    import open_clip

    device = settings.clip.device
    found: dict[tuple[str, str | None, str | None], LocalClip] = {}
    checkpoints: set[str] = set()

    def add(spec: ClipSpec, origin: str) -> None:
        spec = replace(spec, device=device)
        ident = (spec.model, None if spec.checkpoint else spec.pretrained, spec.checkpoint)
        if spec.checkpoint and (spec.checkpoint in checkpoints or not Path(spec.checkpoint).is_file()):
            return
        if ident not in found:
            found[ident] = LocalClip(spec, origin)
            if spec.checkpoint:
                checkpoints.add(spec.checkpoint)

    if workspace_root is not None:
        for spec_file in sorted((workspace_root / "embeddings").glob("*/spec.json")):
            try:
                data = json.loads(spec_file.read_text(encoding="utf-8"))
                spec = ClipSpec(**{k: data.get(k) for k in ("model", "pretrained", "checkpoint")})
            except (OSError, ValueError, TypeError):
                continue
            if spec.checkpoint or (spec.pretrained and _tag_is_local(spec)):
                add(spec, "made this workspace's embeddings")
        models_root = workspace_root / "models"
        for sidecar in sorted(models_root.rglob("open_clip_config.json")) if models_root.is_dir() else []:
            weights = _weights_beside(sidecar.parent)
            if weights is not None:
                name = _safe_model_name(sidecar.parent.name)
                add(ClipSpec(model=name, pretrained=None, checkpoint=str(weights.resolve())), "checkpoint in workspace")
    if settings.clip.checkpoint:
        add(ClipSpec.from_settings(settings), "settings: clip.checkpoint")
    for name, tag in open_clip.list_pretrained():
        spec = ClipSpec(model=name, pretrained=tag)
        if _tag_is_local(spec):
            add(spec, "pulled (Hugging Face cache)")
    return list(found.values())


def _tag_is_local(spec: ClipSpec) -> bool:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained or "")
    return bool(cfg) and _cached_file(cfg) is not None


def _weights_beside(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    for pattern in ("*.safetensors", "*.pt", "*.pth", "*.bin"):
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def _safe_model_name(name: str) -> str:
    """A checkpoint folder's name as a model name (a safe name, so ClipSpec takes it)."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).replace("..", "-").strip("._-")[:MAX_NAME_CHARS].rstrip("._-")
    return safe if is_name(safe) else "checkpoint"


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
    def activation(self) -> str:
        return activation_of(self.model)

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    result: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return result


def autocast_for(device: str) -> Any:
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def load_clip(spec: ClipSpec) -> LoadedClip:
    """Load once per process (and per device); later calls return the same model while it stays resident."""
    device = pick_device(spec.device)

    def load() -> LoadedClip:
        weights, cfg = resolve_weights(spec)
        import open_clip

        extra = {k: cfg[k] for k in ("mean", "std") if k in cfg}
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=weights,
            device=device,
            force_quick_gelu=wants_quick_gelu(spec, cfg),
            image_mean=extra.get("mean"),
            image_std=extra.get("std"),
            image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"),
        )
        model.eval()
        return LoadedClip(spec, model, preprocess, open_clip.get_tokenizer(spec.model), device)

    return RESIDENT.get(
        CLIP_FAMILY, (spec.identity(), device), load, lambda _: f"clip {spec.label} on {device}",
        lambda loaded: weight_bytes(loaded.model),
    )  # fmt: skip


def pull_weights(spec: ClipSpec, timeout: float) -> str:
    """Download a pretrained tag's weights into the Hugging Face cache (the only place that downloads), in a
    process of its own that is stopped, and its partial files removed, after `timeout` seconds."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained or "")
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.model)) or "none"
        raise ModelUnavailableError(f"{spec.model} has no pretrained tag {spec.pretrained!r} (tags: {tags})")
    from services.io.pulls import Pull, PullError, check_reachable, hf_repo_folder, run_pull

    what = f"{spec.model}/{spec.pretrained}"
    partial = []
    if cfg.get("hf_hub"):
        partial.append(hf_repo_folder(_hub_repo(cfg["hf_hub"])[0]))
    if cfg.get("url"):  # open_clip writes these straight to their final name: a cut one must go
        partial.append(Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"]))
    try:
        check_reachable(_download_endpoint(cfg))  # seconds, where the hub client would retry for a minute
        return run_pull(Pull(what, ("clip", spec.model, str(spec.pretrained)), tuple(partial)), timeout)
    except PullError as exc:
        raise ModelUnavailableError(
            f"{exc}. This machine cannot download {what}: run `python -m services models pull {what}` on a machine "
            "with internet and copy its Hugging Face cache (~/.cache/huggingface/hub) here, or give a local "
            "checkpoint file (--checkpoint FILE, or pick one in the model list)"
        ) from None


def _download_endpoint(cfg: dict[str, Any]) -> str:
    """Where `download_pretrained` will connect: the Hugging Face endpoint (HF_ENDPOINT) or the tag's URL."""
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    return str(cfg.get("url") or "https://huggingface.co")

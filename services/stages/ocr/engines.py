"""OCR engines behind one interface: find text lines in an RGB image and read them.

- `rapidocr`: detection + recognition with ONNX models shipped inside the package (works offline).
- `tesseract`: Debian's Tesseract through pytesseract; fast, lines grouped from its word boxes.
- `trocr`: Hugging Face TrOCR (`microsoft/trocr-base-printed`, `-large-printed`, `-base-handwritten`, or a
  local folder). TrOCR reads single lines, so RapidOCR's detector finds them first. Weights load from local
  files only (the Hub cache filled by `models pull trocr:ID`, or a folder); absent weights fail at once.

Engines are built once per process and kept (on the GPU for TrOCR when there is one).
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.core.errors import WorkbenchError
from services.core.settings import Settings
from services.io.resident_models import RESIDENT, weight_bytes

log = logging.getLogger(__name__)
ENGINES = ("rapidocr", "tesseract", "trocr")
RAPIDOCR_LOGGER = "RapidOCR"  # rapidocr's own logger (propagate off, its own INFO handler)
OCR_FAMILY = "ocr"  # in services.io.resident_models' registry, beside CLIP


def engine_load_count() -> int:
    """OCR engines built in this process so far."""
    return RESIDENT.load_count(OCR_FAMILY)


def resident_engines() -> list[str]:
    """The OCR engines this process holds now (TrOCR with the size of its weights)."""
    return RESIDENT.held(OCR_FAMILY)


class EngineUnavailableError(WorkbenchError, RuntimeError):
    """The engine cannot run here; the message says how to make it available."""

    error_class = "engine_unavailable"
    http_status = 503


@dataclass
class TextLine:
    text: str
    box: list[int]  # x1, y1, x2, y2 in the image that was read
    confidence: float


class Engine(Protocol):
    name: str

    def read(self, image: np.ndarray) -> list[TextLine]: ...


def _quiet_level(name: str) -> int:
    """The level RapidOCR's logger keeps: what it was set to (by the CLI, say), at least ERROR. Its INFO lines
    name the models it loads; its warnings say "the text detection result is empty" for every image without
    text, which each result already says."""
    return max(logging.getLogger(name).level, logging.ERROR)


def _box(points: Any) -> list[int]:
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    return [int(arr[:, 0].min()), int(arr[:, 1].min()), int(round(arr[:, 0].max())), int(round(arr[:, 1].max()))]


class RapidOcrEngine:
    name = "rapidocr"

    def __init__(self) -> None:
        quiet = _quiet_level(RAPIDOCR_LOGGER)  # read before the engine sets it
        from rapidocr import RapidOCR

        # The default scales every image up to a 736-pixel short side, which made a 40-pixel text line a huge
        # image: 1.5 s a line here. Scaling only large images down is 9x faster and reads the same lines.
        # RapidOCR sets its logger's level from Global.log_level on every construction (default INFO: lines for
        # each model it loads); ask for ERROR, then put back the level the logger had if that was higher.
        params = {"Det.limit_type": "max", "Det.limit_side_len": 1280, "Global.log_level": "error"}
        self._engine = RapidOCR(params=params)
        logging.getLogger(RAPIDOCR_LOGGER).setLevel(quiet)
        self._lock = threading.Lock()  # one ONNX session set; calls are serialised

    def detect(self, image: np.ndarray) -> list[list[int]]:
        with self._lock:
            result = self._engine(image, use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(result, "boxes", None)
        return [] if boxes is None else [_box(b) for b in boxes]

    def read(self, image: np.ndarray) -> list[TextLine]:
        with self._lock:
            result = self._engine(image)
        boxes, texts, scores = (
            getattr(result, "boxes", None),
            getattr(result, "txts", None),
            getattr(result, "scores", None),
        )
        if boxes is None or texts is None:
            return []
        return [TextLine(str(t), _box(b), float(s)) for b, t, s in zip(boxes, texts, scores or [], strict=False)]


class TesseractEngine:
    name = "tesseract"

    def __init__(self) -> None:
        if shutil.which("tesseract") is None:
            raise EngineUnavailableError("tesseract is not installed (Debian: apt-get install tesseract-ocr)")

    def read(self, image: np.ndarray) -> list[TextLine]:
        import pytesseract

        data = pytesseract.image_to_data(image, output_type=pytesseract.Output.DICT, config="--psm 6")
        lines: dict[tuple[int, int, int], list[int]] = {}
        for i, word in enumerate(data["text"]):
            if word.strip() and float(data["conf"][i]) >= 0:
                lines.setdefault((data["block_num"][i], data["par_num"][i], data["line_num"][i]), []).append(i)
        out = []
        for idx in lines.values():
            x1 = min(data["left"][i] for i in idx)
            y1 = min(data["top"][i] for i in idx)
            x2 = max(data["left"][i] + data["width"][i] for i in idx)
            y2 = max(data["top"][i] + data["height"][i] for i in idx)
            text = " ".join(data["text"][i] for i in idx)
            conf = float(np.mean([float(data["conf"][i]) for i in idx])) / 100.0
            out.append(TextLine(text, [x1, y1, x2, y2], conf))
        return out


class TrOcrEngine:
    name = "trocr"

    def __init__(self, model_id: str, max_new_tokens: int = 32, batch_size: int = 16, device: str = "auto") -> None:
        self.processor, self.model = load_trocr(model_id)
        import torch

        self.device = (
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self.model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.detector: RapidOcrEngine | None = None

    def read_crops(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Batched recognition of single-line crops: text and mean token probability."""
        import torch
        from PIL import Image

        out: list[tuple[str, float]] = []
        for start in range(0, len(crops), self.batch_size):
            images = [Image.fromarray(c).convert("RGB") for c in crops[start : start + self.batch_size]]
            pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device)
            with torch.inference_mode():
                generated = self.model.generate(
                    pixels, max_new_tokens=self.max_new_tokens, output_scores=True, return_dict_in_generate=True
                )
            texts = self.processor.batch_decode(generated.sequences, skip_special_tokens=True)
            scores = self.model.compute_transition_scores(generated.sequences, generated.scores, normalize_logits=True)
            for text, row in zip(texts, scores, strict=True):
                finite = row[torch.isfinite(row)]
                conf = float(torch.exp(finite.mean())) if len(finite) else 0.0
                out.append((text.strip(), conf))
        return out

    def read(self, image: np.ndarray) -> list[TextLine]:
        if self.detector is None:
            self.detector = RapidOcrEngine()
        boxes = self.detector.detect(image) or [[0, 0, image.shape[1], image.shape[0]]]  # no lines: read it whole
        crops = [image[max(0, y1) : y2, max(0, x1) : x2] for x1, y1, x2, y2 in boxes]
        return [TextLine(t, b, c) for b, (t, c) in zip(boxes, self.read_crops(crops), strict=True)]


def load_trocr(model_id: str) -> tuple[Any, Any]:
    """Processor and model from a local folder or the local Hub cache; never a download."""
    from transformers import TrOCRProcessor, VisionEncoderDecoderModel

    local = Path(model_id).expanduser()
    source = str(local) if local.is_dir() else model_id
    try:
        processor = TrOCRProcessor.from_pretrained(source, local_files_only=True)
        model = VisionEncoderDecoderModel.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EngineUnavailableError(
            f"no local TrOCR weights for {model_id!r} ({exc.__class__.__name__}); fetch them once with "
            f"`python -m services models pull trocr:{model_id}` on a machine with internet, or give a local folder"
        ) from None
    return processor, model


def build_engine(name: str, settings: Settings) -> Engine:
    """The engine, built once per process (and per TrOCR model) while it stays resident."""
    ocr = settings.ocr
    model = ocr.trocr_model if name == "trocr" else ""

    def build() -> Engine:
        if name == "rapidocr":
            return RapidOcrEngine()
        if name == "tesseract":
            return TesseractEngine()
        if name == "trocr":
            return TrOcrEngine(ocr.trocr_model, ocr.max_new_tokens, ocr.batch_size, ocr.device)
        raise EngineUnavailableError(f"unknown OCR engine {name!r}; engines: {', '.join(ENGINES)}")

    def size(engine: Engine) -> int:
        return weight_bytes(engine.model) if isinstance(engine, TrOcrEngine) else 0

    label = f"ocr {name}" + (f" {model}" if model else "")
    return RESIDENT.get(OCR_FAMILY, (name, model), build, lambda engine: label + _on_device(engine), size)


def _on_device(engine: Engine) -> str:
    device = getattr(engine, "device", None)
    return f" on {device}" if device else ""


def engine_status(settings: Settings) -> dict[str, str | None]:
    """Each engine: None when it can run here, else why not (cheap checks; nothing is loaded)."""
    import importlib.util

    status: dict[str, str | None] = {}
    status["rapidocr"] = (
        None if importlib.util.find_spec("rapidocr") and importlib.util.find_spec("onnxruntime")
        else "pip packages rapidocr and onnxruntime are missing"
    )  # fmt: skip
    status["tesseract"] = (
        None if shutil.which("tesseract") else "tesseract is not installed (apt-get install tesseract-ocr)"
    )
    status["trocr"] = _trocr_status(settings.ocr.trocr_model)
    return status


def _trocr_status(model_id: str) -> str | None:
    local = Path(model_id).expanduser()
    if local.is_dir():
        return None if (local / "config.json").is_file() else f"{local} has no config.json"
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id=model_id, filename="config.json")
    if isinstance(hit, str):
        return None
    return f"no local weights for {model_id}: run `python -m services models pull trocr:{model_id}`"


def resolve_engine(name: str, settings: Settings) -> str:
    """`auto`: TrOCR when its weights are here, else the offline RapidOCR, else Tesseract."""
    status = engine_status(settings)
    if name != "auto":
        if name not in status:
            raise EngineUnavailableError(f"unknown OCR engine {name!r}; engines: {', '.join(ENGINES)}")
        if status[name] is not None:
            raise EngineUnavailableError(f"{name}: {status[name]}")
        return name
    for candidate in ("trocr", "rapidocr", "tesseract"):
        if status[candidate] is None:
            return candidate
    raise EngineUnavailableError("no OCR engine can run here: " + "; ".join(f"{k}: {v}" for k, v in status.items()))


def pull_trocr(model_id: str, timeout: float) -> str:
    """Download a TrOCR model into the Hugging Face cache (the explicit pull; nothing else downloads)."""
    from services.io.pulls import Pull, PullError, hf_repo_folder, run_pull

    try:  # in a process of its own, stopped (partial files removed) at the timeout
        return run_pull(Pull(model_id, ("trocr", model_id), (hf_repo_folder(model_id),)), timeout)
    except PullError as exc:
        raise EngineUnavailableError(str(exc)) from None

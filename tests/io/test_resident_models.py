"""The registry of models a process keeps loaded (issue 18): sizes counted from the weights, one bound on bytes
across CLIP and TrOCR with least-recently-used eviction, and one load for simultaneous asks. Real tiny models
saved to disk and loaded through the product's loaders."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors import safe_open

from services.core.settings import load_settings
from services.io.clip_models import CLIP_FAMILY, ClipSpec, LoadedClip, load_clip
from services.io.resident_models import RESIDENT, weight_bytes
from services.stages.ocr.engines import OCR_FAMILY, build_engine
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip
from tests.support.tiny_trocr import save_tiny_trocr


def _file_tensor_bytes(path: Path) -> tuple[int, set[str]]:
    """Bytes of the tensors a safetensors file holds, read from the file (not from the loaded model)."""
    total, names = 0, set()
    with safe_open(str(path), "pt") as fh:
        for name in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
            tensor = fh.get_tensor(name)
            total += tensor.numel() * tensor.element_size()
            names.add(name)
    return total, names


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    RESIDENT.clear()
    yield
    RESIDENT.clear()
    RESIDENT.set_limits({CLIP_FAMILY: 2}, None)


def _clip(tmp_path: Path, seed: int) -> ClipSpec:
    checkpoint = save_tiny_clip(tmp_path / f"clip{seed}", seed=seed)
    return ClipSpec(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(checkpoint), device="cpu")


def test_a_models_size_is_the_bytes_of_its_weights(
    tmp_path: Path, fresh_registry: None, monkeypatch: pytest.MonkeyPatch
):
    spec = _clip(tmp_path, 0)
    clip = load_clip(spec)
    in_file, names = _file_tensor_bytes(Path(str(spec.checkpoint)))
    not_saved = sum(b.numel() * b.element_size() for n, b in clip.model.named_buffers() if n not in names)
    assert weight_bytes(clip.model) == in_file + not_saved  # the attention mask is a buffer the file leaves out
    folder = save_tiny_trocr(tmp_path / "trocr")
    monkeypatch.setenv("WORKBENCH_OCR__TROCR_MODEL", str(folder))
    engine = build_engine("trocr", load_settings())
    assert weight_bytes(engine.model) == _file_tensor_bytes(folder / "model.safetensors")[0]  # type: ignore[attr-defined]
    held = RESIDENT.held()
    assert len(held) == 2 and held[0].startswith("clip ") and held[1].startswith("ocr trocr")
    assert f"({weight_bytes(clip.model) / 2**20:.1f} MB)" in held[0]


def test_the_bound_on_bytes_unloads_the_least_recently_used_model_of_any_family(
    tmp_path: Path, fresh_registry: None, monkeypatch: pytest.MonkeyPatch
):
    spec = _clip(tmp_path, 0)
    folder = save_tiny_trocr(tmp_path / "trocr")
    monkeypatch.setenv("WORKBENCH_OCR__TROCR_MODEL", str(folder))
    settings = load_settings()
    clip_bytes = weight_bytes(load_clip(spec).model)
    trocr_bytes = weight_bytes(build_engine("trocr", settings).model)  # type: ignore[attr-defined]
    assert RESIDENT.held_bytes() == clip_bytes + trocr_bytes  # both fit while there is no bound
    RESIDENT.set_limits({CLIP_FAMILY: 2}, clip_bytes + trocr_bytes - 1)  # now they do not: CLIP, older, goes
    assert RESIDENT.held() == RESIDENT.held(OCR_FAMILY) and RESIDENT.held_bytes() == trocr_bytes
    clip_loads, ocr_loads = RESIDENT.load_count(CLIP_FAMILY), RESIDENT.load_count(OCR_FAMILY)
    load_clip(spec)  # loaded again; now TrOCR is the least recently used and goes
    assert RESIDENT.load_count(CLIP_FAMILY) == clip_loads + 1 and RESIDENT.held(OCR_FAMILY) == []
    build_engine("rapidocr", settings)  # no PyTorch weights: 0 bytes, so it fits beside CLIP
    assert len(RESIDENT.held()) == 2 and RESIDENT.held_bytes() == clip_bytes
    build_engine("trocr", settings)
    assert RESIDENT.load_count(OCR_FAMILY) == ocr_loads + 2  # rapidocr, and TrOCR a second time
    assert RESIDENT.held_bytes() <= clip_bytes + trocr_bytes - 1


def test_a_model_over_the_bound_alone_is_kept_and_said(
    tmp_path: Path, fresh_registry: None, caplog: pytest.LogCaptureFixture
):
    RESIDENT.set_limits({CLIP_FAMILY: 2}, 1024)
    with caplog.at_level(logging.WARNING, logger="services.io.resident_models"):
        loaded = load_clip(_clip(tmp_path, 0))
    assert load_clip(loaded.spec) is loaded and len(RESIDENT.held()) == 1
    assert any("over the 0.0 MB bound" in r.getMessage() and "kept" in r.getMessage() for r in caplog.records)


def test_simultaneous_asks_for_one_model_load_it_once(tmp_path: Path, fresh_registry: None):
    spec = _clip(tmp_path, 0)
    got: list[LoadedClip] = []
    before = RESIDENT.load_count(CLIP_FAMILY)
    threads = [threading.Thread(target=lambda: got.append(load_clip(spec))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(got) == 4 and all(g is got[0] for g in got)
    assert RESIDENT.load_count(CLIP_FAMILY) == before + 1

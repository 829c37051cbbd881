"""CLIP models a user can pick: the activation a checkpoint runs with, a checkpoint that does not fit its
architecture refused before any job, every local model listed (the demo's checkpoint and pulled tags), and a
pull with no route to the hub failing in seconds with the fix."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.demo.tiny_clip import TINY_CLIP_CONFIG, save_demo_clip
from services.io.clip_models import (
    CheckpointMismatchError,
    ClipSpec,
    ModelUnavailableError,
    activation_note,
    load_clip,
    local_clip_models,
    pull_weights,
    resolve_weights,
)
from services.io.embedding_store import EmbeddingStore, embedding_key
from services.io.resident_models import RESIDENT
from services.jobs.manager import JobManager
from services.stages.describe.categorize_clip import start_zero_shot
from services.stages.embed.stage import start_embed
from tests.conftest import ROOT, free_port
from tests.support.describe_data import colour_dataset

OPENAI_REPO = "models--timm--vit_base_patch32_clip_224.openai"


@pytest.fixture(scope="module")
def vit_b32_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT-B-32 state dict (no real weights exist here) saved as a checkpoint file, in fp16."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("vit") / "vit-b-32-random.safetensors"
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(path))
    del model
    gc.collect()
    return path


@pytest.fixture
def hf_cache(tmp_path: Path, vit_b32_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding ViT-B-32/openai (our random file), laid out as `models pull` leaves it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    snapshot = cache / OPENAI_REPO / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (cache / OPENAI_REPO / "refs").mkdir()
    (cache / OPENAI_REPO / "refs" / "main").write_text("0123abcd")
    (snapshot / "open_clip_model.safetensors").symlink_to(vit_b32_file)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _encode(spec: ClipSpec, image: object) -> tuple[str, str, np.ndarray]:
    """(visual block's activation class, text block's, image features); the model is dropped afterwards."""
    import torch

    loaded = load_clip(spec)
    try:
        visual = type(loaded.model.visual.transformer.resblocks[0].mlp.gelu).__name__
        text = type(loaded.model.transformer.resblocks[0].mlp.gelu).__name__
        with torch.inference_mode():
            features = loaded.model.encode_image(image).numpy()
        return visual, text, features
    finally:
        RESIDENT.clear("clip")
        del loaded
        gc.collect()


def test_a_checkpoint_runs_with_the_activation_its_name_asks_for(vit_b32_file: Path, hf_cache: Path):
    import torch

    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    gelu = _encode(ClipSpec("ViT-B-32", None, str(vit_b32_file), "cpu"), image)
    quick = _encode(ClipSpec("ViT-B-32-quickgelu", None, str(vit_b32_file), "cpu"), image)
    openai = _encode(ClipSpec("ViT-B-32", "openai", None, "cpu"), image)  # the same file, as a pulled tag
    assert gelu[:2] == ("GELU", "GELU")
    assert quick[:2] == ("QuickGELU", "QuickGELU")
    assert openai[:2] == ("QuickGELU", "QuickGELU")  # the tag's config says QuickGELU
    assert np.allclose(quick[2], openai[2], atol=1e-5)  # -quickgelu on the file runs as --pretrained openai
    assert not np.allclose(gelu[2], openai[2], atol=1e-3)  # plain ViT-B-32 on the file is another network
    note = activation_note(ClipSpec("ViT-B-32", None, str(vit_b32_file)))
    assert note is not None and "GELU" in note and "ViT-B-32-quickgelu" in note
    assert "QuickGELU" in str(activation_note(ClipSpec("ViT-B-32-quickgelu", None, str(vit_b32_file))))


def test_quick_gelu_in_a_checkpoints_config_is_honoured(tmp_path: Path):
    plain = save_demo_clip(tmp_path / "plain")
    quick_dir = tmp_path / "quick"
    quick_dir.mkdir()
    (quick_dir / "open_clip_model.safetensors").write_bytes(plain.read_bytes())
    config = {"model_cfg": {**TINY_CLIP_CONFIG, "quick_gelu": True}, "preprocess_cfg": {}}
    (quick_dir / "open_clip_config.json").write_text(json.dumps(config))
    spec = ClipSpec("tiny-quick-test", None, str(quick_dir / "open_clip_model.safetensors"), "cpu")
    try:
        assert type(load_clip(spec).model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
        assert "QuickGELU" in str(activation_note(spec))
        other = ClipSpec("tiny-gelu-test", None, str(plain), "cpu")
        assert type(load_clip(other).model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"
    finally:
        RESIDENT.clear("clip")


def test_a_checkpoint_that_does_not_fit_is_refused_before_any_job(ws: Workspace, tmp_path: Path):
    checkpoint = save_demo_clip(ws.root / "models" / "demo-clip")
    dataset = colour_dataset(ws, tmp_path, ["red", "blue"])
    manager = JobManager(ws)
    jobs_before = ws.catalog.scalar("SELECT COUNT(*) FROM jobs")
    wrong = ClipSpec("ViT-B-32", None, str(checkpoint), "cpu")
    started = time.monotonic()
    with pytest.raises(CheckpointMismatchError) as err:
        resolve_weights(wrong)
    assert time.monotonic() - started < 10  # a file read and a model on the meta device, never a slow load
    message = str(err.value)
    assert "does not fit ViT-B-32" in message and "positional_embedding is 77x64 in the file but 77x512" in message
    assert "open_clip_config.json beside it" in message and "AssertionError" not in message
    with pytest.raises(CheckpointMismatchError):
        start_embed(ws, manager, dataset, wrong)
    from services.stages.describe.categories import save_list

    with pytest.raises(CheckpointMismatchError):
        start_zero_shot(ws, manager, dataset, save_list(ws, "c", ["red", "blue"], "t"), wrong)
    assert ws.catalog.scalar("SELECT COUNT(*) FROM jobs") == jobs_before  # nothing queued
    resolve_weights(ClipSpec("demo-tiny-clip", None, str(checkpoint), "cpu"))  # its own name fits
    cli = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws.root), "embed", "--dataset", dataset,
         "--model", "ViT-B-32", "--checkpoint", str(checkpoint)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 2 and "does not fit ViT-B-32" in cli.stderr and "Traceback" not in cli.stderr


def test_every_local_model_is_listed(ws: Workspace, hf_cache: Path):
    checkpoint = save_demo_clip(ws.root / "models" / "demo-clip")
    found = local_clip_models(ws.settings, ws.root)
    listed = {m.spec.checkpoint or f"{m.spec.model}/{m.spec.pretrained}": m for m in found}
    assert listed[str(checkpoint)].spec.model == "demo-clip"  # named after its folder until it embeds something
    assert "ViT-B-32/openai" in listed and listed["ViT-B-32/openai"].origin == "pulled (Hugging Face cache)"
    # once the demo's embeddings exist, the picker offers it under the name they were made with
    spec = ClipSpec("demo-tiny-clip", None, str(checkpoint), "cpu")
    EmbeddingStore(ws, embedding_key(spec)).write_spec({"model": spec.model, "pretrained": None,
                                                        "checkpoint": spec.checkpoint, "device": "cpu"})  # fmt: skip
    models = local_clip_models(ws.settings, ws.root)
    demo = [m for m in models if m.spec.checkpoint == str(checkpoint)]
    assert [m.spec.model for m in demo] == ["demo-tiny-clip"]
    assert embedding_key(demo[0].spec) == embedding_key(spec)  # so its stored vectors are found
    assert models[0] == demo[0]


@pytest.fixture
def closed_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """HF_ENDPOINT on a loopback port nobody listens on: what a machine without internet looks like."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    yield endpoint


def test_a_pull_without_a_route_fails_in_seconds_with_the_fix(closed_hub: str, ws: Workspace):
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        pull_weights(ClipSpec("ViT-B-32", "openai"), timeout=900)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "cannot reach 127.0.0.1" in message and "copy its Hugging Face cache" in message
    assert "--checkpoint FILE" in message
    started = time.monotonic()
    cli = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws.root), "models", "pull", "ViT-B-32/openai"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 1 and "cannot reach 127.0.0.1" in cli.stderr and "Traceback" not in cli.stderr


def test_the_settings_checkpoint_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    checkpoint = save_demo_clip(tmp_path / "elsewhere")
    monkeypatch.setenv("WORKBENCH_CLIP__CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("WORKBENCH_CLIP__MODEL", "demo-tiny-clip")
    settings = load_settings()
    [listed] = [m for m in local_clip_models(settings, tmp_path / "no-ws") if m.spec.checkpoint]
    assert (listed.spec.model, listed.origin) == ("demo-tiny-clip", "settings: clip.checkpoint")

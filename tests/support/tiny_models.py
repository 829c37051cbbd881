"""Tiny randomly initialised models saved the way users' models are, loaded through the product's loaders."""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_NAME = "tiny-test-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A ~4M-parameter open_clip model as `folder/open_clip_model.safetensors` with its
    `open_clip_config.json` beside it (the Hub layout); returns the checkpoint path."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)  # built directly: the loader must find the config itself
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path

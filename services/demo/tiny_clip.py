"""A tiny randomly initialised open_clip model (about 4M parameters) saved the way real checkpoints are: a
`.safetensors` file with `open_clip_config.json` beside it. The demo workspace uses it so Embed & Train and
Classify run offline; its vectors separate plain colours and shapes, nothing more. Tests use it too."""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_clip_checkpoint(folder: Path, seed: int = 0) -> Path:
    """`folder/open_clip_model.safetensors` + `open_clip_config.json`; returns the checkpoint path."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "open_clip_model.safetensors"
    if path.is_file():
        return path
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}), encoding="utf-8"
    )
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)  # built directly: the loader finds the config itself
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def save_demo_clip(folder: Path) -> Path:
    return save_tiny_clip_checkpoint(folder)

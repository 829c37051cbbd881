"""Tiny randomly initialised models saved the way users' models are, loaded through the product's loaders."""

from __future__ import annotations

from pathlib import Path

from services.demo.tiny_clip import TINY_CLIP_CONFIG, save_tiny_clip_checkpoint

TINY_CLIP_NAME = "tiny-test-clip"
__all__ = ["TINY_CLIP_CONFIG", "TINY_CLIP_NAME", "save_tiny_clip"]


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    return save_tiny_clip_checkpoint(folder, seed)

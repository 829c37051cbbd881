"""Quality flags per image: too dark, too bright, blurry, tiny, extreme aspect ratio, near-uniform.

Measured on a grey copy scaled to a fixed longest side, so the numbers mean the same whatever the image's
resolution (and whether it was decoded at reduced scale).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

MEASURE_SIDE = 256
DARK_MEAN = 40.0
BRIGHT_MEAN = 220.0
BLUR_LAPLACIAN_VAR = 60.0
TINY_SIDE = 64
EXTREME_ASPECT = 5.0
UNIFORM_STD = 4.0
QUALITY_STAGE = "quality"
QUALITY_VERSION = "v1"
FLAGS = ("too_dark", "too_bright", "blurry", "tiny", "extreme_aspect", "near_uniform")


def measure(arr: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """Metrics and flags; `width` and `height` are the original image's, not the (maybe reduced) array's."""
    gray = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = MEASURE_SIDE / max(h, w)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    mean, std = float(gray.mean()), float(gray.std())
    lap_var = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    aspect = max(width, height) / max(1, min(width, height))
    flags: list[str] = []
    if mean < DARK_MEAN:
        flags.append("too_dark")
    if mean > BRIGHT_MEAN:
        flags.append("too_bright")
    if std < UNIFORM_STD:
        flags.append("near_uniform")
    elif lap_var < BLUR_LAPLACIAN_VAR:
        flags.append("blurry")
    if min(width, height) < TINY_SIDE:
        flags.append("tiny")
    if aspect > EXTREME_ASPECT:
        flags.append("extreme_aspect")
    return {
        "mean": round(mean, 2),
        "std": round(std, 2),
        "laplacian_var": round(lap_var, 2),
        "width": width,
        "height": height,
        "aspect": round(aspect, 3),
        "flags": flags,
    }

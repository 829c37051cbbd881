"""The preprocessing operations: each a pure function of a uint8 array (H x W gray or H x W x 3 RGB).

Loading is tolerant by design: EXIF orientation applied, CMYK and 16-bit converted, palette transparency and
alpha composited on white, the first frame of an animation taken. JPEGs are decoded at reduced DCT scale when
the recipe only needs a small image, which is where most of the speed comes from.

Recipes come from users, and some operations make images larger than their input (resize, resize_pad,
rotate with expand, unwarp_arc with pixel points). `apply_recipe` therefore takes a pixel bound, computes each
step's output size before running it (`output_size`) and refuses a step that would pass the bound with
OperationError naming the step, so no recipe allocates more than the bound the caller decodes images with.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from services.core.errors import WorkbenchError
from services.io.imaging import decode_image
from services.stages.preprocess.recipes import (
    Binarize,
    Contrast,
    Crop,
    Denoise,
    Deskew,
    Grayscale,
    Morphology,
    Operation,
    Output,
    Recipe,
    Resize,
    ResizePad,
    Rotate,
    Sharpen,
    UnwarpArc,
)


class OperationError(WorkbenchError):
    """A recipe step that cannot apply to this image (e.g. a crop box outside it)."""

    error_class = "operation"
    http_status = 422


class OutputTooLargeError(OperationError):
    """A recipe step would make an image over the caller's pixel bound (refused before it runs)."""

    error_class = "output_too_large"
    http_status = 413


def load_image(data: bytes, max_pixels: int, draft_side: int | None = None) -> tuple[np.ndarray, int, int]:
    """(array, original width, original height); raises ImageCheckError with a failure class."""
    img, _, width, height = decode_image(data, max_pixels, draft_side)
    return to_array(img), width, height


def to_array(img: Image.Image) -> np.ndarray:
    """uint8 gray or RGB, whatever the mode (16-bit scaled, alpha and palette transparency on white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        return np.clip(arr * (255.0 / (65535.0 if top > 255 else 255.0)), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = (arr.max() - arr.min()) or 1.0
        result: np.ndarray = ((arr - arr.min()) * 255.0 / span).astype(np.uint8)
        return result
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        if img.mode.startswith("L"):
            background = background.convert("L")
        return np.asarray(background, dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _gray(arr: np.ndarray) -> np.ndarray:
    return arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)


def _fill(arr: np.ndarray, rgb: tuple[int, int, int]) -> tuple[int, ...] | int:
    if arr.ndim == 2:
        return int(round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]))
    return tuple(int(c) for c in rgb)


def grayscale(arr: np.ndarray, op: Grayscale) -> np.ndarray:
    return _gray(arr)


def denoise(arr: np.ndarray, op: Denoise) -> np.ndarray:
    if op.method == "median":
        return cv2.medianBlur(arr, op.ksize)
    if op.method == "gaussian":
        return cv2.GaussianBlur(arr, (op.ksize, op.ksize), 0)
    if op.method == "bilateral":
        return cv2.bilateralFilter(arr, op.diameter, op.sigma_color, op.sigma_space)
    if arr.ndim == 2:
        return cv2.fastNlMeansDenoising(arr, None, h=op.strength)
    return cv2.fastNlMeansDenoisingColored(arr, None, op.strength, op.strength)


def contrast(arr: np.ndarray, op: Contrast) -> np.ndarray:
    if op.method == "factor":  # PIL ImageEnhance.Contrast: blend with the mean grey level
        mean = float(_gray(arr).mean())
        out = mean + op.factor * (arr.astype(np.float32) - mean)
        result: np.ndarray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return result
    clahe = cv2.createCLAHE(clipLimit=op.clip_limit, tileGridSize=(op.tile, op.tile))
    if arr.ndim == 2:
        return clahe.apply(arr)
    lab = cv2.cvtColor(arr, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = clahe.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def sharpen(arr: np.ndarray, op: Sharpen) -> np.ndarray:
    blurred = cv2.GaussianBlur(arr, (0, 0), op.sigma)
    return cv2.addWeighted(arr, 1.0 + op.amount, blurred, -op.amount, 0)


def binarize(arr: np.ndarray, op: Binarize) -> np.ndarray:
    gray = _gray(arr)
    if op.method == "otsu":
        return cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    return cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, op.block_size, op.c)


def estimate_skew(arr: np.ndarray) -> float:
    """Angle (degrees, counter-clockwise positive) of the dark content's dominant direction, in (-45, 45]."""
    gray = _gray(arr)
    mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)[1]
    coords = cv2.findNonZero(mask)
    if coords is None or len(coords) < 10:
        return 0.0
    (_, _), (w, h), angle = cv2.minAreaRect(coords)
    if w < h:
        angle -= 90.0
    angle = -angle  # OpenCV's y axis points down
    while angle <= -45.0:
        angle += 90.0
    while angle > 45.0:
        angle -= 90.0
    return float(angle)


def deskew(arr: np.ndarray, op: Deskew) -> np.ndarray:
    angle = estimate_skew(arr)
    if abs(angle) < 0.1 or abs(angle) > op.max_angle:
        return arr
    return rotate(arr, Rotate(angle=-angle, expand=False))


def _expanded_size(matrix: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """(width, height) that holds a `width` x `height` image rotated by `matrix` (cv2's rotation matrix)."""
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    return int(math.ceil(height * sin + width * cos - 1e-6)), int(math.ceil(height * cos + width * sin - 1e-6))


def _rotation(width: int, height: int, angle: float) -> np.ndarray:
    return cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)  # pixel-centre convention


def rotate(arr: np.ndarray, op: Rotate) -> np.ndarray:
    h, w = arr.shape[:2]
    if op.angle % 360 == 0:
        return arr
    matrix = _rotation(w, h, op.angle)
    out_w, out_h = w, h
    if op.expand:
        out_w, out_h = _expanded_size(matrix, w, h)
        matrix[0, 2] += (out_w - w) / 2
        matrix[1, 2] += (out_h - h) / 2
    return cv2.warpAffine(
        arr, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        borderValue=_fill(arr, op.fill),
    )  # fmt: skip


def crop(arr: np.ndarray, op: Crop) -> np.ndarray:
    h, w = arr.shape[:2]
    x1, y1, x2, y2 = op.box
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 <= x1 or y2 <= y1:
        raise OperationError(f"crop box {op.box} lies outside the {w}x{h} image")
    return arr[y1:y2, x1:x2].copy()


def _arc(op: UnwarpArc, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points in pixels, segment vectors, segment lengths) of the arc on a `width` x `height` image."""
    pts = np.array(op.points, dtype=np.float64)
    if op.relative:
        pts = pts * np.array([width - 1, height - 1], dtype=np.float64)
    seg = np.diff(pts, axis=0)
    return pts, seg, np.hypot(seg[:, 0], seg[:, 1])


def _arc_columns(seg_len: np.ndarray) -> int:
    return int(round(float(seg_len.sum()))) + 1


def unwarp_arc(arr: np.ndarray, op: UnwarpArc) -> np.ndarray:
    """Sample a band of `height` pixels centred on the polyline, one output column per pixel of arc length."""
    h, w = arr.shape[:2]
    pts, seg, seg_len = _arc(op, w, h)
    if seg_len.sum() < 1:
        raise OperationError("the arc's points are too close together to unwarp")
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    s = np.arange(_arc_columns(seg_len), dtype=np.float64)
    idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    t = (s - cum[idx]) / np.where(seg_len[idx] == 0, 1, seg_len[idx])
    centre = pts[idx] + seg[idx] * t[:, None]
    tangent = seg[idx] / np.where(seg_len[idx] == 0, 1, seg_len[idx])[:, None]
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)  # points down for a left-to-right line
    offsets = np.arange(op.height, dtype=np.float64) - (op.height - 1) / 2
    map_x = (centre[None, :, 0] + offsets[:, None] * normal[None, :, 0]).astype(np.float32)
    map_y = (centre[None, :, 1] + offsets[:, None] * normal[None, :, 1]).astype(np.float32)
    return cv2.remap(
        arr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=_fill(arr, (255, 255, 255))
    )


def morphology(arr: np.ndarray, op: Morphology) -> np.ndarray:
    kind = cv2.MORPH_OPEN if op.kind == "open" else cv2.MORPH_CLOSE
    return cv2.morphologyEx(arr, kind, np.ones((op.kernel, op.kernel), np.uint8), iterations=op.iterations)


def resize_pad(arr: np.ndarray, op: ResizePad) -> np.ndarray:
    h, w = arr.shape[:2]
    scale = op.size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(arr, (new_w, new_h), interpolation=interp)
    top, left = (op.size - new_h) // 2, (op.size - new_w) // 2
    return cv2.copyMakeBorder(
        resized, top, op.size - new_h - top, left, op.size - new_w - left, cv2.BORDER_CONSTANT,
        value=_fill(arr, op.pad_color),
    )  # fmt: skip


def resize(arr: np.ndarray, op: Resize) -> np.ndarray:
    h, w = arr.shape[:2]
    interp = cv2.INTER_AREA if op.width * op.height < w * h else cv2.INTER_CUBIC
    return cv2.resize(arr, (op.width, op.height), interpolation=interp)


def output(arr: np.ndarray, op: Output) -> np.ndarray:
    return arr


APPLY = {
    "grayscale": grayscale,
    "denoise": denoise,
    "contrast": contrast,
    "sharpen": sharpen,
    "binarize": binarize,
    "deskew": deskew,
    "rotate": rotate,
    "crop": crop,
    "unwarp_arc": unwarp_arc,
    "morphology": morphology,
    "resize_pad": resize_pad,
    "resize": resize,
    "output": output,
}


def apply_op(arr: np.ndarray, op: Operation) -> np.ndarray:
    result: np.ndarray = APPLY[op.op](arr, op)  # type: ignore[operator]
    return result


def output_size(op: Operation, width: int, height: int) -> tuple[int, int]:
    """(width, height) of what `op` makes from a `width` x `height` image, computed without running it."""
    if isinstance(op, Resize):
        return op.width, op.height
    if isinstance(op, ResizePad):
        return op.size, op.size
    if isinstance(op, Rotate) and op.expand and op.angle % 360 != 0:
        return _expanded_size(_rotation(width, height, op.angle), width, height)
    if isinstance(op, UnwarpArc):
        return _arc_columns(_arc(op, width, height)[2]), op.height
    if isinstance(op, Crop):
        x1, y1, x2, y2 = op.box
        return max(0, min(width, x2) - x1), max(0, min(height, y2) - y1)
    return width, height  # every other operation keeps the size (deskew rotates without expanding)


def apply_recipe(arr: np.ndarray, recipe: Recipe, max_pixels: int) -> np.ndarray:
    """The recipe's result; a step whose output would be over `max_pixels` pixels is refused before it runs
    (OutputTooLargeError naming the step), as is any step OpenCV or the operation itself cannot apply."""
    for number, op in enumerate(recipe.ops, start=1):
        height, width = arr.shape[:2]
        out_w, out_h = output_size(op, width, height)
        if out_w * out_h > max_pixels:
            raise OutputTooLargeError(
                f"step {number} ({op.op}): would make a {out_w}x{out_h} image ({out_w * out_h:,} pixels) from "
                f"{width}x{height}, over the {max_pixels:,}-pixel limit"
            )
        try:
            arr = apply_op(arr, op)
        except OperationError as exc:
            raise OperationError(f"step {number} ({op.op}): {exc}") from exc
        except cv2.error as exc:
            raise OperationError(f"step {number} ({op.op}): OpenCV: {str(exc).strip().splitlines()[-1]}") from exc
    return arr


def encode(arr: np.ndarray, out: Output) -> tuple[bytes, str]:
    """(bytes, extension) in the recipe's output format."""
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if out.format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    elif out.format == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, out.quality])
    else:
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, out.quality])
    if not ok:
        raise OperationError(f"could not encode the result as {out.format}")
    return buf.tobytes(), out.format

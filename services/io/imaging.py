"""Image bytes in, facts and derived copies out: decode check, content hash, border resize, placeholder.

Checking that a body is an image means decoding it, not trusting a Content-Type header. JPEGs are decoded
in draft mode (DCT scaling), which still reads every scan, so truncation is caught at a fraction of the cost
of a full decode; the same trick makes the on-the-fly resize cheap.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from services.core.errors import WorkbenchError

EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "MPO": "jpg",
    "ICO": "ico",
    "AVIF": "avif",
}


class ImageCheckError(WorkbenchError):
    """A body that is not a usable image; `error_class` is one of the catalog's failure classes."""

    error_class = "bad_image"
    shows_class = True
    http_status = 422

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


@dataclass(frozen=True)
class CheckedImage:
    hash: str
    format: str
    width: int
    height: int
    nbytes: int
    extension: str
    image: Image.Image  # decoded (possibly at reduced draft scale), RGB or RGBA


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes, max_pixels: int, draft_side: int | None = None, verify_only: bool = False, orient: bool = True
) -> tuple[Image.Image, str, int, int]:
    """Open, refuse oversized images before decoding, decode (first frame; JPEG at reduced DCT scale when
    only `draft_side` pixels are needed on the longest side, or 1/8 scale to `verify_only`), apply EXIF
    orientation (unless not `orient`: the pixels as stored). Returns (image, format, original width, original
    height); raises ImageCheckError."""
    if not data:
        raise ImageCheckError("not_image", "empty body (0 bytes)")
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or "UNKNOWN"
            width, height = img.size
            if width * height > max_pixels:
                raise ImageCheckError(
                    "too_large", f"decompression bomb: {width}x{height} pixels is over the {max_pixels} limit"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            side = max(1, max(width, height) // 8) if verify_only else draft_side
            if side and fmt == "JPEG":
                # draft() picks the largest DCT scale whose result is still >= the requested box
                scale = min(1.0, side / max(width, height))
                img.draft("RGB", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
            img.load()
            if orient:
                img = ImageOps.exif_transpose(img)
    except ImageCheckError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageCheckError("too_large", f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageCheckError("not_image", f"not a decodable image ({_sniff(data)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        cls = "truncated" if "truncated" in text or "broken data stream" in text else "not_image"
        raise ImageCheckError(cls, f"{fmt} decode failed: {text}") from exc
    return img, fmt, width, height


def check_image(data: bytes, max_pixels: int, target_size: int | None = None) -> CheckedImage:
    """Decode `data` enough to prove it is a whole image; reduced-scale decode when `target_size` allows."""
    img, fmt, width, height = decode_image(data, max_pixels, target_size, verify_only=target_size is None)
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    return CheckedImage(
        hash=sha256_hex(data),
        format=fmt,
        width=width,
        height=height,
        nbytes=len(data),
        extension=EXTENSIONS.get(fmt, fmt.lower()),
        image=img,
    )


def border_resize(img: Image.Image, size: int, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Keep the aspect ratio, fit the longest side to `size`, pad to size x size (img2dataset's `border`)."""
    if img.mode != "RGB":
        background = Image.new("RGB", img.size, fill)
        if img.mode == "RGBA":
            background.paste(img, mask=img.getchannel("A"))
        else:
            background.paste(img.convert("RGB"))
        img = background
    fitted = ImageOps.contain(img, (size, size), method=Image.Resampling.LANCZOS)
    return ImageOps.pad(fitted, (size, size), color=fill, centering=(0.5, 0.5))


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def placeholder_jpeg(size: int = 100) -> bytes:
    """Seed 000's stand-in for a failed download: a black square, stored once and marked as a placeholder."""
    return encode_jpeg(Image.new("RGB", (size, size), (0, 0, 0)), quality=90)


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like HTML"
    if head.startswith((b"{", b"[")):
        return "looks like JSON"
    return f"first bytes {data[:8]!r}"

"""Text lines rendered with a Debian font (fonts-dejavu-core), for OCR tests and the OCR benchmark."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def render_line(text: str, size: int = 36, mono: bool = False, noise: float = 0.0, seed: int = 0) -> Image.Image:
    """Black text on white with a margin; `noise` adds speckles and a slight blur."""
    font = ImageFont.truetype(MONO if mono else FONT, size)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 40, bottom - top + 30), "white")
    ImageDraw.Draw(img).text((20 - left, 15 - top), text, fill="black", font=font)
    if noise:
        rng = random.Random(seed)
        pixels = img.load()
        for _ in range(int(noise * img.width * img.height)):
            x, y = rng.randrange(img.width), rng.randrange(img.height)
            pixels[x, y] = (128, 128, 128)
        img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img


def render_png(text: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    render_line(text, **kwargs).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def render_lines(lines: list[str], size: int = 32) -> Image.Image:
    """Several lines stacked, for detection tests."""
    rendered = [render_line(t, size) for t in lines]
    img = Image.new("RGB", (max(r.width for r in rendered), sum(r.height for r in rendered)), "white")
    y = 0
    for r in rendered:
        img.paste(r, (0, y))
        y += r.height
    return img

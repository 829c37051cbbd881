"""Image checks and the border resize, on real encoded images."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.io.imaging import ImageCheckError, border_resize, check_image, placeholder_jpeg, sha256_hex
from tests.support.image_server import make_jpeg, make_png, make_png_bomb


def test_check_jpeg_reports_format_size_hash() -> None:
    data = make_jpeg(640, 480, seed=3)
    checked = check_image(data, max_pixels=10**8)
    assert (checked.format, checked.width, checked.height) == ("JPEG", 640, 480)
    assert checked.extension == "jpg"
    assert checked.hash == sha256_hex(data)
    assert checked.image.width < 640  # decoded at a reduced DCT scale


def test_truncated_jpeg_is_truncated() -> None:
    data = make_jpeg(400, 300, seed=1, noise=True)
    with pytest.raises(ImageCheckError) as info:
        check_image(data[: len(data) // 2], max_pixels=10**8)
    assert info.value.error_class == "truncated"


def test_non_image_and_html_are_not_image() -> None:
    with pytest.raises(ImageCheckError) as info:
        check_image(b"<!DOCTYPE html><html></html>", max_pixels=10**8)
    assert info.value.error_class == "not_image"
    assert "HTML" in info.value.message


def test_bomb_and_pixel_limit_are_too_large() -> None:
    with pytest.raises(ImageCheckError) as info:
        check_image(make_png_bomb(), max_pixels=10**8)
    assert info.value.error_class == "too_large"
    with pytest.raises(ImageCheckError, match="over the 100 limit"):
        check_image(make_jpeg(20, 20), max_pixels=100)


@pytest.mark.parametrize(("w", "h"), [(300, 100), (100, 300), (128, 128), (50, 20)])
def test_border_resize_keeps_aspect_and_pads(w: int, h: int) -> None:
    img = Image.new("RGB", (w, h), (255, 0, 0))
    out = border_resize(img, 64)
    assert out.size == (64, 64)
    scale = 64 / max(w, h)
    content_w, content_h = round(w * scale), round(h * scale)
    # the centre is content (red); a corner is padding (white) unless the image is square
    assert out.getpixel((32, 32))[0] > 200 and out.getpixel((32, 32))[1] < 60
    if content_w < 62 or content_h < 62:
        assert out.getpixel((0, 0)) == (255, 255, 255)


def test_rgba_png_resizes_onto_white() -> None:
    checked = check_image(make_png(40, 30), max_pixels=10**8)
    assert checked.format == "PNG" and checked.extension == "png"
    assert border_resize(checked.image, 32).mode == "RGB"


def test_placeholder_is_a_black_jpeg() -> None:
    img = Image.open(io.BytesIO(placeholder_jpeg(100)))
    assert img.size == (100, 100) and img.getpixel((50, 50)) == (0, 0, 0)


def test_exif_orientation_applied_before_the_resized_copy() -> None:
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees: portrait
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    checked = check_image(buf.getvalue(), max_pixels=10**8, target_size=64)
    assert (checked.width, checked.height) == (200, 100)  # the stored file's own size
    assert checked.image.height > checked.image.width  # what a viewer shows
    out = border_resize(checked.image, 64)
    assert out.getpixel((5, 32)) == (255, 255, 255) and out.getpixel((32, 32))[0] < 30  # padded left and right

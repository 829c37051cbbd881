"""Each preprocessing operation against small synthetic images with known expected output."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from services.io.imaging import ImageCheckError
from services.stages.preprocess.ops import OperationError, apply_op, apply_recipe, encode, estimate_skew, load_image
from services.stages.preprocess.quality import measure
from services.stages.preprocess.recipes import (
    PRESETS,
    Binarize,
    Contrast,
    Crop,
    Denoise,
    Deskew,
    Grayscale,
    Morphology,
    Output,
    Recipe,
    RecipeError,
    Resize,
    ResizePad,
    Rotate,
    Sharpen,
    UnwarpArc,
    parse_recipe,
)


def png_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_grayscale_uses_luma() -> None:
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[..., 0] = 255  # pure red
    out = apply_op(arr, Grayscale())
    assert out.shape == (2, 2) and int(out[0, 0]) == 76  # 0.299 * 255


def test_denoise_median_removes_salt() -> None:
    arr = np.full((9, 9), 100, np.uint8)
    arr[4, 4] = 255
    assert (apply_op(arr, Denoise(method="median", ksize=3)) == 100).all()
    gauss = apply_op(arr, Denoise(method="gaussian", ksize=3))
    assert 100 < gauss[4, 4] < 255 and gauss[0, 0] == 100
    assert apply_op(arr, Denoise(method="bilateral")).shape == (9, 9)
    flat = np.full((16, 16), 80, np.uint8)
    assert (apply_op(flat, Denoise(method="nlmeans")) == 80).all()


def test_contrast_factor_matches_pil_definition() -> None:
    arr = np.array([[100, 200]], np.uint8)  # mean 150
    out = apply_op(arr, Contrast(method="factor", factor=2.0))
    assert out.tolist() == [[50, 250]]
    low = np.tile(np.linspace(100, 140, 64, dtype=np.uint8), (64, 1))
    clahe = apply_op(low, Contrast(method="clahe", clip_limit=4.0, tile=2))
    assert clahe.std() > low.std()


def test_sharpen_increases_edge_step() -> None:
    arr = np.zeros((20, 20), np.uint8)
    arr[:, 10:] = 200
    out = apply_op(arr, Sharpen(amount=1.0, sigma=1.0))
    assert out[10, 10] == 255 and out[10, 9] == 0  # overshoot clipped at both sides of the edge
    assert out[10, 0] == 0 and out[10, 19] == 200


def test_binarize_otsu_and_adaptive() -> None:
    arr = np.array([[10, 20, 200, 210]], np.uint8)
    assert apply_op(arr, Binarize(method="otsu")).tolist() == [[0, 0, 255, 255]]
    page = np.full((40, 40), 220, np.uint8)
    page[18:22, 5:35] = 30  # a dark line of text
    out = apply_op(page, Binarize(method="adaptive", block_size=15, c=10))
    assert (out[20, 10:30] == 0).all() and out[5, 5] == 255


def test_rotate_90_expand_swaps_size_and_moves_pixels() -> None:
    arr = np.zeros((10, 20), np.uint8)
    arr[0, 0] = 255
    out = apply_op(arr, Rotate(angle=90, expand=True, fill=(0, 0, 0)))
    assert out.shape == (20, 10)
    assert np.argwhere(out > 100).tolist() == [[19, 0]]  # counter-clockwise: top-left goes to bottom-left
    same = apply_op(arr, Rotate(angle=45, expand=False))
    assert same.shape == (10, 20)


def test_deskew_recovers_a_known_angle() -> None:
    page = np.full((200, 300), 255, np.uint8)
    cv2.rectangle(page, (40, 90), (260, 110), 0, -1)
    matrix = cv2.getRotationMatrix2D((150, 100), 7.0, 1.0)
    tilted = cv2.warpAffine(page, matrix, (300, 200), borderValue=255)
    assert estimate_skew(tilted) == pytest.approx(7.0, abs=0.6)
    straight = apply_op(tilted, Deskew(max_angle=15))
    assert abs(estimate_skew(straight)) < 0.6
    assert apply_op(tilted, Deskew(max_angle=3)) is tilted  # beyond the allowed angle: untouched


def test_crop_exact_and_outside() -> None:
    arr = np.arange(100, dtype=np.uint8).reshape(10, 10)
    assert apply_op(arr, Crop(box=(2, 3, 5, 6))).tolist() == arr[3:6, 2:5].tolist()
    with pytest.raises(OperationError, match="outside the 10x10 image"):
        apply_op(arr, Crop(box=(20, 20, 30, 30)))


def test_unwarp_straight_line_equals_the_band_and_arc_flattens_a_curve() -> None:
    arr = np.tile(np.arange(50, dtype=np.uint8)[:, None] * 5, (1, 60))  # rows get brighter downwards
    band = apply_op(arr, UnwarpArc(points=[(0, 25), (59, 25)], height=11, relative=False))
    assert band.shape == (11, 60)
    assert band[:, 30].tolist() == arr[20:31, 30].tolist()
    # a curve drawn along a parabola comes out as a horizontal line
    img = np.full((120, 200), 255, np.uint8)
    xs = np.arange(10, 190)
    ys = (60 + ((xs - 100) / 90) ** 2 * 30).astype(int)
    for x, y in zip(xs, ys, strict=True):
        img[y - 1 : y + 2, x] = 0
    pts = [(float(x), float(60 + ((x - 100) / 90) ** 2 * 30)) for x in range(10, 191, 10)]
    flat = apply_op(img, UnwarpArc(points=pts, height=21, relative=False))
    dark_rows = np.where((flat < 128).mean(axis=1) > 0.8)[0]
    assert len(dark_rows) > 0 and set(dark_rows) <= {9, 10, 11}


def test_morphology_open_removes_specks_close_fills_holes() -> None:
    arr = np.zeros((20, 20), np.uint8)
    arr[2, 2] = 255
    arr[8:16, 8:16] = 255
    opened = apply_op(arr, Morphology(kind="open", kernel=3))
    assert opened[2, 2] == 0 and opened[12, 12] == 255
    holed = np.full((20, 20), 255, np.uint8)
    holed[10, 10] = 0
    assert apply_op(holed, Morphology(kind="close", kernel=3))[10, 10] == 255


def test_resize_pad_keeps_aspect_and_pads_with_colour() -> None:
    arr = np.zeros((50, 100, 3), np.uint8)
    out = apply_op(arr, ResizePad(size=40, pad_color=(255, 0, 0)))
    assert out.shape == (40, 40, 3)
    assert out[0, 20].tolist() == [255, 0, 0] and out[20, 20].tolist() == [0, 0, 0]
    assert (out[10:30, :] == 0).all()  # content rows 10..29
    gray = apply_op(np.zeros((50, 100), np.uint8), ResizePad(size=40, pad_color=(255, 255, 255)))
    assert gray[0, 0] == 255
    assert apply_op(arr, Resize(width=30, height=7)).shape == (7, 30, 3)


def test_encode_formats_round_trip() -> None:
    arr = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (10, 1))
    data, ext = encode(arr, Output(format="png"))
    assert ext == "png" and (np.asarray(Image.open(io.BytesIO(data))) == arr).all()
    data, ext = encode(np.dstack([arr] * 3), Output(format="jpg", quality=90))
    assert ext == "jpg" and Image.open(io.BytesIO(data)).format == "JPEG"


@pytest.mark.parametrize(
    ("make", "mode_after"),
    [
        (lambda: Image.new("CMYK", (30, 20), (0, 255, 255, 0)), 3),
        (lambda: Image.fromarray(np.full((20, 30), 40000, np.uint16)), 2),
        (lambda: Image.new("LA", (30, 20), (0, 0)), 2),
    ],
)
def test_loader_converts_odd_modes(make, mode_after) -> None:  # type: ignore[no-untyped-def]
    img = make()
    data = png_bytes(img) if img.mode != "CMYK" else _jpeg(img)
    arr, w, h = load_image(data, 10**8)
    assert (w, h) == (30, 20) and arr.ndim == mode_after and arr.dtype == np.uint8


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def test_loader_16bit_scales_and_palette_transparency_on_white() -> None:
    arr, _, _ = load_image(png_bytes(Image.fromarray(np.full((4, 4), 65535, np.uint16))), 10**8)
    assert arr.max() == 255
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    arr, _, _ = load_image(png_bytes(pal, transparency=0), 10**8)
    assert arr[0, 0].tolist() == [255, 255, 255]


def test_loader_exif_rotation_and_animation_and_bad_bytes() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    arr, w, h = load_image(buf.getvalue(), 10**8)
    assert arr.shape[:2] == (40, 20) and (w, h) == (40, 20)
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    arr, _, _ = load_image(buf.getvalue(), 10**8)
    assert arr[0, 0, 0] > 200  # the first frame
    for data, cls in [(b"", "not_image"), (b"garbage", "not_image")]:
        with pytest.raises(ImageCheckError) as info:
            load_image(data, 10**8)
        assert info.value.error_class == cls
    jpeg = _jpeg(Image.effect_noise((200, 200), 60).convert("RGB"))
    with pytest.raises(ImageCheckError) as info:
        load_image(jpeg[: len(jpeg) // 2], 10**8)
    assert info.value.error_class == "truncated"


def test_loader_refuses_huge_images_before_decoding() -> None:
    from tests.support.image_server import make_png_bomb

    with pytest.raises(ImageCheckError) as info:
        load_image(make_png_bomb(20000), 100_000_000)
    assert info.value.error_class == "too_large"


def test_draft_decode_gives_a_smaller_array_with_original_size() -> None:
    big = Image.effect_noise((1024, 768), 40).convert("RGB")
    arr, w, h = load_image(_jpeg(big), 10**8, draft_side=128)
    assert (w, h) == (1024, 768)
    assert 128 <= max(arr.shape[:2]) < 1024


def test_quality_flags() -> None:
    dark = np.full((100, 100), 10, np.uint8)
    assert measure(dark, 100, 100)["flags"] == ["too_dark", "near_uniform"]
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    assert measure(sharp, 200, 200)["flags"] == []
    board = ((np.arange(256)[:, None] // 16 + np.arange(256)[None, :] // 16) % 2 * 200 + 25).astype(np.uint8)
    assert measure(board, 256, 256)["flags"] == []
    assert measure(cv2.GaussianBlur(board, (0, 0), 4), 256, 256)["flags"] == ["blurry"]
    assert set(measure(sharp[:20, :], 200, 20)["flags"]) >= {"tiny", "extreme_aspect"}
    assert "too_bright" in measure(np.full((50, 50), 250, np.uint8), 50, 50)["flags"]


def test_presets_and_recipe_validation() -> None:
    arr = np.asarray(Image.effect_noise((300, 200), 50).convert("RGB"))
    out = apply_recipe(arr, PRESETS["ocr-128"], 10**8)
    assert out.shape == (128, 128)
    assert PRESETS["ocr-128"].draft_size() == 128
    assert PRESETS["ocr-line"].draft_size() is None  # crop/rotate need full resolution
    photo = np.asarray(Image.effect_noise((3000, 3400), 50).convert("RGB"))
    line = apply_recipe(photo, PRESETS["ocr-line"], 10**8)
    assert line.shape == (160, 575)
    with pytest.raises(OperationError, match=r"step 1 \(crop\)"):
        apply_recipe(arr, PRESETS["ocr-line"], 10**8)  # the seed's crop box lies outside a small image
    with pytest.raises(RecipeError, match="ksize must be odd"):
        parse_recipe('{"name": "x", "ops": [{"op": "denoise", "ksize": 4}]}')
    with pytest.raises(RecipeError):
        parse_recipe('{"name": "../etc", "ops": []}')
    a = Recipe(name="a", ops=[Grayscale()])
    b = Recipe(name="b", ops=[Grayscale()])
    assert a.settings_hash == b.settings_hash != Recipe(name="a", ops=[Grayscale(), Grayscale()]).settings_hash

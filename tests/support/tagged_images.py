"""Tagged images made here: solid-colour PNGs with noise, a folder of tag sub-folders."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

from tests.support.fake_gemini import make_colour_png

TAGS = {"red": "red", "green": "green", "blue": "blue"}
NEGATIVE_COLOURS = ["gray", "black", "white", "orange", "cyan", "magenta", "yellow"]


def png(colour: str, seed: int) -> bytes:
    return make_colour_png(colour, (48, 40), noise_seed=seed)


def tagged_tree(root: Path, per_tag: int = 16) -> Path:
    """red/green/blue folders, other-training negatives, and blue images in a zip inside a zip."""
    for tag in TAGS:
        (root / tag).mkdir(parents=True)
        for i in range(per_tag):
            (root / tag / f"{tag}{i}.png").write_bytes(png(tag, i))
    (root / "other-training").mkdir()
    for i in range(3 * per_tag):
        (root / "other-training" / f"o{i}.png").write_bytes(png(NEGATIVE_COLOURS[i % len(NEGATIVE_COLOURS)], i))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for i in range(per_tag, per_tag + 4):
            zf.writestr(f"blue/zb{i}.png", png("blue", i))
    with zipfile.ZipFile(root / "more.zip", "w") as zf:
        zf.writestr("nested.zip", inner.getvalue())
        zf.writestr("red/zr.png", png("red", 99))
        zf.writestr("../evil.png", png("red", 98))
        zf.writestr("notes.txt", "not an image")
        link = zipfile.ZipInfo("red/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root

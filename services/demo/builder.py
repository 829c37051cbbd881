"""A demo workspace built offline, so a newcomer sees every page with data after `make run`.

Real photos come from scikit-image's bundled samples (astronaut, cat, coffee, rocket, ...), with crops and
flips to make a set; "generated" images are procedural; a tagged folder of coloured shapes trains per-tag
models with a tiny random CLIP model saved into the workspace (demo weights: they separate colours, nothing
more; the pages' CLIP model pickers list it), through the same training as any dataset (standardised
features, C and threshold chosen on validation folds, cross-validated metrics: F1 is sensible, not 0);
rendered serial codes feed OCR; two categorised CSVs in the seeds' format feed Compare.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from services.core import csv_safety
from services.core.workspace import Workspace
from services.stages.describe.categories import save_list

log = logging.getLogger(__name__)

PHOTOS = {  # scikit-image sample -> demo category
    "astronaut.png": "people", "chelsea.png": "animals", "coffee.png": "food", "rocket.jpg": "vehicles",
    "motorcycle_left.png": "vehicles", "horse.png": "animals", "hubble_deep_field.jpg": "nature",
    "retina.jpg": "nature", "brick.png": "objects", "grass.png": "nature", "gravel.png": "nature",
    "coins.png": "objects",
}  # fmt: skip
CATEGORIES = ["people", "animals", "food", "vehicles", "nature", "objects"]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def _sample_photos() -> list[tuple[str, Image.Image]]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in PHOTOS:
        if (folder / name).is_file():
            with Image.open(folder / name) as img:
                out.append((name, img.convert("RGB")))
    return out


def _real_set(target: Path, per_photo: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Crops, flips and resizes of the sample photos as JPEGs; (file name, category)."""
    target.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, img in _sample_photos():
        for k in range(per_photo):
            w, h = img.size
            scale = rng.uniform(0.6, 1.0)
            cw, ch = int(w * scale), int(h * scale)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            variant = img.crop((x, y, x + cw, y + ch))
            variant = ImageOps.mirror(variant) if k % 2 else variant
            variant.thumbnail((512, 512))
            file = f"{Path(name).stem}-{k}.jpg"
            variant.save(target / file, "JPEG", quality=88)
            rows.append((file, PHOTOS[name]))
    return rows


def _generated_set(target: Path, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Procedural images (gradients, blobs, shapes) as PNGs; their 'category' skews to people and objects."""
    target.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        size = 384
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = np.stack([np.sin(6 * xx + i) * 0.5 + 0.5, yy, np.cos(5 * yy * xx + i) * 0.5 + 0.5], axis=-1)
        img = Image.fromarray((base * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x, y, r = (int(v) for v in rng.integers(20, size - 20, 3) // (1, 1, 4))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        file = f"gen-{i:03d}.png"
        img.save(target / file)
        rows.append((file, str(rng.choice(CATEGORIES, p=[0.35, 0.1, 0.1, 0.1, 0.1, 0.25]))))
    return rows


def _tagged_set(target: Path, per_tag: int, rng: np.random.Generator) -> None:
    colours = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 220)}
    for tag, colour in colours.items():
        (target / tag).mkdir(parents=True, exist_ok=True)
        for i in range(per_tag):
            img = Image.new("RGB", (96, 96), tuple(int(c) for c in rng.integers(200, 255, 3)))
            r = int(rng.integers(20, 40))
            ImageDraw.Draw(img).rectangle((48 - r, 48 - r, 48 + r, 48 + r), fill=colour)
            img.save(target / tag / f"{tag}-{i}.png")
    (target / "other-training").mkdir(parents=True, exist_ok=True)
    for i in range(per_tag * 2):  # negatives: grey shapes on grey, no tag colour
        grey = int(rng.integers(60, 230))
        img = Image.new("RGB", (96, 96), (grey, grey, grey))
        shade = int(rng.integers(0, 255))
        r = int(rng.integers(20, 40))
        ImageDraw.Draw(img).ellipse((48 - r, 48 - r, 48 + r, 48 + r), fill=(shade, shade, shade))
        img.save(target / "other-training" / f"other-{i}.png")


def _ocr_set(target: Path, n: int, rng: np.random.Generator) -> None:
    target.mkdir(parents=True, exist_ok=True)
    font = ImageFont.truetype(FONT, 40) if os.path.exists(FONT) else ImageFont.load_default()
    for i in range(n):
        code = "25" + "".join(str(int(d)) for d in rng.integers(0, 10, 9))
        printed = code.replace("0", "O", 1) if i % 3 == 0 else code  # a look-alike the seed-003 rules repair
        img = Image.new("RGB", (420, 90), "white")
        ImageDraw.Draw(img).text((20, 20), printed, fill="black", font=font)
        img.save(target / f"part-{i:02d}.png")


def _categorised_csv(path: Path, rows: list[tuple[str, str]], rng: np.random.Generator) -> Path:
    with csv_safety.open_for_write(path) as writer:
        writer.writerow(["image_name", "description", "categories"])
        for name, category in rows:
            extra = rng.choice(CATEGORIES) if rng.random() < 0.25 else None
            cats = category if extra in (None, category) else f"{category}, {extra}"
            writer.writerow([name, f"A demo image ({category}).", cats])
    return path


def build_demo(ws: Workspace, small: bool = False, progress: Callable[[str], None] = log.info) -> dict[str, object]:
    """Build the demo into `ws` (idempotent: rerunning adds nothing twice); returns what was made."""
    from services.demo.tiny_clip import save_demo_clip
    from services.io.clip_models import ClipSpec
    from services.io.embedding_store import embedding_key
    from services.jobs.manager import JobManager
    from services.stages.classify.stage import resolve_models, start_classify
    from services.stages.compare.label_sets import import_categorized_csv
    from services.stages.download.folder_import import start_folder_import
    from services.stages.embed.stage import start_embed
    from services.stages.train.stage import start_training

    rng = np.random.default_rng(0)
    src = ws.root / "demo-src"
    manager = JobManager(ws)
    progress("writing demo images")
    real_rows = _real_set(src / "REAL", 1 if small else 3, rng)
    gen_rows = _generated_set(src / "GEN", 12 if small else 36, rng)
    _tagged_set(src / "tagged", 16 if small else 30, rng)
    _ocr_set(src / "ocr", 6 if small else 12, rng)
    for name in ("REAL", "GEN", "tagged", "ocr"):
        progress(f"importing {name}")
        manager.run(start_folder_import(ws, manager, src / name, f"demo-{name}", kind=name))
    save_list(ws, "demo-categories", CATEGORIES, "demo")
    progress("importing categorised CSVs for Compare")
    import_categorized_csv(ws, _categorised_csv(src / "REAL_demo.csv", real_rows, rng), "REAL-categorised")
    import_categorized_csv(ws, _categorised_csv(src / "GEN_demo.csv", gen_rows, rng), "GEN-categorised")
    progress("embedding and training with the demo CLIP model")
    checkpoint = save_demo_clip(ws.root / "models" / "demo-clip")
    spec = ClipSpec(model="demo-tiny-clip", pretrained=None, checkpoint=str(checkpoint), device="cpu")
    manager.run(start_embed(ws, manager, "demo-tagged", spec, loader_workers=0))
    manager.run(start_training(ws, manager, "demo-tagged", embedding_key(spec), types=["lr", "svm"], test_size=0.25))
    progress("classifying the generated set")
    manager.run(start_classify(ws, manager, "demo-GEN", resolve_models(ws, None, "demo-tagged")))
    return {"workspace": str(ws.root), "checkpoint": str(checkpoint), "datasets": 4, "label_sets": 2}

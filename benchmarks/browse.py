"""Explore's Browse view at a million catalogued images (issue 20): each filter, sort and page turn timed.

    python benchmarks/browse.py [--n 1000000] [--reruns 3] [--out benchmarks/results/browse.json] [--keep DIR]

A workspace with one dataset of N images, written in bulk through the catalog's own tables and triggers (the
counters a page reads are kept as an import keeps them): a folder tag per image (10 tags), formats JPEG/PNG/WEBP,
sizes 64-4096 px, a classifier score for every image, a quality flag on 1 in 7, 1,000 images chosen to drop,
two Gemini categories and a description for every image, an OCR reading for 1 in 10.
Timed: `browse()` (the count and one page of 24, what the view runs per change) for each filter and sort alone,
a combination, and a page turn deep into the set; the median of `--reruns` runs after one warm-up.

A second dataset, `extra`, holds N/10 images: half of them big's too (the same stored images), half its own;
the "several datasets" and "whole catalog" cases read both, each image once.

Goal (issue 20): every filter change and page turn under 1 s at 1,000,000 images (the view's query is what
grows with N; its widgets do not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_description  # noqa: E402
from services.core.datasets import ensure_dataset  # noqa: E402
from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.stages.explore.browse import BrowseFilter, browse  # noqa: E402

BATCH = 50_000
TAGS = [f"tag-{i}" for i in range(10)]
MODEL = "e" * 64


CATEGORIES = ["people", "animals", "food", "vehicles", "nature", "objects"]
WORDS = [f"word{j:02d}" for j in range(50)]


def _results(image_hash: str, i: int, now: float) -> list[tuple[str, str, str, str, float]]:
    """What Describe, Categorize and OCR would have recorded: two Gemini categories and a description for every
    image, an OCR reading for 1 in 10 (a third of them valid)."""
    cats = json.dumps({"categories": [CATEGORIES[i % 6], CATEGORIES[(i * 7 + 1) % 6]]})
    text = {"summary": f"Photo {i} of a {WORDS[i % 50]}", "objects": [{"name": WORDS[(i * 3) % 50], "count": 1}]}
    rows = [
        (image_hash, "categorize:gemini", "g", cats, now),
        (image_hash, "describe", "d", json.dumps({"description": text}), now),
    ]
    if i % 10 == 0:
        rows.append((image_hash, "ocr", "o", json.dumps({"code": f"{i:011d}", "valid": i % 3 == 0}), now))
    return rows


def build(ws: Workspace, n: int, stage_results: bool = True) -> None:
    now = time.time()
    ds = ensure_dataset(ws.catalog, "big", "import", "/data/big", ["path"])
    for start in range(0, n, BATCH):
        part = range(start, min(n, start + BATCH))
        hashes = [f"{i:064x}" for i in part]
        with ws.catalog.write() as conn:
            conn.executemany(
                "INSERT INTO images (hash, format, bytes, width, height, path, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(h, ("JPEG", "PNG", "WEBP")[i % 3], 10_000 + (i * 7919) % 900_000, 64 + (i * 31) % 4033,
                  64 + (i * 17) % 4033, f"images/{h[:2]}/{h}.jpg", now) for h, i in zip(hashes, part, strict=True)],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO dataset_members (dataset_id, image_hash, seq, name, file_name) VALUES (?, ?, ?, ?, ?)",
                [(ds.id, h, i, f"/data/big/{TAGS[i % 10]}/img-{i:07d}.jpg", f"img-{i:07d}.jpg")
                 for h, i in zip(hashes, part, strict=True)],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO dataset_member_tags (dataset_id, tag, image_hash) VALUES (?, ?, ?)",
                [(ds.id, TAGS[i % 10], h) for h, i in zip(hashes, part, strict=True)],
            )
            conn.executemany(
                "INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(h, MODEL, "model-logreg-tag-tag-0", "tag-0", ((i * 7349) % 1000) / 1000, now)
                 for h, i in zip(hashes, part, strict=True)],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO image_flags (settings_hash, flag, image_hash) VALUES ('q', 'blurry', ?)",
                [(h,) for h, i in zip(hashes, part, strict=True) if i % 7 == 0],
            )
            if stage_results:
                conn.executemany(
                    "INSERT INTO stage_results (image_hash, stage, settings_hash, status, result, updated_at) "
                    "VALUES (?, ?, ?, 'ok', ?, ?)",
                    [row for h, i in zip(hashes, part, strict=True) for row in _results(h, i, now)],
                )
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT INTO duplicate_choices (image_hash, choice, decided_by, decided_at) VALUES (?, 'drop', 'b', ?)",
            [(f"{i:064x}", now) for i in range(0, n, max(1, n // 1000))],
        )


def build_extra(ws: Workspace, n: int) -> None:
    """Dataset `extra`: N/10 images, every other one of big's (shared) and as many of its own, tagged."""
    now = time.time()
    ds = ensure_dataset(ws.catalog, "extra", "GEN", "/data/extra", ["path"])
    own = range(n, n + n // 20)
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT INTO images (hash, format, bytes, width, height, path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(f"{i:064x}", "PNG", 5_000 + i % 1000, 512, 512, f"images/{i:064x}.png", now) for i in own],
        )
        members = [*range(0, n, 20), *own]  # big's every 20th image, then its own
        conn.executemany(
            "INSERT INTO dataset_members (dataset_id, image_hash, seq, name, file_name) VALUES (?, ?, ?, ?, ?)",
            [
                (ds.id, f"{i:064x}", seq, f"/data/extra/x-{i:07d}.png", f"x-{i:07d}.png")
                for seq, i in enumerate(members)
            ],
        )
        conn.executemany(
            "INSERT INTO dataset_member_tags (dataset_id, tag, image_hash) VALUES (?, ?, ?)",
            [(ds.id, TAGS[i % 10], f"{i:064x}") for i in members],
        )


CASES: dict[str, tuple[dict[str, Any], int]] = {  # name -> (filter fields, page)
    "first page, input order": ({}, 1),
    "page turn deep (page 20,000)": ({}, 20_000),
    "folder tags (2 of 10)": ({"tags": ("tag-3", "tag-7")}, 1),
    "format PNG": ({"formats": ("PNG",)}, 1),
    "width and height >= 2000": ({"min_width": 2000, "min_height": 2000}, 1),
    "name contains": ({"name_contains": "img-00123"}, 1),
    "quality flag": ({"flag": "blurry"}, 1),
    "score >= 0.9": ({"score_model": MODEL, "min_score": 0.9}, 1),
    "kept (not dropped)": ({"choice": "kept"}, 1),
    "dropped": ({"choice": "dropped"}, 1),
    "sort by name": ({"sort": "name"}, 1),
    "sort by most pixels": ({"sort": "most pixels"}, 1),
    "sort by largest file": ({"sort": "largest file"}, 1),
    "sort by highest score": ({"score_model": MODEL, "sort": "highest score"}, 1),
    "tags + PNG + score >= 0.5, by score": (
        {"tags": ("tag-1",), "formats": ("PNG",), "score_model": MODEL, "min_score": 0.5, "sort": "highest score"},
        1,
    ),
    "Gemini category": ({"category": "vehicles"}, 1),
    "description contains a word": ({"description_contains": "word07"}, 1),
    "OCR valid": ({"ocr": "valid"}, 1),
    "OCR code contains": ({"ocr_code_contains": "00012"}, 1),
    "Gemini category + tags, by name": ({"category": "food", "tags": ("tag-2",), "sort": "name"}, 1),
    "two datasets: first page": ({"datasets": ("big", "extra")}, 1),
    "two datasets: page turn deep (page 20,000)": ({"datasets": ("big", "extra")}, 20_000),
    "two datasets: folder tag": ({"datasets": ("big", "extra"), "tags": ("tag-3",)}, 1),
    "whole catalog: first page": ({"datasets": ()}, 1),
    "whole catalog: format PNG": ({"datasets": (), "formats": ("PNG",)}, 1),
    "whole catalog: Gemini category": ({"datasets": (), "category": "vehicles"}, 1),
    "kind GEN: first page": ({"datasets": (), "kinds": ("GEN",)}, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "browse.json")
    parser.add_argument("--only", default="", help="Only the cases whose name holds this text.")
    parser.add_argument("--keep", type=Path, help="Build the workspace in this folder and keep it; reuse it if there.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)) / "ws"
        built = args.keep is not None and (root / "catalog.sqlite").is_file()
        ws = Workspace(root, load_settings(), allow_new_catalog=not built)
        started = time.perf_counter()
        if not built:
            build(ws, args.n)
            build_extra(ws, args.n)
        print(f"{args.n:,} images catalogued in {time.perf_counter() - started:.0f} s", flush=True)
        rows = []
        for name, (fields, page) in CASES.items():
            if args.only not in name:
                continue
            f = BrowseFilter(**({"datasets": ("big",)} | fields))
            browse(ws, f, (page - 1) * 24, 24)  # warm-up (SQLite's page cache, as a page's earlier run leaves it)
            times = []
            for _ in range(args.reruns):
                t = time.perf_counter()
                found, total = browse(ws, f, (page - 1) * 24, 24)
                times.append(time.perf_counter() - t)
            rows.append({"case": name, "matching": total, "shown": len(found), "median_s": statistics.median(times),
                         "max_s": max(times)})  # fmt: skip
            print(f"{name:<40} {total:>9,} {statistics.median(times):>8.3f} s", flush=True)
        ws.close()
    print(f"\n{'case':<40} {'matching':>9} {'median s':>9} {'max s':>7}")
    for r in rows:
        print(f"{r['case']:<40} {r['matching']:>9,} {r['median_s']:>9.3f} {r['max_s']:>7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_description(), "n": args.n, "cases": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

"""Preprocess benchmark: the `ocr-128` recipe as a job against two plain loops, side by side in one run.

    python benchmarks/preprocess.py [--n 2000] [--rounds 2] [--workers 2]

N photo-like JPEGs of about 1 MP are imported into a fresh workspace (not timed). Then, in alternating order:
  - workbench: `python -m services preprocess --dataset photos --recipe ocr-128 --workers W` (whole command:
    job, catalog, quality flags, outputs), after clearing earlier results so every image is processed;
  - (a) a bare OpenCV loop on all cores: imread -> resize to 128x128 -> imwrite PNG (multiprocessing Pool);
  - (b) a single-process PIL loop like seed 000: open -> grey -> pad to 128x128 -> median filter -> save PNG.
Goals (issue #3): workbench >= 0.8x of (a) and >= 1.8x of (b).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from PIL import Image, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, n: int, seed: int = 0) -> int:
    """N unique ~1 MP JPEGs: 32 photo-like bases, each copy made unique by a JPEG comment segment."""
    rng = np.random.default_rng(seed)
    bases = []
    for _ in range(32):
        coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((1152, 864), Image.BICUBIC)
        fine = Image.fromarray(rng.integers(0, 256, (864, 1152, 3), dtype=np.uint8))
        buf = io.BytesIO()
        Image.blend(coarse, fine, 0.08).save(buf, format="JPEG", quality=88)
        bases.append(buf.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        data = bases[i % len(bases)]
        comment = f"photo {i}".encode()
        unique = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
        (folder / f"{i:05d}.jpg").write_bytes(unique)
        total += len(unique)
    return total // n


def _opencv_one(args: tuple[str, str]) -> None:
    src, dst = args
    img = cv2.imread(src, cv2.IMREAD_COLOR)
    cv2.imwrite(dst, cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA))


def opencv_loop(files: list[Path], out: Path, workers: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with Pool(workers) as pool:
        pool.map(_opencv_one, [(str(f), str(out / f"{f.stem}.png")) for f in files], chunksize=16)
    return time.perf_counter() - started


def pil_loop(files: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for f in files:
        img = Image.open(f).convert("L")
        img = ImageOps.pad(img, (128, 128), color=255).filter(ImageFilter.MedianFilter(3))
        img.save(out / f"{f.stem}.png")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preprocess.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    avg = make_photos(tmp / "photos", args.n)
    ws = tmp / "ws"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "services", "--workspace", str(ws)]
    subprocess.run([*cli, "download", "folder", str(tmp / "photos"), "--workers", "2"], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    files = sorted((ws / "images").rglob("*.jpg"))
    print(f"{len(files)} photos of {avg / 1000:.0f} kB, {args.workers} workers", flush=True)

    def workbench() -> float:
        import sqlite3

        with sqlite3.connect(ws / "catalog.sqlite") as conn:
            conn.execute("DELETE FROM stage_results")
            conn.execute("DELETE FROM derived_images")
        shutil.rmtree(ws / "derived", ignore_errors=True)
        started = time.perf_counter()
        subprocess.run([*cli, "preprocess", "--dataset", "photos", "--recipe", "ocr-128", "--workers",
                        str(args.workers)], cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
        wall = time.perf_counter() - started
        made = sum(1 for _ in (ws / "derived").rglob("*.png"))
        assert made == len(files), f"workbench made {made} of {len(files)}"
        return wall

    runs: dict[str, list[float]] = {
        "workbench ocr-128": [],
        "(a) OpenCV loop, all cores": [],
        "(b) PIL loop, 1 process": [],
    }
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            shutil.rmtree(tmp / "out", ignore_errors=True)
            if name.startswith("workbench"):
                wall = workbench()
            elif name.startswith("(a)"):
                wall = opencv_loop(files, tmp / "out", args.workers)
            else:
                wall = pil_loop(files, tmp / "out")
            runs[name].append(len(files) / wall)
            print(f"round {r + 1}: {name:<30} {len(files) / wall:8.1f} img/s", flush=True)

    best = {name: max(v) for name, v in runs.items()}
    print(f"\n{'loop':<32}{'images/s (best)':>16}")
    for name, value in best.items():
        print(f"{name:<32}{value:>16.1f}")
    ours = best["workbench ocr-128"]
    ratio_a = ours / best["(a) OpenCV loop, all cores"]
    ratio_b = ours / best["(b) PIL loop, 1 process"]
    print(f"\nworkbench / (a): {ratio_a:.2f}x (goal >= 0.8x)   workbench / (b): {ratio_b:.2f}x (goal >= 1.8x)")
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "n": len(files),
        "avg_image_bytes": avg,
        "workers": args.workers,
        "runs_images_per_s": runs,
        "best_images_per_s": best,
        "ratio_vs_opencv_loop": ratio_a,
        "ratio_vs_pil_loop": ratio_b,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

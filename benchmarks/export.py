"""Export benchmark (issue 19): images per second for each format, on one dataset of N small images.

    python benchmarks/export.py [--n 100000] [--tags 10] [--shard-size 1000] [--formats imagefolder,hf,...]

N distinct 32x32 PNGs in `--tags` tag folders are imported into a fresh workspace (not timed), then exported
to each format by the `export` job, in this process. Side by side in the same run, the floor every format
pays: a plain copy of the same stored files with `shutil.copyfile` (the ratio says what the format costs on
top of moving the bytes). Goal (issue 19): figures recorded for 100,000 images; the round trips are checked
in the tests, and here by counting what each export holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.datasets import dataset_entries  # noqa: E402
from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.jobs.manager import JobManager  # noqa: E402
from services.stages.download.folder_import import start_folder_import  # noqa: E402
from services.stages.export.stage import start_export  # noqa: E402


def make_tree(root: Path, n: int, tags: int) -> None:
    rng = np.random.default_rng(0)
    for t in range(tags):
        (root / f"tag{t:02d}").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"tag{i % tags:02d}" / f"img{i:06d}.png", compress_level=1)


def count_outputs(fmt: str, out: Path) -> int:
    """Images the export holds, read back by the format's own reader (pyarrow for Parquet, tarfile for tars)."""
    if fmt in ("imagefolder", "seed000"):
        return sum(1 for p in out.rglob("*.png"))
    if fmt == "hf":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "data").glob("*.parquet"))
    import tarfile

    return sum(sum(1 for m in tarfile.open(p) if m.name.endswith(".png")) for p in out.glob("*.tar"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--formats", default="imagefolder,hf,webdataset,seed000")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        make_tree(folder / "tree", args.n, args.tags)
        ws = Workspace(folder / "ws", load_settings())
        manager = JobManager(ws)
        manager.run(start_folder_import(ws, manager, folder / "tree", "bench", workers=0))
        entries = dataset_entries(ws, "bench")
        print(f"{len(entries)} images made and imported in {time.perf_counter() - started:.0f} s")

        started = time.perf_counter()  # the floor: the same stored files copied, one call each
        (folder / "copy").mkdir()
        for image_hash, rel, _ in entries:
            shutil.copyfile(ws.abspath(rel), folder / "copy" / f"{image_hash}.png")
        floor = time.perf_counter() - started
        shutil.rmtree(folder / "copy")

        rows: dict[str, dict[str, float]] = {}
        for fmt in args.formats.split(","):
            out = folder / f"out-{fmt}"
            started = time.perf_counter()
            progress = manager.run(start_export(ws, manager, "bench", fmt, out, shard_size=args.shard_size))
            seconds = time.perf_counter() - started
            held = count_outputs(fmt, out)
            rows[fmt] = {"seconds": round(seconds, 2), "images_per_s": round(len(entries) / seconds),
                         "vs_plain_copy": round(seconds / floor, 2), "images_read_back": held,
                         "state": progress.state}  # fmt: skip
            shutil.rmtree(out)
        ws.close()

    print(f"\nExport of {args.n} images ({args.tags} tags, shards of {args.shard_size}); plain copy {floor:.1f} s")
    print(f"{'format':>12} | {'seconds':>8} | {'images/s':>9} | {'x plain copy':>12} | read back")
    for fmt, row in rows.items():
        print(f"{fmt:>12} | {row['seconds']:>8.1f} | {row['images_per_s']:>9} | {row['vs_plain_copy']:>12.2f} | "
              f"{row['images_read_back']}")  # fmt: skip
    goals = {f"{fmt}: every image read back": row["images_read_back"] == args.n for fmt, row in rows.items()}
    for goal, met in goals.items():
        print(f"{goal}: {'met' if met else 'NOT met'}")
    result = {
        "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "n": args.n, "tags": args.tags,
        "shard_size": args.shard_size, "plain_copy_s": round(floor, 2), "formats": rows, "goals": goals,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

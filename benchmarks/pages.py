"""Every page and every list command at growing catalog sizes, side by side in one run (issue 16).

    python benchmarks/pages.py [--sizes 10000 100000 1000000] [--reruns 5] [--out benchmarks/results/pages.json]

For each size N a workspace is built through the product's catalog layer in bulk (timed, not a goal):
- `photos`: a URL CSV's dataset of N rows and one completed download job with N ok items and N images. The
  images point at 64 real PNG files (N rows cannot each have a file in a benchmark; pages that open a sample or
  a preview read real files, and nothing else opens one). Quality flags (about 1 in 7 flagged) and the
  `ocr-128` recipe's outputs for every image; Gemini descriptions for N/10 images.
- `tagged`: a folder import of N/10 images (at least 2,000) in folders of 1,000 (one tag per folder, the issue's
  second workspace), with 8-wide vectors for all of them under the default CLIP model's key; two of its tags
  trained by the real train job (both model types), and their scores for every photo (what a classify run of
  `photos` leaves).
- `REAL` and `GEN`: two categorised CSVs of N/10 rows each imported as label sets for Compare.

Timed: migration 5 on the same catalog taken back to schema 4 (an existing workspace's first open after the
upgrade; not a goal). Each page through Streamlit's AppTest in a fresh session (the Home page runs first, as a browser
opening the app would; the page's own first run is timed) and the median of `--reruns` reruns; the CLI's list
commands in a fresh process each (`python -m services ...`, Python's start included, as a user types them).

Goals (issue 16): at 1M images every page's first run under 1.5 s and rerun under 0.5 s; `datasets list`
under 1 s; from the smallest to the largest size every page's time grows by less than 2x.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_description  # noqa: E402

PAGES = {
    "Home": None,
    "Download": "app_pages/download.py",
    "Preprocess": "app_pages/preprocess.py",
    "Describe & Categorize": "app_pages/describe.py",
    "Embed & Train": "app_pages/embed_train.py",
    "Classify": "app_pages/classify.py",
    "OCR": "app_pages/ocr.py",
    "Compare": "app_pages/compare.py",
}
LIST_COMMANDS = {
    "datasets list": ["datasets", "list"],
    "jobs list": ["jobs", "list"],
    "tag-models": ["tag-models"],
    "categories list": ["categories", "list"],
    "recipes list": ["recipes", "list"],
    "workspace info": ["workspace", "info"],
}
BATCH = 50_000
FOLDER_SIZE = 1_000
SHARED_FILES = 64
CATEGORIES = [f"category-{c:02d}" for c in range(12)]


def fake_hash(kind: str, i: int) -> str:
    return hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()


def _shared_pngs(ws: Any) -> list[str]:
    """64 small real images the rows point at, as workspace-relative paths."""
    import numpy as np
    from PIL import Image

    folder = ws.root / "images" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(SHARED_FILES):
        pixels = (rng.random((96, 128, 3)) * 255 * (0.3 + k / SHARED_FILES)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:02d}.png")
        paths.append(f"images/bench/{k:02d}.png")
    return paths


def _download_job(
    ws: Any, dataset_id: int, kind: str, params: dict[str, Any], n: int, prefix: str, paths: list[str]
) -> list[str]:
    """A completed job whose N items are ok, with their images: what a finished download or import leaves."""
    now = time.time()
    with ws.catalog.write() as conn:
        cur = conn.execute(
            "INSERT INTO jobs (kind, title, dataset_id, params, state, created_at, finished_at, n_total, n_ok, planned)"
            " VALUES (?, ?, ?, ?, 'completed', ?, ?, ?, ?, 1)",
            (kind, f"bench: {params['dataset']}", dataset_id, json.dumps(params), now, now, n, n),
        )
        job_id = int(cur.lastrowid or 0)
    hashes = []
    for start in range(0, n, BATCH):
        part = range(start, min(n, start + BATCH))
        batch_hashes = [fake_hash(prefix, i) for i in part]
        hashes += batch_hashes
        with ws.catalog.write() as conn:
            conn.executemany(
                "INSERT INTO images (hash, format, bytes, width, height, path, created_at) "
                "VALUES (?, 'PNG', 40000, 128, 96, ?, ?)",
                [(h, paths[i % len(paths)], now) for h, i in zip(batch_hashes, part, strict=True)],
            )
            conn.executemany(  # pending first, then ok: the path a real run takes (the catalog's triggers)
                "INSERT INTO job_items (job_id, item_key, seq, status) VALUES (?, ?, ?, 'pending')",
                [(job_id, _item_key(prefix, i), i + 1) for i in part],
            )
            conn.executemany(
                "UPDATE job_items SET status = 'ok', image_hash = ?, updated_at = ? WHERE job_id = ? AND item_key = ?",
                [(h, now, job_id, _item_key(prefix, i)) for h, i in zip(batch_hashes, part, strict=True)],
            )
    return hashes


def _item_key(prefix: str, i: int) -> str:
    if prefix == "tagged":
        return f"tag-{i // FOLDER_SIZE:04d}/img-{i:07d}.png"
    return f"https://images.example.com/{prefix}/{i:07d}.jpg"


def build_workspace(root: Path, n: int) -> dict[str, float]:
    """The workspace described in the module docstring; returns the seconds each part took."""
    import numpy as np

    from services.core.datasets import ensure_dataset, insert_rows
    from services.core.workspace import Workspace
    from services.io.clip_models import ClipSpec
    from services.io.embedding_store import EmbeddingStore, embedding_key
    from services.jobs.manager import JobManager
    from services.stages.describe.stage import DESCRIBE_STAGE, describe_settings_hash
    from services.stages.preprocess.quality import QUALITY_STAGE, QUALITY_VERSION
    from services.stages.preprocess.recipes import PRESETS
    from services.stages.preprocess.stage import stage_name
    from services.stages.train.models import list_models
    from services.stages.train.stage import start_training

    timings: dict[str, float] = {}
    ws = Workspace(root)
    paths = _shared_pngs(ws)
    now = time.time()

    t = time.perf_counter()
    photos = ensure_dataset(ws.catalog, "photos", "REAL", "https://images.example.com/photos.csv",
                            ["image_link", "label"])  # fmt: skip
    for start in range(0, n, BATCH):
        insert_rows(ws.catalog, photos.id,
                    [(i, [_item_key("photos", i), CATEGORIES[i % 12]], _item_key("photos", i))
                     for i in range(start, min(n, start + BATCH))])  # fmt: skip
    params = {"csv_path": str(root / "photos.csv"), "url_column": "image_link", "resize": None,
              "keep_originals": True, "placeholder": False, "workers": 4, "out": None, "dataset": "photos"}  # fmt: skip
    hashes = _download_job(ws, photos.id, "download_urls", params, n, "photos", paths)
    timings["photos"] = time.perf_counter() - t

    t = time.perf_counter()
    recipe = PRESETS["ocr-128"]
    describe_hash = describe_settings_hash(ws.settings.caption_model, ws.settings.processing.image_max_size)
    flags = ["too_dark", "blurry", "near_uniform", "tiny", "too_bright", "extreme_aspect"]
    for start in range(0, n, BATCH):
        part = range(start, min(n, start + BATCH))
        rows: list[tuple[Any, ...]] = []
        for i in part:
            h = hashes[i]
            flagged = [flags[i % 6]] if i % 7 == 0 else []
            rows.append((h, QUALITY_STAGE, QUALITY_VERSION, "ok", json.dumps({"brightness": 0.5, "flags": flagged})))
            output = {"output": paths[i % len(paths)], "width": 128, "height": 96, "recipe_version": 1}
            rows.append((h, stage_name(recipe), recipe.settings_hash, "ok", json.dumps(output)))
            if i % 10 == 0:
                description = {"summary": f"a photo of {CATEGORIES[i % 12]} number {i}", "objects": ["thing"]}
                rows.append((h, DESCRIBE_STAGE, describe_hash, "ok", json.dumps({"description": description})))
        with ws.catalog.write() as conn:
            conn.executemany(
                "INSERT INTO stage_results (image_hash, stage, settings_hash, status, result, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(*r, now) for r in rows],
            )
    timings["stage results"] = time.perf_counter() - t

    t = time.perf_counter()
    n_tagged = max(2 * FOLDER_SIZE, n // 10)
    tagged = ensure_dataset(ws.catalog, "tagged", "import", "/data/tagged", ["path", "tag"])
    for start in range(0, n_tagged, BATCH):
        insert_rows(ws.catalog, tagged.id,
                    [(i, [_item_key("tagged", i), f"tag-{i // FOLDER_SIZE:04d}"], _item_key("tagged", i))
                     for i in range(start, min(n_tagged, start + BATCH))])  # fmt: skip
    params = {"folder": "/data/tagged", "dataset": "tagged", "workers": 0}
    tagged_hashes = _download_job(ws, tagged.id, "import_folder", params, n_tagged, "tagged", paths)
    key = embedding_key(ClipSpec.from_settings(ws.settings))
    store = EmbeddingStore(ws, key)
    rng = np.random.default_rng(0)
    for start in range(0, n_tagged, 100_000):
        part = tagged_hashes[start : start + 100_000]
        vectors = rng.normal(size=(len(part), 8)).astype(np.float32)
        vectors[:, 0] += [1.5 * (start + i < FOLDER_SIZE) for i in range(len(part))]  # tag-0000 is learnable
        store.write_shard(part, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    timings["tagged"] = time.perf_counter() - t

    # two tags trained by the real job, and their scores for every photo (what a classify run leaves)
    t = time.perf_counter()
    manager = JobManager(ws)
    manager.run(
        start_training(
            ws, manager, "tagged", key, tags=["tag-0000", "tag-0001"], types=None, test_size=0.1, seed=0, cv_folds=0
        )
    )
    models = list_models(ws, "tagged", key)
    with ws.catalog.write() as conn:
        conn.execute(
            "INSERT INTO jobs (kind, title, dataset_id, params, state, created_at, finished_at, n_total, n_ok, planned)"
            " VALUES ('classify', 'bench: photos', ?, ?, 'completed', ?, ?, ?, ?, 1)",
            (photos.id, json.dumps({"dataset": "photos", "models": [str(m.path) for m in models], "bins": 10}),
             now, now, n, n),
        )  # fmt: skip
    for start in range(0, n, BATCH):
        part = hashes[start : start + BATCH]
        scores = rng.random((len(part), len(models)))
        with ws.catalog.write() as conn:
            conn.executemany(
                "INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(h, m.manifest["sha256"], m.name, m.tag, float(scores[i, k]), now)
                 for i, h in enumerate(part) for k, m in enumerate(models)],
            )  # fmt: skip
    timings["models and scores"] = time.perf_counter() - t

    t = time.perf_counter()
    from services.stages.compare.label_sets import import_categorized_csv

    for name in ("REAL", "GEN"):
        csv_path = root / f"{name}.csv"
        with open(csv_path, "w", encoding="utf-8") as fh:
            fh.write("image_name,description,categories\n")
            for i in range(max(1000, n // 10)):
                category = CATEGORIES[0 if name == "GEN" and i % 4 == 0 else i % 12]  # GEN leans to one
                fh.write(f"{name.lower()}_{i:07d}.jpg,a description,{category}\n")
        import_categorized_csv(ws, csv_path, name)
    timings["label sets"] = time.perf_counter() - t
    ws.close()
    return timings


def time_pages(root: Path, reruns: int) -> dict[str, dict[str, float]]:
    """First run in a fresh session and the median rerun of every page."""
    from streamlit.testing.v1 import AppTest

    os.environ["WORKBENCH_WORKSPACE"] = str(root)
    out: dict[str, dict[str, float]] = {}
    for name, page in PAGES.items():
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
        if page is not None:
            at.switch_page(page)
            t = time.perf_counter()
            at.run()
            first = time.perf_counter() - t
        errors = [e.value for e in at.exception] + [e.value for e in at.error]
        again = []
        for _ in range(reruns):
            t = time.perf_counter()
            at.run()
            again.append(time.perf_counter() - t)
        out[name] = {"first": first, "rerun": statistics.median(again), "errors": len(errors)}
        if errors:
            print(f"  {name}: {errors[:2]}", file=sys.stderr)
            print("\n".join(str(e.stack_trace)[-1500:] for e in at.exception), file=sys.stderr)
    return out


def time_commands(root: Path) -> dict[str, float]:
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(root)}
    out = {}
    for name, args in LIST_COMMANDS.items():
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "services", *args], cwd=ROOT, env=env, capture_output=True)
        out[name] = time.perf_counter() - t
        if done.returncode != 0:
            print(f"  {name}: exit {done.returncode}: {done.stderr.decode()[-300:]}", file=sys.stderr)
    return out


MIGRATION_5_TABLES = (
    "dataset_members", "dataset_member_tags", "dataset_tag_counts", "dataset_stage_counts", "dataset_flag_counts",
    "image_flags", "catalog_totals", "label_set_counts", "label_set_depths", "dataset_score_bins",
)  # fmt: skip


def time_migration(root: Path) -> float:
    """The catalog taken back to schema 4 (what an existing workspace has), then opened: the seconds migration 5
    takes to build members and counters. Checks that it rebuilds the same counts."""
    import sqlite3

    from services.core.catalog import Catalog
    from services.core.datasets import list_datasets

    path = root / "catalog.sqlite"
    before = [(d.name, d.rows, d.images) for d in list_datasets(Catalog(path))]
    conn = sqlite3.connect(path, isolation_level=None)
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    for trigger in triggers:
        conn.execute(f"DROP TRIGGER {trigger}")
    for table in MIGRATION_5_TABLES:
        conn.execute(f"DROP TABLE {table}")
    conn.execute("ALTER TABLE datasets DROP COLUMN n_rows")
    conn.execute("ALTER TABLE datasets DROP COLUMN n_images")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    t = time.perf_counter()
    catalog = Catalog(path)
    seconds = time.perf_counter() - t
    after = [(d.name, d.rows, d.images) for d in list_datasets(catalog)]
    if after != before:
        raise AssertionError(f"migration 5 counted {after}, the triggers {before}")
    return seconds


def run(sizes: list[int], reruns: int, work: Path) -> dict[str, Any]:
    # A small workspace first, its times thrown away: it pays for the imports each page makes once per server
    # process (plotly, scipy, open_clip, ...), which a running dashboard has paid long before. Then an empty
    # workspace: the baseline the table gives.
    from services.core.workspace import Workspace

    build_workspace(work / "ws-warm-up", 1000)
    time_pages(work / "ws-warm-up", 1)
    Workspace(work / "ws-empty").close()
    results: dict[str, Any] = {"empty": {"pages": time_pages(work / "ws-empty", reruns)}, "sizes": {}}
    results["empty"]["commands"] = time_commands(work / "ws-empty")
    for n in sizes:
        root = work / f"ws-{n}"
        t = time.perf_counter()
        build = build_workspace(root, n)
        print(f"built {n:,} in {time.perf_counter() - t:.1f} s: {build}", file=sys.stderr)
        catalog_bytes = sum(p.stat().st_size for p in root.glob("catalog*"))
        results["sizes"][str(n)] = {
            "build_seconds": build,
            "catalog_mb": catalog_bytes / 1e6,
            "pages": time_pages(root, reruns),
            "commands": time_commands(root),
            "migration_seconds": time_migration(root),
        }
    return results


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals against the largest and smallest sizes measured."""
    sizes = sorted(results["sizes"], key=int)
    small, large = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
    growth = {
        page: max(large["pages"][page][k] / max(small["pages"][page][k], 1e-9) for k in ("first", "rerun"))
        for page in PAGES
    }
    return {
        "largest": int(sizes[-1]),
        "first_under_1.5s": all(p["first"] < 1.5 for p in large["pages"].values()),
        "rerun_under_0.5s": all(p["rerun"] < 0.5 for p in large["pages"].values()),
        "datasets_list_under_1s": large["commands"]["datasets list"] < 1.0,
        "growth": growth,
        "growth_under_2x": all(g < 2.0 for g in growth.values()),
        "page_errors": sum(p["errors"] for s in results["sizes"].values() for p in s["pages"].values()),
    }


def print_table(results: dict[str, Any]) -> None:
    sizes = sorted(results["sizes"], key=int)
    head = "| | " + " | ".join(f"{int(n):,} first / rerun" for n in sizes) + " | growth |"
    print(head.replace("| | ", "| | empty workspace | ", 1))
    print("| --- " * (len(sizes) + 3) + "|")
    growth = results["verdict"]["growth"]
    for page in PAGES:
        timed = [results["sizes"][n]["pages"][page] for n in sizes]
        cells = [f"{t['first']:.2f} / {t['rerun']:.2f} s" for t in [results["empty"]["pages"][page], *timed]]
        print(f"| {page} | " + " | ".join(cells) + f" | {growth[page]:.2f}x |")
    for command in LIST_COMMANDS:
        cells = [f"{results['empty']['commands'][command]:.2f} s"]
        cells += [f"{results['sizes'][n]['commands'][command]:.2f} s" for n in sizes]
        ratio = results["sizes"][sizes[-1]]["commands"][command] / results["sizes"][sizes[0]]["commands"][command]
        print(f"| `{command}` | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    print("catalog: " + ", ".join(f"{int(n):,}: {results['sizes'][n]['catalog_mb']:.0f} MB" for n in sizes))
    print("migration to schema 5 of an existing catalog: "
          + ", ".join(f"{int(n):,}: {results['sizes'][n]['migration_seconds']:.1f} s" for n in sizes))  # fmt: skip
    print(f"goals: {json.dumps({k: v for k, v in results['verdict'].items() if k != 'growth'})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reruns", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pages.json")
    parser.add_argument("--work", type=Path, default=None, help="where to build the workspaces (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = run(args.sizes, args.reruns, Path(tmp))
    results["verdict"] = verdict(results)
    results["machine"] = machine_description()
    results["date"] = time.strftime("%Y-%m-%d")
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

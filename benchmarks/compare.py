"""Compare benchmark: the Compare page with N categorised rows per set (default 1,000,000).

    python benchmarks/compare.py [--n 1000000] [--categories 40]

Two seeds'-format CSVs (`image_name,description,categories`, one or two of C categories per row, some
unknown and failed) are generated and imported (timed, but not part of the goal). Then, side by side:
(a) `compare_sets` alone (counts aggregated in SQL, tests, intervals, divergence); (b) a whole run of the
Compare page through Streamlit's AppTest (what a user waits for after each interaction), warm: the median
of several reruns. Goal (issue #8): the page interactive in under 1.5 s at 1M rows per set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.compare import compare_sets, import_categorized_csv  # noqa: E402
from services.settings import load_settings  # noqa: E402
from services.workspace import Workspace  # noqa: E402


def make_csv(path: Path, n: int, categories: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"category-{i:02d}" for i in range(categories)]
    weights = rng.dirichlet(np.ones(categories))
    first = rng.choice(categories, size=n, p=weights)
    second = rng.choice(categories, size=n, p=weights)
    two = rng.random(n) < 0.3
    special = rng.random(n)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_name", "description", "categories"])
        for i in range(n):
            if special[i] < 0.03:
                cats = "unknown"
            elif special[i] < 0.04:
                cats = "ERROR: rate limited"
            elif two[i] and first[i] != second[i]:
                cats = f"{names[first[i]]}, {names[second[i]]}"
            else:
                cats = names[first[i]]
            writer.writerow([f"{path.stem}_{i:07d}.jpg", "a description", cats])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--categories", type=int, default=40)
    parser.add_argument("--reruns", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = Workspace(root / "ws", load_settings())
        timings: dict[str, float] = {}
        sets = []
        for name, seed in (("REAL", 1), ("GEN", 2)):
            path = root / f"{name}.csv"
            make_csv(path, args.n, args.categories, seed)
            started = time.perf_counter()
            sets.append(import_categorized_csv(ws, path, name))
            timings[f"import_{name}_seconds"] = round(time.perf_counter() - started, 1)
        runs = []
        for _ in range(args.reruns):
            started = time.perf_counter()
            result = compare_sets(ws, sets[1], sets[0])
            runs.append(time.perf_counter() - started)
        timings["compare_sets_seconds"] = round(statistics.median(runs), 3)
        ws.close()

        os.environ["WORKBENCH_WORKSPACE"] = str(root / "ws")
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        at.switch_page("app_pages/compare.py").run()  # first run: imports and caches warm up
        assert not at.exception, at.exception
        page_runs = []
        for _ in range(args.reruns):
            started = time.perf_counter()
            at.run()
            page_runs.append(time.perf_counter() - started)
        assert not at.exception, at.exception
        assert any(m.label == "Jensen-Shannon divergence" for m in at.metric), "the Compare page did not run"
        timings["page_run_seconds"] = round(statistics.median(page_runs), 3)
        timings["page_run_max_seconds"] = round(max(page_runs), 3)

    print(f"\n{args.n:,} rows per set, {args.categories} categories, {len(result.categories)} compared")
    for key, value in timings.items():
        print(f"{key:>26}: {value}")
    met = timings["page_run_seconds"] < 1.5
    print(f"page interactive under 1.5 s: {'met' if met else 'NOT met'}")
    report = {"benchmark": "compare", "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
              "params": {"n": args.n, "categories": args.categories, "reruns": args.reruns}, **timings}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

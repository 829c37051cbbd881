"""Issue 17 moved every stage's journal-and-cancel loop into one base (`run_chunk`, `ResultLog`): is a job as fast
as before? The same URL download (a loopback HTTP server) and preprocess run through the CLI of two checkouts,
the previous release (`--before-rev`, a temporary git worktree) and this one, alternating in one process so the
machine's noise hits both; wall times per round, medians and their ratio.

    python benchmarks/stage_loop.py --before-rev 9b36dad --images 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import functools
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=85)


def _run(checkout: Path, args: list[str], env: dict[str, str]) -> float:
    """Seconds of one CLI command of `checkout` (its own services package first on the path)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "services", *args], cwd=checkout, env={**env, "PYTHONPATH": str(checkout)},
        check=True, capture_output=True, timeout=1800,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-rev", default="9b36dad")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stage_loop.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _images(tmp / "imgs", args.images)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp / "imgs"))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        with open(tmp / "urls.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_link"])
            writer.writerows([f"http://127.0.0.1:{port}/{i:05d}.jpg"] for i in range(args.images))
        before = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before_rev], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
        env["WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS"] = '["127.0.0.0/8"]'
        times: dict[str, dict[str, list[float]]] = {s: {"download": [], "preprocess": []} for s in ("before", "after")}
        try:
            for round_no in range(args.rounds):
                for side, checkout in (("before", before), ("after", ROOT)):
                    ws = str(tmp / f"ws-{side}-{round_no}")
                    common = ["--workspace", ws]
                    workers = ["--workers", str(args.workers)]
                    download = [*common, "download", "urls", str(tmp / "urls.csv"), "--dataset", "d", *workers]
                    preprocess = [*common, "preprocess", "--recipe", "ocr-128", "--dataset", "d", *workers]
                    times[side]["download"].append(_run(checkout, download, env))
                    times[side]["preprocess"].append(_run(checkout, preprocess, env))
                    print(f"round {round_no + 1} {side}: download {times[side]['download'][-1]:.1f} s, "
                          f"preprocess {times[side]['preprocess'][-1]:.1f} s", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
            server.shutdown()
    rows = []
    print(f"\n{'job':<12}{'before (median s)':>20}{'after (median s)':>20}{'after/before':>15}")
    for job in ("download", "preprocess"):
        b, a = statistics.median(times["before"][job]), statistics.median(times["after"][job])
        rows.append({"job": job, "before_s": round(b, 2), "after_s": round(a, 2), "ratio": round(a / b, 3)})
        print(f"{job:<12}{b:>20.2f}{a:>20.2f}{a / b:>15.2f}")
    goal = all(r["ratio"] <= 1.1 for r in rows)
    print(f"no slower than before (after/before <= 1.10 for both): {'met' if goal else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "stage_loop", "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
        "before_rev": args.before_rev, "images": args.images, "rounds": args.rounds, "workers": args.workers,
        "rows": rows, "times": times, "no_slower": goal,
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

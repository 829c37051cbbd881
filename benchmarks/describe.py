"""Describe benchmark: the Gemini job against a quota-enforcing fake server with 429 bursts.

    python benchmarks/describe.py [--n 300] [--rpm 600] [--concurrency 8]

The loopback fake Gemini server (tests/support/fake_gemini.py, spoken to by the real google-genai client)
enforces R requests per minute itself (429 with a RetryInfo delay when over) and injects a burst of 429s
every 50 requests. Two configurations run side by side on fresh workspaces of the same N images:
  - workbench: the client budget set to R (token bucket, burst R/60), retry delays honoured by all threads;
  - no budget: the same job with the client budget off (only retries), as a script that just fires requests.
Then the workbench run is repeated on its workspace: it must make zero requests.
Goals (issue #4): achieved rate >= 0.95 R, nothing lost, rerun requests = 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import machine_description  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.jobs.manager import JobManager  # noqa: E402
from services.stages.describe.stage import start_describe  # noqa: E402
from services.stages.download.folder_import import start_folder_import  # noqa: E402
from tests.support.fake_gemini import API_KEY, PALETTE, FakeGemini, make_colour_png  # noqa: E402


def make_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    colours = list(PALETTE)
    for i in range(n):
        (folder / f"{i:05d}.png").write_bytes(make_colour_png(colours[i % len(colours)], (64, 48), noise_seed=i))


def run_config(name: str, folder: Path, root: Path, args: argparse.Namespace, client_rpm: float) -> dict:
    server = FakeGemini(
        rpm_limit=args.rpm, burst_every=50, burst_length=3, retry_delay=args.retry_delay, latency=args.latency
    ).start()
    env = {
        "WORKBENCH_GEMINI_API_KEY": API_KEY,
        "WORKBENCH_GEMINI__BASE_URL": server.base_url,
        "WORKBENCH_GEMINI__REQUESTS_PER_MINUTE": str(client_rpm),
        "WORKBENCH_GEMINI__BURST": str(max(1, int(args.rpm // 60))),
        "WORKBENCH_PROCESSING__MAX_RETRIES": "3",
        "WORKBENCH_PROCESSING__RETRY_BACKOFF_SECONDS": "0.2",
    }
    os.environ.update(env)
    ws = Workspace(root / name, load_settings())
    manager = JobManager(ws)
    imported = manager.run(start_folder_import(ws, manager, folder, "bench"))
    assert imported.done == args.n, imported
    job = start_describe(ws, manager, "bench", concurrency=args.concurrency)
    started = time.monotonic()
    progress = manager.run(job)
    elapsed = time.monotonic() - started
    ok_times = sorted(e.at for e in server.log if e.outcome == "ok")
    span = ok_times[-1] - ok_times[0] if len(ok_times) > 1 else elapsed
    outcomes = server.outcomes()
    requests_first = server.requests
    rerun = manager.run(start_describe(ws, manager, "bench", concurrency=args.concurrency))
    result = {
        "config": name,
        "client_rpm": client_rpm,
        "images": args.n,
        "ok": progress.done,
        "failed": progress.failed,
        "lost": args.n - progress.done,
        "requests": requests_first,
        "rate_limited_429": outcomes.get("429", 0),
        "seconds": round(elapsed, 2),
        "achieved_rpm": round(60 * (len(ok_times) - 1) / span, 1) if span > 0 else 0.0,
        "achieved_over_r": round((60 * (len(ok_times) - 1) / span) / args.rpm, 3) if span > 0 else 0.0,
        "rerun_requests": server.requests - requests_first,
        "rerun_done": rerun.done,
    }
    ws.close()
    server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rpm", type=float, default=600.0, help="the server's quota R, requests per minute")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per answer")
    parser.add_argument("--retry-delay", type=float, default=0.5, help="RetryInfo delay in the 429s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "describe.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.n)
        results = [
            run_config("workbench", folder, Path(tmp), args, args.rpm),
            run_config("no budget", folder, Path(tmp), args, 1_000_000.0),
        ]
    header = ["config", "ok", "lost", "requests", "rate_limited_429", "seconds", "achieved_rpm", "achieved_over_r",
              "rerun_requests"]  # fmt: skip
    print(f"R = {args.rpm:g}/min, {args.n} images, concurrency {args.concurrency}, 429 burst of 3 every 50 requests")
    print(" | ".join(f"{h:>16}" for h in header))
    for r in results:
        print(" | ".join(f"{r[h]!s:>16}" for h in header))
    ours = results[0]
    goals = {
        "achieved >= 0.95 R": ours["achieved_over_r"] >= 0.95,
        "nothing lost": ours["lost"] == 0,
        "rerun makes zero requests": ours["rerun_requests"] == 0,
    }
    for goal, met in goals.items():
        print(f"{goal}: {'met' if met else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "describe",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "goals": goals,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""Issue 18: does a small job answer in about a second once the workspace's worker holds the model?

    python benchmarks/resident_models.py [--rounds 3] [--jobs 20] [--rss-jobs 100] [--no-vit] [--device cuda]

On the demo workspace (its tiny CLIP and tag models) and on a randomly initialised ViT-B-32 checkpoint (tag
models trained on its embeddings), the same action as the Classify page's button: a zip of 10 new images is
imported and classified, timed from the click (`start_classify_path` and a background start) until the job
has completed and its scores are stored. Before: the job runs in a detached process of its own, as every job
did (`start_background(via_worker=False)`). After: it is handed to a running worker that has classified once
(warm-up). Rounds alternate before and after in one run, so the machine's noise hits both.

Then a fresh worker runs `--jobs` consecutive small classify jobs (goal: 1 model load), and goes on to
`--rss-jobs` jobs while its resident memory is sampled (goal: flat). Goals: under 1.5 s on CPU for the demo
model after warm-up; at least 5x faster than before for ViT-B-32.

Also timed: the Describe page's "Score with CLIP zero-shot" on one image through the warm worker. With
`--device cuda` the models run on the GPU and the worker's GPU memory (nvidia-smi, per process) is read after
the first job and after the last: the weights held once, flat over the jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.demo.builder import build_demo  # noqa: E402
from services.io.clip_models import ClipSpec  # noqa: E402
from services.io.embedding_store import embedding_key  # noqa: E402
from services.jobs.manager import JobManager  # noqa: E402
from services.jobs.worker_status import live_worker, read_status  # noqa: E402
from services.stages.classify.stage import start_classify_path  # noqa: E402
from services.stages.describe.categories import save_list  # noqa: E402
from services.stages.describe.zero_shot_try import try_zero_shot  # noqa: E402
from services.stages.embed.stage import start_embed  # noqa: E402
from services.stages.train.models import TagModel, list_models  # noqa: E402
from services.stages.train.stage import start_training  # noqa: E402

_zips = [0]


def new_zip(folder: Path, n: int = 10) -> Path:
    """A zip of `n` images never seen before (so every job embeds them: nothing is reused from the store)."""
    _zips[0] += 1
    rng = np.random.default_rng(1000 + _zips[0])
    path = folder / f"upload-{_zips[0]:04d}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            out = folder / "img.png"
            image.save(out)
            zf.write(out, f"img{i:02d}.png")
    return path


def classify_click(ws: Workspace, manager: JobManager, folder: Path, models: list[TagModel], via_worker: bool) -> float:
    """Seconds from the button to a completed job with its scores stored."""
    upload = new_zip(folder)
    started = time.perf_counter()
    job_id = start_classify_path(ws, manager, upload, models, bins=10, out=None, copy=False, dataset=upload.stem)
    manager.start_background(job_id, via_worker=via_worker)
    while True:
        state = manager.progress(job_id).state
        if state == "completed":
            return time.perf_counter() - started
        if state in ("failed", "cancelled", "interrupted"):
            raise SystemExit(f"job {job_id} ended {state}: {manager.progress(job_id).error}")
        time.sleep(0.02)


def start_worker(ws: Workspace) -> subprocess.Popen[bytes]:
    log = open(ws.root / "logs" / "bench-worker.out", "ab")  # noqa: SIM115 (the worker's whole life)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", "--workspace", str(ws.root), "worker"], cwd=ROOT, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while (status := live_worker(ws)) is None or status.pid != proc.pid:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the worker did not start; see logs/bench-worker.out")
        time.sleep(0.1)
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def vit_models(ws: Workspace, manager: JobManager, folder: Path) -> list[TagModel]:
    """Tag models on the embeddings of a randomly initialised ViT-B-32 saved as a local checkpoint."""
    import open_clip
    import torch

    checkpoint = folder / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
    spec = ClipSpec(model="ViT-B-32", pretrained=None, checkpoint=str(checkpoint), device="cpu")
    manager.run(start_embed(ws, manager, "demo-tagged", spec, loader_workers=0))
    key = embedding_key(spec)
    manager.run(start_training(ws, manager, "demo-tagged", key, types=["lr"], test_size=0.25))
    return [m for m in list_models(ws, "demo-tagged") if m.manifest["embedding_key"] == key]


def zero_shot_tries(ws: Workspace, models: list[TagModel], n: int) -> tuple[list[float], str]:
    """Seconds for `n` one-image zero-shot tries (the page's call), and where they ran."""
    spec = ClipSpec(**models[0].manifest["embedding_spec"])
    categories = save_list(ws, "bench-kinds", ["cat", "dog", "truck", "tree", "house", "text"], "benchmark")
    data = (ws.root / "bench-try.png").read_bytes()
    times, where = [], ""
    for _ in range(n):
        started = time.perf_counter()
        _, where = try_zero_shot(ws, data, spec, categories)
        times.append(time.perf_counter() - started)
    return times, where


def gpu_mib(pid: int) -> float | None:
    """The GPU memory a process holds (nvidia-smi), or None without a GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(line.split(",")[1]) for line in out.splitlines() if line.split(",")[0].strip() == str(pid)]
    return sum(used) if used else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20, help="consecutive small jobs for the model-load count")
    parser.add_argument("--rss-jobs", type=int, default=100, help="jobs the worker runs while its memory is sampled")
    parser.add_argument("--no-vit", action="store_true", help="only the demo model")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the worker runs the models")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "resident_models.json")
    args = parser.parse_args()
    os.environ["WORKBENCH_CLIP__DEVICE"] = args.device
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ws = Workspace(folder / "ws", load_settings())
        manager = JobManager(ws)
        started = time.perf_counter()
        build_demo(ws, small=True, progress=lambda s: None)
        demo = list_models(ws, "demo-tagged")
        print(f"demo workspace built in {time.perf_counter() - started:.0f} s ({len(demo)} tag models)")
        model_sets = {"demo tiny CLIP": demo}
        if not args.no_vit:
            started = time.perf_counter()
            model_sets["ViT-B-32 (random)"] = vit_models(ws, manager, folder)
            print(f"ViT-B-32 checkpoint, embeddings and tag models in {time.perf_counter() - started:.0f} s")

        worker = start_worker(ws)
        for models in model_sets.values():  # warm-up: the worker loads each model once
            classify_click(ws, manager, folder, models, via_worker=True)
        Image.fromarray(np.random.default_rng(7).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(
            ws.root / "bench-try.png"
        )
        tries = {name: zero_shot_tries(ws, models, 1 + args.rounds * 3) for name, models in model_sets.items()}
        timings: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name in model_sets}
        for _ in range(args.rounds):
            for name, models in model_sets.items():
                timings[name]["before"].append(classify_click(ws, manager, folder, models, via_worker=False))
                timings[name]["after"].append(classify_click(ws, manager, folder, models, via_worker=True))
        stop_worker(worker)

        worker = start_worker(ws)  # a fresh one: count its loads and watch its memory
        process = psutil.Process(worker.pid)
        demo_models = model_sets["demo tiny CLIP"]
        rss: dict[int, float] = {}
        gpu: dict[int, float | None] = {}
        loads_after_jobs = None
        for job in range(1, max(args.jobs, args.rss_jobs) + 1):
            classify_click(ws, manager, folder, demo_models, via_worker=True)
            if job == args.jobs:
                status = read_status(ws)
                loads_after_jobs = status.model_loads if status else None
            if job in (1, 10, 25, 50, 75, 100) or job == args.rss_jobs:
                rss[job] = process.memory_info().rss / 2**20
                if args.device == "cuda":
                    gpu[job] = gpu_mib(worker.pid)
        stop_worker(worker)
        ws.close()

    print(f"\nClassify a zip of 10 new images, click to scores stored (seconds; {args.rounds} rounds)")
    print(f"{'model':>20} | {'before (own process)':>22} | {'after (warm worker)':>20} | {'speed-up':>8}")
    rows = {}
    for name, runs in timings.items():
        before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
        rows[name] = {
            "before_s": [round(t, 3) for t in runs["before"]],
            "after_s": [round(t, 3) for t in runs["after"]],
            "before_median_s": round(before, 3),
            "after_median_s": round(after, 3),
            "speedup": round(before / after, 1),
        }
        print(f"{name:>20} | {before:>22.2f} | {after:>20.2f} | {before / after:>7.1f}x")
    print("\nCLIP zero-shot on one image (the Describe page's try), warm worker: median of the tries after the first")
    try_rows = {}
    for name, (times, where) in tries.items():
        try_rows[name] = {"first_s": round(times[0], 3), "warm_s": [round(t, 3) for t in times[1:]], "where": where}
        print(f"{name:>20} | first {times[0]:.3f} s | warm {statistics.median(times[1:]):.3f} s | in the {where}")
    print(f"\nmodel loads over {args.jobs} consecutive classify jobs in one worker: {loads_after_jobs}")
    if gpu:
        print("worker GPU memory (MiB, nvidia-smi) after job: " + ", ".join(f"{j}: {m}" for j, m in gpu.items()))
    print("worker RSS (MiB) after job: " + ", ".join(f"{job}: {mib:.0f}" for job, mib in rss.items()))
    demo_after = rows["demo tiny CLIP"]["after_median_s"]
    goals = {
        "demo under 1.5 s after warm-up": demo_after < 1.5,
        "one model load over the consecutive jobs": loads_after_jobs == 1,
        "RSS flat (last within 10% of job 10)": rss[max(rss)] <= 1.1 * rss.get(10, rss[min(rss)]),
    }
    if gpu and all(v is not None for v in gpu.values()):
        held = [v for v in gpu.values() if v is not None]
        goals["GPU memory flat (weights held once)"] = max(held) <= 1.1 * min(held)
    if "ViT-B-32 (random)" in rows:
        goals["ViT-B-32 at least 5x faster"] = rows["ViT-B-32 (random)"]["speedup"] >= 5
    for goal, met in goals.items():
        print(f"{goal}: {'met' if met else 'NOT met'}")
    report = {
        "benchmark": "resident_models",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "classify_zip_of_10": rows,
        "model_loads_over_jobs": {"jobs": args.jobs, "loads": loads_after_jobs},
        "worker_rss_mib": {str(k): round(v, 1) for k, v in rss.items()},
        "worker_gpu_mib": {str(k): v for k, v in gpu.items()},
        "zero_shot_try_one": try_rows,
        "goals": goals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""Classify benchmark: vectorised scoring of N embeddings by M tag models against seed 004's loop.

    python benchmarks/classify.py [--n 1000000] [--models 100] [--dim 512] [--sample 200]

M real models (half logistic regression, half sigmoid-calibrated linear SVM) are trained on random data,
saved as skops files with manifests and stacked exactly as the Classify stage does. N random L2-normalised
512-d vectors are scored: (a) the workbench, `scoring.score` (one matrix product per 65,536 rows);
(b) the seed's way, one `predict_proba` call per image per model, timed on a sample of images and scaled
to N. Goals (issue #6): (a) under 2 s here, and at least 100x faster than (b).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.stages.classify.scoring import score, stack_models  # noqa: E402
from services.stages.train.models import generate_model_path, list_models, load_estimator, save_model  # noqa: E402
from services.stages.train.stage import make_estimator  # noqa: E402


def train_models(ws: Workspace, m: int, dim: int, rng: np.random.Generator) -> None:
    for i in range(m):
        kind = "lr" if i % 2 == 0 else "svm"
        x = rng.standard_normal((400, dim)).astype(np.float32)
        y = (x @ rng.standard_normal(dim) > 0).astype(int)
        estimator = make_estimator(kind, y, seed=i).fit(x, y)
        manifest = {"tag": f"tag{i:03d}", "model_type": kind, "dataset": "bench", "embedding_key": "bench",
                    "dim": dim, "metrics": {}, "created_at": time.time()}  # fmt: skip
        save_model(generate_model_path(ws, "bench", "bench", kind, f"tag{i:03d}"), estimator, manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sample", type=int, default=200, help="images timed for the per-call loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "classify.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws", load_settings())
        started = time.perf_counter()
        train_models(ws, args.models, args.dim, rng)
        models = list_models(ws)
        print(f"{len(models)} models trained and saved in {time.perf_counter() - started:.1f} s")
        stacked = stack_models(models)
        vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

        timings = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            probabilities = score(vectors, stacked)
            timings.append(time.perf_counter() - started)
        vectorised = min(timings)

        estimators = [load_estimator(m) for m in models]
        sample = vectors[: args.sample]
        started = time.perf_counter()
        loop = np.empty((len(sample), len(estimators)))
        for i, x in enumerate(sample):
            row = x.reshape(1, -1)
            for j, estimator in enumerate(estimators):
                loop[i, j] = estimator.predict_proba(row)[0, 1]
        per_call = (time.perf_counter() - started) / (len(sample) * len(estimators))
        seed_seconds = per_call * args.n * len(estimators)
        max_diff = float(np.max(np.abs(loop - probabilities[: args.sample])))
        ws.close()

    ratio = seed_seconds / vectorised
    print(f"\n{args.n:,} vectors x {args.models} models ({args.dim}-d)")
    print(f"{'method':>36} | {'seconds':>12} | {'ratio':>8}")
    print(f"{'workbench (stacked, vectorised)':>36} | {vectorised:>12.3f} | {1.0:>8.1f}")
    print(f"{'seed loop (predict_proba per pair)':>36} | {seed_seconds:>12.1f} | {ratio:>8.0f}")
    print(f"per predict_proba call: {per_call * 1e6:.1f} us (timed on {args.sample} images x {args.models} models)")
    print(f"largest difference between the two: {max_diff:.2e}")
    print(f"under 2 s: {'met' if vectorised < 2 else 'NOT met'}; at least 100x: {'met' if ratio >= 100 else 'NOT met'}")
    report = {
        "benchmark": "classify",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "vectorised_seconds": round(vectorised, 3),
        "vectorised_rounds": [round(t, 3) for t in timings],
        "seed_loop_seconds_scaled": round(seed_seconds, 1),
        "seed_per_call_us": round(per_call * 1e6, 2),
        "ratio": round(ratio, 1),
        "max_abs_difference": max_diff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

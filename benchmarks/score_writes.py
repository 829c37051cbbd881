"""What the score-histogram trigger (migration 5, `dataset_score_bins`) adds to writing classifier scores.

    python benchmarks/score_writes.py [--images 10000] [--models 40] [--out benchmarks/results/score_writes.json]

A `benchmarks/pages.py` workspace of `--images` photos; then `--models` model versions' scores for every photo
written as the classify job writes them (upserts, one transaction per model), with the trigger and with it
dropped, alternating, two rounds each; the faster round of each counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_description  # noqa: E402
from benchmarks.pages import build_workspace  # noqa: E402

UPSERT = """INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) VALUES (?, ?, ?, ?, ?, 0)
            ON CONFLICT (image_hash, model_sha) DO UPDATE SET score = excluded.score"""


def main() -> None:
    import numpy as np

    from services.core.workspace import Workspace

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "score_writes.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_workspace(Path(tmp) / "ws", args.images)
        ws = Workspace(Path(tmp) / "ws")
        hashes = [
            r[0]
            for r in ws.catalog.query(
                "SELECT m.image_hash FROM dataset_members m JOIN datasets d ON d.id = m.dataset_id WHERE d.name = ?",
                ("photos",),
            )
        ]
        rng = np.random.default_rng(0)

        def write(prefix: str) -> float:
            t = time.perf_counter()
            for m in range(args.models):
                scores = rng.random(len(hashes))
                with ws.catalog.write() as conn:
                    conn.executemany(
                        UPSERT, [(h, f"{prefix}-{m}", "x", "t", float(scores[i])) for i, h in enumerate(hashes)]
                    )
            return time.perf_counter() - t

        trigger = ws.catalog.scalar("SELECT sql FROM sqlite_master WHERE name = 'tag_score_counted'")
        timed: dict[str, list[float]] = {"with the trigger": [], "without": []}
        for round_ in range(2):
            timed["with the trigger"].append(write(f"with{round_}"))
            ws.catalog.conn.execute("DROP TRIGGER tag_score_counted")
            timed["without"].append(write(f"without{round_}"))
            ws.catalog.conn.execute(trigger)
        ws.close()
    rows = len(hashes) * args.models
    best = {k: min(v) for k, v in timed.items()}
    print(f"| {rows:,} score rows | seconds | µs per row |\n| --- | ---: | ---: |")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {seconds / rows * 1e6:.1f} |")
    result = {"rows": rows, "seconds": timed, "best": best, "ratio": best["with the trigger"] / best["without"],
              "machine": machine_description(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print(f"ratio {result['ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

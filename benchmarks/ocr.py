"""OCR benchmark: lines per second and character error rate of each available engine on rendered lines.

    python benchmarks/ocr.py [--n 60] [--trocr-model FOLDER_OR_HUB_ID]

N single text lines (serial codes, words, mixed; a third with speckle noise and blur) are rendered with
Debian's DejaVu fonts and read one image at a time through `services.stages.ocr.stage.read_image` (the same path as the
job, the REST endpoint and the socket). TrOCR runs when its weights are on this machine (a pulled Hub id or
a local folder); with `--tiny-trocr` a tiny random TrOCR measures the pipeline's speed only (its CER is
meaningless). The engine's first call (model loading) is excluded from the rate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.stages.ocr.accuracy import accuracy  # noqa: E402
from services.stages.ocr.engines import engine_status  # noqa: E402
from services.stages.ocr.rules import PRESETS  # noqa: E402
from services.stages.ocr.stage import read_image  # noqa: E402
from tests.support.text_images import render_line  # noqa: E402

WORDS = ["Quality", "checked", "SERIAL", "Lot", "batch", "OK", "pressure", "valve", "Type", "NO"]


def make_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            lines.append("25" + "".join(rng.choice("0123456789") for _ in range(9)))
        elif kind == 1:
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))))
        else:
            lines.append(f"{rng.choice(WORDS)} {rng.randint(10, 9999)}-{rng.choice('ABCDEFGH')}{rng.randint(1, 99)}")
    return lines


def run_engine(engine: str, settings: object, images: list[np.ndarray], lines: list[str]) -> dict[str, object]:
    none = PRESETS["none"]
    read_image(engine, settings, images[0], None, none)  # load the engine (not timed)
    started = time.perf_counter()
    read = [read_image(engine, settings, img, None, none).raw for img in images]
    seconds = time.perf_counter() - started
    score = accuracy(list(zip(lines, read, strict=True)))
    noisy = [i for i in range(len(lines)) if i % 3 == 2 or i % 5 == 0]
    return {
        "engine": engine,
        "lines": len(lines),
        "lines_per_second": round(len(lines) / seconds, 2),
        "cer": score.cer,
        "wer": score.wer,
        "exact": score.exact,
        "cer_noisy": accuracy([(lines[i], read[i]) for i in noisy]).cer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--trocr-model", default=None, help="a local TrOCR folder or a pulled Hub id")
    parser.add_argument("--tiny-trocr", action="store_true", help="time the TrOCR path with a tiny random model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ocr.json")
    args = parser.parse_args()
    lines = make_lines(args.n)
    images = [np.array(render_line(t, size=36, mono=i % 2 == 0, noise=0.02 if i % 5 == 0 else 0.0, seed=i))
              for i, t in enumerate(lines)]  # fmt: skip
    settings = load_settings()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny_trocr:
            from tests.support.tiny_trocr import save_tiny_trocr

            args.trocr_model = str(save_tiny_trocr(Path(tmp) / "tiny-trocr"))
        if args.trocr_model:
            settings = settings.model_copy(
                update={"ocr": settings.ocr.model_copy(update={"trocr_model": args.trocr_model})}
            )
        for engine, problem in engine_status(settings).items():
            if problem is not None:
                print(f"{engine}: skipped ({problem})")
                results.append({"engine": engine, "skipped": problem})
                continue
            result = run_engine(engine, settings, images, lines)
            if engine == "trocr" and args.tiny_trocr:
                result["note"] = "tiny random model: speed only"
            results.append(result)
            print(f"{engine}: {result}")
    print(f"\n{args.n} rendered lines (DejaVu Sans / Sans Mono, 36 px; every 5th with speckles and blur)")
    print(f"{'engine':>10} | {'lines/s':>8} | {'CER':>6} | {'WER':>6} | {'exact':>6} | {'CER noisy':>9}")
    for r in results:
        if "skipped" in r:
            print(f"{r['engine']:>10} | skipped: {r['skipped']}")
        else:
            print(f"{r['engine']:>10} | {r['lines_per_second']:>8} | {r['cer']:>6} | {r['wer']:>6} | {r['exact']:>6} | "
                  f"{r['cer_noisy']:>9}")  # fmt: skip
    report = {"benchmark": "ocr", "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
              "params": {"n": args.n, "trocr_model": args.trocr_model}, "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

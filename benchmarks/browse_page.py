"""The Explore page's Browse view at a million catalogued images, timed in a real browser (issue 20).

    python benchmarks/browse_page.py [--n 1000000] [--workspace DIR] [--reruns 3]
                                     [--out benchmarks/results/browse_page.json]

The workspace of `benchmarks/browse.py` (one dataset of N images with tags, scores, flags, choices and stage
results, written in bulk through the catalog's tables and triggers), built once into `--workspace` and kept.
Every image points at one small stored JPEG (a million files would only time the disk). The dashboard is
started on it and driven by Chromium (Playwright): the time from an action to the page showing its answer (the
count line and 24 images drawn) for the first paint of Browse, a page turn, and filter changes.

Goal (issue 20): first paint, every filter change and every page turn under 1 s at 1,000,000 images.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from benchmarks.browse import CATEGORIES, build  # noqa: E402
from benchmarks.common import machine_description  # noqa: E402
from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, wait_until_served  # noqa: E402

SHARED = "images/shared.jpg"


def prepare(root: Path, n: int) -> None:
    """Build the workspace once (kept between runs); every image's file is one shared JPEG."""
    if (root / "built.json").exists() and json.loads((root / "built.json").read_text())["n"] == n:
        return
    ws = Workspace(root, load_settings(), allow_new_catalog=True)
    started = time.perf_counter()
    build(ws, n)
    out = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 80, 40)).save(out, "JPEG")
    (root / SHARED).parent.mkdir(parents=True, exist_ok=True)
    (root / SHARED).write_bytes(out.getvalue())
    with ws.catalog.write() as conn:
        conn.execute("UPDATE images SET path = ?", (SHARED,))
    ws.close()
    (root / "built.json").write_text(json.dumps({"n": n, "seconds": round(time.perf_counter() - started, 1)}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    from playwright.sync_api import Page, sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/browse-page-ws"))
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "browse_page.json")
    args = parser.parse_args()
    prepare(args.workspace, args.n)
    port = free_port()
    log = args.workspace / "dashboard.log"
    env = dict(os.environ, WORKBENCH_WORKSPACE=str(args.workspace))
    server = subprocess.Popen(
        [sys.executable, "-m", "services", "dashboard", "--port", str(port)], cwd=ROOT, env=env,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://localhost:{port}"
    total = f"{args.n:,}"

    def settled(page: Page, text: str, first_name: str | None = None) -> None:
        """The answer is on the page: its count line, 24 images drawn, the first image the one expected."""
        page.get_by_text(text).first.wait_for(timeout=60_000)
        page.wait_for_function(
            """([first]) => {
                const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                if (imgs.length < 24 || !imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
                if (!first) return true;
                const caps = [...document.querySelectorAll('[data-testid="stImageCaption"]')];
                return caps.length > 0 && caps[0].innerText.includes(first);
            }""",
            arg=[first_name],
            timeout=60_000,
        )

    def timed(action: Callable[[], None], check: Callable[[], None]) -> float:
        started = time.perf_counter()
        action()
        check()
        return time.perf_counter() - started

    def goto(page: Page, url: str) -> None:
        page.goto(url)

    def turn(page: Page, number: int) -> None:
        page.get_by_label("Page (of").fill(str(number))
        page.keyboard.press("Enter")

    def pick(page: Page, label: str, option: str) -> None:
        page.get_by_role("combobox", name=label).click()
        page.get_by_role("option").filter(has_text=option).first.click()
        page.keyboard.press("Escape")

    # what each step must show, from the formulas the workspace was built with (benchmarks/browse.py)
    png = list(range(1, args.n, 3))
    png_tag = [i for i in range(1, args.n, 10) if i % 3 == 1]  # tag-1 and PNG
    with_food = [i for i in png_tag if "food" in (CATEGORIES[i % 6], CATEGORIES[(i * 7 + 1) % 6])]

    def largest(indexes: list[int]) -> int:
        return min(indexes, key=lambda i: (-(10_000 + (i * 7919) % 900_000), i))

    def image_name(i: int) -> str:
        return f"img-{i:07d}"

    def steps_for(page: Page) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
        """The steps of one run on a fresh page: (what, the action, the check that its answer shows)."""
        url = f"{base}/explore?ex-mode=Browse&ex-br-datasets=big"
        return [
            ("first paint of Browse", lambda: goto(page, url),
             lambda: settled(page, f"{total} of the {total} images", "img-0000000")),
            ("page turn (page 2)", lambda: turn(page, 2),
             lambda: settled(page, f"{total} of the {total} images", "img-0000024")),
            ("page turn deep (page 20,000)", lambda: turn(page, 20_000),
             lambda: settled(page, "pass the filters", "img-0479976")),
            ("format PNG", lambda: pick(page, "Formats", "PNG"),
             lambda: settled(page, f"{len(png):,} of the {total} images", image_name(png[0]))),
            ("folder tag", lambda: pick(page, "Folder tags (any of)", "tag-1"),
             lambda: settled(page, f"{len(png_tag):,} of the {total}", image_name(png_tag[0]))),
            ("sort by largest file", lambda: pick(page, "Sort by", "largest file"),
             lambda: settled(page, "largest file.", image_name(largest(png_tag)))),
            ("Gemini category", lambda: pick(page, "Gemini category", "food"),
             lambda: settled(page, f"{len(with_food):,} of the {total}", image_name(largest(with_food)))),
        ]  # fmt: skip

    rows: dict[str, list[float]] = {}
    try:
        wait_until_served(base, log, 120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for run in range(args.reruns + 1):  # the first is a warm-up (the server's first page load compiles)
                page = browser.new_page(viewport={"width": 1500, "height": 1400})
                for step, action, check in steps_for(page):
                    seconds = timed(action, check)
                    if run:
                        rows.setdefault(step, []).append(seconds)
                    print(f"run {run} {step:<34} {seconds:7.3f} s", flush=True)
                page.screenshot(path=str(args.workspace / f"browse-page-{run}.png"))
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    result = [{"step": k, "median_s": statistics.median(v), "max_s": max(v), "runs": v} for k, v in rows.items()]
    print(f"\n{'step':<34} {'median s':>9} {'max s':>7}")
    for r in result:
        print(f"{r['step']:<34} {r['median_s']:>9.3f} {r['max_s']:>7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"machine": machine_description(), "n": args.n, "steps": result}
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

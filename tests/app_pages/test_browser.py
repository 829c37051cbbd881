"""A real browser session: Debian chromium driven by Playwright uploads a CSV on the Download page, starts
the download against the loopback image server, and sees the finished job and its labelled CSV."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_csv
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, dashboard_at
from tests.support.image_server import ImageServer, make_jpeg

pytestmark = pytest.mark.browser


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ws_root = tmp_path / "browser-ws"
    with dashboard_at(tmp_path, ws_root) as base:
        yield base, ws_root


def test_upload_csv_start_download_see_results(
    dashboard: tuple[str, Path], image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, ws_root = dashboard
    urls = [image_server.add(f"b{i}.jpg", make_jpeg(80, 60, seed=i)) for i in range(4)]
    rows = [[u, str(i), "item_weight", f"{i}.5 gram"] for i, u in enumerate(urls)]
    rows.append([image_server.url("/status/404"), "9", "item_weight", "1 gram"])
    csv_path = write_csv(tmp_path / "train.csv", ["image_link", "group_id", "entity_name", "entity_value"], rows)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{base}/download", wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name="Download", exact=True)).to_be_visible(timeout=30_000)
        # a deep link on a fresh server still goes through app.py's navigation (and its sidebar)
        expect(page.get_by_text("Compare REAL vs GEN")).to_be_visible()
        expect(page.get_by_text("No job running")).to_be_visible()
        page.locator("input[type=file]").first.set_input_files(str(csv_path))
        expect(page.get_by_text("First rows of")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Start download").click()
        # four rows fetched, one 404: the panel says the job completed with that failure
        expect(page.get_by_text("completed with 1 failed", exact=True).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("4 of 5 items").or_(page.get_by_text("5 of 5 items"))).to_be_visible()
        expect(page.get_by_role("button", name="Labelled CSV")).to_be_visible(timeout=15_000)
        expect(page.get_by_text("http_4xx").first).to_be_visible()
        page.screenshot(path=str(tmp_path / "download-page.png"), full_page=True)
        browser.close()
    exports = list((ws_root / "exports").glob("*.csv"))
    assert len(exports) == 1
    assert "4.5 gram" not in exports[0].read_text() and "3.5 gram" in exports[0].read_text()


def test_describe_page_try_one_image_and_browse_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.jobs.manager import JobManager
    from services.stages.describe.stage import start_describe
    from tests.support.describe_data import colour_dataset, gemini_env
    from tests.support.fake_gemini import FakeGemini

    server = FakeGemini().start()
    gemini_env(monkeypatch, server)  # the dashboard process inherits the key and the fake's base URL
    try:
        ws_root = tmp_path / "browser-ws"
        ws = Workspace(ws_root, load_settings())
        dataset = colour_dataset(ws, tmp_path, ["red", "blue"])
        manager = JobManager(ws)
        assert manager.run(start_describe(ws, manager, dataset)).state == "completed"
        ws.close()
        with dashboard_at(tmp_path, ws_root) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(f"{base}/describe", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Describe & Categorize")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("API key set")).to_be_visible()
            expect(page.get_by_text("0 of 2 images need a request").first).to_be_visible(timeout=30_000)
            # only JSON views: the results table also holds the text, in cells a grid keeps out of view
            summary = page.locator('[data-testid="stJson"]').get_by_text("A red square on a plain background.")
            expect(summary.first).to_be_visible(timeout=30_000)  # the detail view of the first image
            before = summary.count()
            page.get_by_text("Try one image").click()
            page.get_by_role("button", name="Ask Gemini about this image").click()
            expect(summary).to_have_count(before + 1, timeout=30_000)  # the answer, shown as JSON
            page.screenshot(path=str(tmp_path / "describe-page.png"), full_page=True)
            browser.close()
        assert server.requests == 2  # the button's answer came from the request cache: no new request
    finally:
        server.stop()


def test_compare_page_bar_click_opens_the_gallery(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.stages.compare.label_sets import import_categorized_csv
    from tests.support.label_csvs import synthetic

    ws_root = tmp_path / "browser-ws"
    ws = Workspace(ws_root, load_settings())
    import_categorized_csv(ws, synthetic(tmp_path / "REAL_a.csv", 200, {"people": 0.2, "city": 0.3}, 1))
    import_categorized_csv(ws, synthetic(tmp_path / "GEN_b.csv", 200, {"people": 0.5, "city": 0.3}, 2))
    ws.close()
    with dashboard_at(tmp_path, ws_root) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{base}/compare", wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name="Compare REAL vs GEN")).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Grouped").click()
        bars = page.locator(".stPlotlyChart").filter(visible=True).locator("g.point path")  # the open tab's chart
        expect(bars.first).to_be_visible(timeout=30_000)
        box = bars.first.bounding_box()  # plotly's drag layer sits on top and turns clicks into selections
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.get_by_text(": people").first).to_be_visible(timeout=30_000)  # "GEN_b: people" gallery titles
        page.screenshot(path=str(tmp_path / "compare-page.png"), full_page=True)
        browser.close()


def test_two_sessions_and_a_cli_job_share_one_workspace(tmp_path: Path, image_server: ImageServer) -> None:
    """Two browser sessions follow a job started from the CLI; one cancels it and the other sees it stop."""
    from playwright.sync_api import expect, sync_playwright

    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.jobs.manager import JobManager

    for i in range(60):
        image_server.add(f"c{i}.jpg", make_jpeg(32, 32, seed=i))
    rows = [[image_server.url(f"/slow/0.5/c{i}.jpg"), "1", "e", "v"] for i in range(60)]
    csv_path = write_csv(tmp_path / "slow.csv", ["image_link", "group_id", "entity_name", "entity_value"], rows)
    ws_root = tmp_path / "browser-ws"
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORKBENCH_DOWNLOAD__THREADS_PER_WORKER="2")
    started = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws_root), "download", "urls", str(csv_path),
         "--dataset", "slow", "--background"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    with dashboard_at(tmp_path, ws_root) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        first, second = (browser.new_context().new_page() for _ in range(2))  # two sessions, no shared cookies
        for page in (first, second):
            page.goto(base, wait_until="domcontentloaded")
            expect(page.get_by_text("running", exact=True).first).to_be_visible(timeout=30_000)
        first.get_by_role("button", name="Cancel").first.click()
        for page in (first, second):  # the second session sees the job stop through the catalog
            expect(page.get_by_text("No job running")).to_be_visible(timeout=90_000)
        browser.close()
    ws = Workspace(ws_root, load_settings())
    p = JobManager(ws).progress(1)
    assert p.state == "cancelled" and 0 < p.done < 60
    ws.close()

"""End to end in a real browser (Debian chromium, Playwright): URL CSV -> download from the loopback server ->
preprocess -> describe and categorise through the fake Gemini server -> import a tagged folder, embed with the
tiny CLIP model, train -> classify an uploaded zip -> OCR an image -> compare REAL vs GEN. Screenshots of
every page go to test-artifacts/e2e/."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_csv
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, dashboard_at
from tests.support.describe_data import gemini_env
from tests.support.fake_gemini import FakeGemini, make_colour_png
from tests.support.image_server import ImageServer, make_jpeg
from tests.support.label_csvs import synthetic
from tests.support.tagged_images import png, tagged_tree
from tests.support.text_images import render_png
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "e2e"


def completed(page, count: int) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect(page.locator("code").filter(has_text="completed")).to_have_count(count, timeout=180_000)


def settle(page) -> None:  # type: ignore[no-untyped-def]
    """Wait until the script run in progress is over: a click during a rerun can be lost."""
    from playwright.sync_api import expect

    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_be_hidden(timeout=120_000)


def click(page, name: str) -> None:  # type: ignore[no-untyped-def]
    settle(page)
    page.get_by_role("button", name=name).first.click()


def click_until(page, name: str, shown: str) -> None:  # type: ignore[no-untyped-def]
    """Click a button whose action is idempotent until its result shows: Streamlit can drop a click that lands
    while the rerun from an upload is still starting (CI saw it once)."""
    from playwright.sync_api import expect

    for attempt in range(3):
        click(page, name)
        try:
            expect(page.get_by_text(shown)).to_be_visible(timeout=40_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


def upload(page, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Give the page's first file uploader a file, once the page is idle, and wait until it shows it."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    shown = page.get_by_text(path.name).filter(visible=True).first
    for attempt in range(3):
        settle(page)
        page.locator("input[type=file]").first.set_input_files(str(path))
        try:
            expect(shown).to_be_visible(timeout=20_000)
            break
        except (AssertionError, PlaywrightError):
            # A rerun that re-mounted the uploader between the settle and the upload drops the file; give it again.
            if attempt == 2:
                raise
    settle(page)


def choose(page, label: str, option: str) -> None:  # type: ignore[no-untyped-def]
    settle(page)
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_whole_pipeline_in_a_browser(tmp_path: Path, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch):
    from playwright.sync_api import expect, sync_playwright

    gemini = FakeGemini().start()
    gemini_env(monkeypatch, gemini)
    checkpoint = save_tiny_clip(tmp_path / "clip")
    monkeypatch.setenv("WORKBENCH_CLIP__MODEL", TINY_CLIP_NAME)
    monkeypatch.setenv("WORKBENCH_CLIP__CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("WORKBENCH_CLIP__PRETRAINED", "")
    colours = ["red", "green", "blue", "red", "blue"]
    urls = []
    for i, colour in enumerate(colours):
        urls.append(image_server.add(f"p{i}.png", make_colour_png(colour, (64, 48), noise_seed=i), "image/png"))
    urls.append(image_server.add("photo.jpg", make_jpeg(80, 60, seed=9)))
    csv_path = write_csv(tmp_path / "products.csv", ["image_link", "group_id", "entity_name", "entity_value"],
                         [[u, str(i), "item_weight", f"{i} g"] for i, u in enumerate(urls)])  # fmt: skip
    (tmp_path / "cats.csv").write_text("Category\nred\ngreen\nblue\n")
    tree = tagged_tree(tmp_path / "colours", per_tag=8)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, colour in enumerate(["red", "blue"]):
            zf.writestr(f"new/{colour}.png", png(colour, 700 + i))
    (tmp_path / "new.zip").write_bytes(archive.getvalue())
    (tmp_path / "part.png").write_bytes(render_png("Z5O1234S678", mono=True))
    real = synthetic(tmp_path / "REAL_e2e.csv", 150, {"people": 0.2, "city": 0.3}, 1)
    gen = synthetic(tmp_path / "GEN_e2e.csv", 150, {"people": 0.5, "city": 0.3}, 2)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ws_root = tmp_path / "e2e-ws"
    try:
        with dashboard_at(tmp_path, ws_root) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})

            # 1. download a URL CSV
            page.goto(f"{base}/download", wait_until="domcontentloaded")
            upload(page, csv_path)
            expect(page.get_by_text("First rows of")).to_be_visible(timeout=60_000)
            click(page, "Start download")
            completed(page, 1)
            shot(page, "1-download")

            # 2. preprocess it
            page.goto(f"{base}/preprocess", wait_until="domcontentloaded")
            click(page, "Run ocr-128 on 6 images")
            completed(page, 1)
            shot(page, "2-preprocess")

            # 3. describe and categorise with the fake Gemini server
            page.goto(f"{base}/describe", wait_until="domcontentloaded")
            expect(page.get_by_text("API key set")).to_be_visible(timeout=60_000)
            upload(page, tmp_path / "cats.csv")
            click(page, "Save list")
            expect(page.get_by_text("Saved categories v1")).to_be_visible(timeout=60_000)
            settle(page)
            page.get_by_text("Describe + categorize in one call (Gemini)").click(timeout=60_000)
            click(page, "Start: Describe + categorize in one call (Gemini)")
            completed(page, 1)
            page.reload(wait_until="domcontentloaded")
            expect(page.locator('[data-testid="stJson"]').first).to_be_visible(timeout=60_000)
            shot(page, "3-describe")
            assert gemini.requests == 6

            # 4. import a tagged folder, embed it with the tiny CLIP model, train
            page.goto(f"{base}/embed", wait_until="domcontentloaded")
            settle(page)
            path_box = page.get_by_label("Folder or .zip path")
            path_box.fill(str(tree))
            path_box.press("Enter")
            click(page, "Import")
            completed(page, 1)
            choose(page, "Dataset", "colours")
            click(page, "Embed")
            completed(page, 2)
            click(page, "Train")
            completed(page, 3)  # the page reruns itself when the job ends: no reload (that would be a new session)
            expect(page.get_by_text("Precision-recall: blue")).to_be_visible(timeout=60_000)
            shot(page, "4-embed-train")

            # 5. classify an uploaded zip
            page.goto(f"{base}/classify", wait_until="domcontentloaded")
            upload(page, tmp_path / "new.zip")
            click(page, "Classify")
            completed(page, 1)
            expect(page.get_by_text("Images scored")).to_be_visible(timeout=60_000)
            shot(page, "5-classify")

            # 6. OCR an image
            page.goto(f"{base}/ocr", wait_until="domcontentloaded")
            upload(page, tmp_path / "part.png")
            expect(page.get_by_text("25012345678").first).to_be_visible(timeout=120_000)
            shot(page, "6-ocr")

            # 7. compare REAL vs GEN
            page.goto(f"{base}/compare", wait_until="domcontentloaded")
            for path in (real, gen):
                upload(page, path)
                click_until(page, "Import CSV", f"{path.stem}: 150 images")  # an import of the same set replaces it
            page.reload(wait_until="domcontentloaded")
            expect(page.get_by_text("Jensen-Shannon divergence")).to_be_visible(timeout=60_000)
            shot(page, "7-compare")
            browser.close()
    finally:
        gemini.stop()
    assert len(list(ARTIFACTS.glob("*.png"))) == 7

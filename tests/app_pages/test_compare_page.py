"""The Compare page through AppTest: import two categorised CSVs, see every chart and table, pick a category's
images; on the demo workspace, embed both sets from the page, compare them with intervals, check image
properties and write the report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.support.label_csvs import synthetic

APP = str(ROOT / "app.py")


def texts(at: AppTest) -> str:
    """Everything the page wrote, as one string (markdown, captions, alerts)."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [x.value for x in (*at.info, *at.warning, *at.error, *at.success)]
    return "\n".join(str(p) for p in parts)


def test_import_two_sets_and_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "page-ws"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    assert any("Add two sets" in i.value for i in at.info)
    for name, shares in (("GEN_b", {"scene": 0.95, "people": 0.5, "city": 0.3}),
                         ("REAL_a", {"scene": 0.95, "people": 0.2, "city": 0.3})):  # fmt: skip
        data = synthetic(tmp_path / f"{name}.csv", 200, shares, seed=len(name)).read_bytes()
        at.file_uploader(key="cmp-upload").upload(f"{name}.csv", data, "text/csv").run()
        at.button(key="cmp-import").click().run()
        assert any(f"{name}: 200 images" in s.value for s in at.success)
    at.run()
    assert not at.exception, at.exception
    # A is the REAL set and B the GEN set, whatever order they sort in
    assert (at.selectbox(key="cmp-a").value, at.selectbox(key="cmp-b").value) == ("REAL_a", "GEN_b")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["GEN_b images"] == "200" and metrics["Categories differing (q < 0.05)"] == "1"
    stats = next(d.value for d in at.dataframe if "category" in d.value.columns)
    assert set(stats["category"]) == {"scene", "people", "city"} and set(stats["test"]) == {"G-test"}
    rates = next(d.value for d in at.dataframe if "difference (pp)" in d.value.columns and "" in d.value.columns)
    assert list(rates[""]) == ["(failed)", "unknown"]
    page = texts(at)
    assert "Click a bar in any of these charts" in page and "No category chosen yet" in page
    assert len(at.get("plotly_chart")) >= 1
    at.selectbox(key="cmp-gallery-category").set_value("people").run()
    page = texts(at)
    assert "REAL_a: people" in page and "GEN_b: people" in page
    assert "its names match no imported image" in page  # says why there are no thumbnails
    assert "Not run yet for these two sets" in page and "Not checked yet" in page
    at.button(key="cmp-confounds").click().run()
    assert not at.exception, at.exception
    assert "No image properties for REAL_a" in texts(at) and "DeltaGenerator" not in texts(at)
    at.button(key="cmp-report").click().run()
    assert not at.exception, at.exception
    assert (tmp_path / "page-ws" / "exports" / "compare-REAL_a-vs-GEN_b.html").is_file()
    assert [b.label for b in at.get("download_button")] == ["Report (HTML)"]
    at.selectbox(key="cmp-test").set_value("chi-square").run()  # the report was written for the G-test
    assert not at.get("download_button") and "The report holds what this page shows" in texts(at)
    at.button(key="cmp-charts").click().run(timeout=120)  # the seeds' reports/*.png, drawn by kaleido
    assert not at.exception, at.exception
    [charts] = at.get("download_button")
    assert charts.label == "Charts (PNG, zip)"
    at.radio(key="cmp-chart-format").set_value("svg").run()  # drawn as PNG: no SVG zip to offer yet
    assert not at.get("download_button")


def test_demo_workspace_embed_from_the_page_then_compare_with_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.demo.builder import build_demo
    from services.jobs.manager import JobManager

    root = tmp_path / "demo-ws"
    ws = Workspace(root, load_settings())
    build_demo(ws, small=True)
    ws.close()
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    assert (at.selectbox(key="cmp-a").value, at.selectbox(key="cmp-b").value) == ("REAL-categorised", "GEN-categorised")
    # the gallery shows thumbnails of the CSV's names, found in the imported folders
    at.selectbox(key="cmp-gallery-category").set_value("people").run()
    assert not at.exception, at.exception
    assert len(at.get("image")) >= 2 and "no stored image" not in texts(at)
    # the demo classified (so embedded) its GEN images, not its REAL ones: the page says which set lacks
    # vectors for the chosen local model and offers to embed that set's dataset
    assert "demo-tiny-clip" in at.selectbox(key="cmp-model").value
    page = texts(at)
    assert "REAL-categorised: 0 of 12 images have vectors" in page and "GEN-categorised: 12 of 12" in page
    assert at.button(key="cmp-embed").disabled
    start = at.button(key="cmp-embed-start")
    assert "demo-REAL" in start.label and "demo-GEN" not in start.label
    start.click().run()
    assert not at.exception, at.exception
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    job = int(ws.catalog.scalar("SELECT MAX(id) FROM jobs WHERE kind = 'embed'"))
    deadline = time.time() + 180
    while time.time() < deadline and manager.progress(job).state in ("created", "running"):
        time.sleep(0.5)
    assert manager.progress(job).state == "completed" and manager.progress(job).params["dataset"] == "demo-REAL"
    ws.close()
    at.run()
    assert "REAL-categorised: 12 of 12 images have vectors" in texts(at)
    at.number_input(key="cmp-resamples").set_value(50).run()
    at.button(key="cmp-embed").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert {"Fréchet distance", "KID", "Domain classifier AUC"} <= set(metrics)
    assert "95% CI [" in texts(at) and "50 resamples" in texts(at)
    distances = next(d.value for d in at.dataframe if "FD 95% CI" in d.value.columns)
    assert (distances["FD"] == "too few").any()  # 12 and 12 images: no category has 20 in both sets
    at.button(key="cmp-confounds").click().run()
    assert not at.exception, at.exception
    properties = next(d.value for d in at.dataframe if "median JPEG quality" in d.value.columns)
    assert list(properties["set"]) == ["REAL-categorised", "GEN-categorised"]
    assert "share no file format" in texts(at) and "DeltaGenerator" not in texts(at)
    at.button(key="cmp-report").click().run()
    report = (root / "exports" / "compare-REAL-categorised-vs-GEN-categorised.html").read_text()
    assert "Embedding space" in report and "Image properties" in report


@pytest.mark.browser
def test_a_bar_of_the_first_chart_opens_thumbnails_in_chromium(tmp_path: Path):
    """In a real browser the chart under the hint (the first tab's) is clickable, and the category's images
    come up as thumbnails of the CSV's names, found in the imported folder."""
    from playwright.sync_api import expect, sync_playwright

    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.jobs.manager import JobManager
    from services.stages.compare.label_sets import import_categorized_csv
    from services.stages.download.folder_import import start_folder_import
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, dashboard_at
    from tests.support.fake_gemini import make_colour_png
    from tests.support.label_csvs import categorised

    root = tmp_path / "browser-ws"
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    for name, colour in (("REAL", "red"), ("GEN", "blue")):
        (tmp_path / name).mkdir()
        for i in range(6):
            (tmp_path / name / f"{name}-{i}.png").write_bytes(make_colour_png(colour, noise_seed=i))
        manager.run(start_folder_import(ws, manager, tmp_path / name, f"{name}-images"))
        rows = [(f"{name}-{i}.png", "squares" if i < 4 else "circles") for i in range(6)]
        import_categorized_csv(ws, categorised(tmp_path / f"{name}_sets.csv", rows))
    ws.close()
    with dashboard_at(tmp_path, root) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.goto(f"{base}/compare", wait_until="domcontentloaded")
        expect(page.get_by_text("Click a bar in any of these charts")).to_be_visible(timeout=60_000)
        bars = page.locator(".stPlotlyChart").filter(visible=True).locator("g.point path")  # "One set": first tab
        expect(bars.first).to_be_visible(timeout=30_000)
        box = bars.first.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.get_by_text("REAL_sets: squares").first).to_be_visible(timeout=30_000)
        gallery = page.locator('[data-testid="stImage"] img')
        expect(gallery.first).to_be_visible(timeout=30_000)
        assert gallery.count() >= 8  # 4 per set
        page.screenshot(path=str(tmp_path / "compare-thumbnails.png"), full_page=True)
        browser.close()


@pytest.mark.browser
def test_a_lasso_on_the_map_is_saved_as_a_dataset_in_chromium(tmp_path: Path):
    """In a real browser: compare the demo's REAL and GEN sets in CLIP space, draw a lasso round the map's points,
    and save them as a new dataset (a saved view): it holds exactly the images the map drew."""
    from playwright.sync_api import expect, sync_playwright

    from services.core.datasets import dataset_id_of, get_dataset
    from services.core.settings import load_settings
    from services.core.workspace import Workspace
    from services.demo.builder import build_demo
    from services.io.clip_models import ClipSpec
    from services.jobs.manager import JobManager
    from services.stages.embed.stage import start_embed
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, dashboard_at

    root = tmp_path / "demo-ws"
    ws = Workspace(root, load_settings())
    build_demo(ws, small=True)
    spec = ClipSpec(model="demo-tiny-clip", pretrained=None, device="cpu",
                    checkpoint=str(root / "models" / "demo-clip" / "open_clip_model.safetensors"))  # fmt: skip
    manager = JobManager(ws)
    assert manager.run(start_embed(ws, manager, "demo-REAL", spec, loader_workers=0)).state == "completed"
    ws.close()
    with dashboard_at(tmp_path, root) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(f"{base}/compare?cmp-resamples=20", wait_until="domcontentloaded")
        compute = page.get_by_role("button", name="Compare embeddings")
        expect(compute).to_be_enabled(timeout=120_000)
        compute.click()
        expect(page.get_by_text("Lasso points on the map")).to_be_visible(timeout=180_000)
        chart = page.locator(".stPlotlyChart").filter(has_text="embeddings").last  # the map's title
        chart.scroll_into_view_if_needed()
        area = chart.locator(".nsewdrag").first.bounding_box()
        assert area is not None
        mouse = page.mouse
        mouse.move(area["x"] + 2, area["y"] + 2)
        mouse.down()
        for fx, fy in ((0.99, 0.01), (0.99, 0.99), (0.01, 0.99), (0.01, 0.02)):
            mouse.move(area["x"] + area["width"] * fx, area["y"] + area["height"] * fy, steps=8)
        mouse.up()
        expect(page.get_by_text("images selected").first).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Save as a dataset").click()
        page.get_by_label("Dataset name").fill("lassoed")
        page.get_by_label("Dataset name").press("Enter")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_text("Saved dataset 'lassoed'")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "compare-lasso-saved.png"), full_page=True)
        selected = page.get_by_text("images selected").first.inner_text()
        browser.close()
    ws = Workspace(root, load_settings())
    view = get_dataset(ws.catalog, "lassoed")
    assert view is not None and view.kind == "view" and "lassoed on the map of" in view.source
    held = {r[0] for r in ws.catalog.query("SELECT image_hash FROM dataset_members WHERE dataset_id = ?",
                                           (dataset_id_of(ws.catalog, "lassoed"),))}  # fmt: skip
    drawn = {r[0] for r in ws.catalog.query(
        """SELECT image_hash FROM dataset_members WHERE dataset_id IN (SELECT id FROM datasets WHERE name IN
           ('demo-REAL', 'demo-GEN'))""")}  # fmt: skip
    assert held and held <= drawn  # the map's points are the two sets' embedded images
    assert f"{len(held)} images selected" in selected
    ws.close()

"""Names users give are shown as text on every page, never as Markdown (red-team finding R8).

A category, set, dataset, recipe description, rules description or job title holding `![t](http://host/x.png)`
or `[Sign in again](http://host/)` would make every teammate's browser fetch that URL, or show a link in the
app's own voice. These tests plant such names everywhere a user can put one and walk the pages: in AppTest,
every element Streamlit renders as Markdown must hold them escaped (ui/text.py); in Chromium, the rendered
pages hold no link or image to the planted host, and the host receives no request.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.compare.label_sets import import_categorized_csv
from services.stages.describe.categories import save_list
from services.stages.download.urls import start_url_download
from services.stages.ocr.rules import OcrRules, save_rules
from services.stages.preprocess.recipes import Grayscale, Recipe, save_recipe
from tests.conftest import ROOT
from ui.text import code, md, plot_text

HOST = "127.0.0.1:9"  # nothing listens there; the browser test uses a recording listener instead
IMAGE = f"![t](http://{HOST}/tracker.png)"
LINK = f"[Sign in again](http://{HOST}/phish)"
NO_SLASH = f"![d](https:{HOST}) [Sign in](https:{HOST}) <img src=x onerror=alert(1)>"  # dataset names cannot hold '/'


def plant(root: Path, tmp_path: Path, image: str = IMAGE, link: str = LINK, no_slash: str = NO_SLASH) -> str:
    """Hostile names in every place a user names something; returns the hostile dataset's name."""
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    urls = tmp_path / "urls.csv"
    urls.write_text("image_link\nhttp://example.org/a.png\n")
    dataset = f"{no_slash} set"
    start_url_download(ws, manager, urls, dataset, url_column="image_link")  # a job titled after it (not run)
    save_list(ws, "hostile", [image, link, "cats"], "test")
    categorised = tmp_path / "categorised.csv"
    categorised.write_text(
        f'image_name,description,categories\n"{image}",x,"{image}, cats"\n"{link}",y,"{link}"\nc.png,z,cats\n',
        encoding="utf-8",
    )
    import_categorized_csv(ws, categorised, f"REAL {no_slash}")
    import_categorized_csv(ws, categorised, "GEN")
    save_recipe(ws.root, Recipe(name="hostile", description=f"{image} {link}", ops=[Grayscale()]))
    save_rules(ws.root, OcrRules(name="hostile-rules", description=f"{image} {link}"))
    ws.close()
    return dataset


RENDERED_AS_MARKDOWN = ("markdown", "caption", "success", "info", "warning", "error", "toast")


def markdown_texts(at: AppTest) -> list[str]:
    """The bodies and labels Streamlit renders as Markdown on this page."""
    texts = [str(e.value) for kind in RENDERED_AS_MARKDOWN for e in getattr(at, kind)]
    texts += [str(m.label) for m in at.metric] + [str(b.label) for b in at.button]
    texts += [str(e.label) for e in at.expander] + [str(o) for r in at.radio for o in r.options]
    return texts


def live_markup(text: str) -> list[str]:
    """What in `text` Markdown would turn into a link, an image, HTML or an autolink to the planted host."""
    outside_code = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text)
    pattern = rf"(?<!\\)\]\(|(?<!\\)<[A-Za-z/!]|(?<!\\)://{re.escape(HOST)}|(?<!\\)\bwww\."
    return re.findall(pattern, outside_code)


@pytest.fixture
def hostile_workspace(trained: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    root = tmp_path / "ws"
    shutil.copytree(trained[0], root)
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    monkeypatch.setenv("WORKBENCH_CLIP__CHECKPOINT", trained[1].checkpoint)
    monkeypatch.setenv("WORKBENCH_CLIP__MODEL", trained[1].model)
    monkeypatch.setenv("WORKBENCH_CLIP__DEVICE", "cpu")
    yield plant(root, tmp_path)


def test_every_page_shows_planted_names_as_text(hostile_workspace: str) -> None:
    dataset = hostile_workspace
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    shown: dict[str, int] = {}

    def visit(page: str, *steps: Any) -> None:
        at.switch_page(page).run()
        for step in steps:
            step()
            at.run()
        assert not at.exception, (page, at.exception)
        texts = markdown_texts(at)
        shown[page] = sum(HOST in t for t in texts)
        bad = {t: live_markup(t) for t in texts if live_markup(t)}
        assert not bad, (page, bad)

    visit("app_pages/download.py")  # the job panel of the last download job, titled with the dataset
    visit(
        "app_pages/describe.py",
        lambda: at.selectbox(key="dc-list").set_value("hostile v1"),
        lambda: at.selectbox(key="dc-dataset").set_value(dataset),
    )
    visit(
        "app_pages/preprocess.py",
        lambda: at.selectbox(key="pp-recipe").set_value("hostile"),
        lambda: at.selectbox(key="pp-dataset").set_value(dataset),
    )
    visit(
        "app_pages/compare.py",
        lambda: at.selectbox(key="cmp-a").set_value(f"REAL {NO_SLASH}"),
        lambda: at.selectbox(key="cmp-b").set_value("GEN"),
        lambda: at.selectbox(key="cmp-gallery-category").set_value(IMAGE),
    )
    visit("app_pages/ocr.py", lambda: at.selectbox(key="ocr-rules").set_value("hostile-rules"))
    visit("app_pages/embed_train.py", lambda: at.selectbox(key="et-dataset").set_value(dataset))
    missing = [page for page, n in shown.items() if n == 0]
    assert not missing, f"the planted names were not shown on {missing}: the walk checked nothing there"


def test_md_and_code_keep_ordinary_names_and_neutralise_markup() -> None:
    for ordinary in ("REAL_set", "ViT-B-32/openai", "cats, dogs", "part 25-01 (left)", "über-set"):
        assert md(ordinary) == ordinary
    for hostile in (IMAGE, LINK, NO_SLASH, f"<http://{HOST}/>", f"www.{HOST}", ":red[ALERT]", "$x$", "**b**"):
        assert not live_markup(md(hostile)), md(hostile)
        assert not re.search(r"(?<!\\)[\[\]<>$*]", md(hostile))
    assert md("a\nb\r\n# heading") == "a b \\# heading"
    assert code("a`b") == "``a`b``" and code("`x") == "`` `x ``" and code("plain") == "`plain`"
    assert plot_text('<a href="http://x">c</a> & more') == '&lt;a href="http://x"&gt;c&lt;/a&gt; &amp; more'


@pytest.mark.browser
def test_planted_names_reach_no_browser_as_links_or_images(
    trained: tuple[Path, Any], tmp_path: Path, secret: Any
) -> None:
    """In Chromium, against `python -m services dashboard`: the pages that show planted names hold no link
    or image to the planted host, and the host gets no request."""
    from playwright.sync_api import sync_playwright

    from tests.security.servers import dashboard_server
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    host = f"127.0.0.1:{secret.port}"
    image, link = f"![t](http://{host}/tracker.png)", f"[Sign in again](http://{host}/phish)"
    root = tmp_path / "ws"
    shutil.copytree(trained[0], root)
    plant(root, tmp_path, image, link, f"![d](http:{host}) [Sign in](http:{host})")
    settings = {
        "WORKBENCH_WORKSPACE": str(root),
        "WORKBENCH_CLIP__CHECKPOINT": trained[1].checkpoint,
        "WORKBENCH_CLIP__MODEL": trained[1].model,
        "WORKBENCH_CLIP__DEVICE": "cpu",
        "WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS": json.dumps(["127.0.0.2/32"]),
    }
    command = ["services", "--workspace", str(root), "dashboard", "--port", "{port}"]
    markup: dict[str, Any] = {}
    with dashboard_server(command, tmp_path / "dashboard.log", **settings) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        for path, marker in (("describe", "Category list"), ("download", "Download jobs"), ("compare", "Per category")):
            page.goto(f"{base}/{path}", wait_until="domcontentloaded")
            page.get_by_text(marker).first.wait_for(timeout=60_000)
            page.wait_for_timeout(2500)
            markup[path] = page.evaluate(
                """host => ({
                    links: [...document.querySelectorAll('a[href]')].map(a => a.href).filter(h => h.includes(host)),
                    images: [...document.querySelectorAll('img[src]')].map(i => i.src).filter(s => s.includes(host)),
                    text: document.body.innerText.includes(host),
                })""",
                host,
            )
        browser.close()
    assert all(m["text"] for m in markup.values()), markup  # the planted names were on the pages, as text
    assert not any(m["links"] or m["images"] for m in markup.values()), markup
    assert not secret.requests, [r.path for r in secret.requests]

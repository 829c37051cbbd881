"""Red-team findings against the team server after issue 14 landed (tests/security/REDTEAM.md has the details).

Each test reproduces one finding against real parts (the REST API served by uvicorn on loopback, the dashboard
through AppTest or a real Chromium, the services the pages call) and is `xfail(strict=True)` with the
finding's reason: the suite stays green while the hole is open, and the test flips to XPASS (a failure, so
the marker must be removed) when the fix lands. Every test states what a fixed product does, whatever the fix.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from services.core.auth import hash_password
from services.core.datasets import list_datasets
from services.core.settings import load_settings
from services.core.sign_in_throttle import SignInThrottle, attempt_sign_in, throttle_folder
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.rules import OcrRules, RulesError, save_rules
from services.stages.preprocess.recipes import Grayscale, Recipe, RecipeError, Resize, save_recipe
from tests.conftest import ROOT
from tests.security.servers import TOKEN, answered, api_server, raw_request, read_response
from tests.support.text_images import render_png
from ui.clip_picker import OTHER

APP = str(ROOT / "app.py")
MB = 2**20


# --- helpers --------------------------------------------------------------------------------------------


def rendered(at: AppTest) -> str:
    """Every element of the page as text (protos carry values, captions, help texts, dataframes)."""

    def walk(node: Any) -> Iterator[str]:
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                yield from walk(child)
        else:
            yield str(getattr(node, "proto", "")) + str(getattr(node, "value", ""))

    return "\n".join(walk(at._tree))


def signed_in() -> AppTest:
    """A browser session signed in as alice (WORKBENCH_USERS set by the fixture)."""
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.text_input(key="sign-in-name").input("alice")
    at.text_input(key="sign-in-password").input("pw-alice")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("Signed in as **alice**" in c.value for c in at.sidebar.caption)
    return at


@pytest.fixture
def team_server(trained: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A copy of the trained workspace behind sign-in, with the CLIP checkpoint configured by the administrator
    (how an offline server runs Embed, Describe and Classify), no `server_paths` (so no server path at all may
    be read from a page), and a home folder holding a private photo and a backup zip."""
    root = tmp_path / "ws"
    shutil.copytree(trained[0], root)
    spec = trained[1]
    home = tmp_path / "home"
    (home / "Pictures").mkdir(parents=True)
    (home / "Pictures" / "passport.png").write_bytes(render_png("PRIVATE PASSPORT 1234"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("pw-alice", iterations=1000)}))
    monkeypatch.setenv("WORKBENCH_CLIP__CHECKPOINT", spec.checkpoint)
    monkeypatch.setenv("WORKBENCH_CLIP__MODEL", spec.model)
    monkeypatch.setenv("WORKBENCH_CLIP__DEVICE", "cpu")
    return {"ws": root, "home": home, "checkpoint": Path(spec.checkpoint), "tmp": tmp_path}


def _finish_jobs(root: Path) -> None:
    """Let background jobs a test started end before its folders are removed."""
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    for job in manager.list(limit=50, active_only=True):
        manager.wait(job.id, timeout=120)
    ws.close()


def post_json(base: str, path: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- R1: a CLIP model name writes a file anywhere ---------------------------------------------------------


def test_a_clip_model_name_never_becomes_a_path(team_server: dict[str, Path]) -> None:
    """R1 (fixed: ClipSpec checks model and tag names; the sidecar config goes through resolve_in)."""
    target = team_server["tmp"] / "written-by-a-model-name"
    at = signed_in()
    for page, key in (("app_pages/embed_train.py", "et"), ("app_pages/describe.py", "dc-clip")):
        at.switch_page(page).run()
        at.selectbox(key=f"{key}-pick").set_value(OTHER).run()  # the configured checkpoint stays in the field
        for name in ("/../../../../../../../.." + str(target), "../../../../../../../.." + str(target)):
            at.text_input(key=f"{key}-model").input(name).run()
            assert not at.exception, at.exception
            assert not target.with_suffix(".json").exists(), "the model name was used as a path and a file was written"
            assert any("open_clip model" in e.value and "not a path" in e.value for e in at.error), page


# --- R2: a dataset named "~" imports the server's home folder ---------------------------------------------


def test_a_dataset_name_is_never_read_as_a_server_path(team_server: dict[str, Path]) -> None:
    """R2 (fixed: a dataset picked on a page is classified by name only, start_classify_dataset; new dataset
    names cannot start with '~')."""
    home = team_server["home"]
    at = signed_in()
    try:
        at.switch_page("app_pages/compare.py").run()  # any page that names a dataset: a categorised CSV here
        csv = b"image_name,description,categories\na.png,x,cat\n"
        at.file_uploader(key="cmp-upload").upload("set.csv", csv, "text/csv").run()
        at.text_input(key="cmp-csv-name").input("~")
        at.button(key="cmp-import").click().run()
        assert not at.exception, at.exception
        assert any("cannot start with '\\~'" in e.value for e in at.error), [e.value for e in at.error]  # md-escaped
        # datasets named before names were checked: '~', and 'home', a folder in the server's working directory
        for legacy in ("~", "home"):
            ws = Workspace(team_server["ws"], load_settings())
            with ws.catalog.write() as conn:
                conn.execute("UPDATE datasets SET name = ? WHERE kind = 'folder'", (legacy,))
            ws.close()
            at.switch_page("app_pages/classify.py").run()
            at.radio(key="cl-how").set_value("A dataset").run()
            at.selectbox(key="cl-dataset").set_value(legacy).run()
            at.button(key="cl-run").click().run()
            assert not at.exception, at.exception
            assert not at.error, [e.value for e in at.error]
            ws = Workspace(team_server["ws"], load_settings())
            job = JobManager(ws).progress(at.session_state["cl-job"])
            sources = {d.name: d.source for d in list_datasets(ws.catalog)}
            ws.close()
            assert job.params["dataset"] == legacy and job.params["import_job"] is None, job.params
            assert str(home) not in sources.values(), f"the server's home folder was imported: {sources}"
            _finish_jobs(team_server["ws"])
    finally:
        _finish_jobs(team_server["ws"])


# --- R3: a saved OCR pattern freezes the server -----------------------------------------------------------


def test_a_saved_ocr_pattern_cannot_stall_the_server(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    Workspace(root, load_settings()).close()
    try:  # what the OCR page's "Save rules" does with a user's pattern
        save_rules(root, OcrRules(name="greedy", strip=" ", pattern="(a+)+"))
    except (RulesError, ValueError) as exc:  # a fix may refuse such a pattern when it is saved
        assert "pattern" in str(exc)
        return
    image = base64.b64encode(render_png("a" * 28 + " 1", mono=True)).decode()
    with api_server(root, tmp_path / "api.log") as served:
        reader = threading.Thread(
            target=lambda: _quietly(post_json, served.base, "/ocr?engine=tesseract&rules=greedy", {"image": image}),
            daemon=True,
        )
        try:
            reader.start()
            slowest = 0.0
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    urllib.request.urlopen(served.base + "/health", timeout=10).read()
                except OSError:
                    slowest = max(slowest, 10.0)
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.25)
        finally:
            os.kill(served.pid, signal.SIGKILL)  # a process stuck in a regex never reaches its SIGTERM handler
    assert slowest < 2.0, f"/health took {slowest:.1f}s while one OCR request matched a user's pattern"


def _quietly(function: Any, *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # the server is killed at the end of the test, mid-answer
        pass


# --- R4: recipes are not bounded by any pixel limit -------------------------------------------------------


def test_a_recipe_cannot_make_an_image_over_the_pixel_limit(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    Workspace(root, load_settings()).close()
    try:  # what the Preprocess page's "Save recipe" does (any signed-in user)
        save_recipe(root, Recipe(name="big", ops=[Grayscale(), Resize(width=4096, height=1200)]))
    except (RecipeError, ValueError) as exc:  # a fix may bound the recipe itself
        assert "pixel" in str(exc)
        return
    image = base64.b64encode(render_png("2512345678901", mono=True)).decode()  # 322x56 pixels
    with api_server(root, tmp_path / "api.log", WORKBENCH_API__MAX_IMAGE_PIXELS="100000") as served:
        status, body = post_json(served.base, "/ocr?engine=tesseract&recipe=big", {"image": image})
    assert status in (413, 422) and "pixel" in str(body), (status, body)  # 4.9 MP made from a 0.1 MP limit


# --- R5: POST /ocr reads the whole body before its size check ---------------------------------------------


@pytest.mark.parametrize("kind", ["multipart/form-data; boundary=b", "application/json"])
def test_ocr_refuses_a_body_that_cannot_fit_the_image_limit_before_reading_it(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "ws"
    Workspace(root, load_settings()).close()
    with api_server(root, tmp_path / "api.log", WORKBENCH_API__MAX_IMAGE_BYTES=str(MB)) as served:
        start = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
            if kind.startswith("multipart")
            else b'{"image": "'
        )  # a well-formed start, so the server has every reason to read on
        sock = raw_request(
            served.port,
            f"POST /ocr HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {48 * MB}",
        )
        try:
            pieces = [start] + [b"A" * 64 * 1024] * 32  # a 48 MB body declared for a 1 MB image limit; 2 MB of it
            for piece in pieces:
                if answered(sock, 0.005):
                    break  # answered before the client sent it all
                try:
                    sock.sendall(piece)
                except OSError:
                    break  # refused and closed before the body was read
            assert answered(sock, 5), "no answer until the whole 48 MB body is read"
            assert read_response(sock)[0] == 413
        finally:
            sock.close()


# --- R6: a signed-in session holds any number of uploads in memory ----------------------------------------


@pytest.mark.browser
def test_a_session_cannot_hold_more_than_the_upload_limit(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    from tests.security.servers import dashboard_server
    from tests.security.test_upload_gate import _uploaded_bytes
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    ws_root = tmp_path / "ws"
    settings = {
        "WORKBENCH_WORKSPACE": str(ws_root),
        "WORKBENCH_USERS": json.dumps({"alice": hash_password("s3cret!", iterations=1000)}),
        "WORKBENCH_MAX_UPLOAD_MB": "1",
        "WORKBENCH_METRICS_NETWORKS": '["127.0.0.1/32"]',  # the test reads what Streamlit holds from them
    }
    command = ["services", "--workspace", str(ws_root), "dashboard", "--port", "{port}"]  # what `make run` runs
    with dashboard_server(command, tmp_path / "dashboard.log", **settings) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        sessions: list[str] = []

        def on_frame(payload: bytes | str) -> None:
            if isinstance(payload, bytes):
                msg = ForwardMsg()
                msg.ParseFromString(payload)
                if msg.HasField("new_session") and msg.new_session.initialize.session_id:
                    sessions.append(msg.new_session.initialize.session_id)

        page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
        page.goto(base, wait_until="domcontentloaded")
        page.get_by_role("textbox", name="User").fill("alice")
        page.get_by_role("textbox", name="Password").fill("s3cret!")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Signed in as")).to_be_visible(timeout=30_000)
        xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_streamlit_xsrf")
        statuses = []
        for i in range(6):  # six files, each within the 1 MB limit, under six file ids
            url = f"{base}/_stcore/upload_file/{sessions[-1]}/f{i}-{time.monotonic_ns()}"
            file = {"name": f"f{i}.bin", "mimeType": "application/octet-stream", "buffer": b"\1" * (900 * 1024)}
            statuses.append(page.request.put(url, multipart={"file": file}, headers={"X-Xsrftoken": xsrf}).status)
        time.sleep(5.5)  # Streamlit caches its metrics for 5 s
        held = _uploaded_bytes(page, base)
        browser.close()
    assert held <= 2 * MB, f"one session holds {held / MB:.1f} MB of uploads (limit 1 MB per file): {statuses}"


# --- R7: concurrent sign-ins pass the per-user limit ------------------------------------------------------


def test_concurrent_sign_in_attempts_cannot_pass_the_per_user_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import hashlib

    encoded = hash_password("the-right-one")  # the product's 600,000 iterations
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": encoded}))
    monkeypatch.setenv("WORKBENCH_SIGN_IN__MAX_FAILURES_PER_USER", "3")
    settings = load_settings()
    throttle = SignInThrottle(throttle_folder(settings.workspace), settings.sign_in)
    # count the password hashes the guesses cost, at the library: CPU time said the same but read 5 for 3 when
    # two hashes shared one core's hyperthreads (the first version of this test, a flake under load)
    real_pbkdf2 = hashlib.pbkdf2_hmac
    hashed: list[int] = []

    def counting_pbkdf2(*args: Any, **kwargs: Any) -> bytes:
        hashed.append(1)
        return real_pbkdf2(*args, **kwargs)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting_pbkdf2)
    guesses = 10
    barrier = threading.Barrier(guesses)

    def guess(i: int) -> None:
        barrier.wait()
        attempt_sign_in(settings, throttle, "alice", f"guess-{i}", "203.0.113.7")

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(guesses)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    throttle.close()
    assert len(hashed) == 3, f"{len(hashed)} of {guesses} simultaneous guesses were checked; the limit is 3"


# --- R8: names shown as Markdown --------------------------------------------------------------------------


def test_names_from_users_are_shown_as_text_not_markdown(team_server: dict[str, Path]) -> None:
    """R8 (fixed: pages pass users' text through ui/text.py's md/code; tests/security/test_markdown_names.py
    walks the other pages)."""
    at = signed_in()
    at.switch_page("app_pages/describe.py").run()
    csv = b"Category\n![t](http://127.0.0.1:9/tracker.png)\n[Sign in again](http://127.0.0.1:9/)\ncats\n"
    at.file_uploader(key="dc-cat-upload").upload("cats.csv", csv, "text/csv").run()
    at.button(key="dc-cat-upload-save").click().run()
    assert not at.exception, at.exception
    shown = [e.value for e in (*at.success, *at.caption, *at.markdown)]
    assert any("tracker.png" in text for text in shown), "the list was not saved and shown"
    as_markdown = [re.sub(r"`[^`]*`", "", text) for text in shown]  # code spans show their text as it is
    assert not [text for text in as_markdown if "](http://127.0.0.1:9/" in text], shown


# --- R9, R10: server paths shown to API clients and signed-in users ----------------------------------------


def test_api_image_metadata_carries_no_server_path(tmp_path: Path) -> None:
    """R9 (fixed: locators are shown relative to their import root, services/core/locators.py)."""
    root = tmp_path / "ws"
    folder = tmp_path / "private-layout" / "parts"
    folder.mkdir(parents=True)
    (folder / "p.png").write_bytes(render_png("251234"))
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "parts"))
    ws.close()
    with api_server(root, tmp_path / "api.log") as served:
        request = urllib.request.Request(served.base + "/images/random", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
    assert "p.png" in body  # the source is named...
    assert str(tmp_path) not in body, body  # ...but not where the server keeps it
    assert json.loads(body)["sources"] == [{"kind": "path", "locator": "parts/p.png"}]


def test_the_configured_checkpoint_path_is_not_shown(team_server: dict[str, Path]) -> None:
    """R10 (fixed: the checkpoint field shows display_path, which stands for the configured file)."""
    at = signed_in()
    for page, key in (("app_pages/embed_train.py", "et"), ("app_pages/describe.py", "dc-clip")):
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert str(team_server["checkpoint"].parent) not in rendered(at)
        at.selectbox(key=f"{key}-pick").set_value(OTHER).run()  # the field holding the configured checkpoint
        assert not at.exception, at.exception
        assert at.text_input(key=f"{key}-checkpoint").value == team_server["checkpoint"].name
        assert str(team_server["checkpoint"].parent) not in rendered(at)
        assert not at.error, [e.value for e in at.error]  # the name shown still stands for the configured file
        assert f"Weights: `{team_server['checkpoint'].name}`" in [c.value for c in at.caption]


# --- R11: the server's AWS key id and session token go to any endpoint a user types -----------------------


def test_a_typed_s3_endpoint_never_receives_the_servers_credentials(
    team_server: dict[str, Path], allowed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "planted-session-token-7d1c")
    at = signed_in()
    at.switch_page("app_pages/download.py").run()
    at.file_uploader(key="s3-upload").upload("names.csv", b"name\na.jpg\n", "text/csv").run()
    at.text_input(key="s3-bucket").input("company-bucket")
    at.text_input(key="s3-endpoint").input(allowed.base).run()  # 127.0.0.2 stands for any host on the internet
    at.button(key="s3-analyse").click().run()
    assert not at.exception, at.exception
    sent = [r.headers for r in allowed.requests]
    assert sent, "the page sent nothing to the endpoint (the reproduction did not run)"
    leaked = [h for h in sent if "planted-session-token-7d1c" in str(h) or "Credential=testing/" in str(h)]
    assert not leaked, leaked

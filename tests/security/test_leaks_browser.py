"""Issue 14 part 2 in a real browser against `streamlit run dashboard.py` (what `make run` starts) with sign-in:
`/_stcore/metrics` is not public, and neither the pages nor the websocket messages, before or after signing in,
carry the app's folder, the workspace's path or a planted secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.auth import hash_password
from tests.conftest import free_port
from tests.support.browser import wait_until_served

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PLANTED = "planted-gemini-key-91f0aa"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ws_root = tmp_path / "secret-place-ws"
    port = free_port()
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), WORKBENCH_WORKSPACE=str(ws_root), WORKBENCH_GEMINI_API_KEY=PLANTED,
        WORKBENCH_USERS=json.dumps({"alice": hash_password("pw-alice", iterations=1000)}),
    )  # fmt: skip
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
         "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(base, tmp_path / "streamlit.log")
        yield base, ws_root
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_metrics_and_pages_leak_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, ws_root = served
    for path in ("/_stcore/metrics", "/_stcore/metrics?families=session_events", "/_stcore/metrics/"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + path, timeout=10)
        assert caught.value.code == 404
    with urllib.request.urlopen(f"{base}/_stcore/health", timeout=10) as resp:
        assert resp.status == 200  # the health check a proxy needs still answers

    frames: list[bytes] = []
    texts: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda f: frames.append(f if isinstance(f, bytes) else f.encode())),
        )
        for path in ("/download", "/no-such-page"):  # before signing in: a deep link and an unknown page
            page.goto(base + path, wait_until="domcontentloaded")
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=30_000)
            texts.append(page.content())
        signed_out_frames = len(frames)
        page.get_by_label("User").fill("alice")
        page.locator("input[type=password]").fill("pw-alice")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Signed in as")).to_be_visible(timeout=30_000)
        page.get_by_role("link", name="Download").click()  # the sign-in lives in this session: navigate in it
        expect(page.get_by_role("heading", name="Download", exact=True)).to_be_visible(timeout=30_000)
        page.get_by_text("Path on the server").first.click()
        expect(page.get_by_text("Paths on the server are off").first).to_be_visible(timeout=15_000)
        page.get_by_role("link", name="Describe & Categorize").click()
        expect(page.get_by_role("heading", name="Describe & Categorize")).to_be_visible(timeout=30_000)
        texts.append(page.content())
        page.screenshot(path=str(tmp_path / "describe.png"))
        browser.close()
    assert signed_out_frames > 0 and len(frames) > signed_out_frames
    everything = b"".join(frames) + "".join(texts).encode()
    for secret in (PLANTED, str(ROOT), str(ws_root), str(tmp_path)):
        assert secret.encode() not in everything, secret
    assert b"secret-place-ws" in everything  # the workspace is named (sidebar), just not located

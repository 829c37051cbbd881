"""R12: sessions that have not signed in are bounded per client address on a dashboard with sign-in (`make run`,
ui/session_limit.py): one more websocket is refused at its handshake, a closed one frees its place, a session
that signs in stops counting, and an open workbench is not limited at all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from services.core.auth import hash_password
from tests.security.servers import dashboard_server

pytestmark = pytest.mark.browser
COMMAND = ["services", "--workspace", "{ws}", "dashboard", "--port", "{port}"]  # what `make run` runs


@contextmanager
def open_session(base: str) -> Iterator[ClientConnection]:
    """A websocket session as a browser opens one, asking for the page (a script run: the session starts)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    with connect(base.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit"], open_timeout=30) as sock:
        message = BackMsg()
        message.rerun_script.query_string = ""
        sock.send(message.SerializeToString())
        yield sock


def refused(base: str) -> bool:
    try:
        with open_session(base):
            return False
    except InvalidStatus as exc:
        assert exc.response.status_code == 403
        return True


def _server(tmp_path: Path, users: bool):
    ws_root = tmp_path / "ws"
    settings = {"WORKBENCH_WORKSPACE": str(ws_root), "WORKBENCH_SIGN_IN__MAX_ANONYMOUS_SESSIONS_PER_ADDRESS": "2"}
    if users:
        settings["WORKBENCH_USERS"] = json.dumps({"alice": hash_password("s3cret!", iterations=1000)})
    command = [part.replace("{ws}", str(ws_root)) for part in COMMAND]
    return dashboard_server(command, tmp_path / "dashboard.log", **settings)


def test_sessions_that_have_not_signed_in_are_bounded_per_address(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    with _server(tmp_path, users=True) as base, ExitStack() as held, sync_playwright() as pw:
        # a browser signs in: its session counted while the form showed, and stops counting once signed in
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(base, wait_until="domcontentloaded")
        page.get_by_role("textbox", name="User").fill("alice")
        page.get_by_role("textbox", name="Password").fill("s3cret!")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Signed in as")).to_be_visible(timeout=30_000)
        first = held.enter_context(open_session(base))
        held.enter_context(open_session(base))
        time.sleep(1)
        assert refused(base)  # a third session that has not signed in, from this address
        first.close()
        time.sleep(1)  # the server sees the close
        third = held.enter_context(open_session(base))  # its place is free again
        assert refused(base)
        # the signed-in session was never refused and still works
        page.get_by_role("link", name="Download").click()
        expect(page.get_by_role("heading", name="Download", exact=True)).to_be_visible(timeout=30_000)
        third.close()
        browser.close()
    log = (tmp_path / "dashboard.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "session refused" in log and "already has 2 sessions that have not signed in" in log


def test_an_open_workbench_is_not_limited(tmp_path: Path) -> None:
    with _server(tmp_path, users=False) as base, ExitStack() as held:
        for _ in range(4):
            held.enter_context(open_session(base))
        assert not refused(base)

"""The explicit pulls give up in time, with the reason, really stop the download, and never download anything
on their own; on a server with sign-in a page may not pull at all unless an administrator allows it."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.settings import load_settings
from services.io.clip_models import ClipSpec, ModelUnavailableError, pull_weights
from services.io.pulls import Pull, PullError, hf_repo_folder, page_pulls_allowed, remove_partial_files, run_pull

SIZE = 50_000_000  # what the fake hub announces; it sends 20 KB a second, so the pull never ends on its own


class TrickleHub(http.server.ThreadingHTTPServer):
    """A Hugging Face endpoint on loopback whose files arrive at a trickle; it records when each download's
    client went away (the proof that a stopped pull stops downloading)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TrickleHandler)
        self.requests: list[str] = []
        self.downloads_started: list[float] = []
        self.downloads_ended: list[float] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TrickleHub

    def _headers(self, found: bool) -> None:
        self.send_response(200 if found else 404)
        if found:  # what huggingface_hub reads: the commit, the blob's etag and its size
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("ETag", '"' + "b" * 64 + '"')
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(SIZE if found else 0))
        self.end_headers()

    def do_HEAD(self) -> None:
        self.server.requests.append(f"HEAD {self.path}")
        self._headers("/resolve/" in self.path)

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        if "/resolve/" not in self.path:
            self._headers(False)
            return
        self._headers(True)
        self.server.downloads_started.append(time.monotonic())
        try:
            for _ in range(SIZE // 1024):
                self.wfile.write(b"\0" * 1024)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client is gone
            pass
        self.server.downloads_ended.append(time.monotonic())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def trickle_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrickleHub]:
    hub = TrickleHub()
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # the real pull code path, pointed at loopback
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    yield hub
    hub.shutdown()
    hub.server_close()


def test_a_pull_past_its_timeout_is_stopped_and_its_partial_file_removed(trickle_hub: TrickleHub) -> None:
    """R13: the timeout once only stopped waiting; the download went on in a thread. Now the pull's process
    is killed: the hub sees its client go within seconds, and the `.incomplete` blob is gone."""
    blobs = hf_repo_folder("timm/vit_base_patch32_clip_224.openai") / "blobs"
    seen_partial: list[int] = []

    def watch() -> None:  # the partial file while the download runs
        while not trickle_hub.downloads_ended:
            seen_partial.extend(p.stat().st_size for p in blobs.glob("*.incomplete") if p.exists())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    timeout = 20.0  # the pull's process imports torch first: seconds on a busy machine
    import open_clip  # noqa: F401 (imported here, so the clock below times the pull, not this import)

    started = time.monotonic()
    stopped_message = r"took over 20s; the download was stopped; 1 partial file removed"
    with pytest.raises(ModelUnavailableError, match=stopped_message):
        pull_weights(ClipSpec("ViT-B-32", "openai"), timeout)
    stopped = time.monotonic()
    assert stopped - started < timeout + 8
    assert trickle_hub.downloads_started, f"the download never started: {trickle_hub.requests}"
    assert trickle_hub.downloads_started[0] < started + timeout
    deadline = time.monotonic() + 5
    while not trickle_hub.downloads_ended and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trickle_hub.downloads_ended, "the download went on after the pull was stopped"
    assert trickle_hub.downloads_ended[0] - stopped < 3
    watcher.join(5)
    assert seen_partial, "no partial file was being written"  # huggingface_hub writes it in 10 MB chunks
    assert not list(blobs.glob("*.incomplete")), "the partial file was left in the cache"
    assert not list(blobs.glob("*")), "a blob of the stopped pull is in the cache"


def test_a_failing_pull_says_why_and_a_good_one_gives_its_path(tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"could not download bad/thing: ValueError: unknown pull 'nonsense x'"):
        run_pull(Pull("bad/thing", ("nonsense", "x")), 60)
    with pytest.raises(PullError, match="could not download ViT-B-32/nonsense: ValueError: ViT-B-32 has no pretrained"):
        run_pull(Pull("ViT-B-32/nonsense", ("clip", "ViT-B-32", "nonsense")), 60)


def test_partial_files_are_only_those_written_during_the_pull(tmp_path: Path) -> None:
    old = tmp_path / "repo" / "blobs" / "old.incomplete"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    since = time.time() + 5  # as if the pull began after `old` was written
    new = tmp_path / "repo" / "blobs" / "new.incomplete"
    new.write_bytes(b"x")
    import os

    os.utime(new, (since + 1, since + 1))
    complete = tmp_path / "clip" / "ViT-B-32.pt"
    complete.parent.mkdir()
    complete.write_bytes(b"weights")  # a file from before: kept
    assert remove_partial_files([tmp_path / "repo", complete], since) == 1
    assert old.exists() and not new.exists() and complete.exists()


def test_pull_refuses_an_unknown_tag_before_any_network():
    with pytest.raises(ModelUnavailableError, match="no pretrained tag 'nonsense'"):
        pull_weights(ClipSpec("ViT-B-32", "nonsense"), 5)


def test_pages_pull_on_a_laptop_and_only_when_allowed_on_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.allow_page_pulls is None
    assert page_pulls_allowed(settings, sign_in=False) and not page_pulls_allowed(settings, sign_in=True)
    monkeypatch.setenv("WORKBENCH_ALLOW_PAGE_PULLS", "true")
    assert page_pulls_allowed(load_settings(), sign_in=True)
    monkeypatch.setenv("WORKBENCH_ALLOW_PAGE_PULLS", "false")
    assert not page_pulls_allowed(load_settings(), sign_in=False)


def test_a_team_server_page_offers_no_pull_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from services.core.auth import hash_password
    from tests.conftest import ROOT, free_port

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("pw", iterations=1000)}))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from services.core.workspace import Workspace
    from services.jobs.manager import JobManager
    from services.stages.download.folder_import import start_folder_import
    from tests.support.tagged_images import tagged_tree

    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / "colours", per_tag=2), "colours"))
    ws.close()
    for allowed in (None, "true"):
        if allowed:  # the dashboard reads its settings once per workspace: a second one for the new setting
            monkeypatch.setenv("WORKBENCH_ALLOW_PAGE_PULLS", allowed)
            shutil.copytree(tmp_path / "ws", tmp_path / "ws-allowed")
            monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws-allowed"))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.text_input(key="sign-in-name").input("alice")
        at.text_input(key="sign-in-password").input("pw")
        at.button[0].click().run()
        at.switch_page("app_pages/embed_train.py").run()
        assert not at.exception, at.exception
        assert any("models pull ViT-B-32/openai" in w.value for w in at.warning)  # no weights here
        pull = [b for b in at.button if b.key == "et-pull"]
        if allowed:
            assert pull, "an administrator allowed page pulls"
        else:
            assert not pull
            assert any("allow_page_pulls" in c.value for c in at.caption)

"""Debian chromium for Playwright, and the dashboard served on a free port for a test."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait_until_served(base: str, log_path: Path, seconds: float = 60.0) -> None:
    """Until Streamlit at `base` answers its health check; the test fails with the server's log if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])


@contextlib.contextmanager
def dashboard_at(tmp_path: Path, ws_root: Path) -> Iterator[str]:
    """`streamlit run app.py` on a free port over `ws_root`, with this process's environment."""
    port = free_port()
    env = dict(os.environ, WORKBENCH_WORKSPACE=str(ws_root), PYTHONPATH=str(ROOT))
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(base, tmp_path / "streamlit.log")
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()

"""The environment that points the real Gemini SDK at the fake server, and a small dataset of coloured shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from tests.support.fake_gemini import API_KEY, FakeGemini, make_colour_png


def gemini_env(monkeypatch: pytest.MonkeyPatch, server: FakeGemini, **extra: str) -> None:
    env = {
        "WORKBENCH_GEMINI_API_KEY": API_KEY,
        "WORKBENCH_GEMINI__BASE_URL": server.base_url,
        "WORKBENCH_GEMINI__REQUESTS_PER_MINUTE": "6000",
        "WORKBENCH_GEMINI__BURST": "20",
        "WORKBENCH_GEMINI__TIMEOUT_SECONDS": "2",
        "WORKBENCH_PROCESSING__RETRY_BACKOFF_SECONDS": "0.05",
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def colour_dataset(ws: Workspace, tmp_path: Path, colours: list[str], name: str = "shapes") -> str:
    folder = tmp_path / name
    folder.mkdir()
    for i, colour in enumerate(colours):
        (folder / f"{i:02d}_{colour}.png").write_bytes(make_colour_png(colour, noise_seed=i))
    manager = JobManager(ws)
    job = start_folder_import(ws, manager, folder, name)
    assert manager.run(job).state == "completed"
    return name


def serve_fake_gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    """A started fake the environment points at, stopped after (`yield from` it in a fixture)."""
    server = FakeGemini(retry_delay=0.1).start()
    gemini_env(monkeypatch, server)
    try:
        yield server
    finally:
        server.stop()

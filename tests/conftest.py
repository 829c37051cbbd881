"""Shared fixtures: a fresh workspace with fast retry settings, the loopback image server, a moto S3 server."""

from __future__ import annotations

import csv
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from tests.support.image_server import ImageServer

ROOT = Path(__file__).resolve().parent.parent  # the checkout (the package itself is installed: `make test`)

FAST_ENV = {
    "WORKBENCH_DOWNLOAD__BACKOFF_BASE": "0.05",
    "WORKBENCH_DOWNLOAD__BACKOFF_MAX": "0.2",
    "WORKBENCH_DOWNLOAD__READ_TIMEOUT": "1",
    "WORKBENCH_DOWNLOAD__CONNECT_TIMEOUT": "1",
    "WORKBENCH_DOWNLOAD__TOTAL_TIMEOUT": "5",
    "WORKBENCH_DOWNLOAD__MAX_RETRIES": "2",
    "WORKBENCH_DOWNLOAD__MAX_BYTES": "2000000",
    "WORKBENCH_DOWNLOAD__WORKERS": "0",
    "WORKBENCH_DOWNLOAD__THREADS_PER_WORKER": "8",
    "WORKBENCH_DOWNLOAD__CHUNK_SIZE": "16",
    "WORKBENCH_JOB_STALE_SECONDS": "5",
    "WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS": '["127.0.0.0/8"]',  # the loopback test servers, explicitly
}


_MAIN = sys.modules["__main__"]


@pytest.fixture(autouse=True)
def restore_main_module() -> Iterator[None]:
    """Streamlit's AppTest runs a page as `__main__` and leaves it there; a later spawn or forkserver child
    would then re-run app.py instead of pytest's entry point. Put pytest's back after every test."""
    yield
    sys.modules["__main__"] = _MAIN


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reads the developer's config.yaml, secrets or AWS profile; retries are fast."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("WORKBENCH_", "AWS_")) or name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
            monkeypatch.delenv(name, raising=False)
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    yield


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path / "ws", load_settings())
    yield workspace
    workspace.close()


@pytest.fixture
def manager(ws: Workspace) -> JobManager:
    return JobManager(ws)


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer(max_bytes_hint=2_000_000).start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """moto's S3 over real HTTP on loopback; boto3 talks to it like any S3-compatible store."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A workspace with a tagged dataset embedded by a tiny CLIP model and LR + SVM models for each tag
    (tests copy it before changing it)."""
    from services.io.clip_models import ClipSpec
    from services.io.embedding_store import embedding_key
    from services.stages.download.folder_import import start_folder_import
    from services.stages.embed.stage import start_embed
    from services.stages.train.stage import start_training
    from tests.support.tagged_images import tagged_tree
    from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip

    base = tmp_path_factory.mktemp("trained")
    checkpoint = save_tiny_clip(base / "model")
    spec = ClipSpec(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(checkpoint), device="cpu")
    ws = Workspace(base / "ws", load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, tagged_tree(base / "tagged", per_tag=12), "tagged"))
    manager.run(start_embed(ws, manager, "tagged", spec, loader_workers=0))
    assert manager.run(start_training(ws, manager, "tagged", embedding_key(spec))).state == "completed"
    ws.close()
    return base / "ws", spec

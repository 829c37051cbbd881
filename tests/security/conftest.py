"""Fixtures for the security tests: a "secret" listener on 127.0.0.1 that a forged request must never reach,
an "allowed" intranet listener on 127.0.0.2 (the only network these tests allow), on the same port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.core.settings import DownloadSettings, load_settings
from tests.support.recording_server import RecordingServer, pair_on_one_port

ALLOWED = '["127.0.0.2/32"]'


@pytest.fixture(autouse=True)
def only_the_allowed_listener(isolated_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared server that lists one intranet host: 127.0.0.2 (the root conftest allows all of 127/8)."""
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS", ALLOWED)


@pytest.fixture
def listeners() -> Iterator[tuple[RecordingServer, RecordingServer]]:
    secret, allowed = pair_on_one_port()
    yield secret, allowed
    secret.stop()
    allowed.stop()


@pytest.fixture
def secret(listeners: tuple[RecordingServer, RecordingServer]) -> RecordingServer:
    return listeners[0]


@pytest.fixture
def allowed(listeners: tuple[RecordingServer, RecordingServer]) -> RecordingServer:
    return listeners[1]


@pytest.fixture
def cfg() -> DownloadSettings:
    settings = load_settings().download
    assert settings.allowed_networks == ["127.0.0.2/32"] and settings.block_private_networks
    return settings

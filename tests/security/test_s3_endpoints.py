"""R11: signing an S3 request sends the key id and the session token to the endpoint's host. On a server with
sign-in, pages sign only for AWS itself and the endpoints an administrator lists (`s3_endpoints`,
`download.s3_endpoint_url`); any other endpoint is read anonymously, in the analysis and in the job's
workers alike. The CLI and an open workbench sign for any endpoint the network policy allows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from services.core.auth import hash_password
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.s3_client import S3Source, endpoint_is_signed, list_prefix, make_client
from services.jobs.manager import JobManager
from tests.conftest import ROOT, write_csv
from tests.support.recording_server import RecordingServer

TOKEN = "planted-session-token-9f2e"


def signatures(server: RecordingServer) -> list[str]:
    """What each request carried of the server's credentials (empty strings for an anonymous request)."""
    return [
        " ".join(v for k, v in r.headers.items() if k.lower() in ("authorization", "x-amz-security-token"))
        for r in server.requests
    ]


def _quietly(call: Any) -> None:
    """The recording server is no S3: what it answers does not matter here, only what it was sent."""
    try:
        call()
    except Exception:
        pass


def test_which_endpoints_are_signed_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_S3_ENDPOINTS", '["https://minio.example.org:9000/", "http://10.0.0.5:9000"]')
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__S3_ENDPOINT_URL", "https://store.example.org")
    settings = load_settings()
    assert endpoint_is_signed(settings, None, restricted=True)  # AWS itself
    assert endpoint_is_signed(settings, "  ", restricted=True)
    for listed in ("https://minio.example.org:9000", "HTTPS://MINIO.example.org:9000/", "http://10.0.0.5:9000/",
                   "https://store.example.org:443", "https://store.example.org"):  # fmt: skip
        assert endpoint_is_signed(settings, listed, restricted=True), listed
    for other in ("https://minio.example.org", "https://minio.example.org:9001", "http://minio.example.org:9000",
                  "https://evil.example.net", "https://store.example.org.evil.net", "http://10.0.0.5:9000/x",
                  "https://user@minio.example.org:9000", "not a url"):  # fmt: skip
        assert not endpoint_is_signed(settings, other, restricted=True), other
        assert endpoint_is_signed(settings, other, restricted=False)  # an open workbench: the OS user's own


def test_a_malformed_listed_endpoint_is_refused_when_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_S3_ENDPOINTS", '["https://key:secret@minio.example.org"]')
    with pytest.raises(ValueError, match="s3_endpoints: .*user names and passwords in URLs are not accepted"):
        load_settings()


def test_an_unsigned_client_sends_no_credentials(
    allowed: RecordingServer, cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    _quietly(lambda: list_prefix(make_client(cfg, allowed.base), "bkt", ""))
    assert signatures(allowed) and all("Credential=testing/" in s and TOKEN in s for s in signatures(allowed))
    allowed.requests.clear()
    _quietly(lambda: list_prefix(make_client(cfg, allowed.base, signed=False), "bkt", ""))
    _quietly(lambda: S3Source(cfg, "bkt", allowed.base, signed=False).fetch("a.jpg"))  # a job's worker
    assert len(signatures(allowed)) >= 2 and set(signatures(allowed)) == {""}, signatures(allowed)


def test_an_anonymous_analysis_and_its_job_read_a_public_store(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto serves public-read objects to anonymous requests, like a public bucket: the analysis and the job's
    workers both run unsigned (the job keeps `signed` in its parameters)."""
    import boto3

    from services.stages.download.s3 import analyze_s3, start_s3_download
    from tests.support.image_server import make_jpeg

    monkeypatch.setenv("WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS", '["127.0.0.2/32", "127.0.0.1/32"]')  # moto's
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="public")
    for i in range(2):
        s3.put_object(Bucket="public", Key=f"GEN/{i}.jpg", Body=make_jpeg(30, 20, seed=i), ACL="public-read")
    s3.put_object(Bucket="public", Key="GEN/private.jpg", Body=make_jpeg(30, 20, seed=9))
    ws = Workspace(tmp_path / "ws", load_settings())
    try:
        manager = JobManager(ws)
        names = write_csv(tmp_path / "GEN_x.csv", None, [["0.jpg"], ["1.jpg"], ["private.jpg"]])
        analysis = analyze_s3(ws, names, "public", "GEN/", s3_endpoint, signed=False)
        assert analysis.available == 3 and not analysis.signed
        job_id = start_s3_download(ws, manager, analysis, "GEN_x")
        assert json.loads(ws.catalog.scalar("SELECT params FROM jobs WHERE id = ?", (job_id,)))["signed"] is False
        progress = manager.run(job_id)
        assert (progress.state, progress.done, progress.failed) == ("completed", 2, 1), manager.failures(job_id)
        refused = manager.failures(job_id)[0]  # anonymous: the object that is not public is refused
        assert (refused["item_key"], refused["error_message"]) == ("private.jpg", "S3 403: Forbidden")
    finally:
        ws.close()


def _team_download_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoints: list[str]) -> AppTest:
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("pw-alice", iterations=1000)}))
    monkeypatch.setenv("WORKBENCH_S3_ENDPOINTS", json.dumps(endpoints))
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.text_input(key="sign-in-name").input("alice")
    at.text_input(key="sign-in-password").input("pw-alice")
    at.button[0].click().run()
    at.switch_page("app_pages/download.py").run()
    at.file_uploader(key="s3-upload").upload("names.csv", b"name\na.jpg\n", "text/csv").run()
    at.text_input(key="s3-bucket").input("company-bucket")
    return at


def test_the_page_signs_for_an_endpoint_the_administrator_lists(
    allowed: RecordingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _team_download_page(tmp_path, monkeypatch, [allowed.base])
    at.text_input(key="s3-endpoint").input(allowed.base + "/").run()
    assert not any("Not an endpoint the administrator lists" in c.value for c in at.caption)
    at.button(key="s3-analyse").click().run()
    assert not at.exception, at.exception
    assert signatures(allowed) and all(TOKEN in s and "Credential=testing/" in s for s in signatures(allowed))


def test_the_page_says_an_unlisted_endpoint_is_read_anonymously(
    allowed: RecordingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _team_download_page(tmp_path, monkeypatch, ["https://minio.example.org"])
    at.text_input(key="s3-endpoint").input(allowed.base).run()
    assert any("Not an endpoint the administrator lists" in c.value for c in at.caption)
    at.button(key="s3-analyse").click().run()
    assert not at.exception, at.exception
    assert signatures(allowed) and set(signatures(allowed)) == {""}

"""Server-side request forgery (issue 14, part 1), reproduced against real loopback listeners.

`secret` (127.0.0.1) records every request and must see none; `allowed` (127.0.0.2, the one listed network)
is the intranet host a forged URL hides behind. Both listen on the same port, as a re-resolved name would
find them. Every outbound path is covered: URL downloads and their redirects, the S3 endpoint (client, page,
CLI, job worker), the Dask scheduler typed in the sidebar, and the admin-set push and Gemini URLs.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from pydantic import ValidationError

from services.core.network_policy import (
    NetworkPolicy,
    UrlRefused,
    classify_address,
    embedded_ipv4,
    parse_networks,
    parse_url,
)
from services.core.settings import DownloadSettings, load_settings
from services.core.workspace import Workspace
from services.io.http_fetch import FetchError, HttpFetcher, check_url
from services.io.s3_client import S3AccessError, S3EndpointRefused, S3Source, list_prefix, make_client
from services.jobs.executors import ExecutorError, check_executor_url, check_page_executor
from services.jobs.manager import JobManager
from services.stages.download.urls import UrlDownloadTask, start_url_download
from tests.conftest import ROOT, read_csv, write_csv
from tests.support.recording_server import RecordingServer, small_png
from tests.support.tls import make_tls


def refused(fetcher: HttpFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(url)
    return info.value


class Rebinder:
    """An injected resolver that answers `answers[0]` first, then each next answer (the last one repeats):
    a DNS name whose owner changes its address between the check and the connection."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        ips = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port)) for ip in ips]


# --- parser differentials -------------------------------------------------------------------------------


def test_the_reported_url_is_read_differently_by_two_parsers(secret: RecordingServer) -> None:
    """Why the guard refuses backslashes: urlsplit (the old guard) and urllib3 (the old client) disagree."""
    url = f"http://127.0.0.1:{secret.port}\\@93.184.216.34/x.png"
    assert urlsplit(url).hostname == "93.184.216.34"
    assert urllib3.util.parse_url(url).host == "127.0.0.1"


def test_forged_urls_are_refused_before_any_connection(
    secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings
) -> None:
    s, a = secret.port, allowed.port
    forged = [
        f"http://127.0.0.1:{s}\\@93.184.216.34/x.png",  # the report's URL
        f"http://127.0.0.1:{s}\\@127.0.0.2:{a}/img/x.png",  # the same, hiding behind the allowed host
        f"http://127.0.0.2:{a}\\@127.0.0.1:{s}/img/x.png",
        f"http://127.0.0.2:{a}@127.0.0.1:{s}/img/x.png",  # userinfo
        f"http://user:pw@127.0.0.2:{a}/img/x.png",
        f"http://127.0.0.1:{s}\t@127.0.0.2:{a}/img/x.png",  # whitespace and control characters
        f"http://127.0.0.2 :{a}/img/x.png",
        f"http://127.0.0.2:{a}/img/x\u00a0.png",
        f"http://127.0.0.2:{a}/img/x.png\r\nHost: 127.0.0.1",
        f"http://127.0.0.2:{a}/img/\x00x.png",
        f"http://127.0.0.2\u3000:{a}/img/x.png",
        f"http://%31%32%37.0.0.1:{s}/img/x.png",  # a percent-encoded host (WHATWG decodes it)
        f"http://127.1:{s}/img/x.png",  # inet_aton forms that WHATWG and getaddrinfo read as 127.0.0.1
        f"http://0x7f.0.0.1:{s}/img/x.png",
        f"http://2130706433:{s}/img/x.png",
        f"http://[::1%25lo]:{s}/img/x.png",
    ]
    fetcher = HttpFetcher(cfg)
    for url in forged:
        error = refused(fetcher, url)
        assert error.error_class == "invalid_url", (url, error.error_class, error.message)
        assert "user:pw" not in error.message  # a password in a URL is never echoed
        with pytest.raises(FetchError, match=".") as info:
            check_url(url, True, tuple(cfg.allowed_networks))  # the public check agrees
        assert info.value.error_class == "invalid_url"
    assert secret.requests == [] and allowed.requests == []


def test_forged_redirects_are_refused(secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings) -> None:
    s, a = secret.port, allowed.port
    locations = {
        "backslash": f"http://127.0.0.1:{s}\\@127.0.0.2:{a}/img/x.png",
        "relative-backslash": f"/\\127.0.0.1:{s}/img/x.png",  # WHATWG: //127.0.0.1:PORT/...
        "userinfo": f"http://127.0.0.2:{a}@127.0.0.1:{s}/img/x.png",
        "tab": f"http://127.0.0.1:{s}\t/img/x.png",
        "port": f"http://127.0.0.2:{a}0000/img/x.png",
    }
    fetcher = HttpFetcher(cfg)
    for name, location in locations.items():
        error = refused(fetcher, allowed.redirect(name, location))
        assert error.error_class == "invalid_url", (name, error.message)
        assert "redirect refused" in error.message
    assert secret.requests == []
    assert allowed.paths() == [f"/goto/{name}" for name in locations]  # the redirects only, never a hop


def test_everyday_urls_still_work(allowed: RecordingServer, cfg: DownloadSettings) -> None:
    fetcher = HttpFetcher(cfg)
    base = f"http://127.0.0.2:{allowed.port}"
    assert fetcher.fetch(f"  {base}/img/a b.png  ").data == small_png(len("a%20b.png"))  # padded, a space
    assert (
        fetcher.fetch(f"HTTP://127.0.0.2:{allowed.port}/img/c.png?x=ü#part").final_url == f"{base}/img/c.png?x=%C3%BC"
    )
    assert allowed.paths() == ["/img/a%20b.png", "/img/c.png?x=%C3%BC"]
    v6 = RecordingServer("::1").start()
    try:
        opened = HttpFetcher(cfg.model_copy(update={"allowed_networks": ["::1/128"]}))
        assert opened.fetch(f"{v6.base}/img/six.png").data == small_png(len("six.png"))
        assert v6.requests[0].headers["Host"] == f"[::1]:{v6.port}"
        assert refused(fetcher, f"{v6.base}/img/six.png").error_class == "blocked_url"  # not listed here
    finally:
        v6.stop()


# --- DNS rebinding --------------------------------------------------------------------------------------


def test_the_connection_goes_to_the_checked_address(
    secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings
) -> None:
    port = allowed.port
    resolver = Rebinder(["127.0.0.2"], ["127.0.0.1"])
    fetcher = HttpFetcher(cfg, resolver=resolver)
    result = fetcher.fetch(f"http://images.rebind.test:{port}/img/a.png")
    assert result.data == small_png(len("a.png"))
    assert allowed.requests[-1].headers["Host"] == f"images.rebind.test:{port}"  # the URL's host, kept
    error = refused(fetcher, f"http://images.rebind.test:{port}/img/b.png")  # now the name points home
    assert error.error_class == "blocked_url" and "127.0.0.1" in error.message
    assert resolver.calls == ["images.rebind.test"] * 2  # one resolution per request, none by the client
    assert secret.requests == []


def test_rebinding_between_redirect_hops_is_refused(
    secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings
) -> None:
    port = allowed.port
    allowed.redirect("again", f"http://images.rebind.test:{port}/img/b.png")
    fetcher = HttpFetcher(cfg, resolver=Rebinder(["127.0.0.2"], ["127.0.0.1"]))
    error = refused(fetcher, f"http://images.rebind.test:{port}/goto/again")
    assert error.error_class == "blocked_url"
    mixed = HttpFetcher(cfg, resolver=Rebinder(["127.0.0.2", "127.0.0.1"]))  # one allowed, one not: refused
    assert refused(mixed, f"http://images.rebind.test:{port}/img/c.png").error_class == "blocked_url"
    assert allowed.paths() == ["/goto/again"]
    assert secret.requests == []


# --- address forms --------------------------------------------------------------------------------------

EMBEDDED_LOOPBACK = [
    ("::127.0.0.1", "IPv4-compatible"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:0:127.0.0.1", "IPv4-translated"),
    ("64:ff9b::7f00:1", "NAT64"),
    ("64:ff9b:1::7f00:1", "local-use NAT64, /96 layout"),
    ("64:ff9b:1:7f00:0:100::", "local-use NAT64, /48 layout"),
    ("2002:7f00:1::", "6to4"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo (client 127.0.0.1, stored inverted)"),
]


@pytest.mark.parametrize(("text", "form"), EMBEDDED_LOOPBACK)
def test_embedded_ipv4_is_judged_by_the_ipv4_inside(text: str, form: str) -> None:
    addr = ipaddress.ip_address(text)
    assert ipaddress.IPv4Address("127.0.0.1") in embedded_ipv4(addr), form
    reason = classify_address(addr)
    assert reason is not None and "loopback" in reason and "127.0.0.1" in reason, (form, reason)
    assert NetworkPolicy().refusal(addr) is not None
    assert NetworkPolicy(block_private=False).refusal(addr) is None  # a laptop fetches anything
    assert NetworkPolicy(allowed=parse_networks(["127.0.0.1/32"])).refusal(addr) is None  # listed: allowed


def test_address_classes() -> None:
    public = ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::"]
    for text in public:
        assert classify_address(ipaddress.ip_address(text)) is None, text
    expected = {
        "169.254.169.254": "link-local",
        "10.1.2.3": "private",
        "100.64.0.1": "shared",
        "224.0.0.251": "multicast",
        "0.0.0.0": "unspecified",
        "240.0.0.1": "reserved",
        "::1": "loopback",
        "fe80::1": "link-local",
        "fc00::1": "private",
        "fec0::1": "site-local",
        "2002:a9fe:a9fe::": "link-local (IPv4 169.254.169.254",
        "2001:0:4136:e378:8000:63bf:a2c3:bcdb": "private",  # Teredo with a public client: still not global
        "64:ff9b:1::5db8:d822": "local-use NAT64",
    }
    for text, reason in expected.items():
        got = classify_address(ipaddress.ip_address(text))
        assert got is not None and got.startswith(reason), (text, got)
    only = NetworkPolicy(allowed=parse_networks(["127.0.0.2/32"]))
    assert only.refusal(ipaddress.ip_address("::ffff:127.0.0.2")) is None  # the IPv4 inside is listed
    assert only.refusal(ipaddress.ip_address("64:ff9b::7f00:2")) is None
    assert only.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is not None


def test_embedded_forms_end_to_end(secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings) -> None:
    port = secret.port
    # The mapped form really reaches the IPv4 listener (a dual-stack socket), so the refusal matters:
    opened = HttpFetcher(cfg.model_copy(update={"allowed_networks": ["127.0.0.1/32"]}))
    assert opened.fetch(f"http://[::ffff:127.0.0.1]:{port}/img/probe.png").data == small_png(len("probe.png"))
    assert secret.paths() == ["/img/probe.png"]
    secret.requests.clear()
    fetcher = HttpFetcher(cfg)
    assert fetcher.fetch(f"http://[::ffff:127.0.0.2]:{port}/img/m.png").data == small_png(len("m.png"))
    for host in ("[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::ffff:7f00:1]"):
        error = refused(fetcher, f"http://{host}:{port}/img/x.png")
        assert error.error_class == "blocked_url" and "127.0.0.1" in error.message, (host, error.message)
    assert secret.requests == []
    assert allowed.paths() == ["/img/m.png"]


@pytest.mark.parametrize("port", ["0", "65536", "99999", "abc", "-1", "+80", "0x50", "\uff18\uff10", "8080808"])
def test_ports_outside_the_range_are_invalid_urls(port: str, allowed: RecordingServer, cfg: DownloadSettings) -> None:
    url = f"http://127.0.0.2:{port}/img/x.png"
    error = refused(HttpFetcher(cfg), url)
    assert error.error_class == "invalid_url", error.message
    with pytest.raises(FetchError) as info:
        check_url(url, True)
    assert info.value.error_class == "invalid_url"
    assert allowed.requests == []


# --- redirects ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{s}/img/x.png",
        "http://localhost:{s}/img/x.png",
        "http://[::ffff:127.0.0.1]:{s}/img/x.png",
        "http://[::1]:{s}/img/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
    ],
)
def test_redirects_to_private_addresses_are_refused_on_every_hop(
    target: str, secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings
) -> None:
    last = allowed.redirect("last", target.format(s=secret.port))
    first = allowed.redirect("first", last)
    error = refused(HttpFetcher(cfg), first)
    assert error.error_class == "blocked_url", error.message
    assert "download.allowed_networks" in error.message
    assert allowed.paths() == ["/goto/first", "/goto/last"]  # both allowed hops were followed
    assert secret.requests == []
    ok = allowed.redirect("home", f"{allowed.base}/img/ok.png")  # an allowed target is still followed
    assert HttpFetcher(cfg).fetch(ok).final_url == f"{allowed.base}/img/ok.png"


# --- TLS and pooling ------------------------------------------------------------------------------------


def test_https_to_a_pinned_address_keeps_the_name_for_sni_and_the_certificate(
    tmp_path: Path, cfg: DownloadSettings
) -> None:
    context, ca = make_tls(tmp_path / "tls", "images.intranet.test")
    server = RecordingServer("127.0.0.2", tls=context).start()
    try:
        resolver = Rebinder(["127.0.0.2"])
        fetcher = HttpFetcher(cfg, resolver=resolver, ca_certs=ca)
        result = fetcher.fetch(f"https://images.intranet.test:{server.port}/img/t.png")
        assert result.data == small_png(len("t.png"))
        got = server.requests[-1]
        assert got.headers["Host"] == f"images.intranet.test:{server.port}"
        assert got.server_name == "images.intranet.test"
        # The same address under another name: the certificate does not match it, so no request is sent.
        other = HttpFetcher(cfg, resolver=Rebinder(["127.0.0.2"]), ca_certs=ca)
        error = refused(other, f"https://other.intranet.test:{server.port}/img/t.png")
        assert error.error_class == "connect" and "TLS" in error.message
        assert len(server.requests) == 1
    finally:
        server.stop()


def test_a_dead_address_falls_through_to_the_next_checked_one(allowed: RecordingServer, cfg: DownloadSettings) -> None:
    two = cfg.model_copy(update={"allowed_networks": ["127.0.0.2/32", "127.0.0.3/32"]})
    fetcher = HttpFetcher(two, resolver=Rebinder(["127.0.0.3", "127.0.0.2"]))  # nothing listens on .3
    for name in ("a.png", "b.png"):
        assert fetcher.fetch(f"http://images.rebind.test:{allowed.port}/img/{name}").data == small_png(5)
    assert allowed.paths() == ["/img/a.png", "/img/b.png"]
    unlisted = HttpFetcher(cfg, resolver=Rebinder(["127.0.0.3", "127.0.0.2"]))  # .3 not listed: all refused
    assert refused(unlisted, f"http://images.rebind.test:{allowed.port}/img/c.png").error_class == "blocked_url"


def test_pinned_requests_keep_their_connections(allowed: RecordingServer, cfg: DownloadSettings) -> None:
    fetcher = HttpFetcher(cfg, resolver=Rebinder(["127.0.0.2"]))
    for i in range(20):
        fetcher.fetch(f"http://images.rebind.test:{allowed.port}/img/{i}.png")
    assert len(allowed.requests) == 20
    assert len({r.client for r in allowed.requests}) == 1  # one keep-alive connection for all twenty


# --- S3 -------------------------------------------------------------------------------------------------

KEY_ID = "AKIAWORKBENCHTESTKEY1"


@pytest.fixture
def aws_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "workbench-test-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "workbench-test-session-token")


def test_s3_endpoint_on_a_non_allowed_address_is_refused_up_front(
    aws_keys: None, secret: RecordingServer, ws: Workspace, tmp_path: Path
) -> None:
    from services.stages.download.s3 import analyze_s3

    names = write_csv(tmp_path / "GEN_x.csv", None, [["a.jpg"]])
    cfg = ws.settings.download
    for endpoint in (secret.base, f"http://localhost:{secret.port}", f"http://[::ffff:127.0.0.1]:{secret.port}"):
        with pytest.raises(S3AccessError) as info:
            analyze_s3(ws, names, "bkt", "", endpoint)
        assert "download.allowed_networks" in str(info.value) and "127.0.0.1" in str(info.value), str(info.value)
        with pytest.raises(S3EndpointRefused):
            make_client(cfg, endpoint)
        source = S3Source(cfg, "bkt", endpoint)  # a job's worker: each item fails with the reason
        with pytest.raises(FetchError) as item:
            source.fetch("a.jpg")
        assert item.value.error_class == "blocked_url"
    assert secret.requests == []  # nothing was sent, so no key id and no session token either


def test_s3_endpoint_refusal_on_the_cli_and_the_page(
    aws_keys: None, secret: RecordingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    from streamlit.testing.v1 import AppTest

    names = write_csv(tmp_path / "GEN_x.csv", None, [["a.jpg"]])
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "cli-ws"), "download", "s3", str(names),
         "--bucket", "bkt", "--endpoint-url", secret.base, "--auto-confirm"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "download.allowed_networks" in run.stderr and "Traceback" not in run.stderr + run.stdout
    assert len(run.stderr.strip().splitlines()) == 1  # one line, naming the cause and the setting
    assert "workbench-test" not in run.stderr + run.stdout  # no secret echoed

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "page-ws"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/download.py").run()
    at.radio(key="s3-how").set_value("Path on the server").run()
    at.text_input(key="s3-path").input(str(names)).run()
    at.text_input(key="s3-bucket").input("bkt").run()
    at.text_input(key="s3-endpoint").input(secret.base).run()
    at.button(key="s3-analyse").click().run()
    assert not at.exception
    assert any("download.allowed_networks" in e.value for e in at.error), [e.value for e in at.error]
    assert secret.requests == []


def _signature_of(received: Any, secret_key: str) -> str:
    """SigV4 recomputed over exactly what arrived (its Host header, path, signed headers): proves the
    pinned sender sent the Host the signature covers."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth_header = received.headers["Authorization"]
    signed = auth_header.split("SignedHeaders=")[1].split(",")[0].split(";")
    scope = auth_header.split("Credential=")[1].split(",")[0].split("/")
    headers = {k: v for k, v in received.headers.items() if k.lower() in signed}
    url = f"http://{received.headers['Host']}{received.path}"
    request = AWSRequest(method=received.method, url=url, headers=headers)
    request.context["timestamp"] = received.headers["X-Amz-Date"]
    auth = S3SigV4Auth(Credentials(scope[0], secret_key), "s3", scope[2])
    return str(auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request))


def test_s3_requests_are_checked_before_signing_and_sent_to_the_checked_address(
    aws_keys: None, secret: RecordingServer, allowed: RecordingServer, cfg: DownloadSettings
) -> None:
    port = allowed.port
    # Resolutions: the up-front endpoint check, the first request's check before signing, then the name
    # moves to the secret address before the second request.
    resolver = Rebinder(["127.0.0.2"], ["127.0.0.2"], ["127.0.0.1"])
    client = make_client(cfg, f"http://s3.rebind.test:{port}", resolver=resolver)
    assert list_prefix(client, "bkt", "") == []
    got = allowed.requests[-1]
    assert got.headers["Host"].endswith(f"s3.rebind.test:{port}")
    assert f"Credential={KEY_ID}/" in got.headers["Authorization"]
    assert f"Signature={_signature_of(got, 'workbench-test-secret')}" in got.headers["Authorization"]
    with pytest.raises(S3EndpointRefused) as info:
        list_prefix(client, "bkt", "")
    assert info.value.error_class == "blocked_url" and "download.allowed_networks" in str(info.value)
    assert len(resolver.calls) == 3  # once up front, once per request (the sender reuses the check)
    assert len(allowed.requests) == 1
    assert secret.requests == []


def test_s3_with_a_listed_endpoint_downloads(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from services.stages.download.s3 import analyze_s3, start_s3_download
    from tests.support.image_server import make_jpeg

    monkeypatch.setenv("WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS", '["127.0.0.2/32", "127.0.0.1/32"]')  # moto's
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="listed")
    for i in range(3):
        s3.put_object(Bucket="listed", Key=f"GEN/{i}.jpg", Body=make_jpeg(30, 20, seed=i))
    ws = Workspace(tmp_path / "ws", load_settings())
    try:
        manager = JobManager(ws)
        names = write_csv(tmp_path / "GEN_x.csv", None, [["0.jpg"], ["1"], ["2.jpg"]])
        analysis = analyze_s3(ws, names, "listed", "GEN/", s3_endpoint)
        assert analysis.available == 3
        progress = manager.run(start_s3_download(ws, manager, analysis, "GEN_x"))
        assert (progress.state, progress.done, progress.failed) == ("completed", 3, 0)
    finally:
        ws.close()


# --- retries of blocked rows ----------------------------------------------------------------------------


def test_blocked_rows_are_retried_once_the_network_is_allowed(
    allowed: RecordingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "blocked_url" not in UrlDownloadTask.sticky_classes
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS", "[]")
    urls = [[f"{allowed.base}/img/{i}.png", str(i), "e", "v"] for i in range(3)]
    csv_path = write_csv(tmp_path / "train.csv", ["image_link", "group_id", "entity_name", "entity_value"], urls)
    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    job = start_url_download(ws, manager, csv_path, "intranet")
    assert manager.run(job).failed == 3
    assert manager.failure_counts(job) == {"blocked_url": 3}
    assert allowed.requests == []
    ws.close()

    monkeypatch.setenv("WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS", '["127.0.0.2/32"]')  # an administrator allows it
    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    assert manager.retryable_failures(job) == 3
    assert manager.reset_failed(job) == 3
    progress = manager.run(job)
    assert (progress.state, progress.done, progress.failed) == ("completed", 3, 0)
    assert sorted(allowed.paths()) == [f"/img/{i}.png" for i in range(3)]
    out = read_csv(tmp_path / "ws" / "exports" / f"intranet-job{job}.csv")
    assert [r["status"] for r in out] == ["ok"] * 3
    ws.close()


# --- Dask schedulers ------------------------------------------------------------------------------------


def test_scheduler_addresses_go_through_the_strict_parser() -> None:
    assert check_executor_url("dask://10.0.0.5:8786") == "dask://10.0.0.5:8786"
    assert check_executor_url("dask://[::1]:8786") == "dask://[::1]:8786"
    for bad in ("dask://a@10.0.0.5:8786", "dask://h:0", "dask://h:65536", "dask://h:x", "dask://10.0.0.5:1\\@h:2",
                "dask://h:1/path", "tcp://h:1"):  # fmt: skip
        with pytest.raises(ExecutorError, match="dask://HOST:PORT"):
            check_executor_url(bad)
    listed = ["dask://scheduler.intranet:8786"]
    assert check_page_executor("dask://127.0.0.1:8786", listed, restricted=False) == "dask://127.0.0.1:8786"
    assert check_page_executor("dask://SCHEDULER.intranet:8786", listed, True) == "dask://scheduler.intranet:8786"
    assert check_page_executor("local", listed, True) is None
    with pytest.raises(ExecutorError, match="dask_schedulers"):
        check_page_executor("dask://127.0.0.1:8786", listed, restricted=True)


def test_signed_in_pages_offer_only_listed_schedulers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from services.core.auth import hash_password

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("pw", iterations=1000)}))
    monkeypatch.setenv("WORKBENCH_DASK_SCHEDULERS", '["dask://scheduler.intranet:8786"]')
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.text_input(key="sign-in-name").input("alice")
    at.text_input(key="sign-in-password").input("pw")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not [t for t in at.sidebar.text_input if t.key == "executor-input"]  # nothing to type an address in
    choice = at.sidebar.selectbox(key="executor-choice")
    assert choice.options == ["local", "dask://scheduler.intranet:8786"]
    assert at.session_state["executor-url"] is None
    choice.set_value("dask://scheduler.intranet:8786").run()
    assert at.session_state["executor-url"] == "dask://scheduler.intranet:8786"


def test_open_workbench_sidebar_still_takes_a_typed_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.sidebar.text_input(key="executor-input").input("dask://a@127.0.0.1:8786").run()
    assert any("user names" in e.value for e in at.sidebar.error)
    at.sidebar.text_input(key="executor-input").input("dask://127.0.0.1:8786").run()
    assert at.session_state["executor-url"] == "dask://127.0.0.1:8786"


# --- admin-set URLs -------------------------------------------------------------------------------------


def test_admin_urls_go_through_the_same_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_OCR__PUSH_URL", "http://10.0.0.9:8080/results")  # a LAN device: allowed
    monkeypatch.setenv("WORKBENCH_GEMINI__BASE_URL", "http://127.0.0.1:9999")
    settings = load_settings()
    assert settings.ocr.push_url == "http://10.0.0.9:8080/results"
    for name, value in [
        ("WORKBENCH_OCR__PUSH_URL", "http://10.0.0.9\\@example.com/results"),
        ("WORKBENCH_GEMINI__BASE_URL", "http://user:pw@proxy.intranet:8080"),
        ("WORKBENCH_OCR__PUSH_URL", "http://10.0.0.9:0/results"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError) as info:
            load_settings()
        setting = "ocr.push_url" if "OCR" in name else "gemini.base_url"
        assert setting in str(info.value)
        monkeypatch.delenv(name)
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS", '["10.0.0.0/33"]')
    with pytest.raises(ValidationError, match="allowed_networks"):
        load_settings()


def test_parse_url_normalises_what_it_accepts() -> None:
    parsed = parse_url("  HTTP://Bücher.Example:080/ä b?q=ü c#frag  ")
    assert (parsed.scheme, parsed.host, parsed.port) == ("http", "xn--bcher-kva.example", 80)
    assert parsed.target == "/%C3%A4%20b?q=%C3%BC%20c" and parsed.host_header == "xn--bcher-kva.example"
    assert parse_url("https://[::1]:8443").url == "https://[::1]:8443/"
    with pytest.raises(UrlRefused):
        parse_url("file:///etc/passwd")

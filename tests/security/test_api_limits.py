"""Issue 14, the REST API against a real uvicorn server: the token is checked before a body is read, bodies
over the limit get 413 however they are framed, decompression bombs are refused or decoded one at a time
with the server's memory measured, /health answers while a classify request is busy, and broken zips give
per-member refusals or a 4xx with the reason, never a 500."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image

from services.stages.classify.uploads import NAME_CHARS_SHOWN
from tests.security.servers import (
    TOKEN,
    Served,
    answered,
    api_server,
    json_body,
    multipart,
    post_file,
    raw_request,
    read_response,
)
from tests.support.hostile_zips import (
    build_zip,
    nested,
    with_bad_crc,
    with_method,
    with_scrambled_deflate,
    with_truncated_deflate,
)
from tests.support.tagged_images import png

MB = 2**20


@pytest.fixture(scope="module")
def api_ws(trained: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the trained workspace (tiny CLIP, six tag models) for this module's servers."""
    root = tmp_path_factory.mktemp("api-limits") / "ws"
    shutil.copytree(trained[0], root)
    return root


@pytest.fixture(scope="module")
def api(api_ws: Path) -> Iterator[Served]:
    """The API with the default limits (512 MB bodies, 50 MP per image)."""
    with api_server(api_ws, api_ws.parent / "api.log") as served:
        yield served


@pytest.fixture(scope="module")
def small_api(api_ws: Path) -> Iterator[Served]:
    """The API with a 1 MB body limit, 500 KB per image file, and room for three 9000x9000 images per request
    (one at a time)."""
    settings = {
        "WORKBENCH_MAX_UPLOAD_MB": "1",
        "WORKBENCH_API__MAX_IMAGE_BYTES": "500000",
        "WORKBENCH_API__MAX_IMAGE_PIXELS": "100000000",
        "WORKBENCH_API__MAX_REQUEST_PIXELS": "250000000",
    }
    with api_server(api_ws, api_ws.parent / "small-api.log", **settings) as served:
        yield served


def bomb_zip(count: int = 6, side: int = 9000) -> bytes:
    """`count` distinct side x side greyscale PNGs (80 KB each, 81 MP each decoded) in one zip."""
    members = {}
    for i in range(count):
        img = Image.new("L", (side, side), 0)
        img.putpixel((i, i), 255)  # distinct files: no two share a hash
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=9)
        members[f"bombs/b{i}.png"] = buf.getvalue()
        del img
    return build_zip(members, method=0)  # stored: the zip itself looks harmless (ratio 1)


@pytest.fixture(scope="module")
def bombs() -> bytes:
    return bomb_zip()


class PeakRss:
    """The highest resident memory of a process, sampled every 5 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _warm(api: Served) -> None:
    """One small classify first, so the CLIP model is loaded before memory is measured."""
    status, body = post_file(api.base, "/classify", "warm.png", png("red", 900))
    assert status == 200, body


# --- authentication before the body -----------------------------------------------------------------


def test_an_anonymous_upload_is_refused_before_its_body_is_read(api: Served):
    body, kind = multipart("big.zip", b"")
    declared = 400 * MB  # under the 512 MB limit: only the token check can refuse it early
    head = f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: {declared}"
    sock = raw_request(api.port, head)
    started = time.monotonic()
    sock.sendall(body[:200] + b"\0" * 64 * 1024)
    assert answered(sock, 5), "no answer to an anonymous request until its body arrives"
    status, headers, answer = read_response(sock)
    elapsed = time.monotonic() - started
    assert status == 401 and json_body(answer) == {"detail": "missing or wrong token"}
    assert headers["www-authenticate"] == "Bearer" and elapsed < 2.0
    # the server reads no more: sending on fails once the socket buffers are full (a few MB, not 400)
    sent = 0
    with pytest.raises(OSError):
        sock.settimeout(5)
        for _ in range(declared // MB):
            sock.sendall(b"\0" * MB)
            sent += MB
    assert sent < 32 * MB, f"{sent / MB:.0f} MB accepted after the 401"
    sock.close()
    # the same start with the right token is waited on (the body is read): the early answer was the token's
    authed = raw_request(api.port, head + f"\r\nAuthorization: Bearer {TOKEN}")
    authed.sendall(body[:200] + b"\0" * 64 * 1024)
    assert not answered(authed, 1.0)
    authed.close()


def test_wrong_tokens_docs_and_health(api: Served):
    import urllib.error
    import urllib.request

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": TOKEN}):
        request = urllib.request.Request(api.base + "/models", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 401 and json_body(err.value.read()) == {"detail": "missing or wrong token"}
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-API-Key": TOKEN}):
        with urllib.request.urlopen(urllib.request.Request(api.base + "/models", headers=headers)) as ok:
            assert len(json.loads(ok.read())) == 6  # the six tag models
    for open_path in ("/health", "/openapi.json", "/docs"):  # GET without a token: the shape, no data
        with urllib.request.urlopen(api.base + open_path, timeout=10) as response:
            assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:  # other methods on an open path still need it
        urllib.request.urlopen(urllib.request.Request(api.base + "/health", data=b"x" * 1000), timeout=10)
    assert err.value.code == 401
    status, _ = post_file(api.base, "/classify", "a.png", png("red", 1), token=None)
    assert status == 401


# --- body size ----------------------------------------------------------------------------------------


def test_an_oversized_chunked_body_gets_413(small_api: Served):
    head, _ = multipart("big.png", b"")
    sock = raw_request(
        small_api.port,
        "POST /classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary=securitytestboundary\r\nAuthorization: Bearer {TOKEN}",
    )
    first = head[: head.index(b"\r\n\r\n") + 4]
    sent = 0
    payload = [first] + [b"\0" * 64 * 1024] * 256  # 16 MB against a 1 MB limit
    for piece in payload:
        if answered(sock, 0.005):
            break
        try:
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        except OSError:
            break
        sent += len(piece)
    status, _, answer = read_response(sock)
    assert status == 413 and "1 MB limit" in str(json_body(answer)["detail"])
    assert sent < 8 * MB  # answered while the client was still sending
    sock.close()
    declared = raw_request(  # a declared length over the limit: refused before anything is read
        small_api.port,
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * MB}\r\nAuthorization: Bearer {TOKEN}",
    )
    assert answered(declared, 5) and read_response(declared)[0] == 413
    declared.close()


# --- decompression bombs, memory, and a server that keeps answering ------------------------------------


def test_a_decompression_bomb_zip_is_refused_from_the_headers(api: Served, bombs: bytes):
    assert len(bombs) < 600 * 1024  # six 9000x9000 PNGs in about half a megabyte
    _warm(api)
    with PeakRss(api.pid) as rss:
        status, body = post_file(api.base, "/classify", "bombs.zip", bombs)
    assert status == 422, body
    skipped = body["detail"]["skipped"]
    assert len(skipped) == 6
    assert all("9000x9000 pixels is over the 50000000 per-image limit" in s["reason"] for s in skipped), skipped
    assert rss.growth < 150 * MB, f"server memory grew {rss.growth / MB:.0f} MB"


def test_allowed_large_images_are_decoded_one_at_a_time_within_a_request_budget(small_api: Served, bombs: bytes):
    """With room for 100 MP per image and 250 MP per request, three of the six are decoded, one at a time;
    the rest are refused with the budget as the reason. /health keeps answering meanwhile."""
    _warm(small_api)
    outcome: dict[str, Any] = {}

    def classify() -> None:
        outcome["answer"] = post_file(small_api.base, "/classify", "bombs.zip", bombs)

    import urllib.request

    worker = threading.Thread(target=classify)
    latencies: list[float] = []
    with PeakRss(small_api.pid) as rss:
        worker.start()
        time.sleep(0.2)
        while worker.is_alive():
            started = time.monotonic()
            with urllib.request.urlopen(small_api.base + "/health", timeout=10) as response:
                assert response.status == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        worker.join()
    status, body = outcome["answer"]
    assert status == 200, body
    assert [r["name"] for r in body["results"]] == ["bombs/b0.png", "bombs/b1.png", "bombs/b2.png"]
    assert len(body["results"][0]["scores"]) == 6
    reasons = {s["name"]: s["reason"] for s in body["skipped"]}
    assert set(reasons) == {"bombs/b3.png", "bombs/b4.png", "bombs/b5.png"}
    assert all("budget of 250000000 decoded pixels" in r for r in reasons.values()), reasons
    # one 81 MP image decoded (81 MB grey, 243 MB as RGB) at a time, where holding them all took 1.95 GB
    assert rss.growth < 700 * MB, f"server memory grew {rss.growth / MB:.0f} MB"
    assert len(latencies) >= 3, "the request finished before /health could be asked during it"
    assert max(latencies) < 0.5, f"/health took {max(latencies):.2f} s while classify was busy"


# --- broken zips -----------------------------------------------------------------------------------


def _broken_cases() -> dict[str, tuple[bytes, dict[str, str]]]:
    """name -> (zip bytes, {member: expected words in its refusal})."""
    ok, other = png("red", 11), png("blue", 12)
    good = {"a/ok.png": ok, "a/x.png": other}
    long_name = "a/" + "n" * 5000 + ".png"
    flat = {
        "bad-crc": (with_bad_crc(build_zip(good), "a/x.png"), {"a/x.png": "bad CRC-32"}),
        "deflate64": (with_method(build_zip(good), "a/x.png", 9), {"a/x.png": "method 9 (Deflate64)"}),
        "scrambled": (with_scrambled_deflate(build_zip(good), "a/x.png"), {"a/x.png": "corrupt compressed data"}),
        "truncated": (with_truncated_deflate(good, "a/x.png"), {"a/x.png": "corrupt data"}),
        "long-name": (build_zip({**good, long_name: ok}), {long_name: "name of 5006 characters"}),
    }
    cases = dict(flat)
    for key, (data, expected) in flat.items():
        cases[f"nested-{key}"] = (
            nested("in.zip", data, {"top.png": ok}),
            {f"in.zip!{name}": words for name, words in expected.items()},
        )
    broken_inner = with_scrambled_deflate(build_zip({"in.zip": build_zip(good), "top.png": ok}), "in.zip")
    cases["nested-zip-corrupt"] = (broken_inner, {"in.zip": "corrupt nested zip"})
    return cases


BROKEN = _broken_cases()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_zips_give_per_member_refusals_not_500(api: Served, case: str):
    data, expected = BROKEN[case]
    status, body = post_file(api.base, "/classify", f"{case}.zip", data)
    assert status == 200, (status, body)
    reasons = {s["name"]: s["reason"] for s in body["skipped"]}
    for name, words in expected.items():
        shown = name if len(name) <= NAME_CHARS_SHOWN else name[:NAME_CHARS_SHOWN] + "..."  # long names cut
        assert words in reasons.get(shown, ""), (name, reasons)
    assert {"ok.png", "top.png"} & {r["name"].rsplit("/", 1)[-1] for r in body["results"]}  # the good ones scored


def test_unreadable_uploads_are_4xx_with_the_reason(api: Served):
    whole = build_zip({"a.png": png("red", 1)})
    directory_at = whole.rindex(b"PK\x01\x02")
    cut = whole[:directory_at] + b"\0" * 46 + whole[directory_at + 46 :]  # its central directory wiped
    status, body = post_file(api.base, "/classify", "cut.zip", cut)
    assert status == 422 and "cut.zip: not a readable zip archive" in body["detail"], body
    only_bad = with_method(build_zip({"x.png": png("red", 1)}), "x.png", 9)
    status, body = post_file(api.base, "/classify", "only-bad.zip", only_bad)
    assert status == 422 and "Deflate64" in body["detail"]["skipped"][0]["reason"]
    big = Image.new("L", (9000, 9000))
    buf = io.BytesIO()
    big.save(buf, "PNG", compress_level=9)
    status, body = post_file(api.base, "/classify", "bomb.png", buf.getvalue())
    assert status == 413 and "bomb.png" in body["detail"] and "per-image limit" in body["detail"]
    status, body = post_file(api.base, "/classify", "x" * 1000 + ".png", png("red", 3))
    assert status == 200 and body["results"][0]["name"] == "x" * 1000 + ".png"
    status, body = post_file(api.base, "/classify", "x" * 5000 + ".png", png("red", 3))  # the multipart parser's
    assert status == 400 and "multipart" in body["detail"]  # own limit on a part's header line


def test_an_image_twice_in_one_zip_is_scored_under_both_names(api: Served):
    red = png("red", 77)
    status, body = post_file(api.base, "/classify", "twice.zip", build_zip({"a.png": red, "b/a-again.png": red}))
    assert status == 200, body
    first, second = body["results"]
    assert (first["name"], second["name"]) == ("a.png", "b/a-again.png") and first["hash"] == second["hash"]
    assert first["scores"] == second["scores"]


# --- /ocr: the same bounds as /classify -------------------------------------------------------------


def test_ocr_refuses_a_decompression_bomb_from_its_header_and_health_keeps_answering(api: Served):
    """POST /ocr decodes in a worker thread with the per-image pixel limit: a 9000x9000 PNG (80 KB) is a 422
    naming the limit, the server's memory does not grow by the image, and /health answers meanwhile."""
    import urllib.request

    img = Image.new("L", (9000, 9000), 0)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=9)
    del img
    status, body = post_file(api.base, "/ocr", "warm.png", png("white", 300))  # engines loaded before measuring
    assert status == 200, body
    with PeakRss(api.pid) as rss:
        started = time.monotonic()
        status, body = post_file(api.base, "/ocr", "bomb.png", buf.getvalue())
        with urllib.request.urlopen(api.base + "/health", timeout=10) as response:
            assert response.status == 200
    assert status == 422, body
    assert "too_large" in body["detail"] and "9000x9000" in body["detail"], body
    assert rss.growth < 100 * MB, f"server memory grew {rss.growth / MB:.0f} MB"
    assert time.monotonic() - started < 30


def test_ocr_refuses_an_image_over_the_byte_limit(small_api: Served):
    status, body = post_file(small_api.base, "/ocr", "big.png", b"\x89PNG" + b"\0" * 700_000)
    assert status == 413, body
    assert "byte limit" in body["detail"]

"""R5: POST /ocr takes one image, so its body is bounded by `api.max_image_bytes` (base64 in JSON, or a
multipart part), not by `max_upload_mb`: refused from Content-Length before anything is read, and mid-stream
when chunked. The largest image the check allows still gets through in either form."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.api.app import JSON_AND_FORM_MARGIN, ocr_body_limit
from services.core.settings import load_settings
from services.core.workspace import Workspace
from tests.security.servers import TOKEN, Served, answered, api_server, json_body, post_file, raw_request, read_response

IMAGE_LIMIT = 300_000
MB = 2**20


@pytest.fixture(scope="module")
def ocr_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ocr-body") / "ws"
    Workspace(root, load_settings()).close()
    with api_server(root, root.parent / "api.log", WORKBENCH_API__MAX_IMAGE_BYTES=str(IMAGE_LIMIT)) as served:
        yield served


def post_json(served: Served, body: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        served.base + "/ocr", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_limit_is_what_base64_of_the_largest_image_needs() -> None:
    for size in (1, 2, 3, 4, 299_999, 300_000, 50 * MB):
        assert ocr_body_limit(size) == len(base64.b64encode(b"\0" * size)) + JSON_AND_FORM_MARGIN


def test_the_largest_allowed_image_still_gets_through_in_json_and_multipart(ocr_api: Served) -> None:
    """Garbage bytes of exactly api.max_image_bytes: past the body limit, refused later as not an image (422);
    one byte more is the app's own 413 naming the image size."""
    data = b"\xff" * IMAGE_LIMIT
    body = json.dumps({"image": base64.b64encode(data).decode(), "engine": "tesseract", "rules": "seed-003"}).encode()
    status, answer = post_json(ocr_api, body)
    assert status == 422 and "not_image" in str(answer["detail"]), (status, answer)
    status, answer = post_file(ocr_api.base, "/ocr", "x.png", data)
    assert status == 422 and "not_image" in str(answer["detail"]), (status, answer)
    status, answer = post_file(ocr_api.base, "/ocr", "x.png", data + b"\xff")
    assert status == 413 and "300,001 bytes, over the 300,000 byte limit" in str(answer["detail"]), answer


@pytest.mark.parametrize("path", ["/ocr", "/ocr/"])
def test_a_declared_body_over_the_ocr_limit_is_refused_before_it_is_read(ocr_api: Served, path: str) -> None:
    limit = ocr_body_limit(IMAGE_LIMIT)
    sock = raw_request(
        ocr_api.port,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {limit + 1}",
    )
    try:
        assert answered(sock, 5), "no answer before the body was sent"
        status, _, body = read_response(sock)
        assert status == 413 and f"{limit:,} byte limit of /ocr" in str(json_body(body)["detail"])
    finally:
        sock.close()


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_ocr_limit(ocr_api: Served) -> None:
    sock = raw_request(
        ocr_api.port,
        f"POST /ocr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}",
    )
    sent = 0
    try:
        for piece in [b'{"image": "'] + [b"A" * 64 * 1024] * 160:  # 10 MB of base64 against a 0.4 MB limit
            if answered(sock, 0.005):
                break
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except OSError:
                break
            sent += len(piece)
        status, _, body = read_response(sock)
        assert status == 413 and "limit of /ocr" in str(json_body(body)["detail"])
        assert sent < 4 * MB  # answered while the client was still sending
    finally:
        sock.close()


def test_other_routes_keep_the_upload_limit(tmp_path: Path) -> None:
    """/classify takes zips of many images: its bodies are still bounded by max_upload_mb only."""
    root = tmp_path / "ws"
    Workspace(root, load_settings()).close()
    with api_server(
        root, tmp_path / "api.log", WORKBENCH_API__MAX_IMAGE_BYTES="1000", WORKBENCH_MAX_UPLOAD_MB="1"
    ) as s:
        status, answer = post_file(s.base, "/classify", "x.zip", b"\0" * 600_000)
        assert status != 413, answer  # past the body limit (then refused for what it is)
        status, answer = post_file(s.base, "/classify", "x.zip", b"\0" * (MB + 1))
        assert status == 413 and "1 MB limit" in str(answer["detail"])

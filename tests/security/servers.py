"""Real servers for the security tests: the REST API as `python -m services api` (uvicorn) on a loopback
port, and a raw HTTP/1.1 client that can send part of a body, or a chunked one, and see when the server
answers."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT, free_port

TOKEN = "security-test-token"


@dataclass
class Served:
    base: str
    port: int
    pid: int
    log: Path


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the developer's WORKBENCH_ settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


@contextlib.contextmanager
def api_server(ws_root: Path, log: Path, **settings: str) -> Iterator[Served]:
    """`python -m services --workspace WS api --port P` until the block ends."""
    port = free_port()
    env = clean_env(WORKBENCH_API_TOKEN=TOKEN, **settings)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "--workspace", str(ws_root), "api", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("the API did not start: " + log.read_text()[-3000:]) from None
                    time.sleep(0.2)
            yield Served(base, port, proc.pid, log)
        finally:
            proc.terminate()
            proc.wait(20)


def raw_request(port: int, head: str) -> socket.socket:
    """A connection with `head` (request line and headers, no blank line needed) sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.rstrip("\r\n").encode() + b"\r\n\r\n")
    return sock


def answered(sock: socket.socket, wait: float) -> bool:
    readable, _, _ = select.select([sock], [], [], wait)
    return bool(readable)


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def json_body(body: bytes) -> dict[str, object]:
    return dict(json.loads(body))


def multipart(name: str, data: bytes, boundary: str = "securitytestboundary") -> tuple[bytes, str]:
    """A multipart/form-data body with one `file` part, and its Content-Type."""
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post_file(base: str, path: str, name: str, data: bytes, token: str | None = TOKEN, timeout: float = 300):
    """(status, JSON body) of a multipart POST through urllib (a real client, nothing special)."""
    import urllib.error

    body, kind = multipart(name, data)
    headers = {"Content-Type": kind, **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(base + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except urllib.error.URLError as exc:  # the server answered (a 413) and closed before the body was all sent
        if not isinstance(exc.reason, (BrokenPipeError, ConnectionResetError)):
            raise
        return _answer_to_headers(base, path, headers, len(body), timeout)


def _answer_to_headers(base: str, path: str, headers: dict[str, str], length: int, timeout: float):
    """The server's answer to the request's headers alone (its Content-Length declared, no body sent): what a
    server that refuses a body by its declared size says, without a client racing to push the body first."""
    import http.client
    import urllib.parse

    where = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=timeout)
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@contextlib.contextmanager
def dashboard_server(command: list[str], log: Path, **settings: str) -> Iterator[str]:
    """A dashboard started by `command` (after `python -m`, with `{port}` filled in) until the block ends."""
    port = free_port()
    argv = [sys.executable, "-m", *(part.format(port=port) for part in command)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=clean_env(**settings), stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("the dashboard did not start: " + log.read_text()[-3000:]) from None
                    time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            proc.wait(20)

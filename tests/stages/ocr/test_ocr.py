"""OCR: seed 003's rules, the offline engines on rendered text, a tiny TrOCR through the real loader, the
CSV log under concurrent writers, the job, the socket server and the REST endpoint."""

from __future__ import annotations

import base64
import csv
import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.accuracy import accuracy, read_ground_truth
from services.stages.ocr.engines import EngineUnavailableError, build_engine, engine_status, load_trocr, resolve_engine
from services.stages.ocr.rules import PRESETS, OcrRules, RulesError, load_rules, save_rules
from services.stages.ocr.socket_server import HEADER, OcrSocketServer, send_image
from services.stages.ocr.stage import (
    LOG_HEADER,
    OcrSetup,
    append_log,
    ocr_bytes,
    ocr_results,
    read_image,
    start_ocr,
)
from tests.conftest import ROOT
from tests.support.text_images import render_line, render_lines, render_png
from tests.support.tiny_trocr import CHARS, save_tiny_trocr

SEED = PRESETS["seed-003"]
LINES = ["25012345678", "SERIAL 4711", "Quality OK", "2501 9876 543"]


def log_csv_rows(ws: Workspace) -> list[list[str]]:
    with open(ws.root / ws.settings.ocr.log_csv, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# --- rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("25012345678", "25012345678"),
        ("Z5O1234S678", "25012345678"),  # the misread Z5 of seed 003, repaired by the mapping
        ("25-0123:456 78", "25012345678"),  # separators stripped
        ("2SOIZ3B4bgA", "25012384694"),  # every look-alike in the table
        ("25/1234567/", "25712345677"),
    ],
)
def test_seed_003_rules_repair_look_alikes(raw: str, code: str):
    result = SEED.apply(raw)
    assert (result.text, result.valid) == (code, True)


@pytest.mark.parametrize("raw", ["12345678901", "2501234567", "250123456789", "X5012345678", "", "25O12345678 extra"])
def test_seed_003_rules_never_accept_without_the_anchor_and_length(raw: str):
    assert not SEED.apply(raw).valid


def test_rules_files_are_validated_saved_and_loaded(tmp_path: Path):
    with pytest.raises(ValueError, match="does not compile"):
        OcrRules(name="bad", pattern="([")
    with pytest.raises(ValueError, match="one character"):
        OcrRules(name="bad", mapping={"ab": "c"})
    custom = OcrRules(name="plates", strip=" ", mapping={"O": "0"}, pattern=r"[A-Z]{2}\d{4}")
    save_rules(tmp_path, custom)
    assert load_rules(tmp_path, "plates") == custom and load_rules(tmp_path, "plates").apply("AB 12O4").valid
    with pytest.raises(RulesError, match="known: none, seed-003, plates"):
        load_rules(tmp_path, "nope")
    with pytest.raises(RulesError, match="not a preset name"):
        save_rules(tmp_path, OcrRules(name="seed-003"))
    assert custom.settings_hash != SEED.settings_hash


def test_none_rules_trim_whitespace_at_the_ends_as_documented():
    none = PRESETS["none"]
    assert none.description == "Text as read, whitespace trimmed at the ends."
    assert (none.apply("  Quality OK \n").text, none.apply("  Quality OK \n").valid) == ("Quality OK", True)
    assert none.apply("a  b").text == "a  b"  # only the ends
    assert none.apply(" \t\n").valid is False and none.apply("").valid is False


def test_seed_003_and_saved_rules_behave_as_before_with_the_trim(tmp_path: Path):
    assert SEED.apply(" Z5O1234S678\n").text == "25012345678" and SEED.apply(" Z5O1234S678\n").valid
    plates = OcrRules(name="plates", strip="-", mapping={"O": "0"}, pattern=r"[A-Z]{2} \d{4}")
    save_rules(tmp_path, plates)
    loaded = load_rules(tmp_path, "plates")
    assert loaded.settings_hash == plates.settings_hash  # stored results stay valid: the rules did not change
    assert loaded.apply("AB 12O4").valid and loaded.apply("AB-12O4 ").text == "AB1204"
    assert loaded.apply(" AB 1204 ").text == "AB 1204" and loaded.apply(" AB 1204 ").valid
    assert not loaded.apply("AB  1204").valid  # inner spaces are still the rules' business


# --- engines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["rapidocr", "tesseract"])
def test_offline_engines_read_rendered_lines(engine: str):
    settings = load_settings()
    pairs = []
    for text in LINES:
        result = read_image(engine, settings, np.array(render_line(text)), None, PRESETS["none"])
        pairs.append((text, result.raw))
    assert accuracy(pairs).cer <= 0.05, pairs
    code = read_image(engine, settings, np.array(render_line("Z5O1234S678", mono=True)), None, SEED)
    assert code.valid and code.code == "25012345678"
    x1, y1, x2, y2 = code.cord
    assert 0 <= x1 < x2 and 0 <= y1 < y2


@pytest.mark.parametrize("preset_level", [None, "WARNING", "CRITICAL"])
def test_rapidocr_does_not_turn_its_info_logs_back_on(tmp_path: Path, preset_level: str | None):
    """The CLI quiets third-party loggers; building and using the engine must not undo that (RapidOCR's
    constructor sets INFO and logs each model it loads; it warns for every image without text)."""
    script = (
        "import logging, sys\n"
        "import numpy as np\n"
        + (f"logging.getLogger('RapidOCR').setLevel(logging.{preset_level})\n" if preset_level else "")
        + "from services.stages.ocr.engines import RapidOcrEngine\n"
        "from tests.support.text_images import render_line\n"
        "engine = RapidOcrEngine()\n"
        "print(engine.read(np.array(render_line('Quality OK')))[0].text)\n"
        "print(engine.read(np.full((60, 200, 3), 255, np.uint8)))\n"
        "print(logging.getLevelName(logging.getLogger('RapidOCR').level))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["Quality", "OK", "[]", preset_level if preset_level == "CRITICAL" else "ERROR"]
    assert "[INFO]" not in run.stderr and "[WARNING]" not in run.stderr, run.stderr


def test_the_line_that_passes_the_rules_wins_and_its_box_is_reported():
    image = np.array(render_lines(["Lot 7 checked", "25098765432", "ok"]))
    result = read_image("tesseract", load_settings(), image, None, SEED)
    assert result.code == "25098765432" and len(result.lines) == 3
    x1, y1, x2, y2 = result.cord
    second_line_top = render_line("Lot 7 checked", 32).height
    assert second_line_top - 5 <= y1 and y2 <= second_line_top + render_line("25098765432", 32).height + 5


def test_tiny_trocr_loads_through_the_real_loader_and_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = save_tiny_trocr(tmp_path / "trocr")
    monkeypatch.setenv("WORKBENCH_OCR__TROCR_MODEL", str(folder))
    settings = load_settings()
    assert engine_status(settings)["trocr"] is None and resolve_engine("auto", settings) == "trocr"
    engine = build_engine("trocr", settings)
    assert build_engine("trocr", settings) is engine  # once per process
    lines = engine.read(np.array(render_lines(["25012345678", "SECOND LINE"])))
    assert len(lines) == 2 and all(0.0 <= line.confidence <= 1.0 for line in lines)
    assert all(set(line.text) <= set(CHARS) for line in lines)
    assert lines[0].box[1] < lines[1].box[1]  # the detector's boxes, top to bottom
    started = time.monotonic()
    with pytest.raises(EngineUnavailableError, match="models pull trocr:microsoft/trocr-base-printed"):
        load_trocr("microsoft/trocr-base-printed")
    assert time.monotonic() - started < 5
    monkeypatch.setenv("WORKBENCH_OCR__TROCR_MODEL", "microsoft/trocr-large-printed")
    with pytest.raises(EngineUnavailableError, match="trocr: no local weights"):
        resolve_engine("trocr", load_settings())


# --- the CSV log -----------------------------------------------------------------------------------


def _write_rows(path: str, n: int, tag: str) -> None:
    for i in range(n):
        append_log(Path(path), f"{tag}-{i}")


def test_csv_log_has_its_header_on_the_first_run_and_survives_concurrent_writers(tmp_path: Path):
    path = tmp_path / "logs" / "ocr_log.csv"
    context = multiprocessing.get_context("forkserver")
    procs = [context.Process(target=_write_rows, args=(str(path), 25, f"p{k}")) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == LOG_HEADER and sum(r == LOG_HEADER for r in rows) == 1
    assert sorted(int(r[0]) for r in rows[1:]) == list(range(1, 101))
    assert len({r[2] for r in rows[1:]}) == 100


# --- job, accuracy ---------------------------------------------------------------------------------


def test_ocr_job_over_a_dataset_resumes_logs_and_scores_against_ground_truth(ws: Workspace, tmp_path: Path):
    folder = tmp_path / "parts"
    folder.mkdir()
    truth = {"a.png": "25012345678", "b.png": "25098765432", "c.png": "12345678901"}
    for name, text in truth.items():
        (folder / name).write_bytes(render_png(text.replace("0", "O", 1) if name == "b.png" else text, mono=True))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "parts"))
    job = start_ocr(ws, manager, "parts", engine="tesseract", rules="seed-003")
    p = manager.run(job)
    assert (p.done, p.failed) == (3, 0)  # the broken file never made it into the dataset
    rows = {r["image"]: r for r in ocr_results(ws, "parts", p.params["settings_hash"])}
    assert rows["a.png"]["code"] == "25012345678" and rows["b.png"]["code"] == "25098765432"
    assert rows["c.png"]["valid"] is False and rows["c.png"]["code"] is None
    log_rows = log_csv_rows(ws)
    assert log_rows[0] == LOG_HEADER and len(log_rows) == 4
    assert any(r[2].startswith("InvalidCode") for r in log_rows[1:])
    again = manager.run(start_ocr(ws, manager, "parts", engine="tesseract", rules="seed-003"))
    assert again.done == 3 and len(log_csv_rows(ws)) == 4  # nothing redone
    gt = read_ground_truth(b"image_name,text\na.png,25012345678\nb.png,25098765432\nc.png,12345678901\n")
    score = accuracy([(gt[name], rows[name]["code"] or rows[name]["raw"] or "") for name in gt])
    assert score.exact == 1.0 and score.cer == 0.0
    with pytest.raises(ValueError, match="image_name and text"):
        read_ground_truth(b"a,b\n1,2\n")


def test_ocr_job_runs_on_a_given_executor(ws: Workspace, tmp_path: Path):
    """The executor a run is handed (a Dask cluster from the page's "Run jobs on") is no parameter the OCR
    workers are sent: the job's options are its stored parameters only (they were sent with the executor in,
    which cannot be serialised)."""
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.png").write_bytes(render_png("25012345678", mono=True))
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "parts"))
    job = start_ocr(ws, manager, "parts", engine="tesseract", rules="seed-003")
    with ThreadPoolExecutor(max_workers=1) as pool:
        p = manager.run(job, executor=pool)
    assert p.state == "completed" and (p.done, p.failed) == (1, 0), p.error
    assert ocr_results(ws, "parts", p.params["settings_hash"])[0]["code"] == "25012345678"


def test_accuracy_measures():
    score = accuracy([("hello world", "hello word"), ("abc", "abc")])
    assert score.cer == round(1 / 14, 4) and score.wer == round(1 / 3, 4) and score.exact == 0.5


# --- device interfaces -----------------------------------------------------------------------------


@pytest.fixture
def socket_server(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setenv("WORKBENCH_OCR__SOCKET_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("WORKBENCH_OCR__SOCKET_MAX_BYTES", "200000")
    local = Workspace(ws.root, load_settings())
    server = OcrSocketServer(("127.0.0.1", 0), local, OcrSetup.resolve(local, "tesseract", None, "seed-003"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()
    local.close()


def _raw_exchange(address: tuple[str, int], payload: bytes, wait: float = 5.0, hold_open: bool = False) -> bytes:
    with socket.create_connection(address, timeout=wait) as sock:
        sock.sendall(payload)
        if not hold_open:
            sock.shutdown(socket.SHUT_WR)  # no more messages: the server answers, then closes
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_socket_round_trips_and_refuses_bad_clients(socket_server: tuple[str, int], ws: Workspace):
    host, port = socket_server
    reply = send_image(host, port, render_png("Z5O1234S678", mono=True))
    assert reply["code"] == "25012345678" and reply["valid"] and len(reply["cord"]) == 4 and reply["serial"] >= 1
    # two messages on one connection
    image = render_png("25011112222", mono=True)
    both = _raw_exchange(socket_server, (HEADER.pack(len(image)) + image) * 2)
    assert [json.loads(line)["code"] for line in both.splitlines()] == ["25011112222", "25011112222"]
    assert "must be 1..200000" in json.loads(_raw_exchange(socket_server, struct.pack(">I", 0)))["error"]
    assert "must be 1..200000" in json.loads(_raw_exchange(socket_server, struct.pack(">I", 10**9)))["error"]
    garbage = json.loads(_raw_exchange(socket_server, struct.pack(">I", 5) + b"hello"))
    assert garbage["error"].startswith("not_image")
    slow = _raw_exchange(socket_server, struct.pack(">I", 1000) + b"only a little", hold_open=True)  # then silence
    assert "no complete message within 0.5s" in json.loads(slow)["error"]
    # several clients at once
    replies: list[dict[str, object]] = []
    threads = [
        threading.Thread(target=lambda: replies.append(send_image(host, port, render_png("25000000001", mono=True))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r["code"] for r in replies] == ["25000000001"] * 4
    serials = [int(r[0]) for r in log_csv_rows(ws)[1:]]
    assert serials == list(range(1, len(serials) + 1))


class _Collector(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        _Collector.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_rest_ocr_multipart_and_base64_json_and_push(ws: Workspace, monkeypatch: pytest.MonkeyPatch):
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("WORKBENCH_OCR__PUSH_URL", f"http://127.0.0.1:{collector.server_port}/results")
    monkeypatch.setenv("WORKBENCH_OCR__ENGINE", "tesseract")
    local = Workspace(ws.root, load_settings())
    client = TestClient(create_app(local, "tok"))
    auth = {"Authorization": "Bearer tok"}
    image = render_png("Z5O1234S678", mono=True)
    assert client.post("/ocr", files={"file": ("x.png", image, "image/png")}).status_code == 401
    multipart = client.post("/ocr?rules=seed-003", headers=auth, files={"file": ("x.png", image, "image/png")})
    assert multipart.status_code == 200 and multipart.json()["code"] == "25012345678"
    as_json = client.post("/ocr", headers=auth, json={"image": base64.b64encode(image).decode(), "rules": "seed-003"})
    assert as_json.json()["code"] == "25012345678" and as_json.json()["serial"] == multipart.json()["serial"] + 1
    assert client.post("/ocr", headers=auth, json={"image": "%%%"}).status_code == 422
    assert client.post("/ocr", headers={**auth, "Content-Type": "text/plain"}, content=b"x").status_code == 415
    unknown = client.post("/ocr?engine=warp-drive", headers=auth, json={"image": base64.b64encode(image).decode()})
    assert unknown.status_code == 422 and "unknown OCR engine" in unknown.json()["detail"]
    assert client.post("/ocr", headers=auth, files={"file": ("n.txt", b"text", "text/plain")}).status_code == 422
    deadline = time.time() + 5
    while len(_Collector.received) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert [r["code"] for r in _Collector.received[:2]] == ["25012345678", "25012345678"]
    collector.shutdown()
    local.close()


def test_ocr_bytes_refuses_a_bad_engine_name(ws: Workspace):
    with pytest.raises(EngineUnavailableError, match="unknown OCR engine"):
        OcrSetup.resolve(ws, "warp-drive")
    result = ocr_bytes(ws, render_png("Quality OK"), OcrSetup.resolve(ws, "tesseract", None, "none"))
    assert result["raw"] == "Quality OK" and result["valid"] is True

"""Issue 14, broken zips through the one archive guard (services/io/archives.py) that the API, `import-tagged`,
folder imports and classify share: a bad CRC, a Deflate64 member, a scrambled or truncated deflate stream,
each also inside a nested zip, a corrupt nested zip, and a 5,000-character member name. Each is refused
per member with the reason; the good members are imported; no job fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.workspace import Workspace
from services.io.archives import ArchiveError, ArchiveReader, list_images
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from tests.conftest import ROOT
from tests.support.hostile_zips import (
    build_zip,
    nested,
    with_bad_crc,
    with_method,
    with_scrambled_deflate,
    with_truncated_deflate,
)
from tests.support.tagged_images import png

GOOD = {"red/ok.png": png("red", 1), "red/x.png": png("red", 2)}
LONG = "red/" + "n" * 5000 + ".png"


def corrupt_zips() -> dict[str, bytes]:
    flat = {
        "crc": with_bad_crc(build_zip(GOOD), "red/x.png"),
        "deflate64": with_method(build_zip(GOOD), "red/x.png", 9),
        "scrambled": with_scrambled_deflate(build_zip(GOOD), "red/x.png"),
        "truncated": with_truncated_deflate(GOOD, "red/x.png"),
        "long": build_zip({**GOOD, LONG: png("red", 3)}),
    }
    out = dict(flat)
    out.update({f"nested-{k}": nested("in.zip", v, {"blue/top.png": png("blue", 4)}) for k, v in flat.items()})
    out["broken-nested"] = with_scrambled_deflate(
        build_zip({"in.zip": build_zip(GOOD), "blue/top.png": png("blue", 4)}), "in.zip"
    )
    return out


def test_listing_refuses_what_cannot_be_read_and_reading_names_the_corruption(tmp_path: Path):
    zips = {}
    for name, data in corrupt_zips().items():
        zips[name] = tmp_path / f"{name}.zip"
        zips[name].write_bytes(data)
    reader = ArchiveReader()

    def outcome(name: str) -> dict[str, str]:
        """member (inside the zip) -> 'ok' or the reason it was refused (at listing or at reading)."""
        members, skipped = list_images(zips[name])
        result = {s.locator.split("!", 1)[1]: s.reason for s in skipped}
        for m in members:
            try:
                reader.read(m.locator)
                result[m.locator.split("!", 1)[1]] = "ok"
            except ArchiveError as exc:
                result[m.locator.split("!", 1)[1]] = exc.reason
        return result

    assert outcome("crc") == {"red/ok.png": "ok", "red/x.png": "corrupt data: bad CRC-32"}
    deflate64 = "compression method 9 (Deflate64) is not supported"
    assert outcome("deflate64") == {"red/ok.png": "ok", "red/x.png": deflate64}
    scrambled = outcome("scrambled")
    assert scrambled["red/ok.png"] == "ok" and scrambled["red/x.png"].startswith("corrupt compressed data")
    assert outcome("truncated") == {"red/ok.png": "ok", "red/x.png": "corrupt data: bad CRC-32"}
    too_long = f"name of {len(LONG)} characters (limit 1024)"
    assert outcome("long") == {"red/ok.png": "ok", "red/x.png": "ok", LONG: too_long}
    for kind in ("crc", "deflate64", "scrambled", "truncated", "long"):
        inner = {f"in.zip!{k}": v for k, v in outcome(kind).items()}
        assert outcome(f"nested-{kind}") == {**inner, "blue/top.png": "ok"}
    broken = outcome("broken-nested")
    assert broken["blue/top.png"] == "ok" and broken["in.zip"].startswith("corrupt nested zip (corrupt compressed data")
    reader.close()


def test_folder_import_refuses_corrupt_members_per_item_and_completes(ws: Workspace, tmp_path: Path):
    root = tmp_path / "tree"
    root.mkdir()
    for name, data in corrupt_zips().items():
        (root / f"{name}.zip").write_bytes(data)
    manager = JobManager(ws)
    progress = manager.run(start_folder_import(ws, manager, root, "faulty"))
    assert progress.state == "completed", progress.error
    failures = {f["item_key"]: (f["error_class"], f["error_message"]) for f in manager.failures(progress.id, limit=100)}
    assert failures["crc.zip!red/x.png"][0] == "unreadable" and "bad CRC-32" in failures["crc.zip!red/x.png"][1]
    assert failures["deflate64.zip!red/x.png"] == ("refused", "compression method 9 (Deflate64) is not supported")
    assert "corrupt compressed data" in failures["nested-scrambled.zip!in.zip!red/x.png"][1]
    assert failures[f"long.zip!{LONG}"] == ("refused", f"name of {len(LONG)} characters (limit 1024)")
    assert failures["broken-nested.zip!in.zip"][0] == "refused"
    assert not any(cls == "error" for cls, _ in failures.values()), failures  # no unexpected exception
    # every good member arrived: the five flat zips give 1+1+1+1+2 (x.png too where only a name was hostile),
    # the five nested ones the same plus their top.png (11), the broken nested zip its top.png
    assert progress.done == 6 + 11 + 1


def test_import_tagged_command_reports_refusals_not_a_traceback(tmp_path: Path):
    zip_path = tmp_path / "faulty.zip"
    inner = with_method(build_zip(GOOD), "red/x.png", 9)
    zip_path.write_bytes(nested("in.zip", inner, {"crc.zip": corrupt_zips()["crc"]}))
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "ws"), "import-tagged", str(zip_path),
         "--dataset", "faulty"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    ws = Workspace(tmp_path / "ws")
    manager = JobManager(ws)
    [job] = manager.list(limit=5)
    failures = {f["item_key"]: f["error_message"] for f in manager.failures(job.id)}
    ws.close()
    assert (
        failures
        == {
            "in.zip!red/x.png": "compression method 9 (Deflate64) is not supported",
            "crc.zip!red/x.png": failures["crc.zip!red/x.png"],
        }
        and "bad CRC-32" in failures["crc.zip!red/x.png"]
    )
    assert job.done == 2, job


@pytest.mark.parametrize("junk", [b"", b"PK\x03\x04 not a zip", b"\x89PNG\r\n"])
def test_an_unreadable_archive_is_one_refusal(tmp_path: Path, junk: bytes):
    path = tmp_path / "junk.zip"
    path.write_bytes(junk)
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        list_images(path)

"""S3 downloads against moto's S3 server over HTTP: listing, matching, analysis, jobs, batch, credentials."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from services.cli.app import app
from services.core.workspace import Workspace
from services.io.s3_client import S3AccessError, S3Object
from services.jobs.manager import JobManager
from services.stages.download.s3 import analyze_s3, match_names, plan_batch, read_name_list, start_s3_download
from tests.conftest import read_csv, write_csv
from tests.support.image_server import make_jpeg, make_png

BUCKET = "datalake"


def _bucket(endpoint: str, objects: dict[str, bytes]) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


@pytest.fixture
def real_bucket(s3_endpoint: str) -> str:
    _bucket(
        s3_endpoint,
        {
            "datalake_training/REAL/a.jpg": make_jpeg(60, 40, seed=1),
            "datalake_training/REAL/b.png": make_png(30, 30, seed=2),
            "datalake_training/REAL/sub/c.jpg": make_jpeg(50, 50, seed=3),
            "datalake_training/REAL/x/d.jpg": make_jpeg(20, 20, seed=4),
            "datalake_training/REAL/y/d.jpg": make_jpeg(20, 20, seed=5),
            "datalake_training/REAL/e.jpg": make_jpeg(20, 20, seed=6),
            "datalake_training/REAL/e.png": make_png(20, 20, seed=7),
            "datalake_training/REAL/bad.jpg": b"this is not an image",
            "datalake_training/GEN/g1.jpg": make_jpeg(33, 33, seed=8),
            "datalake_training/GEN/g2.webp": make_jpeg(34, 34, seed=9),
        },
    )
    return s3_endpoint


def test_match_names_by_basename_with_or_without_extension() -> None:
    objects = [
        S3Object(k, 1) for k in ["p/a.jpg", "p/b.png", "p/x/d.jpg", "p/y/d.jpg", "p/e.jpg", "p/e.png", "p/f.v2.jpg"]
    ]
    matched, missing, ambiguous = match_names(["a.jpg", "b", "b.jpg", "d.jpg", "e", "zzz", "f.v2", "a.jpg"], objects)
    assert matched == {"a.jpg": "p/a.jpg", "b": "p/b.png", "b.jpg": "p/b.png", "f.v2": "p/f.v2.jpg"}
    assert missing == ["zzz"]
    assert ambiguous == {"d.jpg": ["p/x/d.jpg", "p/y/d.jpg"], "e": ["p/e.jpg", "p/e.png"]}


def test_header_detection(tmp_path: Path) -> None:
    no_header = write_csv(tmp_path / "a.csv", None, [["a.jpg"], ["b.jpg"]])
    assert read_name_list(no_header).names() == ["a.jpg", "b.jpg"]
    with_header = write_csv(tmp_path / "b.csv", ["id", "image_name"], [["1", "a.jpg"], ["2", "b"]])
    names = read_name_list(with_header)
    assert names.has_header and names.names() == ["a.jpg", "b"]
    assert read_name_list(with_header, name_column="id").names() == ["1", "2"]


def test_analysis_then_download_then_already_done(
    ws: Workspace, manager: JobManager, real_bucket: str, tmp_path: Path
) -> None:
    names = ["a.jpg", "b", "c.jpg", "d.jpg", "e", "missing.jpg", "bad.jpg", "a.jpg"]
    csv_path = write_csv(tmp_path / "REAL_set.csv", None, [[n] for n in names])
    analysis = analyze_s3(ws, csv_path, BUCKET, "datalake_training/REAL/", real_bucket)
    s = analysis.summary()
    assert s["rows"] == 8 and s["unique names"] == 7 and s["objects listed"] == 8
    assert (s["already done"], s["available to download"], s["missing"], s["ambiguous"]) == (0, 4, 1, 2)
    assert s["missing examples"] == ["missing.jpg"]
    assert set(s["ambiguous examples"]) == {"d.jpg", "e"}

    job_id = start_s3_download(ws, manager, analysis, "REAL_set", resize=32)
    manager.run(job_id)
    p = manager.progress(job_id)
    assert (p.state, p.done, p.failed) == ("completed", 3, 4)
    assert manager.failure_counts(job_id) == {"ambiguous": 2, "missing": 1, "not_image": 1}
    out = read_csv(ws.root / "exports" / f"REAL_set-job{job_id}.csv")
    assert list(out[0]) == ["file_name", "image_path", "image_hash", "status", "error"]
    assert [r["status"] for r in out] == ["ok", "ok", "ok", "failed", "failed", "failed", "failed", "ok"]
    assert "2 candidates" in out[3]["error"]
    assert ws.catalog.scalar("SELECT kind FROM datasets WHERE name = 'REAL_set'") == "REAL"
    assert ws.catalog.scalar("SELECT COUNT(*) FROM image_sources WHERE kind = 's3'") == 3

    again = analyze_s3(ws, csv_path, BUCKET, "datalake_training/REAL/", real_bucket)
    assert len(again.already_done) == 3 and again.available == 1  # bad.jpg is still to try

    # retry-failed leaves missing and ambiguous alone (a new analysis is what fixes those)
    assert manager.reset_failed(job_id) == 1


def test_listing_is_paginated(ws: Workspace, s3_endpoint: str, tmp_path: Path) -> None:
    small = make_jpeg(8, 8, seed=1)
    _bucket(s3_endpoint, {f"many/{i:05d}.jpg": small for i in range(1010)})
    csv_path = write_csv(tmp_path / "many.csv", None, [["01009.jpg"], ["00000"]])
    analysis = analyze_s3(ws, csv_path, BUCKET, "many/", s3_endpoint)
    assert analysis.listed == 1010
    assert analysis.matched == {"01009.jpg": "many/01009.jpg", "00000": "many/00000.jpg"}


def test_missing_credentials_reported_once(ws: Workspace, real_bucket: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    csv_path = write_csv(tmp_path / "REAL_x.csv", None, [["a.jpg"]])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3AccessError, match="aws sso login"):
        analyze_s3(ws, csv_path, BUCKET, "datalake_training/REAL/", real_bucket)


def test_credentials_lost_mid_job_fail_it_once_and_resume_works(
    ws: Workspace, manager: JobManager, real_bucket: str, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    csv_path = write_csv(tmp_path / "REAL_y.csv", None, [["a.jpg"], ["b"], ["c.jpg"]])
    analysis = analyze_s3(ws, csv_path, BUCKET, "datalake_training/REAL/", real_bucket)
    job_id = start_s3_download(ws, manager, analysis, "REAL_y")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    manager.run(job_id)
    p = manager.progress(job_id)
    assert p.state == "failed"
    assert "credentials" in (p.error or "") and "aws sso login" in (p.error or "")
    assert p.failed == 0 and p.pending == 3  # nothing marked failed per file
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    manager.run(job_id)
    assert manager.progress(job_id).state == "completed"
    assert manager.progress(job_id).done == 3


def test_batch_plan_from_file_names(tmp_path: Path) -> None:
    drop = tmp_path / "to_download"
    drop.mkdir()
    write_csv(drop / "GEN_experiment.csv", None, [["g1.jpg"]])
    write_csv(drop / "REAL_validation.csv", None, [["a.jpg"]])
    write_csv(drop / "notes.csv", None, [["x"]])
    entries, skipped = plan_batch(drop, "datalake_training/{KIND}/")
    assert [(e.kind, e.prefix, e.dataset) for e in entries] == [
        ("GEN", "datalake_training/GEN/", "GEN_experiment"),
        ("REAL", "datalake_training/REAL/", "REAL_validation"),
    ]
    assert [p.name for p, _ in skipped] == ["notes.csv"]


def test_cli_s3_prompt_and_batch(real_bucket: str, tmp_path: Path) -> None:
    runner = CliRunner()
    ws_root = tmp_path / "cli-ws"
    csv_path = write_csv(tmp_path / "REAL_one.csv", ["filename"], [["a.jpg"], ["c"]])
    base = ["--workspace", str(ws_root), "download", "s3", str(csv_path), "--bucket", BUCKET]
    args = base + ["--prefix", "datalake_training/REAL/", "--endpoint-url", real_bucket]
    declined = runner.invoke(app, args, input="n\n")
    assert declined.exit_code == 0, declined.output
    assert "available to download: 2" in declined.output and "nothing downloaded" in declined.output
    accepted = runner.invoke(app, args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "2 ok, 0 failed" in accepted.output

    drop = tmp_path / "drop"
    drop.mkdir()
    write_csv(drop / "GEN_batch1.csv", None, [["g1"], ["g2.webp"]])
    write_csv(drop / "readme.csv", None, [["x"]])
    batch = runner.invoke(
        app,
        [
            "--workspace",
            str(ws_root),
            "download",
            "batch",
            str(drop),
            "--bucket",
            BUCKET,
            "--endpoint-url",
            real_bucket,
            "--auto-confirm",
        ],
    )
    assert batch.exit_code == 0, batch.output
    assert "skipped readme.csv" in batch.output
    assert "kind GEN, s3://datalake/datalake_training/GEN/ -> dataset GEN_batch1" in batch.output
    assert "2 ok, 0 failed" in batch.output
    listing = runner.invoke(app, ["--workspace", str(ws_root), "datasets", "list"])
    assert "GEN_batch1\tkind=GEN\trows=2\timages=2" in listing.output


def test_cli_s3_takes_the_seeds_flags(real_bucket: str, tmp_path: Path) -> None:
    """Seed 001's command line, flag for flag: the folder it downloaded into is the dataset here."""
    csv_path = write_csv(tmp_path / "real.csv", ["filename"], [["a.jpg"], ["c"]])
    ws = ["--workspace", str(tmp_path / "ws"), "download", "s3", "--bucket", BUCKET, "--endpoint-url", real_bucket]
    seed = ["--csv-file", str(csv_path), "--output-dir", "REAL", "--s3-prefix", "datalake_training/REAL/"]
    result = CliRunner().invoke(app, [*ws, *seed, "--auto-confirm"])
    assert result.exit_code == 0, result.output
    assert "2 ok, 0 failed" in result.output
    listing = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "datasets", "list"])
    assert "REAL\tkind=REAL\trows=2\timages=2" in listing.output
    as_path = CliRunner().invoke(app, [*ws, "--csv-file", str(csv_path), "--output-dir", "data/REAL", "--auto-confirm"])
    assert as_path.exit_code == 2 and "a dataset name, not a path" in as_path.output
    twice = CliRunner().invoke(app, [*ws, str(csv_path), "--csv-file", str(csv_path)])
    assert twice.exit_code == 2 and "once" in twice.output


def test_cli_batch_carries_on_past_a_bad_file(real_bucket: str, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "GEN_empty.csv").write_text("")
    write_csv(drop / "GEN_good.csv", None, [["g1"]])
    result = CliRunner().invoke(
        app,
        [
            "--workspace", str(tmp_path / "ws"), "download", "batch", str(drop), "--bucket", BUCKET,
            "--endpoint-url", real_bucket, "--auto-confirm",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "GEN_empty.csv: the file lists no names" in result.output
    assert "1 ok, 0 failed" in result.output  # GEN_good still downloaded
    assert "1 of 2 files did not finish: GEN_empty.csv" in result.output

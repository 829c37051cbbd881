"""Catalog: migrations, WAL, concurrent read-then-write from several processes without lost updates."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from services.core.catalog import MIGRATIONS, Catalog


def test_migrations_apply_once_and_reopen(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    assert cat.schema_version == len(MIGRATIONS)
    tables = {r[0] for r in cat.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"images", "image_sources", "datasets", "dataset_rows", "stage_results", "jobs", "job_items"} <= tables
    assert cat.scalar("PRAGMA journal_mode") == "wal"
    cat.close()
    again = Catalog(tmp_path / "c.sqlite")
    assert again.migrate() == len(MIGRATIONS)
    assert again.schema_version == len(MIGRATIONS)


def test_image_recorded_once_per_hash_with_every_source(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    with cat.write() as conn:
        for locator in ("http://a/x.jpg", "http://b/y.jpg"):
            cat.record_image(conn, image_hash="h1", fmt="JPEG", nbytes=10, width=2, height=3, path="images/h1/h1.jpg")
            cat.record_source(conn, "url", locator, "h1")
    assert cat.scalar("SELECT COUNT(*) FROM images") == 1
    assert cat.scalar("SELECT COUNT(*) FROM image_sources WHERE image_hash = 'h1'") == 2
    assert cat.source_hashes("url", ["http://a/x.jpg", "http://nope"]) == {"http://a/x.jpg": "h1"}


def _increment(path: str, n: int) -> None:
    cat = Catalog(path)
    for _ in range(n):
        with cat.write() as conn:
            value = conn.execute("SELECT n_ok FROM jobs WHERE id = 1").fetchone()[0]
            conn.execute("UPDATE jobs SET n_ok = ? WHERE id = 1", (value + 1,))


def test_read_then_write_from_two_processes_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cat = Catalog(path)
    with cat.write() as conn:
        conn.execute(
            "INSERT INTO jobs (id, kind, title, params, state, created_at) VALUES (1, 'k', 't', '{}', 'created', 0)"
        )
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(str(path), 150)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert cat.scalar("SELECT n_ok FROM jobs WHERE id = 1") == 300

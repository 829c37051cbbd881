"""Catalog: migrations, WAL, concurrent read-then-write from several processes without lost updates."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

from services.core.catalog import MIGRATIONS, Catalog, _split_sql


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


RESULTS = [  # (image, stage, result as stored)
    ("a", "categorize:gemini", '{"categories": ["x", "y"]}'),
    ("b", "ocr", '{"code": "25ABC", "valid": true}'),
    ("c", "ocr", "not json"),  # matches nothing, and must not fail the write
    ("d", "describe", '{"description": {"summary": "A Red Car", "objects": [{"name": "Wheel", "count": 2}]}}'),
    ("e", "ocr", '{"code": null, "valid": false}'),
    ("f", "categorize:clip", '{"categories": ["x"]}'),
]
TERMS = {("categorize:gemini", "x", "a"), ("categorize:gemini", "y", "a"), ("ocr", "read", "b"), ("ocr", "valid", "b"),
         ("ocr", "invalid", "e"), ("categorize:clip", "x", "f")}  # fmt: skip
TEXTS = {("describe", "d", "a red car\nwheel"), ("ocr", "b", "25abc")}


def _terms_and_texts(cat: Catalog) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    terms = {(r[0], r[1], r[2]) for r in cat.query("SELECT stage, term, image_hash FROM result_terms")}
    texts = {(r[0], r[1], r[2]) for r in cat.query("SELECT stage, image_hash, text FROM result_texts")}
    return terms, texts


def _term_counts(cat: Catalog, dataset_id: int) -> dict[tuple[str, str], int]:
    rows = cat.query("SELECT stage, term, images FROM dataset_term_counts WHERE dataset_id = ? AND images > 0",
                     (dataset_id,))  # fmt: skip
    return {(r[0], r[1]): r[2] for r in rows}


def test_the_terms_and_texts_browse_reads_follow_every_result_written_changed_or_backfilled(tmp_path: Path) -> None:
    """Migration 10: categories, OCR states, description texts and OCR codes as the results say, kept by the
    triggers on insert and on change, and backfilled from a catalog that held results before it."""
    cat = Catalog(tmp_path / "c.sqlite")
    with cat.write() as conn:
        conn.execute(
            "INSERT INTO datasets (id, name, kind, source, columns, created_at) VALUES (1, 'd', 'k', 's', '[]', 0)"
        )
        conn.executemany(
            "INSERT INTO dataset_members VALUES (1, ?, ?, ?, ?)", [(h, n, h, h) for n, h in enumerate("abcdef")]
        )
        conn.executemany("INSERT INTO stage_results VALUES (?, ?, 's', 'ok', ?, NULL, 0)", RESULTS)
        second = "INSERT INTO stage_results VALUES ('a', 'categorize:gemini', 's2', 'ok', ?, NULL, 0)"
        conn.execute(second, ('{"categories": ["x"]}',))  # the same category under a second setting: one image
    assert _terms_and_texts(cat) == (TERMS, TEXTS)
    assert _term_counts(cat, 1) == {(stage, term): 1 for stage, term, _ in TERMS}
    with cat.write() as conn:  # a new answer replaces the old terms; a failed one leaves none
        cat.record_stage(conn, image_hash="a", stage="categorize:gemini", settings_hash="s", status="ok",
                         result={"categories": ["z"]}, error=None)  # fmt: skip
        cat.record_stage(conn, image_hash="b", stage="ocr", settings_hash="s", status="failed", result=None, error="x")
    changed = (TERMS - {t for t in TERMS if t[2] in "ab"}) | {("categorize:gemini", "z", "a")}
    assert _terms_and_texts(cat)[1] == {t for t in TEXTS if t[1] != "b"}
    assert _terms_and_texts(cat)[0] == changed | {("categorize:gemini", "x", "a")}  # the second setting's
    assert _term_counts(cat, 1) == {(stage, term): 1 for stage, term, _ in changed | {("categorize:gemini", "x", "a")}}
    with cat.write() as conn:  # a dataset made later (a saved view) counts its images' terms as they join
        conn.execute(
            "INSERT INTO datasets (id, name, kind, source, columns, created_at) VALUES (2, 'v', 'k', 's', '[]', 0)"
        )
        conn.executemany(
            "INSERT INTO dataset_members VALUES (2, ?, ?, ?, ?)", [(h, n, h, h) for n, h in enumerate("af")]
        )
    assert _term_counts(cat, 2) == {
        ("categorize:gemini", "x"): 1,
        ("categorize:gemini", "z"): 1,
        ("categorize:clip", "x"): 1,
    }
    cat.close()

    old = tmp_path / "old.sqlite"  # a catalog at version 9 holding the same results, then opened by this code
    raw = sqlite3.connect(old)
    for script in MIGRATIONS[:9]:
        for statement in _split_sql(script):
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 9")
    raw.executemany("INSERT INTO stage_results VALUES (?, ?, 's', 'ok', ?, NULL, 0)", RESULTS)
    raw.commit()
    raw.close()
    assert _terms_and_texts(Catalog(old)) == (TERMS, TEXTS)

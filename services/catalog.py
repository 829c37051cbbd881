"""The workspace catalog: one SQLite file that every stage, process and page shares.

WAL mode and a busy timeout let the dashboard read while a job writes; every read-then-write goes through
`write()` (`BEGIN IMMEDIATE`), which takes the write lock up front instead of failing with "database is
locked" half-way. Schema changes are numbered migrations tracked in `PRAGMA user_version`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MIGRATIONS: list[str] = [
    # 1: images, their sources, datasets and rows, per-stage results, jobs and per-item status.
    """
    CREATE TABLE images (
        hash TEXT PRIMARY KEY,              -- sha256 of the original file bytes
        format TEXT NOT NULL,               -- PIL format name: JPEG, PNG, WEBP, ...
        bytes INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        path TEXT,                          -- original, relative to the workspace; NULL if discarded
        is_placeholder INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE image_sources (
        kind TEXT NOT NULL CHECK (kind IN ('url', 's3', 'path', 'zip')),
        locator TEXT NOT NULL,              -- the URL, s3://bucket/key, file path or zip!member
        image_hash TEXT NOT NULL REFERENCES images(hash),
        first_seen REAL NOT NULL,
        PRIMARY KEY (kind, locator)
    );
    CREATE INDEX image_sources_hash ON image_sources(image_hash);
    CREATE TABLE derived_images (
        image_hash TEXT NOT NULL REFERENCES images(hash),
        variant TEXT NOT NULL,              -- e.g. 'border-128'
        path TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        PRIMARY KEY (image_hash, variant)
    );
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,                 -- REAL, GEN, train, test, ...
        source TEXT NOT NULL,               -- where the rows came from (file path, s3 prefix)
        columns TEXT NOT NULL,              -- JSON list of the input columns, in order
        created_at REAL NOT NULL
    );
    CREATE TABLE dataset_rows (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        row_index INTEGER NOT NULL,
        data TEXT NOT NULL,                 -- JSON list of the row's values, same order as columns
        source_key TEXT,                    -- the URL or file name this row asks for
        PRIMARY KEY (dataset_id, row_index)
    ) WITHOUT ROWID;
    CREATE INDEX dataset_rows_key ON dataset_rows(dataset_id, source_key);
    CREATE TABLE stage_results (
        image_hash TEXT NOT NULL,
        stage TEXT NOT NULL,
        settings_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT,
        error TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (image_hash, stage, settings_hash)
    ) WITHOUT ROWID;
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        dataset_id INTEGER REFERENCES datasets(id),
        params TEXT NOT NULL,
        state TEXT NOT NULL,                -- created, running, completed, cancelled, failed
        planned INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        pid INTEGER,
        host TEXT,
        heartbeat_at REAL,
        run_started_at REAL,
        run_done_at_start INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        finished_at REAL,
        error TEXT,
        log_path TEXT,
        n_total INTEGER NOT NULL DEFAULT 0,
        n_ok INTEGER NOT NULL DEFAULT 0,
        n_failed INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE job_items (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        item_key TEXT NOT NULL,             -- unique per job: the URL, the S3 name, ...
        seq INTEGER NOT NULL,               -- dispatch order
        locator TEXT,                       -- what to fetch, when it differs from the key
        status TEXT NOT NULL,               -- pending, ok, failed
        attempts INTEGER NOT NULL DEFAULT 0,
        error_class TEXT,
        error_message TEXT,
        image_hash TEXT,
        result TEXT,
        updated_at REAL,
        PRIMARY KEY (job_id, item_key)
    ) WITHOUT ROWID;
    CREATE INDEX job_items_status ON job_items(job_id, status, seq);
    """,
    # 2: versioned category lists (Describe & Categorize); a stage result names the version it used.
    """
    CREATE TABLE category_lists (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        categories TEXT NOT NULL,           -- JSON list, in the user's order
        content_hash TEXT NOT NULL,         -- of the normalised list: equal lists share a hash
        source TEXT NOT NULL,               -- upload:<file>, edit, extract:<file>, cli:<file>
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE INDEX stage_results_stage ON stage_results(stage, settings_hash, status);
    """,
    # 3: per-tag classifier scores, one per (image, model version).
    """
    CREATE TABLE tag_scores (
        image_hash TEXT NOT NULL,
        model_sha TEXT NOT NULL,            -- sha256 of the model file: its version
        model TEXT NOT NULL,                -- model-{type}-tag-{tag}
        tag TEXT NOT NULL,
        score REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (image_hash, model_sha)
    ) WITHOUT ROWID;
    CREATE INDEX tag_scores_model ON tag_scores(model_sha, score);
    """,
    # 4: label sets for comparisons (categories per item from a categorised CSV or from Gemini results).
    """
    CREATE TABLE label_sets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        dataset_id INTEGER REFERENCES datasets(id),
        source TEXT NOT NULL,               -- csv:<file> or gemini:<list>:<settings hash>
        items INTEGER NOT NULL,             -- items with an answer (including failed and unknown)
        created_at REAL NOT NULL
    );
    CREATE TABLE labels (
        set_id INTEGER NOT NULL REFERENCES label_sets(id),
        label TEXT NOT NULL,                -- a category, 'unknown', or '(failed)'
        item TEXT NOT NULL,                 -- an image hash, or the CSV's image_name
        PRIMARY KEY (set_id, label, item)
    ) WITHOUT ROWID;
    """,
]


class CatalogError(Exception):
    """The catalog cannot be used as it is (missing or empty over existing content, damaged); the message says
    what is wrong and how to recover. Nothing is changed on disk when it is raised."""


class NewCatalogRefused(CatalogError):
    """A new, empty catalog would be created where the caller said one must not be."""


class Catalog:
    """Thread-safe handle: one SQLite connection per thread, opened lazily."""

    def __init__(self, path: Path | str, busy_timeout_ms: int = 30_000, create_if_new: bool = True) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not create_if_new and (state := self.new_state()) is not None:
            raise NewCatalogRefused(f"{self.path} is {state}")
        self.migrate()

    def new_state(self) -> str | None:
        """Why opening would make a new, empty catalog ('missing', 'empty (0 bytes)', 'without tables'), or None
        for a catalog with a schema. Read-only: the file is not created or changed. A file that is not a
        database raises sqlite3.DatabaseError."""
        if not self.path.exists():
            return "missing"
        if self.path.stat().st_size == 0:
            return "empty (0 bytes)"
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.OperationalError:  # cannot be read read-only (e.g. WAL files it may not create): existing
            return None
        return "without tables" if version == 0 and tables == 0 else None

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the lock from its first statement (`BEGIN IMMEDIATE`)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def migrate(self) -> int:
        """Apply the migrations this file has that the database lacks; returns the schema version."""
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _split_sql(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            return len(MIGRATIONS)

    @property
    def schema_version(self) -> int:
        return int(self.scalar("PRAGMA user_version"))

    # --- images -------------------------------------------------------------------------------------

    def record_image(
        self,
        conn: sqlite3.Connection,
        *,
        image_hash: str,
        fmt: str,
        nbytes: int,
        width: int,
        height: int,
        path: str | None,
        is_placeholder: bool = False,
    ) -> None:
        """Insert an image once per content hash; a later real copy replaces a placeholder or a lost path."""
        conn.execute(
            """INSERT INTO images (hash, format, bytes, width, height, path, is_placeholder, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(hash) DO UPDATE SET path = COALESCE(images.path, excluded.path)""",
            (image_hash, fmt, nbytes, width, height, path, int(is_placeholder), time.time()),
        )

    def record_source(self, conn: sqlite3.Connection, kind: str, locator: str, image_hash: str) -> None:
        conn.execute(
            """INSERT INTO image_sources (kind, locator, image_hash, first_seen) VALUES (?, ?, ?, ?)
               ON CONFLICT(kind, locator) DO UPDATE SET image_hash = excluded.image_hash""",
            (kind, locator, image_hash, time.time()),
        )

    def record_derived(
        self, conn: sqlite3.Connection, image_hash: str, variant: str, path: str, width: int, height: int
    ) -> None:
        conn.execute(
            """INSERT OR REPLACE INTO derived_images (image_hash, variant, path, width, height)
               VALUES (?, ?, ?, ?, ?)""",
            (image_hash, variant, path, width, height),
        )

    def record_stage(
        self,
        conn: sqlite3.Connection,
        image_hash: str,
        stage: str,
        settings_hash: str,
        status: str,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        conn.execute(
            """INSERT OR REPLACE INTO stage_results
               (image_hash, stage, settings_hash, status, result, error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (image_hash, stage, settings_hash, status, json.dumps(result) if result else None, error, time.time()),
        )

    def stage_done(self, stage: str, settings_hash: str, hashes: list[str]) -> set[str]:
        """Which of these images already have an ok result for this stage and settings."""
        done: set[str] = set()
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.query(
                f"""SELECT image_hash FROM stage_results WHERE stage = ? AND settings_hash = ? AND status = 'ok'
                    AND image_hash IN ({marks})""",
                (stage, settings_hash, *part),
            )
            done.update(r[0] for r in rows)
        return done

    def source_hashes(self, kind: str, locators: list[str]) -> dict[str, str]:
        """Which of these locators already have a stored, non-placeholder image."""
        out: dict[str, str] = {}
        for start in range(0, len(locators), 500):
            part = locators[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.query(
                f"""SELECT s.locator, s.image_hash FROM image_sources s JOIN images i ON i.hash = s.image_hash
                    WHERE s.kind = ? AND i.is_placeholder = 0 AND s.locator IN ({marks})""",
                (kind, *part),
            )
            out.update({r["locator"]: r["image_hash"] for r in rows})
        return out

    def overview(self) -> dict[str, Any]:
        """Counts for the Home page and `workspace info`, aggregated in SQL."""
        return {
            "images": self.scalar("SELECT COUNT(*) FROM images WHERE is_placeholder = 0"),
            "image_bytes": self.scalar("SELECT COALESCE(SUM(bytes), 0) FROM images WHERE is_placeholder = 0"),
            "sources": self.scalar("SELECT COUNT(*) FROM image_sources"),
            "datasets": self.scalar("SELECT COUNT(*) FROM datasets"),
            "jobs": self.scalar("SELECT COUNT(*) FROM jobs"),
        }


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script: `--` comments dropped, then split on `;` (no string literal has one)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]

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

from services.core.errors import WorkbenchError


def file_name_sql(column: str) -> str:
    """SQL for the file name in a URL, path or zip member (`services.stages.compare.label_sets`'s
    `_file_name`: backslashes as slashes, the query string dropped, the part after the last slash), to store and
    look up by index."""
    slashed = f"replace({column}, '\\', '/')"
    bare = (
        f"CASE WHEN instr({slashed}, '?') > 0 THEN substr({slashed}, 1, instr({slashed}, '?') - 1) ELSE {slashed} END"
    )
    return f"replace({bare}, rtrim({bare}, replace({bare}, '/', '')), '')"


SCORE_BINS = 1000  # fine bins of a classifier score that every dataset's score histogram is kept in


def score_bin_sql(score: str) -> str:
    """SQL for a score's fine bin: the largest k in 0..999 with k / 1000.0 <= score (1.0 in the last bin), decided
    by the same comparisons a query of a range makes, so counts from bins and from ranges add up exactly."""
    k = f"CAST({score} * {SCORE_BINS} AS INTEGER)"
    exact = f"({k} + ({score} >= ({k} + 1) / {SCORE_BINS}.0) - ({score} < {k} / {SCORE_BINS}.0))"
    return f"MIN({SCORE_BINS - 1}, MAX(0, {exact}))"


# What a job item that turns ok adds (a trigger body, for items inserted ok and items updated to ok): its image to
# the dataset of a source job (not a placeholder; the first item in dispatch order names it), and for a folder
# import the image's tag from the row the item came from.
ITEM_STORED_SQL = (
    """        INSERT INTO dataset_members (dataset_id, image_hash, seq, name, file_name)
            SELECT jb.dataset_id, NEW.image_hash, NEW.seq, NEW.item_key, """
    + file_name_sql("NEW.item_key")
    + """ FROM jobs jb
            WHERE jb.id = NEW.job_id AND jb.dataset_id IS NOT NULL AND NEW.image_hash IS NOT NULL
              AND jb.kind IN ('download_urls', 'download_s3', 'import_folder')
              AND NOT EXISTS (SELECT 1 FROM images i WHERE i.hash = NEW.image_hash AND i.is_placeholder = 1)
        ON CONFLICT (dataset_id, image_hash) DO UPDATE SET seq = excluded.seq, name = excluded.name,
            file_name = excluded.file_name WHERE excluded.seq < dataset_members.seq;
        INSERT OR IGNORE INTO dataset_member_tags (dataset_id, tag, image_hash)
            SELECT dataset_id, tag, NEW.image_hash FROM (
                SELECT r.dataset_id, json_extract(r.data, '$[' || (SELECT c.key FROM datasets d, json_each(d.columns) c
                    WHERE d.id = r.dataset_id AND c.value = 'tag') || ']') AS tag
                FROM jobs jb JOIN dataset_rows r INDEXED BY dataset_rows_key
                    ON r.dataset_id = jb.dataset_id AND r.source_key = NEW.item_key
                WHERE jb.id = NEW.job_id AND jb.kind = 'import_folder' AND NEW.image_hash IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM images i WHERE i.hash = NEW.image_hash AND i.is_placeholder = 1))
            WHERE COALESCE(tag, '') != '';"""
)


# What a stage result adds (a trigger body, for a new result and for the new side of a changed one): its quality
# flags to the index of flags, and one to the counts of every dataset holding the image.
STAGE_RESULT_ADDED_SQL = """        INSERT OR IGNORE INTO image_flags (settings_hash, flag, image_hash)
            SELECT NEW.settings_hash, f.value, NEW.image_hash
            FROM json_each(CASE WHEN json_valid(NEW.result) THEN NEW.result ELSE '{}' END, '$.flags') f
            WHERE NEW.stage = 'quality' AND NEW.status = 'ok';
        INSERT INTO dataset_stage_counts (dataset_id, stage, settings_hash, status, images)
            SELECT m.dataset_id, NEW.stage, NEW.settings_hash, NEW.status, 1 FROM dataset_members m
            WHERE m.image_hash = NEW.image_hash
        ON CONFLICT (dataset_id, stage, settings_hash, status) DO UPDATE SET images = images + 1;
        INSERT INTO dataset_flag_counts (dataset_id, settings_hash, flag, images)
            SELECT m.dataset_id, NEW.settings_hash, f.value, 1 FROM dataset_members m,
                json_each(CASE WHEN json_valid(NEW.result) THEN NEW.result ELSE '{}' END, '$.flags') f
            WHERE m.image_hash = NEW.image_hash AND NEW.stage = 'quality' AND NEW.status = 'ok'
        ON CONFLICT (dataset_id, settings_hash, flag) DO UPDATE SET images = images + 1;"""


def _json_of(row: str) -> str:
    """A result as JSON to read from: '{}' when it is not JSON (a trigger must never fail a write over it)."""
    return f"CASE WHEN json_valid({row}.result) THEN {row}.result ELSE '{{}}' END"


def _ocr_state_sql(row: str) -> str:
    """An OCR result's state as a term: valid or invalid (its `valid` field), NULL when it has none."""
    return f"CASE json_extract({_json_of(row)}, '$.valid') WHEN 1 THEN 'valid' WHEN 0 THEN 'invalid' END"


def result_terms_sql(row: str) -> str:
    """The terms a stage result holds (a SELECT of one column, `term`): its categories, or an OCR reading's
    states (read, and valid or invalid)."""
    return f"""SELECT c.value AS term FROM json_each({_json_of(row)}, '$.categories') c
               WHERE {row}.stage LIKE 'categorize:%' AND c.type = 'text'
               UNION ALL SELECT 'read' WHERE {row}.stage = 'ocr'
                   AND json_extract({_json_of(row)}, '$.code') IS NOT NULL
               UNION ALL SELECT {_ocr_state_sql(row)} WHERE {row}.stage = 'ocr' AND {_ocr_state_sql(row)} IS NOT NULL"""


def result_text_sql(row: str) -> str:
    """The text of a result a Browse filter finds a part of, lowercased: every text of a description (a line
    each, so a part never spans two), an OCR code; NULL for other stages."""
    return f"""lower(CASE {row}.stage
        WHEN 'describe' THEN (SELECT group_concat(t.value, char(10)) FROM json_tree({_json_of(row)}, '$.description') t
                              WHERE t.type = 'text')
        WHEN 'ocr' THEN json_extract({_json_of(row)}, '$.code') END)"""


# What an ok result adds to the terms and texts Browse filters on (a trigger body, NEW being the result).
RESULT_TERMS_ADDED_SQL = f"""        INSERT OR IGNORE INTO result_terms (stage, term, settings_hash, image_hash)
            SELECT NEW.stage, t.term, NEW.settings_hash, NEW.image_hash
            FROM ({result_terms_sql("NEW")}) t WHERE NEW.status = 'ok';
        INSERT OR REPLACE INTO result_texts (stage, settings_hash, image_hash, text)
            SELECT NEW.stage, NEW.settings_hash, NEW.image_hash, x.text FROM (SELECT {result_text_sql("NEW")} AS text) x
            WHERE NEW.status = 'ok' AND x.text IS NOT NULL;"""


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
    # 5: what pages read without scanning the catalog, kept by triggers as rows are ingested and job items
    # finish: each dataset's stored images (one row per content hash, named by its first item in dispatch
    # order), its folder tags, and counters of rows, images and images per tag.
    """
    ALTER TABLE datasets ADD COLUMN n_rows INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE datasets ADD COLUMN n_images INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE dataset_members (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        image_hash TEXT NOT NULL,
        seq INTEGER NOT NULL,               -- dispatch order of the first item that stored it: input order
        name TEXT NOT NULL,                 -- that item's key: the URL, S3 file name or path in the folder
        file_name TEXT NOT NULL,            -- the name's last part (file_name_sql), to link CSV names by
        PRIMARY KEY (dataset_id, image_hash)
    ) WITHOUT ROWID;
    CREATE INDEX dataset_members_order ON dataset_members(dataset_id, seq);
    CREATE INDEX dataset_members_file ON dataset_members(dataset_id, file_name);
    CREATE TABLE dataset_member_tags (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        tag TEXT NOT NULL,
        image_hash TEXT NOT NULL,
        PRIMARY KEY (dataset_id, tag, image_hash)
    ) WITHOUT ROWID;
    CREATE TABLE dataset_tag_counts (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        tag TEXT NOT NULL,
        images INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, tag)
    ) WITHOUT ROWID;
    CREATE TRIGGER dataset_rows_counted AFTER INSERT ON dataset_rows BEGIN
        UPDATE datasets SET n_rows = n_rows + 1 WHERE id = NEW.dataset_id;
    END;
    CREATE INDEX dataset_members_image ON dataset_members(image_hash);
    CREATE TABLE dataset_stage_counts (      -- images of a dataset per stage result (settings, status)
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        stage TEXT NOT NULL,
        settings_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        images INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, stage, settings_hash, status)
    ) WITHOUT ROWID;
    CREATE TABLE dataset_flag_counts (       -- images of a dataset per quality flag (quality version)
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        settings_hash TEXT NOT NULL,
        flag TEXT NOT NULL,
        images INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, settings_hash, flag)
    ) WITHOUT ROWID;
    CREATE TABLE dataset_score_bins (        -- images of a dataset per classifier version and fine score bin
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        model_sha TEXT NOT NULL,
        bin INTEGER NOT NULL,               -- score_bin_sql: k with k / 1000 <= score < (k + 1) / 1000
        images INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, model_sha, bin)
    ) WITHOUT ROWID;
    CREATE TRIGGER tag_score_counted AFTER INSERT ON tag_scores BEGIN
        INSERT INTO dataset_score_bins (dataset_id, model_sha, bin, images)
            SELECT m.dataset_id, NEW.model_sha, {new_score_bin}, 1 FROM dataset_members m
            WHERE m.image_hash = NEW.image_hash
        ON CONFLICT (dataset_id, model_sha, bin) DO UPDATE SET images = images + 1;
    END;
    CREATE TRIGGER tag_score_recounted AFTER UPDATE OF score, model_sha ON tag_scores BEGIN
        UPDATE dataset_score_bins SET images = images - 1
            WHERE model_sha = OLD.model_sha AND bin = {old_score_bin}
              AND dataset_id IN (SELECT dataset_id FROM dataset_members WHERE image_hash = OLD.image_hash);
        INSERT INTO dataset_score_bins (dataset_id, model_sha, bin, images)
            SELECT m.dataset_id, NEW.model_sha, {new_score_bin}, 1 FROM dataset_members m
            WHERE m.image_hash = NEW.image_hash
        ON CONFLICT (dataset_id, model_sha, bin) DO UPDATE SET images = images + 1;
    END;
    CREATE TABLE image_flags (               -- quality flags per image, to filter on without parsing results
        settings_hash TEXT NOT NULL,
        flag TEXT NOT NULL,
        image_hash TEXT NOT NULL,
        PRIMARY KEY (settings_hash, flag, image_hash)
    ) WITHOUT ROWID;
    CREATE TRIGGER dataset_members_counted AFTER INSERT ON dataset_members BEGIN
        UPDATE datasets SET n_images = n_images + 1 WHERE id = NEW.dataset_id;
        INSERT INTO dataset_score_bins (dataset_id, model_sha, bin, images)
            SELECT NEW.dataset_id, t.model_sha, {t_score_bin}, 1 FROM tag_scores t WHERE t.image_hash = NEW.image_hash
        ON CONFLICT (dataset_id, model_sha, bin) DO UPDATE SET images = images + 1;
        INSERT INTO dataset_stage_counts (dataset_id, stage, settings_hash, status, images)
            SELECT NEW.dataset_id, s.stage, s.settings_hash, s.status, 1 FROM stage_results s
            WHERE s.image_hash = NEW.image_hash
        ON CONFLICT (dataset_id, stage, settings_hash, status) DO UPDATE SET images = images + 1;
        INSERT INTO dataset_flag_counts (dataset_id, settings_hash, flag, images)
            SELECT NEW.dataset_id, s.settings_hash, f.value, 1
            FROM stage_results s, json_each(CASE WHEN json_valid(s.result) THEN s.result ELSE '{}' END, '$.flags') f
            WHERE s.image_hash = NEW.image_hash AND s.stage = 'quality' AND s.status = 'ok'
        ON CONFLICT (dataset_id, settings_hash, flag) DO UPDATE SET images = images + 1;
    END;
    CREATE TRIGGER stage_result_counted AFTER INSERT ON stage_results BEGIN
{stage_result_added}
    END;
    CREATE TRIGGER stage_result_recounted AFTER UPDATE OF status, result ON stage_results BEGIN
        DELETE FROM image_flags WHERE OLD.stage = 'quality' AND settings_hash = OLD.settings_hash
            AND image_hash = OLD.image_hash AND flag IN (SELECT value FROM
                json_each(CASE WHEN json_valid(OLD.result) THEN OLD.result ELSE '{}' END, '$.flags'));
        UPDATE dataset_stage_counts SET images = images - 1
            WHERE stage = OLD.stage AND settings_hash = OLD.settings_hash AND status = OLD.status
              AND dataset_id IN (SELECT dataset_id FROM dataset_members WHERE image_hash = OLD.image_hash);
        UPDATE dataset_flag_counts SET images = images - 1
            WHERE OLD.stage = 'quality' AND OLD.status = 'ok' AND settings_hash = OLD.settings_hash
              AND flag IN (SELECT value FROM
                  json_each(CASE WHEN json_valid(OLD.result) THEN OLD.result ELSE '{}' END, '$.flags'))
              AND dataset_id IN (SELECT dataset_id FROM dataset_members WHERE image_hash = OLD.image_hash);
{stage_result_added}
    END;
    CREATE TRIGGER dataset_member_tags_counted AFTER INSERT ON dataset_member_tags BEGIN
        INSERT INTO dataset_tag_counts (dataset_id, tag, images) VALUES (NEW.dataset_id, NEW.tag, 1)
        ON CONFLICT (dataset_id, tag) DO UPDATE SET images = images + 1;
    END;
    CREATE TRIGGER job_item_stored_on_insert AFTER INSERT ON job_items WHEN NEW.status = 'ok' BEGIN
{item_stored}
    END;
    CREATE TRIGGER job_item_stored_on_update AFTER UPDATE OF status ON job_items
    WHEN NEW.status = 'ok' AND OLD.status != 'ok' BEGIN
{item_stored}
    END;
    CREATE TABLE catalog_totals (
        name TEXT PRIMARY KEY,              -- images, image_bytes, sources
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER images_counted AFTER INSERT ON images WHEN NEW.is_placeholder = 0 BEGIN
        UPDATE catalog_totals SET value = value + 1 WHERE name = 'images';
        UPDATE catalog_totals SET value = value + NEW.bytes WHERE name = 'image_bytes';
    END;
    CREATE TRIGGER image_sources_counted AFTER INSERT ON image_sources BEGIN
        UPDATE catalog_totals SET value = value + 1 WHERE name = 'sources';
    END;
    INSERT INTO catalog_totals (name, value) VALUES
        ('images', (SELECT COUNT(*) FROM images WHERE is_placeholder = 0)),
        ('image_bytes', (SELECT COALESCE(SUM(bytes), 0) FROM images WHERE is_placeholder = 0)),
        ('sources', (SELECT COUNT(*) FROM image_sources));
    INSERT OR IGNORE INTO image_flags (settings_hash, flag, image_hash)
        SELECT s.settings_hash, f.value, s.image_hash
        FROM stage_results s, json_each(CASE WHEN json_valid(s.result) THEN s.result ELSE '{}' END, '$.flags') f
        WHERE s.stage = 'quality' AND s.status = 'ok';
    UPDATE datasets SET n_rows = (SELECT COUNT(*) FROM dataset_rows r WHERE r.dataset_id = datasets.id);
    INSERT INTO dataset_members (dataset_id, image_hash, seq, name, file_name)
        SELECT jb.dataset_id, j.image_hash, MIN(j.seq), j.item_key, {item_file_name}
        FROM jobs jb JOIN job_items j ON j.job_id = jb.id JOIN images i ON i.hash = j.image_hash
        WHERE jb.dataset_id IS NOT NULL AND jb.kind IN ('download_urls', 'download_s3', 'import_folder')
          AND j.status = 'ok' AND i.is_placeholder = 0
        GROUP BY jb.dataset_id, j.image_hash;
    INSERT OR IGNORE INTO dataset_member_tags (dataset_id, tag, image_hash)
        SELECT dataset_id, tag, image_hash FROM (
            SELECT r.dataset_id, j.image_hash, json_extract(r.data, '$[' || (SELECT c.key FROM datasets d,
                json_each(d.columns) c WHERE d.id = r.dataset_id AND c.value = 'tag') || ']') AS tag
            FROM jobs jb CROSS JOIN job_items j ON j.job_id = jb.id AND j.status = 'ok'
            JOIN dataset_rows r INDEXED BY dataset_rows_key
                ON r.dataset_id = jb.dataset_id AND r.source_key = j.item_key
            JOIN images i ON i.hash = j.image_hash
            WHERE jb.kind = 'import_folder' AND i.is_placeholder = 0)
        WHERE COALESCE(tag, '') != '';
    -- a label set's counts per label and per number of categories an item carries, written when the set is
    -- finished (sets never change after that): what Compare reads instead of grouping a million labels
    CREATE TABLE label_set_counts (
        set_id INTEGER NOT NULL REFERENCES label_sets(id),
        label TEXT NOT NULL,
        items INTEGER NOT NULL,
        PRIMARY KEY (set_id, label)
    ) WITHOUT ROWID;
    CREATE TABLE label_set_depths (
        set_id INTEGER NOT NULL REFERENCES label_sets(id),
        categories INTEGER NOT NULL,
        items INTEGER NOT NULL,
        PRIMARY KEY (set_id, categories)
    ) WITHOUT ROWID;
    INSERT INTO label_set_counts (set_id, label, items)
        SELECT set_id, label, COUNT(*) FROM labels GROUP BY set_id, label;
    INSERT INTO label_set_depths (set_id, categories, items)
        SELECT set_id, n, COUNT(*) FROM (SELECT set_id, COUNT(*) AS n FROM labels
                                         WHERE label NOT IN ('unknown', '(failed)') GROUP BY set_id, item)
        GROUP BY set_id, n;
    """.replace("{new_score_bin}", score_bin_sql("NEW.score"))
    .replace("{old_score_bin}", score_bin_sql("OLD.score"))
    .replace("{t_score_bin}", score_bin_sql("t.score"))
    .replace("{item_stored}", ITEM_STORED_SQL)
    .replace("{stage_result_added}", STAGE_RESULT_ADDED_SQL)
    .replace("{item_file_name}", file_name_sql("j.item_key")),
    # 6: other names of an image: seed 004's `hash_id` (blake2b of the decoded pixels), found by that name too.
    """
    CREATE TABLE image_aliases (
        alias TEXT NOT NULL,
        kind TEXT NOT NULL,                 -- 'seed-blake2b'
        image_hash TEXT NOT NULL REFERENCES images(hash),
        PRIMARY KEY (image_hash, kind)
    ) WITHOUT ROWID;
    CREATE INDEX image_aliases_alias ON image_aliases(kind, alias);  -- pixel-equal files share one
    """,
    # 7: keep/drop choices on near-duplicate images, append-only (an audit trail; the latest choice counts).
    """
    CREATE TABLE duplicate_choices (
        id INTEGER PRIMARY KEY,
        image_hash TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ('keep', 'drop')),
        decided_by TEXT NOT NULL,
        decided_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT ''       -- why: the group's kept image and the cosine, when known
    );
    CREATE INDEX duplicate_choices_image ON duplicate_choices(image_hash, id);
    """,
    # 8: each image's 64-bit perceptual hash (pHash, signed as SQLite keeps integers), for edited copies.
    """
    CREATE TABLE image_phashes (
        image_hash TEXT PRIMARY KEY,
        phash INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 9: Explore's Browse sorts by file size and by pixels: a first page read in index order, not a sort of all.
    """
    CREATE INDEX images_bytes ON images(bytes);
    CREATE INDEX images_pixels ON images(width * height);
    """,
    # 10: what Browse filters on in the stages' results, kept as the results are written (no JSON parsed per
    # filter change): the categories Gemini and CLIP gave and the OCR reading's state as terms, the description's
    # text and the OCR code lowercased as text to find a part of.
    """
    CREATE TABLE result_terms (
        stage TEXT NOT NULL,
        term TEXT NOT NULL,                 -- a category; for OCR: read, valid, invalid
        settings_hash TEXT NOT NULL,
        image_hash TEXT NOT NULL,
        PRIMARY KEY (stage, term, image_hash, settings_hash)
    ) WITHOUT ROWID;
    CREATE INDEX result_terms_image ON result_terms(image_hash);  -- an image's terms, when it joins a dataset
    CREATE INDEX images_format ON images(format);  -- the formats to offer, one seek each
    CREATE TABLE dataset_format_counts (     -- images of a dataset per file format (a format filter's count)
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        format TEXT NOT NULL,
        images INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, format)
    ) WITHOUT ROWID;
    CREATE TRIGGER dataset_member_format_counted AFTER INSERT ON dataset_members BEGIN
        INSERT INTO dataset_format_counts (dataset_id, format, images)
            SELECT NEW.dataset_id, i.format, 1 FROM images i WHERE i.hash = NEW.image_hash
        ON CONFLICT (dataset_id, format) DO UPDATE SET images = images + 1;
    END;
    INSERT INTO dataset_format_counts (dataset_id, format, images)
        SELECT m.dataset_id, i.format, COUNT(*) FROM dataset_members m JOIN images i ON i.hash = m.image_hash
        GROUP BY m.dataset_id, i.format;
    CREATE TABLE dataset_term_counts (       -- images of a dataset per term (under any settings)
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        stage TEXT NOT NULL,
        term TEXT NOT NULL,
        images INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, stage, term)
    ) WITHOUT ROWID;
    CREATE TRIGGER result_term_counted AFTER INSERT ON result_terms
    WHEN NOT EXISTS (SELECT 1 FROM result_terms WHERE stage = NEW.stage AND term = NEW.term
                     AND image_hash = NEW.image_hash AND settings_hash != NEW.settings_hash) BEGIN
        INSERT INTO dataset_term_counts (dataset_id, stage, term, images)
            SELECT m.dataset_id, NEW.stage, NEW.term, 1 FROM dataset_members m WHERE m.image_hash = NEW.image_hash
        ON CONFLICT (dataset_id, stage, term) DO UPDATE SET images = images + 1;
    END;
    CREATE TRIGGER result_term_uncounted AFTER DELETE ON result_terms
    WHEN NOT EXISTS (SELECT 1 FROM result_terms WHERE stage = OLD.stage AND term = OLD.term
                     AND image_hash = OLD.image_hash) BEGIN
        UPDATE dataset_term_counts SET images = images - 1 WHERE stage = OLD.stage AND term = OLD.term
            AND dataset_id IN (SELECT dataset_id FROM dataset_members WHERE image_hash = OLD.image_hash);
    END;
    CREATE TRIGGER dataset_member_terms_counted AFTER INSERT ON dataset_members BEGIN
        INSERT INTO dataset_term_counts (dataset_id, stage, term, images)
            SELECT NEW.dataset_id, t.stage, t.term, 1 FROM
                (SELECT DISTINCT stage, term FROM result_terms WHERE image_hash = NEW.image_hash) t WHERE true
        ON CONFLICT (dataset_id, stage, term) DO UPDATE SET images = images + 1;
    END;
    CREATE TABLE result_texts (
        stage TEXT NOT NULL,
        settings_hash TEXT NOT NULL,
        image_hash TEXT NOT NULL,
        text TEXT NOT NULL,                 -- lowercased: the description's texts (one a line), the OCR code
        PRIMARY KEY (stage, settings_hash, image_hash)
    ) WITHOUT ROWID;
    CREATE TRIGGER result_terms_added AFTER INSERT ON stage_results
    WHEN NEW.status = 'ok' AND (NEW.stage LIKE 'categorize:%' OR NEW.stage IN ('ocr', 'describe')) BEGIN
{terms_added}
    END;
    CREATE TRIGGER result_terms_changed AFTER UPDATE OF status, result ON stage_results
    WHEN NEW.stage LIKE 'categorize:%' OR NEW.stage IN ('ocr', 'describe') BEGIN
        DELETE FROM result_terms WHERE stage = OLD.stage AND settings_hash = OLD.settings_hash
            AND image_hash = OLD.image_hash AND term IN ({old_terms});
        DELETE FROM result_texts WHERE stage = OLD.stage AND settings_hash = OLD.settings_hash
            AND image_hash = OLD.image_hash;
{terms_added}
    END;
    INSERT OR IGNORE INTO result_terms (stage, term, settings_hash, image_hash)
        SELECT s.stage, c.value, s.settings_hash, s.image_hash
        FROM stage_results s, json_each({json_s}, '$.categories') c
        WHERE s.stage LIKE 'categorize:%' AND s.status = 'ok' AND c.type = 'text';
    INSERT OR IGNORE INTO result_terms (stage, term, settings_hash, image_hash)
        SELECT s.stage, 'read', s.settings_hash, s.image_hash FROM stage_results s
        WHERE s.stage = 'ocr' AND s.status = 'ok' AND json_extract({json_s}, '$.code') IS NOT NULL;
    INSERT OR IGNORE INTO result_terms (stage, term, settings_hash, image_hash)
        SELECT s.stage, {ocr_state_s}, s.settings_hash, s.image_hash FROM stage_results s
        WHERE s.stage = 'ocr' AND s.status = 'ok' AND {ocr_state_s} IS NOT NULL;
    INSERT OR IGNORE INTO result_texts (stage, settings_hash, image_hash, text)
        SELECT s.stage, s.settings_hash, s.image_hash, {text_s} FROM stage_results s
        WHERE s.stage IN ('describe', 'ocr') AND s.status = 'ok' AND {text_s} IS NOT NULL;
    """.replace("{terms_added}", RESULT_TERMS_ADDED_SQL)
    .replace("{old_terms}", result_terms_sql("OLD"))
    .replace("{json_s}", _json_of("s"))
    .replace("{ocr_state_s}", _ocr_state_sql("s"))
    .replace("{text_s}", result_text_sql("s")),
]


class CatalogError(WorkbenchError):
    """The catalog cannot be used as it is (missing or empty over existing content, damaged); the message says
    what is wrong and how to recover. Nothing is changed on disk when it is raised."""

    error_class = "catalog"
    http_status = 503


class NewCatalogRefused(CatalogError):
    """A new, empty catalog would be created where the caller said one must not be."""

    error_class = "new_catalog_refused"
    http_status = 503


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
            """INSERT INTO stage_results
               (image_hash, stage, settings_hash, status, result, error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (image_hash, stage, settings_hash) DO UPDATE SET status = excluded.status,
               result = excluded.result, error = excluded.error, updated_at = excluded.updated_at""",
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
        """Counts for the Home page and `workspace info`: counters kept by the catalog's triggers (migration 5)."""
        totals = {r["name"]: r["value"] for r in self.query("SELECT name, value FROM catalog_totals")}
        return {
            "images": totals["images"],
            "image_bytes": totals["image_bytes"],
            "sources": totals["sources"],
            "datasets": self.scalar("SELECT COUNT(*) FROM datasets"),
            "jobs": self.scalar("SELECT COUNT(*) FROM jobs"),
        }


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script: `--` comments dropped, then split on `;` (no string literal has one),
    a trigger's `BEGIN ... END` body kept whole."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    statements: list[str] = []
    current = ""
    for part in code.split(";"):
        current = f"{current};{part}" if current else part
        stripped = current.strip()
        if stripped.upper().startswith("CREATE TRIGGER") and not stripped.upper().endswith("END"):
            continue
        if stripped:
            statements.append(stripped)
        current = ""
    return statements

"""The catalog's per-dataset members and counters (migration 5), kept by triggers as jobs commit, checked against
a recount from the base tables written here in plain SQL and Python (the queries pages used to run), after real
downloads, folder imports, placeholders, retries, preprocessing and changed results; and after migrating a
catalog written at schema 4."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

from services.core.catalog import MIGRATIONS, Catalog, _split_sql
from services.core.datasets import dataset_entries, dataset_tags, list_datasets, sample_entries, tag_counts
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.classify.stage import score_summary
from services.stages.compare.label_sets import category_depth, get_label_set, import_categorized_csv, label_counts
from services.stages.download.folder_import import start_folder_import
from services.stages.download.urls import start_url_download
from services.stages.preprocess.recipes import PRESETS
from services.stages.preprocess.stage import start_preprocess
from tests.conftest import write_csv
from tests.support.fake_gemini import make_colour_png
from tests.support.image_server import ImageServer, make_jpeg

SOURCE_KINDS = ("download_urls", "download_s3", "import_folder")


def recount(conn: sqlite3.Connection) -> dict[str, object]:
    """Every counter and member list recomputed from jobs, items, images, rows and stage results."""
    conn.row_factory = sqlite3.Row
    members: dict[tuple[int, str], tuple[int, str]] = {}
    for r in conn.execute(
        f"""SELECT jb.dataset_id, j.image_hash, j.seq, j.item_key FROM jobs jb JOIN job_items j ON j.job_id = jb.id
            JOIN images i ON i.hash = j.image_hash
            WHERE jb.kind IN ({",".join("?" * len(SOURCE_KINDS))}) AND j.status = 'ok' AND i.is_placeholder = 0
              AND jb.dataset_id IS NOT NULL""",
        SOURCE_KINDS,
    ):
        key = (r["dataset_id"], r["image_hash"])
        if key not in members or r["seq"] < members[key][0]:
            members[key] = (r["seq"], r["item_key"])
    tags: set[tuple[int, str, str]] = set()
    for r in conn.execute(
        """SELECT d.id, d.columns, r.data, j.image_hash FROM datasets d JOIN jobs jb ON jb.dataset_id = d.id
           JOIN job_items j ON j.job_id = jb.id JOIN dataset_rows r ON r.dataset_id = d.id AND r.source_key = j.item_key
           JOIN images i ON i.hash = j.image_hash
           WHERE jb.kind = 'import_folder' AND j.status = 'ok' AND i.is_placeholder = 0"""
    ):
        columns = json.loads(r["columns"])
        if "tag" in columns:
            values = json.loads(r["data"])
            tag = values[columns.index("tag")] if columns.index("tag") < len(values) else ""
            if tag:
                tags.add((r["id"], tag, r["image_hash"]))
    stages: Counter[tuple[int, str, str, str]] = Counter()
    flags: Counter[tuple[int, str, str]] = Counter()
    image_flags: set[tuple[str, str, str]] = set()
    results = conn.execute("SELECT image_hash, stage, settings_hash, status, result FROM stage_results").fetchall()
    by_image: dict[str, list[sqlite3.Row]] = {}
    for r in results:
        by_image.setdefault(r["image_hash"], []).append(r)
        if r["stage"] == "quality" and r["status"] == "ok":
            for flag in json.loads(r["result"])["flags"]:
                image_flags.add((r["settings_hash"], flag, r["image_hash"]))
    for dataset_id, image_hash in members:
        for r in by_image.get(image_hash, []):
            stages[(dataset_id, r["stage"], r["settings_hash"], r["status"])] += 1
            if r["stage"] == "quality" and r["status"] == "ok":
                for flag in json.loads(r["result"])["flags"]:
                    flags[(dataset_id, r["settings_hash"], flag)] += 1
    real = conn.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM images WHERE is_placeholder = 0").fetchone()
    return {
        "members": {k: v for k, v in members.items()},
        "n_rows": dict(
            conn.execute(
                "SELECT d.id, COUNT(r.row_index) FROM datasets d LEFT JOIN dataset_rows r "
                "ON r.dataset_id = d.id GROUP BY d.id"
            ).fetchall()
        ),  # fmt: skip
        "n_images": Counter(dataset_id for dataset_id, _ in members),
        "tags": tags,
        "tag_counts": Counter((d, t) for d, t, _ in tags),
        "stages": +stages,
        "flags": +flags,
        "image_flags": image_flags,
        "totals": {
            "images": real[0],
            "image_bytes": real[1],
            "sources": conn.execute("SELECT COUNT(*) FROM image_sources").fetchone()[0],
        },  # fmt: skip
    }


def kept(conn: sqlite3.Connection) -> dict[str, object]:
    """What the triggers kept, in the same shapes."""
    conn.row_factory = sqlite3.Row
    datasets = conn.execute("SELECT id, n_rows, n_images FROM datasets").fetchall()
    return {
        "members": {
            (r[0], r[1]): (r[2], r[3])
            for r in conn.execute("SELECT dataset_id, image_hash, seq, name FROM dataset_members")
        },  # fmt: skip
        "n_rows": {r["id"]: r["n_rows"] for r in datasets},
        "n_images": +Counter({r["id"]: r["n_images"] for r in datasets}),
        "tags": {tuple(r) for r in conn.execute("SELECT dataset_id, tag, image_hash FROM dataset_member_tags")},
        "tag_counts": +Counter({(r[0], r[1]): r[2] for r in conn.execute("SELECT * FROM dataset_tag_counts")}),
        "stages": +Counter({tuple(r[:4]): r[4] for r in conn.execute("SELECT * FROM dataset_stage_counts")}),
        "flags": +Counter({tuple(r[:3]): r[3] for r in conn.execute("SELECT * FROM dataset_flag_counts")}),
        "image_flags": {tuple(r) for r in conn.execute("SELECT settings_hash, flag, image_hash FROM image_flags")},
        "totals": dict(conn.execute("SELECT name, value FROM catalog_totals").fetchall()),
    }


def assert_counters_match(ws: Workspace) -> dict[str, object]:
    conn = sqlite3.connect(ws.catalog.path)
    try:
        expected, actual = recount(conn), kept(conn)
    finally:
        conn.close()
    for name in expected:
        assert actual[name] == expected[name], name
    return expected


def test_counters_follow_downloads_imports_placeholders_retries_and_preprocessing(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    # a download: two rows share a URL, one URL fails into a placeholder, the same image sits at two URLs
    same = make_jpeg(40, 30, seed=1)
    urls = [
        image_server.add("a.jpg", same),
        image_server.add("b.jpg", same),
        image_server.add("c.jpg", make_jpeg(30, 30, seed=2)),
    ]
    late = image_server.url("/img/late.jpg")  # 404 until added
    rows = [[u, str(i)] for i, u in enumerate([*urls, urls[2], late])]
    csv_path = write_csv(tmp_path / "photos.csv", ["image_link", "group_id"], rows)
    download = start_url_download(ws, manager, csv_path, "photos", placeholder=True)
    manager.run(download)
    assert_counters_match(ws)
    photos = {d.name: d for d in list_datasets(ws.catalog)}["photos"]
    assert (photos.rows, photos.images) == (5, 2)  # the placeholder is not an image of the dataset
    assert [name for _, _, name in dataset_entries(ws, "photos")] == [urls[0], urls[2]]  # first occurrence names it
    overview = ws.catalog.overview()
    assert (overview["images"], overview["sources"]) == (2, 3)

    # the failed URL comes back: a retry adds it to the dataset
    image_server.add("late.jpg", make_jpeg(20, 20, seed=3))
    assert manager.reset_failed(download) == 1
    manager.run(download)
    assert_counters_match(ws)
    assert [d.images for d in list_datasets(ws.catalog)] == [3]

    # a folder import with tags: one image in two folders, one at the top, negatives, a file that is no image
    root = tmp_path / "tree"
    for tag, colour in (("red", "red"), ("green", "green"), ("other-training", "gray")):
        (root / tag).mkdir(parents=True)
        for i in range(3):
            (root / tag / f"{tag}{i}.png").write_bytes(make_colour_png(colour, (24, 20), noise_seed=i))
    (root / "green" / "also-red0.png").write_bytes((root / "red" / "red0.png").read_bytes())
    (root / "top.png").write_bytes(make_colour_png("blue", (24, 20), noise_seed=9))
    (root / "red" / "broken.png").write_bytes(b"not an image")
    manager.run(start_folder_import(ws, manager, root, "tree"))
    assert_counters_match(ws)
    assert tag_counts(ws, "tree") == {"green": 4, "other-training": 3, "red": 3}
    by_name = {name: h for h, _, name in dataset_entries(ws, "tree")}
    red0 = hashlib.sha256((root / "red" / "red0.png").read_bytes()).hexdigest()
    assert by_name["green/also-red0.png"] == red0  # named by its first occurrence in the walk
    assert dataset_tags(ws, "tree")[red0] == {"red", "green"}
    assert dataset_tags(ws, "tree")[by_name["top.png"]] == set()  # at the top of the tree: no tag

    # preprocessing: quality flags and recipe results counted per dataset; a changed result moves the counts
    manager.run(start_preprocess(ws, manager, "tree", PRESETS["ocr-128"], 0))
    counted = assert_counters_match(ws)
    assert any(stage == "quality" for _, stage, _, _ in counted["stages"])  # type: ignore[attr-defined]
    with ws.catalog.write() as conn:
        ws.catalog.record_stage(conn, red0, "quality", "v1", "ok", {"flags": ["blurry", "too_dark"]}, None)
        ws.catalog.record_stage(conn, red0, "describe", "h", "failed", None, "timeout")
    assert_counters_match(ws)
    with ws.catalog.write() as conn:
        ws.catalog.record_stage(conn, red0, "quality", "v1", "ok", {"flags": []}, None)
        ws.catalog.record_stage(conn, red0, "describe", "h", "ok", {"description": {}}, None)
    assert_counters_match(ws)

    # the same images imported again under another name: counted in both datasets, once each
    manager.run(start_folder_import(ws, manager, root, "tree-again"))
    assert_counters_match(ws)


def test_a_catalog_written_at_schema_4_gets_its_members_and_counters_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        for statement in _split_sql(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.executescript(
        """
        INSERT INTO datasets (id, name, kind, source, columns, created_at) VALUES
            (1, 'photos', 'REAL', 'x.csv', '["image_link"]', 0), (2, 'tree', 'import', '/t', '["path","tag"]', 0);
        INSERT INTO dataset_rows VALUES (1, 0, '["u1"]', 'u1'), (1, 1, '["u2"]', 'u2'), (1, 2, '["u3"]', 'u3'),
            (2, 0, '["a/x.png","a"]', 'a/x.png'), (2, 1, '["b/x.png","b"]', 'b/x.png'), (2, 2, '["y.png",""]', 'y.png');
        INSERT INTO images (hash, format, bytes, width, height, path, is_placeholder, created_at) VALUES
            ('h1', 'JPEG', 10, 1, 1, 'images/h1', 0, 0), ('h2', 'JPEG', 20, 1, 1, 'images/h2', 0, 0),
            ('ph', 'JPEG', 5, 1, 1, 'images/ph', 1, 0);
        INSERT INTO image_sources VALUES ('url', 'u1', 'h1', 0), ('url', 'u2', 'h2', 0);
        INSERT INTO jobs (id, kind, title, dataset_id, params, state, created_at) VALUES
            (1, 'download_urls', 'd', 1, '{}', 'completed', 0), (2, 'import_folder', 'i', 2, '{}', 'completed', 0),
            (3, 'preprocess', 'p', 2, '{}', 'completed', 0);
        INSERT INTO job_items (job_id, item_key, seq, status, image_hash) VALUES
            (1, 'u1', 1, 'ok', 'h1'), (1, 'u2', 2, 'ok', 'h2'), (1, 'u3', 3, 'ok', 'ph'),
            (2, 'a/x.png', 1, 'ok', 'h1'), (2, 'b/x.png', 2, 'ok', 'h1'), (2, 'y.png', 3, 'ok', 'h2'),
            (3, 'h1', 1, 'ok', 'h1');
        INSERT INTO stage_results VALUES ('h1', 'quality', 'v1', 'ok', '{"flags": ["tiny"]}', NULL, 0),
            ('h2', 'describe', 'd1', 'failed', NULL, 'boom', 0);
        INSERT INTO tag_scores VALUES ('h1', 'sha', 'model-x', 'x', 0.7, 0), ('h2', 'sha', 'model-x', 'x', 0.2, 0),
            ('ph', 'sha', 'model-x', 'x', 0.9, 0);
        INSERT INTO label_sets (id, name, dataset_id, source, items, created_at)
            VALUES (1, 'REAL', NULL, 'csv:r', 4, 0);
        INSERT INTO labels VALUES (1, 'cat', 'a.jpg'), (1, 'dog', 'a.jpg'), (1, 'cat', 'b.jpg'),
            (1, 'unknown', 'c.jpg'), (1, '(failed)', 'd.jpg');
        """
    )
    conn.close()
    ws = Workspace(tmp_path)
    try:
        assert ws.catalog.schema_version == len(MIGRATIONS)
        expected = assert_counters_match(ws)
        assert expected["n_images"] == {1: 2, 2: 2}
        assert tag_counts(ws, "tree") == {"a": 1, "b": 1}
        assert [name for _, _, name in dataset_entries(ws, "photos")] == ["u1", "u2"]
        assert ws.catalog.overview()["images"] == 2 and ws.catalog.overview()["image_bytes"] == 30
        scores = score_summary(ws, "photos", "sha", 2, 0.5, 0.1)  # the placeholder's score is in no dataset
        assert (scores.counts, scores.reach_model_threshold, scores.at_least) == ([1, 1], 1, 2)
        real = get_label_set(ws, "REAL")
        assert label_counts(ws, real) == {"cat": 2, "dog": 1, "unknown": 1, "(failed)": 1}
        assert category_depth(ws, real) == {1: 1, 2: 1}
    finally:
        ws.close()


def test_a_sample_is_distinct_reproducible_and_drawn_from_the_whole_dataset(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    try:
        catalog: Catalog = ws.catalog
        with catalog.write() as conn:
            conn.execute("INSERT INTO datasets (id, name, kind, source, columns, created_at) VALUES "
                         "(1, 'many', 'REAL', 's', '[]', 0)")  # fmt: skip
            conn.execute("INSERT INTO jobs (id, kind, title, dataset_id, params, state, created_at) VALUES "
                         "(1, 'download_urls', 't', 1, '{}', 'completed', 0)")  # fmt: skip
            hashes = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(1024)]
            conn.executemany(
                "INSERT INTO images (hash, format, bytes, width, height, path, created_at) "
                "VALUES (?, 'PNG', 1, 1, 1, ?, 0)",
                [(h, f"images/{n}.png") for n, h in enumerate(hashes)],
            )
            conn.executemany(
                "INSERT INTO job_items (job_id, item_key, seq, status, image_hash) VALUES (1, ?, ?, 'ok', ?)",
                [(f"k{n}", n, h) for n, h in enumerate(hashes)],
            )
        assert ws.catalog.scalar("SELECT n_images FROM datasets") == 1024
        first = sample_entries(ws, "many", 12, seed=1)
        assert len({h for h, _, _ in first}) == 12
        assert first == sample_entries(ws, "many", 12, seed=1) != sample_entries(ws, "many", 12, seed=2)
        assert [name for _, _, name in first] == sorted((name for _, _, name in first), key=lambda k: int(k[1:]))
        seen = {h for seed in range(40) for h, _, _ in sample_entries(ws, "many", 12, seed=seed)}
        assert len(seen) > 300  # not the same corner of the hash space every time
        assert len(sample_entries(ws, "many", 2000)) == 1024  # asking for more than there are: all of them
    finally:
        ws.close()


def test_label_set_counts_are_those_of_its_labels(ws: Workspace, tmp_path: Path) -> None:
    rows = ["image_name,description,categories"]
    rows += [f'i{i}.jpg,d,"{["cat", "cat, dog", "bird, cat, dog", "unknown", "ERROR"][i % 5]}"' for i in range(50)]
    rows += ["i3.jpg,again,cat", "i4.jpg,retry,unknown"]  # repeated rows: the best answer is kept
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    label_set = import_categorized_csv(ws, tmp_path / "set.csv", "REAL")
    grouped = dict(
        ws.catalog.query("SELECT label, COUNT(*) FROM labels WHERE set_id = ? GROUP BY label", (label_set.id,))
    )
    assert label_counts(ws, label_set) == grouped
    per_item = Counter(
        item for (item,) in ws.catalog.query(
            "SELECT item FROM labels WHERE set_id = ? AND label NOT IN ('unknown', '(failed)')", (label_set.id,)
        )
    )  # fmt: skip
    assert category_depth(ws, label_set) == dict(sorted(Counter(per_item.values()).items()))
    again = import_categorized_csv(ws, tmp_path / "set.csv", "REAL")  # replaced: the old counts go with it
    assert ws.catalog.scalar("SELECT COUNT(DISTINCT set_id) FROM label_set_counts") == 1
    assert label_counts(ws, again) == grouped

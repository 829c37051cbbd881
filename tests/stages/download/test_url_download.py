"""The URL download stage end to end through the services: real HTTP, real files, real catalog."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from services.core.datasets import DatasetError
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.urls import labelled_csv_path, start_url_download
from tests.conftest import read_csv, write_csv
from tests.support.image_server import ImageServer, make_jpeg, make_png

TRAIN_HEADER = ["image_link", "group_id", "entity_name", "entity_value"]
TEST_HEADER = ["index", "image_link", "group_id", "entity_name"]


def run_download(ws: Workspace, manager: JobManager, csv_path: Path, dataset: str, **kw: object) -> int:
    job_id = start_url_download(ws, manager, csv_path, dataset, **kw)  # type: ignore[arg-type]
    manager.run(job_id)
    return job_id


def test_seed_train_csv_keeps_every_column_and_fetches_each_url_once(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    a = image_server.add("a.jpg", make_jpeg(300, 200, seed=1))
    b = image_server.add("b.png", make_png(40, 30, seed=2), "image/png")
    same_as_a = image_server.add("a-copy.jpg", image_server.images["a.jpg"][0])
    rows = [
        [a, "101", "item_weight", "10.0 gram"],
        [b, "102", "item_volume", "2.0 cup"],
        [a, "103", "item_weight", "11.0 gram"],  # same URL again
        [same_as_a, "104", "width", "3 cm"],  # same bytes, other URL
        [image_server.url("/status/404"), "105", "depth", "1 cm"],
    ]
    csv_path = write_csv(tmp_path / "train.csv", TRAIN_HEADER, rows)
    job_id = run_download(ws, manager, csv_path, "train", resize=64)

    p = manager.progress(job_id)
    assert (p.state, p.total, p.done, p.failed) == ("completed", 4, 3, 1)
    completed = image_server.completed()
    assert completed["/img/a.jpg"] == 1  # two rows, one fetch
    out = read_csv(labelled_csv_path(ws, job_id, p.params))
    assert list(out[0]) == TRAIN_HEADER + ["value", "unit", "value_valid", "value_problem", "image_path",
                                          "image_hash", "status", "error"]  # fmt: skip
    assert [r["entity_value"] for r in out] == ["10.0 gram", "2.0 cup", "11.0 gram", "3 cm", "1 cm"]
    # entity_value read against seed 000's entity_unit_map: "cm" is not one of the challenge's units
    assert [(r["value"], r["unit"], r["value_valid"]) for r in out] == [
        ("10.0", "gram", "true"), ("2.0", "cup", "true"), ("11.0", "gram", "true"), ("3.0", "cm", "false"),
        ("1.0", "cm", "false"),
    ]  # fmt: skip
    assert out[3]["value_problem"].startswith("'cm' is not a unit of width (centimetre, foot, inch")
    assert [r["status"] for r in out] == ["ok", "ok", "ok", "ok", "failed"]
    assert out[4]["error"].startswith("http_4xx: HTTP 404")
    assert out[0]["image_hash"] == out[2]["image_hash"] == out[3]["image_hash"]
    # stored once per content hash, real format in the name, every source recorded
    assert ws.catalog.scalar("SELECT COUNT(*) FROM images") == 2
    assert ws.catalog.scalar("SELECT COUNT(*) FROM image_sources WHERE image_hash = ?", (out[0]["image_hash"],)) == 2
    paths = {r["path"] for r in ws.catalog.query("SELECT path FROM images")}
    assert any(p.endswith(".png") for p in paths) and any(p.endswith(".jpg") for p in paths)
    # the resized copies are 64 x 64 and are what the labelled CSV points at
    for r in out[:4]:
        assert "/derived/border-64/" in r["image_path"]
        assert Image.open(r["image_path"]).size == (64, 64)
    assert all(ws.abspath(p).is_file() for p in paths)


def test_seed_test_csv_with_index_column(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    urls = [image_server.add(f"t{i}.jpg", make_jpeg(50, 50, seed=i)) for i in range(3)]
    rows = [[str(100 + i), u, "g", "item_weight"] for i, u in enumerate(urls)]
    csv_path = write_csv(tmp_path / "test.csv", TEST_HEADER, rows)
    job_id = run_download(ws, manager, csv_path, "test")
    out = read_csv(labelled_csv_path(ws, job_id, manager.params(job_id)))
    assert [r["index"] for r in out] == ["100", "101", "102"]
    assert all(r["status"] == "ok" and Path(r["image_path"]).is_file() for r in out)
    assert ws.catalog.scalar("SELECT kind FROM datasets WHERE name = 'test'") == "test"


def test_every_fault_class_is_recorded_per_row(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    image_server.add("a.jpg", make_jpeg(80, 60, seed=5, noise=True))
    cases = {
        "/r429/1/a.jpg": "ok",
        "/status/500": "http_5xx",
        "/slow/3/a.jpg": "timeout",
        "/truncated/a.jpg": "truncated",
        "/wrongtype/a.jpg": "ok",
        "/html": "not_image",
        "/loop/A": "redirect_loop",
        "/huge": "too_large",
        "/notimage": "not_image",
        "/bomb": "too_large",
    }
    rows = [[image_server.url(path), str(i), "e", "v"] for i, path in enumerate(cases)]
    rows.append(["http://no-such-host.invalid/a.jpg", "x", "e", "v"])
    rows.append(["", "y", "e", "v"])
    csv_path = write_csv(tmp_path / "faults.csv", TRAIN_HEADER, rows)
    job_id = run_download(ws, manager, csv_path, "faults")
    out = read_csv(labelled_csv_path(ws, job_id, manager.params(job_id)))
    got = [r["status"] if r["status"] == "ok" else r["error"].split(":")[0] for r in out]
    assert got == list(cases.values()) + ["dns", "invalid_url"]
    assert all(r["error"] == "" for r in out if r["status"] == "ok")
    assert manager.failure_counts(job_id)["too_large"] == 2


def test_rerun_fetches_nothing_already_stored(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    urls = [image_server.add(f"r{i}.jpg", make_jpeg(40, 40, seed=i)) for i in range(5)]
    csv_path = write_csv(tmp_path / "train.csv", TRAIN_HEADER, [[u, "1", "e", "v"] for u in urls])
    run_download(ws, manager, csv_path, "train")
    before = sum(image_server.completed().values())
    second = run_download(ws, manager, csv_path, "train")
    assert sum(image_server.completed().values()) == before == 5
    assert manager.progress(second).done == 5
    assert ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows") == 5  # rows not duplicated


def test_placeholder_marked_and_retry_failed_fetches_again(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    ok = image_server.add("ok.jpg", make_jpeg(40, 40, seed=1))
    late = image_server.url("/img/late.jpg")  # 404 until the image is added
    csv_path = write_csv(tmp_path / "train.csv", TRAIN_HEADER, [[ok, "1", "e", "v"], [late, "2", "e", "v"]])
    job_id = run_download(ws, manager, csv_path, "train", placeholder=True)
    out = read_csv(labelled_csv_path(ws, job_id, manager.params(job_id)))
    assert out[1]["status"] == "placeholder"
    assert Image.open(out[1]["image_path"]).size == (100, 100)
    assert out[1]["image_hash"] == ""
    assert ws.catalog.overview()["images"] == 1  # placeholders are not counted as images

    image_server.add("late.jpg", make_jpeg(30, 30, seed=9))
    assert manager.reset_failed(job_id) == 1
    manager.run(job_id)
    out = read_csv(labelled_csv_path(ws, job_id, manager.params(job_id)))
    assert [r["status"] for r in out] == ["ok", "ok"]
    assert image_server.completed()["/img/ok.jpg"] == 1  # the good one was not fetched again


def test_cancel_then_resume_finishes_without_refetching(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    for i in range(80):
        image_server.add(f"s{i}.jpg", make_jpeg(32, 32, seed=i))
    rows = [[image_server.url(f"/slow/0.2/s{i}.jpg"), str(i), "e", "v"] for i in range(80)]
    csv_path = write_csv(tmp_path / "train.csv", TRAIN_HEADER, rows)
    job_id = start_url_download(ws, manager, csv_path, "slow")
    runner = threading.Thread(target=manager.run, args=(job_id,))
    runner.start()
    while manager.progress(job_id).done < 8:
        time.sleep(0.01)
    manager.cancel(job_id)
    runner.join(30)
    p = manager.progress(job_id)
    assert p.state == "cancelled"
    assert 8 <= p.done < 80
    assert p.pending == 80 - p.done
    manager.run(job_id)
    p = manager.progress(job_id)
    assert (p.state, p.done) == ("completed", 80)
    assert max(image_server.completed().values()) == 1


def test_bad_input_names_file_and_cause(ws: Workspace, manager: JobManager, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        start_url_download(ws, manager, tmp_path / "nope.csv", "d")
    csv_path = write_csv(tmp_path / "x.csv", ["url", "label"], [["http://a/b.jpg", "cat"]])
    with pytest.raises(DatasetError, match=r"no column 'image_link'; columns are url, label"):
        start_url_download(ws, manager, csv_path, "d")
    with pytest.raises(DatasetError, match="between 8 and 4096"):
        start_url_download(ws, manager, csv_path, "d", url_column="url", resize=3)
    start_url_download(ws, manager, csv_path, "d", url_column="url")
    other = write_csv(tmp_path / "y.csv", ["url"], [["http://a/c.jpg"]])
    with pytest.raises(DatasetError, match="already exists"):
        start_url_download(ws, manager, other, "d", url_column="url")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        start_url_download(ws, manager, empty, "e")


def test_a_column_without_urls_is_refused_before_any_job(ws: Workspace, manager: JobManager, tmp_path: Path) -> None:
    """Issue 15: a CSV without a URL column was accepted and every row failed; now the job is never made and the
    message lists the columns. A column of mostly URLs (some broken) is still accepted."""
    from services.stages.download.urls import url_columns

    rows = [[f"item {i}", f"{i}.5 gram", f"https://img.example.org/{i}.jpg"] for i in range(5)]
    rows.append(["item 5", "1 gram", "not a url"])
    csv_path = write_csv(tmp_path / "no_urls.csv", ["title", "entity_value", "picture"], rows)
    assert url_columns(csv_path) == ["picture"]
    with pytest.raises(DatasetError, match=r"column 'title' holds no image URLs .* columns are title, entity_value"):
        start_url_download(ws, manager, csv_path, "d", url_column="title")
    assert manager.list() == [] and ws.catalog.scalar("SELECT COUNT(*) FROM datasets") == 0
    start_url_download(ws, manager, csv_path, "d", url_column="picture")
    assert len(manager.list()) == 1


def test_process_pool_workers(ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path) -> None:
    urls = [image_server.add(f"p{i}.jpg", make_jpeg(64, 48, seed=i)) for i in range(30)]
    csv_path = write_csv(tmp_path / "train.csv", TRAIN_HEADER, [[u, "1", "e", "v"] for u in urls])
    job_id = run_download(ws, manager, csv_path, "pool", workers=2, resize=32)
    p = manager.progress(job_id)
    assert (p.state, p.done, p.failed) == ("completed", 30, 0)
    assert not list(ws.job_dir(job_id).glob("journal-*.jsonl"))  # journals folded into the catalog
    assert ws.catalog.scalar("SELECT COUNT(*) FROM derived_images WHERE variant = 'border-32'") == 30

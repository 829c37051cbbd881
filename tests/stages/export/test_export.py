"""Exports (issue 19): each format read back by the library the next tool uses (`datasets.load_dataset`,
`webdataset.WebDataset`, the file system for ImageFolder), every image and label equal to the catalog's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from services.core.datasets import DatasetError, dataset_tags
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.download.urls import start_url_download
from services.stages.export.stage import UNLABELLED, start_export
from tests.conftest import ROOT, write_csv
from tests.support.image_server import ImageServer, make_jpeg, make_png
from tests.support.tagged_images import png, tagged_tree


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tagged(ws: Workspace, manager: JobManager, tmp_path: Path) -> dict[str, set[str]]:
    """A tagged tree (tags, negatives, a nested zip), two different images both called `same.png`, and one
    image at the top (no tag). Returns the catalog's tags per image."""
    root = tagged_tree(tmp_path / "tree", per_tag=4)
    (root / "red" / "same.png").write_bytes(png("red", 300))
    (root / "green" / "same.png").write_bytes(png("green", 301))
    (root / "top.png").write_bytes(png("gray", 302))
    (root / "blue" / "odd\x01.png").write_bytes(png("blue", 303))  # two names that clean to one: odd_.png
    (root / "blue" / "odd\x02.png").write_bytes(png("blue", 304))
    assert manager.run(start_folder_import(ws, manager, root, "set")).state == "completed"
    return dataset_tags(ws, "set")


def _export(ws: Workspace, manager: JobManager, fmt: str, out: Path, **kw: object) -> None:
    progress = manager.run(start_export(ws, manager, "set", fmt, out, **kw))  # type: ignore[arg-type]
    assert progress.state == "completed" and progress.failed == 0, progress.error


def test_imagefolder_holds_every_image_under_each_of_its_labels(
    ws: Workspace, manager: JobManager, tagged: dict[str, set[str]], tmp_path: Path
):
    out = tmp_path / "folders"
    _export(ws, manager, "imagefolder", out, shard_size=7)  # several shards, the last one short
    found = Counter()
    names = {}
    for path in out.rglob("*"):
        if path.is_file() and path.name not in ("export.json", "export-files.txt"):
            label = path.parent.name
            found[(label, sha(path.read_bytes()))] += 1
            names[(label, sha(path.read_bytes()))] = path.name
    expected = Counter({(tag, h): 1 for h, tags in tagged.items() for tag in tags or {UNLABELLED}})
    assert found == expected  # every image, under every tag it has, once; the bytes as stored
    red_same, green_same = sha(png("red", 300)), sha(png("green", 301))
    assert names[("red", red_same)] == f"same-{red_same[:8]}.png"  # two images share a name: the hash tells them
    assert names[("green", green_same)] == f"same-{green_same[:8]}.png"
    assert names[(UNLABELLED, sha(png("gray", 302)))] == "top.png"
    odd = sorted(names[("blue", sha(png("blue", n)))] for n in (303, 304))
    assert "odd_.png" in odd and len(set(odd)) == 2  # the second one cleaned alike gets its hash
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["images"] == len(tagged) and len(manifest["shards"]) == -(-len(tagged) // 7)

    _export(ws, manager, "imagefolder", out, shard_size=7)  # again over the same folder: nothing doubles
    again = Counter(
        sha(p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name not in ("export.json", "export-files.txt")
    )
    assert sum(again.values()) == sum(expected.values())


def test_a_re_export_removes_what_it_no_longer_holds_and_nothing_else(
    ws: Workspace, manager: JobManager, tagged: dict[str, set[str]], tmp_path: Path
):
    """Images chosen to drop since the last export leave the ImageFolder tree; Parquet shards renumbered by a new
    shard size leave no old shard for `load_dataset` to read twice; a file the export did not write, and an
    earlier export of another dataset, stay."""
    import datasets

    from services.stages.explore.duplicate_choices import record_choices

    out = tmp_path / "folders"
    _export(ws, manager, "imagefolder", out, shard_size=7)
    (out / "red" / "notes.txt").write_text("mine")  # a person's own file in the export's folder
    green_only = sorted(h for h, tags in tagged.items() if tags == {"green"})
    record_choices(ws, {h: "drop" for h in green_only}, "ana")  # every green-only image chosen to drop
    _export(ws, manager, "imagefolder", out, shard_size=7)
    kept = Counter(
        (p.parent.name, sha(p.read_bytes()))
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("export.json", "export-files.txt", "notes.txt")
    )
    assert kept == Counter(
        {(t, h): 1 for h, tags in tagged.items() if h not in green_only for t in tags or {UNLABELLED}}
    )
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["removed_stale"] == len(green_only) > 0 and manifest["dropped_duplicates"] == len(green_only)
    assert (out / "red" / "notes.txt").read_text() == "mine"
    still_green = any("green" in tags for h, tags in tagged.items() if h not in green_only)
    assert (out / "green").exists() == still_green  # a label folder emptied by the removal is gone too
    listed = set((out / "export-files.txt").read_text().splitlines())
    assert listed == {p.relative_to(out).as_posix() for p in out.rglob("*.png")}

    hf = tmp_path / "hf"
    _export(ws, manager, "hf", hf, shard_size=4, include_dropped=True)
    _export(ws, manager, "hf", hf, shard_size=10, include_dropped=True)  # fewer shards, named -of-0000N anew
    shards = sorted(p.name for p in (hf / "data").glob("*.parquet"))
    assert shards == [f"train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    loaded = datasets.load_dataset(str(hf), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert len(loaded) == len(tagged)  # each image once: no shard of the first export left behind

    other = manager.run(start_folder_import(ws, manager, tmp_path / "tree" / "red", "reds"))
    assert other.state == "completed"
    before = {p for p in out.rglob("*.png")}
    assert manager.run(start_export(ws, manager, "reds", "imagefolder", out)).state == "completed"
    assert before <= {p for p in out.rglob("*.png")}  # another dataset's export into the folder removes nothing
    traversal = tmp_path / "outside.png"
    traversal.write_bytes(b"x")
    (out / "export-files.txt").write_text("../outside.png\n")  # a hostile list is never followed out
    assert manager.run(start_export(ws, manager, "reds", "imagefolder", out)).state == "completed"
    assert traversal.read_bytes() == b"x"


FIFTYONE_PYTHON = Path(os.environ.get("WORKBENCH_FIFTYONE_PYTHON", ROOT / ".venv-fiftyone" / "bin" / "python"))
FIFTYONE_READ = """
import json, sys
import fiftyone.utils.data as foud

importer = foud.ImageClassificationDirectoryTreeImporter(sys.argv[1], compute_metadata=True)
with importer:
    rows = [[path, meta.width, meta.height, label.label] for path, meta, label in importer]
print(json.dumps(rows))
"""


def test_fiftyone_imports_the_imagefolder_export(
    ws: Workspace, manager: JobManager, tagged: dict[str, set[str]], tmp_path: Path
):
    """FiftyOne's own importer for its ImageClassificationDirectoryTree type, from its environment (FiftyOne's pins
    clash with ours, so `make test` installs it in .venv-fiftyone; the importer needs no database)."""
    assert FIFTYONE_PYTHON.is_file(), f"{FIFTYONE_PYTHON} missing: `make test` makes FiftyOne's environment"
    out = tmp_path / "folders"
    _export(ws, manager, "imagefolder", out, shard_size=5)
    env = dict(os.environ, FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_CONFIG_DIR=str(tmp_path / "fo-config"))
    read = subprocess.run(
        [str(FIFTYONE_PYTHON), "-c", FIFTYONE_READ, str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert read.returncode == 0, read.stderr[-3000:]
    samples = json.loads(read.stdout.strip().splitlines()[-1])
    found = Counter((label, sha(Path(path).read_bytes())) for path, _, _, label in samples)
    assert found == Counter({(tag, h): 1 for h, tags in tagged.items() for tag in tags or {UNLABELLED}})
    size = {r["hash"]: (r["width"], r["height"]) for r in ws.catalog.query("SELECT hash, width, height FROM images")}
    assert all(size[sha(Path(path).read_bytes())] == (w, h) for path, w, h, _ in samples)


def test_hugging_face_parquet_loads_with_datasets(
    ws: Workspace, manager: JobManager, tagged: dict[str, set[str]], tmp_path: Path
):
    import datasets

    out = tmp_path / "hf"
    _export(ws, manager, "hf", out, shard_size=10)
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert len(loaded) == len(tagged)
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    for row in raw:
        assert sha(row["image"]["bytes"]) == row["image_hash"]
        assert set(row["tags"]) == tagged[row["image_hash"]]
        assert row["labels"] == (sorted(tagged[row["image_hash"]]) or [UNLABELLED])
        assert json.loads(row["columns"])["path"] == row["source"]
    assert loaded[0]["image"].size == (48, 40)  # decoded as a PIL image by the datasets library


def test_webdataset_shards_read_back(ws: Workspace, manager: JobManager, tagged: dict[str, set[str]], tmp_path: Path):
    import webdataset

    out = tmp_path / "wds"
    _export(ws, manager, "webdataset", out, shard_size=8)
    shards = sorted(str(p) for p in out.glob("*.tar"))
    assert len(shards) == -(-len(tagged) // 8)
    seen = {}
    for sample in webdataset.WebDataset(shards, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert sha(sample["png"]) == sample["__key__"] == meta["image_hash"]
        seen[sample["__key__"]] = set(meta["tags"])
    assert seen == tagged


def test_labels_from_a_column_and_hostile_values_stay_inside(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
):
    a = image_server.add("a.jpg", make_jpeg(40, 30, seed=1))
    b = image_server.add("b.png", make_png(40, 30, seed=2), "image/png")
    rows = [[a, "1", "item_weight", "10 gram"], [b, "2", "../../escape", "3 cm"]]
    csv_path = write_csv(tmp_path / "train.csv", ["image_link", "group_id", "entity_name", "entity_value"], rows)
    manager.run(start_url_download(ws, manager, csv_path, "urls"))
    out = tmp_path / "by-entity"
    progress = manager.run(start_export(ws, manager, "urls", "imagefolder", out, by="column:entity_name"))
    assert progress.state == "completed"
    files = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("export.json", "export-files.txt")
    )
    assert files == ["_.._escape/b.png", "item_weight/a.jpg"]
    assert all(out.resolve() in p.resolve().parents for p in out.rglob("*"))
    with pytest.raises(DatasetError, match=r"no such column \(columns: image_link, group_id, entity_name"):
        start_export(ws, manager, "urls", "imagefolder", out, by="column:colour")
    with pytest.raises(DatasetError, match="export format 'zip': use one of imagefolder, hf, webdataset"):
        start_export(ws, manager, "urls", "zip", out)


def test_the_cli_exports_and_refuses_with_the_cause(ws: Workspace, tagged: dict[str, set[str]], tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services", "--workspace", str(ws.root), *args], cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    ws.close()
    done = cli("export", "--dataset", "set", "--format", "webdataset", "--out", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[completed]" in done.stdout and len(list((tmp_path / "cli").glob("*.tar"))) == 1
    unknown = cli("export", "--dataset", "nope", "--format", "hf", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    wrong = cli("export", "--dataset", "set", "--format", "webdataset", "--out", str(tmp_path / "w"),
                "--push-to-hub", "me/set")  # fmt: skip
    assert wrong.returncode == 2 and "use it with --format hf" in wrong.stderr


def test_publishing_is_explicit_and_says_at_once_when_the_hub_is_out_of_reach(
    ws: Workspace, manager: JobManager, tagged: dict[str, set[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import socket
    import time

    from services.stages.export.hub import HubPushError, push_to_hub

    out = tmp_path / "hf"
    _export(ws, manager, "hf", out)
    with socket.socket() as closed:  # a port nothing listens on: the Hub is "offline"
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(HubPushError, match=rf"cannot reach 127.0.0.1:{port}.*the export itself is complete"):
        push_to_hub(out, "me/pets")
    assert time.monotonic() - started < 10
    with pytest.raises(HubPushError, match="a Hub repository is OWNER/NAME"):
        push_to_hub(out, "../../etc")
    with pytest.raises(HubPushError, match="no Hugging Face export here"):
        push_to_hub(tmp_path, "me/pets")


def test_seed000_layout_has_a_file_per_row_and_the_labeled_csv(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
):
    """Seed 000's scripts read processed_data/{split}_images/{index}_{entity_name}.{ext} and {split}_labeled.csv."""
    from tests.conftest import read_csv

    a = image_server.add("a.jpg", make_jpeg(40, 30, seed=1))
    b = image_server.add("b.png", make_png(40, 30, seed=2), "image/png")
    rows = [[a, "1", "item_weight", "10 gram"], [b, "2", "width", "3 cm"], [a, "3", "height", "2 foot"],
            [image_server.url("/status/404"), "4", "depth", "1 inch"]]  # fmt: skip
    header = ["image_link", "group_id", "entity_name", "entity_value"]
    manager.run(start_url_download(ws, manager, write_csv(tmp_path / "train.csv", header, rows), "train"))
    out = tmp_path / "seed"
    progress = manager.run(start_export(ws, manager, "train", "seed000", out, shard_size=3))
    assert progress.state == "completed", progress.error
    images = out / "processed_data" / "train_images"
    assert sorted(p.name for p in images.iterdir()) == ["0_item_weight.jpg", "1_width.png", "2_height.jpg"]
    assert (images / "0_item_weight.jpg").read_bytes() == (images / "2_height.jpg").read_bytes()  # one image, 2 rows
    assert sha((images / "1_width.png").read_bytes()) == sha(image_server.images["b.png"][0])
    labeled = read_csv(out / "processed_data" / "train_labeled.csv")
    assert [r["image_path"] for r in labeled] == ["processed_data/train_images/0_item_weight.jpg",
                                                 "processed_data/train_images/1_width.png",
                                                 "processed_data/train_images/2_height.jpg", ""]  # fmt: skip
    assert [r["value_valid"] for r in labeled] == ["true", "false", "true", "true"]
    assert all((out / r["image_path"]).is_file() for r in labeled if r["image_path"])

    test_rows = [["17", b, "9", "width"], ["18", a, "9", "width"], ["18", b, "9", "width"]]  # test.csv: an index
    test_csv = write_csv(tmp_path / "test.csv", ["index", "image_link", "group_id", "entity_name"], test_rows)
    manager.run(start_url_download(ws, manager, test_csv, "test"))
    assert manager.run(start_export(ws, manager, "test", "seed000", out, shard_size=2)).state == "completed"
    test_images = out / "processed_data" / "test_images"
    assert sorted(p.name for p in test_images.iterdir()) == ["17_width.png", "18_width_row1.jpg", "18_width_row2.png"]
    tested = read_csv(out / "processed_data" / "test_labeled.csv")  # two rows share index 18: neither overwrites
    assert [r["image_path"].rsplit("/", 1)[-1] for r in tested] == [
        "17_width.png",
        "18_width_row1.jpg",
        "18_width_row2.png",
    ]
    assert sha((test_images / "18_width_row1.jpg").read_bytes()) == sha(image_server.images["a.jpg"][0])
    assert sha((test_images / "18_width_row2.png").read_bytes()) == sha(image_server.images["b.png"][0])

"""Keep/drop choices on near-duplicates: recorded with who and when, the latest counts, exports leave dropped
images out (and put them back when asked), the CLI records the suggested choice per group."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from services.core.datasets import dataset_entries, dataset_id_of
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.explore import vector_index
from services.stages.explore.duplicate_choices import (
    ChoiceError,
    current_choices,
    dropped_count,
    history,
    record_choices,
    suggested_choices,
)
from services.stages.explore.neighbours import near_duplicate_groups
from services.stages.export.stage import start_export
from tests.conftest import read_csv
from tests.support.cli import run_cli
from tests.support.stored_vectors import store_vectors
from tests.support.tagged_images import png

KEY = "choice-model"


@pytest.fixture
def copies(ws: Workspace, manager: JobManager, tmp_path: Path) -> dict[str, str]:
    """Dataset `photos`: 12 images in folder `a`; `big` (48x48) and `small` (the same picture at 24x24) are
    near-copies in CLIP space, the rest far apart. Returns name -> hash."""
    from PIL import Image

    vector_index._RESIDENT.clear()
    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    for i in range(10):
        (folder / f"other-{i}.png").write_bytes(png("gray", 500 + i))
    picture = Image.open(__import__("io").BytesIO(png("red", 42))).convert("RGB").resize((48, 48))
    picture.save(folder / "big.png")
    picture.resize((24, 24)).save(folder / "small.png")
    assert manager.run(start_folder_import(ws, manager, tmp_path / "photos", "photos")).state == "completed"
    names = {Path(name).stem: h for h, _, name in dataset_entries(ws, "photos")}
    rng = np.random.default_rng(0)
    vectors = {h: rng.normal(size=16) for h in names.values()}
    vectors[names["small"]] = vectors[names["big"]] + 0.01 * rng.normal(size=16)
    hashes = list(vectors)
    matrix = np.array([vectors[h] for h in hashes], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    store_vectors(ws, KEY, hashes, matrix)  # as the embed job stores them
    return names


def test_the_suggestion_keeps_the_larger_copy_and_the_latest_choice_counts(ws: Workspace, copies: dict[str, str]):
    groups = near_duplicate_groups(ws, KEY, ["photos"], 0.98)
    assert [sorted(g.members) for g in groups] == [sorted([copies["big"], copies["small"]])]
    suggested = suggested_choices(ws, groups)
    assert suggested == {copies["big"]: "keep", copies["small"]: "drop"}  # 48x48 over 24x24
    record_choices(ws, suggested, "ana", "group of 2")
    assert dropped_count(ws, dataset_id_of(ws.catalog, "photos")) == 1
    record_choices(ws, {copies["small"]: "keep", copies["big"]: "drop"}, "ben")  # changed her mind: his counts
    assert current_choices(ws, [copies["big"], copies["small"], copies["other-0"]]) == {
        copies["big"]: "drop", copies["small"]: "keep"}  # fmt: skip
    trail = history(ws, copies["small"])
    assert [(r.choice, r.decided_by, r.note) for r in trail] == [("drop", "ana", "group of 2"), ("keep", "ben", "")]
    assert trail[0].decided_at <= trail[1].decided_at
    with pytest.raises(ChoiceError, match="not a catalogued image: 0000000000000000"):
        record_choices(ws, {"0" * 64: "drop"}, "ana")
    with pytest.raises(ChoiceError, match="'delete' is not keep or drop"):
        record_choices(ws, {copies["big"]: "delete"}, "ana")
    assert len(history(ws, copies["big"])) == 2  # a refused batch records nothing


def test_exports_leave_dropped_images_out_unless_asked(
    ws: Workspace, manager: JobManager, copies: dict[str, str], tmp_path: Path
):
    record_choices(ws, {copies["small"]: "drop", copies["other-3"]: "drop"}, "ana")
    record_choices(ws, {copies["other-3"]: "keep"}, "ana")  # undone
    for fmt in ("imagefolder", "webdataset"):
        out = tmp_path / f"out-{fmt}"
        progress = manager.run(start_export(ws, manager, "photos", fmt, out, shard_size=5))
        assert progress.state == "completed" and progress.failed == 0
        manifest = json.loads((out / "export.json").read_text())
        assert manifest["images"] == 11 and manifest["dropped_duplicates"] == 1
    folder = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out-imagefolder").rglob("*.png")}
    assert folder == set(copies.values()) - {copies["small"]}
    everything = tmp_path / "out-all"
    progress = manager.run(start_export(ws, manager, "photos", "imagefolder", everything, include_dropped=True))
    assert progress.state == "completed"
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in everything.rglob("*.png")} == set(copies.values())
    assert json.loads((everything / "export.json").read_text())["dropped_duplicates"] == 0


def test_the_cli_records_the_suggestion_and_single_choices(ws: Workspace, copies: dict[str, str], tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(ws.root, *args)

    out = tmp_path / "groups.csv"
    done = cli("duplicates", "--dataset", "photos", "--threshold", "0.98", "--drop-extras", "--csv", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recorded: 1 dropped, 1 kept" in done.stderr
    assert {r["image_hash"]: r["choice"] for r in read_csv(out)} == {copies["big"]: "keep", copies["small"]: "drop"}
    assert history(ws, copies["small"])[0].decided_by.startswith("cli")
    undo = cli("duplicate-choice", "--keep", copies["small"], "--note", "a different crop")
    assert undo.returncode == 0 and undo.stdout.strip() == f"keep\t{copies['small']}"
    assert current_choices(ws, [copies["small"]]) == {copies["small"]: "keep"}
    assert history(ws, copies["small"])[-1].note == "a different crop"
    for args, message in (
        (("duplicate-choice",), "give at least one --drop HASH or --keep HASH"),
        (("duplicate-choice", "--drop", "f" * 64), "no stored image ffffffffffffffff"),
        (("duplicates", "--dataset", "photos", "--against", "photos", "--drop-extras"), "records nothing"),
    ):
        refused = cli(*args)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr

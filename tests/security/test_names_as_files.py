"""Names that users give (CLIP models and tags, datasets, sets, tags) never become paths, and every file named
after one fits a file system (red-team findings R1, R2 and R16; tests/security/REDTEAM.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import open_clip
import pytest

from services.core.datasets import DatasetError, ensure_dataset
from services.core.locators import shown_locator
from services.core.names import MAX_FILE_NAME_BYTES, dataset_name_problem, file_name
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, ModelNameError, ModelUnavailableError, _register_sidecar_config
from services.io.embedding_store import embedding_key
from services.jobs.manager import JobManager
from services.stages.classify.stage import resolve_models, start_classify, start_classify_dataset
from services.stages.describe.results import ResultKeys, export
from services.stages.download.urls import labelled_csv_path
from services.stages.train.models import generate_model_path

HOSTILE_MODEL_NAMES = [
    "../../../../tmp/x",
    "/tmp/x",
    "/../../../../../../tmp/x",
    "..",
    ".hidden",
    "hf-hub:org/name",
    "local-dir:/etc",
    "ViT-B-32\x00",
    "a" * 129,
    "",
]


@pytest.mark.parametrize("bad", HOSTILE_MODEL_NAMES)
def test_a_clip_model_or_tag_that_could_be_a_path_is_refused_when_the_spec_is_made(bad: str) -> None:
    with pytest.raises(ModelNameError, match="open_clip model") as refused:
        ClipSpec(model=bad, pretrained=None)
    assert isinstance(refused.value, ModelUnavailableError)  # pages and the CLI already show these as one line
    if bad:  # an empty tag means "no tag"
        with pytest.raises(ModelNameError, match="pretrained tag"):
            ClipSpec(model="ViT-B-32", pretrained=bad)
    with pytest.raises(ModelNameError):
        ClipSpec.from_settings(load_settings(), model=bad or "..")


def test_every_model_and_tag_open_clip_ships_is_a_valid_name() -> None:
    """The rule must not refuse what the product needs: every built-in architecture and pretrained tag."""
    for name in open_clip.list_models():
        assert embedding_key(ClipSpec(model=name, pretrained=None))
    for name, tag in open_clip.list_pretrained():
        assert ClipSpec(model=name, pretrained=tag).pretrained == tag


def test_the_sidecar_config_is_written_inside_its_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second line of defence: the one function that names a file after a model refuses a name that leaves the
    config folder, whoever calls it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = tmp_path / "model" / "weights.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32")}
    (checkpoint.parent / "open_clip_config.json").write_text(json.dumps(config))
    target = tmp_path / "outside"
    with pytest.raises(ModelNameError, match="open_clip model"):
        _register_sidecar_config("../../../" + target.name, checkpoint)
    with pytest.raises(ModelNameError):
        _register_sidecar_config(str(target), checkpoint)
    assert not list(tmp_path.glob("outside*")) and not target.with_suffix(".json").exists()
    _register_sidecar_config("my-custom-clip", checkpoint)  # a good name still registers
    written = list((tmp_path / "cache").rglob("*.json"))
    assert [p.name for p in written] == ["my-custom-clip.json"]
    assert "my-custom-clip" in open_clip.list_models()


def test_dataset_names_cannot_start_with_a_tilde_and_are_counted_in_bytes() -> None:
    for bad in ("~", "~alice", " ~root", "~/x"):
        assert dataset_name_problem(bad) is not None, bad
    assert "'~'" in str(dataset_name_problem("~"))
    assert dataset_name_problem("a" * 128) is None
    assert dataset_name_problem("€" * 42) is None  # 126 bytes
    problem = dataset_name_problem("€" * 43)  # 129 bytes, 43 characters
    assert problem is not None and "129 bytes" in problem
    assert dataset_name_problem("x\ud800") is not None  # a lone surrogate no file system name can hold
    assert dataset_name_problem("home") is None and dataset_name_problem("a~b") is None


def test_a_dataset_picked_by_name_is_never_read_as_a_path(
    trained: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page classifies a dataset by name only: a dataset called like a folder of the working directory (or
    `~`, made before names were checked) is that dataset; a name that is no dataset is an error, even when a
    folder of that name exists. The CLI keeps its path-or-name convenience (start_classify)."""
    root = tmp_path / "ws"
    shutil.copytree(trained[0], root)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.png").write_bytes((root / "images").rglob("*.png").__next__().read_bytes())
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    models = resolve_models(ws, None, "tagged")
    with pytest.raises(DatasetError, match="no dataset named 'private'"):
        start_classify_dataset(ws, manager, "private", models)
    with ws.catalog.write() as conn:
        conn.execute("UPDATE datasets SET name = 'private' WHERE name = 'tagged'")
    job = start_classify_dataset(ws, manager, "private", models)
    params = manager.progress(job).params
    assert params["dataset"] == "private" and params["import_job"] is None
    assert manager.run(job).state == "completed"
    sources = [r["source"] for r in ws.catalog.query("SELECT source FROM datasets")]
    assert str(tmp_path / "private") not in sources
    # the person at the shell: a name that is also a folder is the folder (the CLI's documented convenience)
    shell = manager.progress(start_classify(ws, manager, str(tmp_path / "private"), models)).params
    assert shell["import_job"] is not None and shell["dataset"] == "classify-private"
    ws.close()


def test_file_names_made_from_names_fit_a_file_system() -> None:
    long_multibyte = "€" * 128  # 384 bytes: a dataset made before names were counted in bytes
    made = file_name(long_multibyte, "-job12.csv")
    assert len(made.encode()) <= MAX_FILE_NAME_BYTES and made.endswith("-job12.csv")
    assert made != file_name("€" * 127 + "x", "-job12.csv")  # two long names never share a file
    assert file_name("REAL set", "-job3.csv") == "REAL set-job3.csv"  # names that fit are kept as they are
    assert file_name("a/b\\c\x00d") == "a_b_c_d"
    assert file_name("../x") == "_x" and file_name("~") == "unnamed" and file_name(".env") == "env"
    assert len(file_name("𝄞" * 200).encode()) <= MAX_FILE_NAME_BYTES  # 4-byte characters are never cut in half
    file_name("𝄞" * 200).encode("utf-8")


def test_exports_of_a_long_multibyte_dataset_are_written(ws: Workspace) -> None:
    """R16: exports named after a 384-byte dataset name were ENAMETOOLONG, an uncaught OSError on the page."""
    name = "€" * 128
    with ws.catalog.write() as conn:  # made before names were counted in bytes
        conn.execute(
            "INSERT INTO datasets (name, kind, source, columns, created_at) VALUES (?, 'folder', 'x', '[]', 0)", (name,)
        )
    path, count = export(ws, name, ResultKeys(describe_hash="none"), "descriptions-csv")
    assert path.is_file() and count == 0 and len(path.name.encode()) <= MAX_FILE_NAME_BYTES
    csv_path = labelled_csv_path(ws, 7, {"dataset": name})
    csv_path.write_text("ok")
    assert csv_path.read_text() == "ok" and csv_path.name.endswith("-job7.csv")
    model = generate_model_path(ws, name, "k" * 150, "lr", "t" * 300)  # a tag is a folder name: up to 255 bytes
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    assert all(len(part.encode()) <= MAX_FILE_NAME_BYTES for part in model.relative_to(ws.root).parts)
    with pytest.raises(DatasetError, match="bytes"):
        ensure_dataset(ws.catalog, "€" * 60, "folder", "y", [])


def test_locators_are_shown_relative_to_what_was_imported() -> None:
    """R9: the API (and pages on a team server) name a file by its place in the import, never its server path."""
    roots = ["/srv/in/parts", "/srv/in", "/srv/uploads/ab12_batch.zip", "/"]
    assert shown_locator("/srv/in/parts/a/p.png", roots) == "parts/a/p.png"  # the most specific root
    assert shown_locator("/srv/in/other/q.png", roots) == "in/other/q.png"
    assert shown_locator("/srv/uploads/ab12_batch.zip!dir/b.jpg", roots) == "ab12_batch.zip!dir/b.jpg"
    assert shown_locator("/srv/in/parts/more.zip!x/c.png", roots) == "parts/more.zip!x/c.png"
    assert shown_locator("/elsewhere/deep/d.png", roots) == "d.png"  # '/' is no root worth naming
    assert shown_locator("/elsewhere/z.zip!m/e.png", []) == "z.zip!m/e.png"
    assert shown_locator("seed-metadata:/data/gone/cats/f.jpg", roots) == "seed-metadata:f.jpg"  # no file here
    for kept in ("https://example.org/a.png?x=/srv/in", "s3://bucket/datalake/REAL/a.jpg"):
        assert shown_locator(kept, roots) == kept

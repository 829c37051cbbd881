"""Typed job parameters (issue 17): a job is created only with the parameters its kind's model declares, and a
stored row is read through the same model before it runs, so a bad row fails with the field and the cause
while rows written by older releases (same keys, maybe more) still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core.workspace import Workspace
from services.jobs.manager import TASKS, JobManager
from services.jobs.params import JobParams, ParamsError
from services.stages.download.folder_import import FolderImportParams, start_folder_import
from services.stages.preprocess.stage import PreprocessParams, start_preprocess
from tests.support.tagged_images import tagged_tree


def test_every_job_kind_declares_its_parameters(manager: JobManager):
    for kind in TASKS:
        model = manager.task(kind).params_model
        assert issubclass(model, JobParams) and model is not JobParams, kind
        # every stage works on a dataset, but the one that categorises a descriptions CSV without its images
        assert "dataset" in model.model_fields or (kind == "categorize_csv" and "input_csv" in model.model_fields), kind


def test_a_missing_or_mistyped_parameter_is_refused_at_create(manager: JobManager):
    with pytest.raises(ParamsError) as missing:
        manager.create("download_urls", "t", {"dataset": "x", "url_column": "image_link"})
    assert "download_urls job parameters: csv_path: Field required" in str(missing.value)
    with pytest.raises(ParamsError) as wrong:
        manager.create("preprocess", "t", {"dataset": "x", "recipe": {}, "workers": "many"})
    assert "workers: Input should be a valid integer" in str(wrong.value)
    assert wrong.value.http_status == 422 and wrong.value.error_class == "job_params"
    with pytest.raises(ParamsError, match="unknown recipe_nmae"):
        manager.create("preprocess", "t", {"dataset": "x", "recipe": {}, "recipe_nmae": "typo"})
    assert not manager.list()  # nothing was created


def test_a_start_function_stores_exactly_the_model_it_built(ws: Workspace, manager: JobManager, tmp_path: Path):
    """`start_*` builds its kind's params model; the row holds the keys it set (rows look as they always did:
    no defaults added), and reading the row back gives the same model."""
    job_id = _import_job(ws, manager, tmp_path)
    row = manager.params(job_id)
    assert set(row) == {"folder", "dataset", "workers"} and row["workers"] == 0
    assert FolderImportParams.model_validate(row) == FolderImportParams(folder=row["folder"], dataset="set", workers=0)


def test_a_model_of_another_kind_is_refused(manager: JobManager):
    with pytest.raises(ParamsError, match="preprocess jobs take PreprocessParams, not FolderImportParams"):
        manager.create("preprocess", "t", FolderImportParams(folder="/x", dataset="x"))
    assert not manager.list()


def test_a_value_out_of_range_names_the_field_at_every_front_door(ws: Workspace, manager: JobManager, tmp_path: Path):
    """The models hold the ranges (workers >= 0, resize 8..4096, a test size in (0, 1) ...): a start function that
    builds one with a bad value raises `ParamsError` naming the field, the error every front door shows in one
    line, never a pydantic traceback."""
    _import_job(ws, manager, tmp_path)
    manager.run(manager.list()[0].id)
    with pytest.raises(ParamsError) as bad:
        start_preprocess(ws, manager, "set", "ocr-128", workers=-1)
    assert str(bad.value) == "preprocess job parameters: workers: Input should be greater than or equal to 0"
    assert len(manager.list()) == 1  # nothing was created
    with pytest.raises(ParamsError, match="resize: Input should be less than or equal to 4096"):
        manager.create("import_folder", "t", {"folder": "/x", "dataset": "x", "resize": 5000})
    with pytest.raises(ValueError):  # the model itself, for callers outside a start function
        PreprocessParams(dataset="x", recipe={}, chunk_size=0)


def _import_job(ws: Workspace, manager: JobManager, tmp_path: Path) -> int:
    return start_folder_import(ws, manager, tagged_tree(tmp_path / "set", per_tag=2), "set", workers=0)


def _set_params(ws: Workspace, job_id: int, params: dict[str, object]) -> None:
    with ws.catalog.write() as conn:
        conn.execute("UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params), job_id))


def test_a_row_from_an_older_release_with_an_extra_key_still_runs(ws: Workspace, manager: JobManager, tmp_path: Path):
    job_id = _import_job(ws, manager, tmp_path)
    _set_params(ws, job_id, {**manager.params(job_id), "legacy_option": 1})
    done = manager.run(job_id)
    assert done.state == "completed" and done.done > 0 and done.done + done.failed == done.total


def test_a_row_that_cannot_run_fails_naming_the_field(ws: Workspace, manager: JobManager, tmp_path: Path):
    job_id = _import_job(ws, manager, tmp_path)
    params = manager.params(job_id)
    del params["folder"]
    _set_params(ws, job_id, params)
    ended = manager.run(job_id)
    assert ended.state == "failed"
    assert ended.error is not None and "import_folder job parameters: folder: Field required" in ended.error
    assert "Traceback" not in ended.error


def test_a_job_runs_the_job_it_depends_on_first(ws: Workspace, manager: JobManager, tmp_path: Path):
    """`after_job` (Classify's import of a folder): the manager completes that job, a job of its own with its row
    and log, before this one plans; a stage never runs another job inside its plan."""
    first = _import_job(ws, manager, tmp_path)
    second = start_folder_import(ws, manager, tagged_tree(tmp_path / "more", per_tag=1), "more", workers=0)
    _set_params(ws, second, {**manager.params(second), "after_job": first})
    assert manager.run(second).state == "completed"
    assert manager.progress(first).state == "completed"


def test_a_failed_prerequisite_stops_the_job_that_needs_it(ws: Workspace, manager: JobManager, tmp_path: Path):
    first = _import_job(ws, manager, tmp_path)
    _set_params(ws, first, {"dataset": "set"})  # a row that cannot run: it fails naming `folder`
    second = start_folder_import(ws, manager, tagged_tree(tmp_path / "more", per_tag=1), "more", workers=0)
    _set_params(ws, second, {**manager.params(second), "after_job": first})
    ended = manager.run(second)
    assert manager.progress(first).state == "failed"
    assert ended.state == "failed" and ended.error is not None
    assert f"job {second} needs job {first}, which ended failed" in ended.error


def test_the_front_doors_take_their_ranges_and_help_from_the_models(ws: Workspace, tmp_path: Path):
    """The CLI options and the pages' number inputs for workers, resize, bins, batch size and seed read their
    range and help from the params models: the CLI refuses `--resize 5000` before any work, as the model would."""
    from typer.testing import CliRunner

    from services.cli.app import app
    from services.jobs.params import ClipJobParams, StoreParams, field_bounds, field_help, int_range
    from services.stages.classify.stage import ClassifyParams
    from services.stages.train.stage import TrainParams

    assert field_bounds(StoreParams, "resize") == (8, 4096) and int_range(ClassifyParams, "bins") == (1, 100)
    assert int_range(ClipJobParams, "batch_size") == (1, 1024) and int_range(TrainParams, "seed") == (0, 2**31 - 1)
    assert field_bounds(TrainParams, "test_size") == (None, None)  # open bounds: the model itself refuses 0 and 1
    runner = CliRunner()
    csv = tmp_path / "u.csv"
    csv.write_text("image_link\nhttp://127.0.0.1/a.png\n")
    refused = runner.invoke(app, ["--workspace", str(ws.root), "download", "urls", str(csv), "--dataset", "d",
                                  "--resize", "5000"])  # fmt: skip
    assert refused.exit_code == 2 and "--resize" in refused.output and "4096" in refused.output
    assert not JobManager(ws).list()  # nothing was made
    shown = runner.invoke(app, ["download", "urls", "--help"], env={"COLUMNS": "200"})
    assert field_help(StoreParams, "resize") in shown.output and "8<=x<=4096" in shown.output
    assert field_help(JobParams, "workers") in shown.output and "x>=0" in shown.output

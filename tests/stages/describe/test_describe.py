"""Describe & Categorize with the real google-genai client against the loopback fake Gemini server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.gemini_client import GeminiError
from services.jobs.manager import JobManager
from services.stages.describe.categories import save_list
from services.stages.describe.results import ResultKeys, export, filter_results, iter_results
from services.stages.describe.stage import (
    CATEGORIZE_STAGE,
    DESCRIBE_STAGE,
    describe_settings_hash,
    estimate_cost,
    start_describe,
    try_one,
)
from services.stages.download.folder_import import start_folder_import
from tests.conftest import read_csv
from tests.support.describe_data import colour_dataset, gemini_env
from tests.support.fake_gemini import API_KEY, FakeGemini

COLOURS = ["red", "green", "blue", "yellow", "magenta"]


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    server = FakeGemini(retry_delay=0.2, slow_seconds=2.5).start()
    yield server
    server.stop()


@pytest.fixture
def gws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemini: FakeGemini) -> Iterator[Workspace]:
    gemini_env(monkeypatch, gemini)
    workspace = Workspace(tmp_path / "ws", load_settings())
    yield workspace
    workspace.close()


def results_by_name(ws: Workspace, dataset: str, keys: ResultKeys) -> dict[str, object]:
    return {r.name: r for r in iter_results(ws, dataset, keys)}


def test_describe_stores_the_whole_json_per_image_and_exports(gws: Workspace, gemini: FakeGemini, tmp_path: Path):
    dataset = colour_dataset(gws, tmp_path, COLOURS)
    manager = JobManager(gws)
    p = manager.run(start_describe(gws, manager, dataset, "describe"))
    assert (p.state, p.done, p.failed) == ("completed", 5, 0)
    assert gemini.requests == 5 and gemini.outcomes() == {"ok": 5}
    keys = ResultKeys.current(gws)
    results = results_by_name(gws, dataset, keys)
    for i, colour in enumerate(COLOURS):
        r = results[f"{i:02d}_{colour}.png"]
        assert r.summary == f"A {colour} square on a plain background."  # each answer landed on its own image
        assert r.description["objects"] == [{"name": "square", "attributes": [colour, "flat"]}]
        assert r.description["style"]["colors"] == [colour] and r.description["camera"]["shot"] == "close-up"
    # the request: the real SDK sent a schema and a JPEG no larger than image_max_size
    config = gemini.last_body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert set(config["responseSchema"]["properties"]) == {
        "summary", "objects", "scene", "style", "camera", "text", "quality"
    }  # fmt: skip

    path, n = export(gws, dataset, keys, "descriptions-csv")
    rows = read_csv(path)
    assert n == 5 and list(rows[0]) == ["image_name", "description"]
    assert rows[2] == {"image_name": "02_blue.png", "description": "A blue square on a plain background."}
    path, n = export(gws, dataset, keys, "jsonl", tmp_path / "all.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 5 and records[0]["description"]["scene"] == {"indoor_outdoor": "unknown", "environment": "studio"}
    import pandas as pd

    path, n = export(gws, dataset, keys, "parquet", tmp_path / "all.parquet")
    frame = pd.read_parquet(path)
    assert n == 5 and json.loads(frame.loc[1, "description"])["summary"] == "A green square on a plain background."


def test_second_run_makes_zero_requests_and_the_request_cache_covers_lost_results(
    gws: Workspace, gemini: FakeGemini, tmp_path: Path
):
    dataset = colour_dataset(gws, tmp_path, COLOURS[:3])
    manager = JobManager(gws)
    assert manager.run(start_describe(gws, manager, dataset)).state == "completed"
    assert gemini.requests == 3
    again = manager.run(start_describe(gws, manager, dataset))
    assert (again.state, again.done) == ("completed", 3) and gemini.requests == 3
    # stage results lost (e.g. a catalog restored from backup): the request cache still answers
    with gws.catalog.write() as conn:
        conn.execute("DELETE FROM stage_results WHERE stage = ?", (DESCRIBE_STAGE,))
    third = manager.run(start_describe(gws, manager, dataset))
    assert (third.state, third.done) == ("completed", 3) and gemini.requests == 3
    cached = [r for r in iter_results(gws, dataset, ResultKeys.current(gws)) if r.description]
    assert len(cached) == 3


def test_faults_are_retried_and_failures_stored_as_failures_then_retried(
    gws: Workspace, gemini: FakeGemini, tmp_path: Path
):
    dataset = colour_dataset(gws, tmp_path, COLOURS)
    gemini.script["red"] = ["429", "ok"]
    gemini.script["green"] = ["500", "500", "ok"]
    gemini.script["blue"] = ["malformed", "ok"]
    gemini.script["yellow"] = ["malformed"] * 4  # max_retries 3: four bad answers fail the item
    gemini.script["magenta"] = ["no-summary", "ok"]
    manager = JobManager(gws)
    job = start_describe(gws, manager, dataset)
    p = manager.run(job)
    assert (p.state, p.done, p.failed) == ("completed", 4, 1)
    assert manager.failure_counts(job) == {"malformed_response": 1} and manager.retryable_failures(job) == 1
    [failure] = manager.failures(job)
    assert "not JSON" in failure["error_message"] and failure["attempts"] == 4
    results = results_by_name(gws, dataset, ResultKeys.current(gws))
    yellow = results["03_yellow.png"]
    assert yellow.description is None and yellow.describe_error.startswith("malformed_response")
    assert results["00_red.png"].summary.startswith("A red square")
    assert gemini.per_colour() == {"red": 2, "green": 3, "blue": 2, "yellow": 4, "magenta": 2}
    # retry-failed asks again only for yellow, which the server now answers
    assert manager.reset_failed(job) == 1
    p = manager.run(job)
    assert (p.state, p.done, p.failed) == ("completed", 5, 0)
    assert gemini.per_colour()["yellow"] == 5 and gemini.requests == 14
    assert results_by_name(gws, dataset, ResultKeys.current(gws))["03_yellow.png"].summary.startswith("A yellow")


def test_429_retry_delay_is_honoured_and_blocked_answers_fail(gws: Workspace, gemini: FakeGemini, tmp_path: Path):
    gemini.retry_delay = 0.8
    dataset = colour_dataset(gws, tmp_path, ["red", "cyan"])
    gemini.script["red"] = ["429", "ok"]
    gemini.script["cyan"] = ["blocked"]
    manager = JobManager(gws)
    job = start_describe(gws, manager, dataset)
    p = manager.run(job)
    assert (p.done, p.failed) == (1, 1)
    assert manager.failure_counts(job) == {"blocked": 1}
    red = [e.at for e in gemini.log if e.colour == "red"]
    assert len(red) == 2 and red[1] - red[0] >= 0.75  # waited out the server's RetryInfo delay


def test_slow_reply_times_out_and_is_retried(gws: Workspace, gemini: FakeGemini, tmp_path: Path):
    dataset = colour_dataset(gws, tmp_path, ["green"])
    gemini.script["green"] = ["slow", "ok"]  # 2.5 s against a 2 s timeout
    manager = JobManager(gws)
    started = time.monotonic()
    p = manager.run(start_describe(gws, manager, dataset))
    assert (p.done, p.failed) == (1, 0)
    assert gemini.per_colour()["green"] == 2 and time.monotonic() - started < 10


def test_client_side_rate_limit_spaces_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemini: FakeGemini):
    gemini_env(monkeypatch, gemini, WORKBENCH_GEMINI__REQUESTS_PER_MINUTE="120", WORKBENCH_GEMINI__BURST="1")
    ws = Workspace(tmp_path / "ws", load_settings())
    dataset = colour_dataset(ws, tmp_path, COLOURS)
    manager = JobManager(ws)
    p = manager.run(start_describe(ws, manager, dataset, concurrency=5))
    assert p.done == 5
    times = sorted(e.at for e in gemini.log)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.4, gaps  # 120 a minute: one every 0.5 s, even with 5 threads ready
    assert times[-1] - times[0] >= 1.9
    ws.close()


def test_categorize_uses_descriptions_validates_answers_and_exports_like_the_seeds(
    gws: Workspace, gemini: FakeGemini, tmp_path: Path
):
    dataset = colour_dataset(gws, tmp_path, COLOURS)
    cats = save_list(gws, "colours", ["red", "Green", "blue", "magenta"], "test")
    manager = JobManager(gws)
    assert manager.run(start_describe(gws, manager, dataset)).state == "completed"
    gemini.reset_log()
    gemini.script["red"] = ["outside"]  # text requests find the colour in the stored description
    p = manager.run(start_describe(gws, manager, dataset, "categorize", cats))
    assert (p.state, p.done, p.failed) == ("completed", 5, 0)
    assert {e.kind for e in gemini.log} == {"text"} and gemini.requests == 5
    enum = gemini.last_body["generationConfig"]["responseSchema"]["properties"]["categories"]["items"]["enum"]
    assert enum == ["red", "Green", "blue", "magenta", "unknown"]
    keys = ResultKeys.current(gws, cats)
    results = results_by_name(gws, dataset, keys)
    assert results["00_red.png"].categories == ["red"]
    assert results["00_red.png"].rejected == ["not-a-red-thing"]
    assert results["01_green.png"].categories == ["Green"]  # the list's spelling
    assert results["03_yellow.png"].categories == ["unknown"]
    path, n = export(gws, dataset, keys, "categories-csv")
    rows = read_csv(path)
    assert n == 5 and list(rows[0]) == ["image_name", "description", "categories"]
    assert rows[3] == {
        "image_name": "03_yellow.png",
        "description": "A yellow square on a plain background.",
        "categories": "unknown",
    }
    assert [r.name for r in filter_results(iter_results(gws, dataset, keys), category="blue")] == ["02_blue.png"]
    assert [r.name for r in filter_results(iter_results(gws, dataset, keys), text="magenta")] == ["04_magenta.png"]


def test_one_call_mode_describes_and_categorises_together(gws: Workspace, gemini: FakeGemini, tmp_path: Path):
    dataset = colour_dataset(gws, tmp_path, ["red", "blue", "gray"])
    cats = save_list(gws, "colours", ["red", "blue"], "test")
    manager = JobManager(gws)
    p = manager.run(start_describe(gws, manager, dataset, "categorize", cats))  # nothing described yet
    assert p.done == 3 and {e.kind for e in gemini.log} == {"image"} and gemini.requests == 3
    results = results_by_name(gws, dataset, ResultKeys.current(gws, cats))
    assert results["00_red.png"].categories == ["red"] and results["00_red.png"].summary.startswith("A red")
    assert results["02_gray.png"].categories == ["unknown"]
    # the descriptions were stored too: a describe job now has nothing to ask
    assert manager.run(start_describe(gws, manager, dataset)).done == 3 and gemini.requests == 3
    # a new list version recomputes categories only
    cats2 = save_list(gws, "colours", ["red", "blue", "gray"], "test")
    assert cats2.version == 2
    manager.run(start_describe(gws, manager, dataset, "categorize", cats2))
    assert gemini.requests == 6 and {e.kind for e in gemini.log[3:]} == {"text"}
    assert results_by_name(gws, dataset, ResultKeys.current(gws, cats2))["02_gray.png"].categories == ["gray"]


def test_answers_past_two_categories_are_recorded_and_counted_by_compare(
    gws: Workspace, gemini: FakeGemini, tmp_path: Path
):
    from services.stages.compare.label_sets import category_depth, label_counts, label_set_from_gemini
    from services.stages.describe.stage import categorize_settings_hash

    dataset = colour_dataset(gws, tmp_path, ["red", "blue"])
    cats = save_list(gws, "colours", ["red", "blue", "square", "flat"], "test")
    gemini.script["red"] = ["many"]  # the model answers three valid categories for the red image
    manager = JobManager(gws)
    assert manager.run(start_describe(gws, manager, dataset, "categorize", cats)).done == 2
    stored = {
        json.dumps(json.loads(r["result"])["categories"]): json.loads(r["result"])
        for r in gws.catalog.query(
            "SELECT result FROM stage_results WHERE stage = ? AND settings_hash = ?",
            (CATEGORIZE_STAGE, categorize_settings_hash(gws.settings.caption_model, cats)),
        )
    }
    red = stored['["red", "blue"]']
    assert red["extra"] == ["square"] and stored['["blue"]']["extra"] == []  # kept the first two, recorded the rest
    assert results_by_name(gws, dataset, ResultKeys.current(gws, cats))["00_red.png"].categories == ["red", "blue"]
    label_set = label_set_from_gemini(gws, dataset, cats)
    assert label_counts(gws, label_set) == {"red": 1, "blue": 2, "square": 1}  # every valid category counted
    assert category_depth(gws, label_set) == {1: 1, 3: 1}


def test_bad_key_and_no_key_and_no_network_fail_fast_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemini: FakeGemini
):
    gemini_env(monkeypatch, gemini, WORKBENCH_GEMINI_API_KEY="wrong")
    ws = Workspace(tmp_path / "ws", load_settings())
    dataset = colour_dataset(ws, tmp_path, ["red", "blue"])
    manager = JobManager(ws)
    job = start_describe(ws, manager, dataset)
    p = manager.run(job)
    assert p.state == "failed" and "check the Gemini API key" in (p.error or "")
    assert p.failed == 0 and p.pending == 2  # nothing recorded as an item failure: fix the key and resume
    ws.close()

    monkeypatch.delenv("WORKBENCH_GEMINI_API_KEY")
    ws = Workspace(tmp_path / "ws", load_settings())
    p = JobManager(ws).run(job)
    assert p.state == "failed" and "WORKBENCH_GEMINI_API_KEY" in (p.error or "")
    ws.close()

    gemini_env(monkeypatch, gemini, WORKBENCH_GEMINI__BASE_URL="http://127.0.0.1:9")  # nothing listens
    ws = Workspace(tmp_path / "ws", load_settings())
    started = time.monotonic()
    p = JobManager(ws).run(job)
    assert p.state == "failed" and "cannot reach the Gemini endpoint" in (p.error or "")
    assert time.monotonic() - started < 10
    gemini_env(monkeypatch, gemini)
    ws.close()
    ws = Workspace(tmp_path / "ws", load_settings())
    assert JobManager(ws).run(job).state == "completed"
    ws.close()


def test_try_one_runs_the_job_code_path_and_stores_the_answer(gws: Workspace, gemini: FakeGemini, tmp_path: Path):
    dataset = colour_dataset(gws, tmp_path, ["orange"])
    [only] = iter_results(gws, dataset, ResultKeys.current(gws))
    image_hash, rel = only.image_hash, only.path
    out = try_one(gws, image_hash, rel)
    assert out[DESCRIBE_STAGE]["description"]["summary"] == "A orange square on a plain background."
    assert out[DESCRIBE_STAGE]["input_tokens"] > 258
    settings_hash = describe_settings_hash(gws.settings.caption_model, gws.settings.processing.image_max_size)
    assert gws.catalog.stage_done(DESCRIBE_STAGE, settings_hash, [image_hash]) == {image_hash}
    gemini.script["orange"] = ["malformed"] * 4
    cats = save_list(gws, "c", ["orange"], "test")
    with pytest.raises(GeminiError) as err:
        try_one(gws, image_hash, rel, "both", cats)
    assert err.value.error_class == "malformed_response"
    assert gws.catalog.stage_done(CATEGORIZE_STAGE, "x", [image_hash]) == set()


def test_cost_estimate_counts_only_work_left_and_prices_it(gws: Workspace, gemini: FakeGemini, tmp_path: Path):
    dataset = colour_dataset(gws, tmp_path, COLOURS)
    est = estimate_cost(gws, dataset, "describe")
    assert (est.images, est.to_do, est.requests) == (5, 5, 5)
    price = gws.settings.gemini.prices["gemini-2.5-flash-lite"]
    expected = (est.input_tokens * price.input_per_million + est.output_tokens * price.output_per_million) / 1e6
    assert est.cost_usd == pytest.approx(expected) and est.input_tokens >= 5 * 258
    assert est.seconds == pytest.approx(5 / min(6000 / 60, 8 / 2.5))
    manager = JobManager(gws)
    manager.run(start_describe(gws, manager, dataset))
    assert estimate_cost(gws, dataset, "describe").to_do == 0
    cats = save_list(gws, "c", ["red"], "test")
    text_only = estimate_cost(gws, dataset, "categorize", cats)  # descriptions exist: cheap text requests
    assert text_only.to_do == 5 and text_only.input_tokens < est.input_tokens
    unpriced = Workspace(tmp_path / "ws", gws.settings.model_copy(update={"caption_model": "gemini-9-ultra"}))
    assert estimate_cost(unpriced, dataset, "describe").cost_usd is None
    assert "not priced" in estimate_cost(unpriced, dataset, "describe").describe()


def test_the_seeds_config_yaml_drives_model_image_size_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemini: FakeGemini
):
    gemini_env(monkeypatch, gemini)
    monkeypatch.delenv("WORKBENCH_GEMINI_API_KEY")
    (tmp_path / "config.yaml").write_text(
        f'gemini_api_key: "{API_KEY}"\n'
        'caption_model: "gemini-2.5-flash"\n'
        "processing:\n  image_max_size: 32\n  max_retries: 1\n  retry_backoff_seconds: 0.01\n"
        "  per_request_sleep_seconds: 0.0\n"
    )  # the seeds' file, unchanged (tests run in tmp_path)
    ws = Workspace(tmp_path / "ws", load_settings())
    folder = tmp_path / "big"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (300, 200), (220, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (300, 200), (30, 40, 220)).save(folder / "blue.png")
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "big"))
    gemini.script["blue"] = ["500", "500"]  # max_retries 1: two attempts, then a stored failure
    job = start_describe(ws, manager, "big")
    p = manager.run(job)
    assert (p.done, p.failed) == (1, 1) and manager.failure_counts(job) == {"server_error": 1}
    assert {e.model for e in gemini.log} == {"gemini-2.5-flash"}
    assert gemini.image_sizes and all(max(size) == 32 for size in gemini.image_sizes)
    ws.close()

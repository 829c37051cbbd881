"""The workspace's worker (issue 18): a long-lived process that runs handed jobs one after another with the
models they load kept loaded, resumes what a killed worker left, and is the only one serving its workspace.
Real subprocesses (`workbench worker`), real jobs, the tiny CLIP saved and loaded through the product's loader."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, clip_load_count, load_clip, resident_clips, set_resident_limit
from services.jobs.manager import JobManager
from services.jobs.worker_status import WORKER_QUEUED, live_worker, read_status
from services.stages.download.folder_import import start_folder_import
from services.stages.download.urls import start_url_download
from services.stages.embed.stage import start_embed
from tests.conftest import ROOT, write_csv
from tests.support.image_server import ImageServer, make_jpeg
from tests.support.tagged_images import tagged_tree
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip


def _cli(ws: Workspace, *args: str) -> list[str]:
    return [sys.executable, "-m", "services", "--workspace", str(ws.root), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def worker_process(ws: Workspace, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(_cli(ws, "worker", *extra), cwd=ROOT, env=_env(), stdout=log, stderr=log)
        started.append(proc)
        _wait(lambda: (s := live_worker(ws)) is not None and s.pid == proc.pid, 60, "the worker to serve")
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def tiny_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClipSpec:
    checkpoint = save_tiny_clip(tmp_path / "clip")
    monkeypatch.setenv("WORKBENCH_CLIP__MODEL", TINY_CLIP_NAME)
    monkeypatch.setenv("WORKBENCH_CLIP__CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("WORKBENCH_CLIP__PRETRAINED", "")
    monkeypatch.setenv("WORKBENCH_CLIP__DEVICE", "cpu")
    return ClipSpec(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(checkpoint), device="cpu")


def test_handed_jobs_run_in_order_in_one_process_that_loads_the_model_once(
    ws: Workspace, manager: JobManager, tmp_path: Path, tiny_clip: ClipSpec, worker_process: Callable[..., object]
):
    datasets = ["a", "b", "c"]
    for name in datasets:  # three datasets, so each embed job has images to embed (none is skipped as done)
        manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / name, per_tag=3), name, workers=0))
    worker = worker_process()
    assert isinstance(worker, subprocess.Popen)
    jobs = [start_embed(ws, manager, name, tiny_clip, batch_size=4, loader_workers=0) for name in datasets]
    assert manager.start_background(jobs[0]) == worker.pid  # the CLI's --background and the pages' Resume
    assert manager.start_from_page(jobs[1])  # a page's Start
    cli = subprocess.run(_cli(ws, "jobs", "resume", str(jobs[2]), "--background"), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"job {jobs[2]} handed to the workspace's worker (pid {worker.pid})" in cli.stdout
    _wait(lambda: all(manager.progress(j).state == "completed" for j in jobs), 240, "the three embed jobs")
    runs = [manager.progress(j) for j in jobs]
    assert all(p.done == p.total > 0 and p.failed == 0 for p in runs), runs
    assert [p.params[WORKER_QUEUED] for p in runs] == sorted(p.params[WORKER_QUEUED] for p in runs)
    times = [manager.catalog.query("SELECT run_started_at, finished_at FROM jobs WHERE id = ?", (j,))[0] for j in jobs]
    for earlier, later in zip(times, times[1:], strict=False):  # jobs that load a model: in order, one at a time
        assert later["run_started_at"] >= earlier["finished_at"]
    _wait(lambda: (s := read_status(ws)) is not None and s.jobs_run == 3, 10, "the worker's status")
    status = read_status(ws)
    assert status is not None and status.pid == worker.pid
    assert status.model_loads == 1  # three jobs, one load
    assert len(status.resident) == 1 and re.fullmatch(rf"clip {re.escape(tiny_clip.label)} on cpu \(\d+\.\d MB\)",
                                                       status.resident[0]), status.resident  # fmt: skip
    assert not manager.worker_queue()

    said = subprocess.run(_cli(ws, "worker", "--status"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert f"Worker pid {worker.pid}" in said.stdout and "3 jobs run, 1 model loads" in said.stdout
    assert "queue: empty" in said.stdout

    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    assert live_worker(ws) is None


def test_a_second_worker_for_the_workspace_is_refused(ws: Workspace, worker_process: Callable[..., object]):
    first = worker_process()
    assert isinstance(first, subprocess.Popen)
    second = subprocess.run(_cli(ws, "worker"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"a worker already serves this workspace (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert live_worker(ws) is not None and first.poll() is None  # the first one serves on


def test_a_killed_workers_job_resumes_in_the_next_worker(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path,
    worker_process: Callable[..., object], monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__THREADS_PER_WORKER", "2")  # 20 images, 0.8 s each, two at a time: 8 s
    n = 20
    urls = [image_server.url(f"/slow/0.8/p{i}.jpg") for i in range(n)]
    for i in range(n):
        image_server.add(f"p{i}.jpg", make_jpeg(32, 24, seed=i))
    csv = write_csv(tmp_path / "urls.csv", ["image_link"], [[u] for u in urls])
    job_id = start_url_download(ws, manager, csv, "slow", workers=0)
    worker = worker_process()
    assert isinstance(worker, subprocess.Popen)
    manager.start_background(job_id)
    _wait(lambda: manager.progress(job_id).state == "running", 60, "the worker to start the job")
    time.sleep(2.0)
    worker.kill()  # no clean stop: as a crash or an OOM kill would
    worker.wait(timeout=30)
    stopped = manager.progress(job_id)
    assert stopped.state == "interrupted" and stopped.done < n

    again = subprocess.run(_cli(ws, "worker", "--max-jobs", "1"), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=240)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"job {job_id} [completed]" in again.stdout
    ended = manager.progress(job_id)
    assert ended.state == "completed" and ended.done == n and ended.failed == 0


def test_a_long_job_does_not_hold_a_small_one_back(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path,
    worker_process: Callable[..., object], monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    """Jobs that load no model run side by side (up to worker.jobs_at_once): a folder import handed after a slow
    download completes while the download still runs, as it did when each page job had a process of its own."""
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__THREADS_PER_WORKER", "2")
    for i in range(20):
        image_server.add(f"s{i}.jpg", make_jpeg(32, 24, seed=i))
    rows = [[image_server.url(f"/slow/0.8/s{i}.jpg")] for i in range(20)]
    slow = start_url_download(ws, manager, write_csv(tmp_path / "urls.csv", ["image_link"], rows), "slow", workers=0)
    small = start_folder_import(ws, manager, tagged_tree(tmp_path / "small", per_tag=1), "small", workers=0)
    worker_process()
    manager.start_background(slow)
    _wait(lambda: manager.progress(slow).state == "running", 60, "the download to start")
    manager.start_background(small)
    _wait(lambda: manager.progress(small).state == "completed", 60, "the small import")
    assert manager.progress(slow).state == "running"
    _wait(lambda: manager.progress(slow).state == "completed", 120, "the download")


def test_resume_and_retry_of_an_ended_job_go_to_the_worker(
    ws: Workspace, manager: JobManager, tmp_path: Path, worker_process: Callable[..., object]
):
    """A page's Resume of a cancelled job (and Retry of one that failed) hands it over again: it is queued as
    `created` and the worker runs it (a job that ended is not left waiting under its old state)."""
    job_id = start_folder_import(ws, manager, tagged_tree(tmp_path / "set", per_tag=2), "set", workers=0)
    assert manager.cancel(job_id).state == "cancelled"
    worker_process()
    assert manager.start_from_page(job_id)
    _wait(lambda: manager.progress(job_id).state == "completed", 60, "the resumed job")
    ended = manager.progress(job_id)
    assert ended.done > 0 and ended.done + ended.failed == ended.total


def test_the_least_recently_used_clip_is_unloaded_beyond_the_limit(tmp_path: Path):
    specs = [
        ClipSpec(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(save_tiny_clip(tmp_path / f"c{i}", seed=i)),
                 device="cpu")
        for i in range(3)
    ]  # fmt: skip
    set_resident_limit(2)
    try:
        before = clip_load_count()
        first = load_clip(specs[0])
        load_clip(specs[1])
        assert load_clip(specs[0]) is first and clip_load_count() - before == 2  # a hit is not a load
        load_clip(specs[2])  # over the limit: specs[1], used least recently, goes
        assert clip_load_count() - before == 3
        labels = resident_clips()
        assert len(labels) == 2
        load_clip(specs[0])
        assert clip_load_count() - before == 3  # still loaded
        load_clip(specs[1])
        assert clip_load_count() - before == 4  # it was unloaded: loaded again
    finally:
        set_resident_limit(2)


def test_a_worker_told_to_stop_puts_its_job_back_at_the_front_of_the_queue(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path,
    worker_process: Callable[..., object], monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    """SIGTERM (a service manager stopping it) or Ctrl+C: the job running stops after its items in flight and is
    queued again, not cancelled (nobody cancelled it); the next worker resumes it first."""
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__THREADS_PER_WORKER", "2")
    monkeypatch.setenv("WORKBENCH_WORKER__JOBS_AT_ONCE", "1")  # so that the second job is still waiting
    n = 20
    for i in range(n):
        image_server.add(f"q{i}.jpg", make_jpeg(32, 24, seed=i))
    csv = write_csv(
        tmp_path / "urls.csv", ["image_link"], [[image_server.url(f"/slow/0.8/q{i}.jpg")] for i in range(n)]
    )
    job_id = start_url_download(ws, manager, csv, "slow", workers=0)
    later = start_folder_import(ws, manager, tagged_tree(tmp_path / "later", per_tag=1), "later", workers=0)
    worker = worker_process()
    assert isinstance(worker, subprocess.Popen)
    manager.start_background(job_id)
    _wait(lambda: manager.progress(job_id).state == "running", 60, "the worker to start the job")
    manager.start_background(later)
    time.sleep(1.5)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    stopped = manager.progress(job_id)
    assert stopped.state == "created" and stopped.done < n, stopped
    assert [p.id for p in manager.worker_queue()] == [job_id, later]  # back at the front

    again = subprocess.run(_cli(ws, "worker", "--max-jobs", "2"), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=240)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    ended = manager.progress(job_id)
    assert ended.state == "completed" and ended.done == n and ended.failed == 0
    assert manager.progress(later).state == "completed"


def test_the_ocr_preview_is_read_by_the_worker_on_its_loaded_engine(
    ws: Workspace, worker_process: Callable[..., object]
):
    """The OCR page's preview goes to the worker when one serves the workspace (its engines stay loaded there,
    not a second copy in the dashboard's process), and reads the same as in the page's own process."""
    from services.stages.ocr.preview import preview
    from services.stages.ocr.rules import load_rules
    from tests.support.text_images import render_png

    data = render_png("Z5O1234S678", mono=True)
    rules = load_rules(ws.root, "none").model_dump_json()
    here, where = preview(ws, data, "tesseract", None, rules)
    assert where == "here" and here.raw  # no worker: read in this process
    worker_process()
    there, where = preview(ws, data, "tesseract", None, rules)
    assert where == "worker" and there == here
    _wait(lambda: "ocr tesseract" in ((s := read_status(ws)) and s.resident or []), 10, "the engine in the status")
    with pytest.raises(WorkbenchError) as refused:  # the worker's refusal comes back with its class and message
        preview(ws, b"not an image", "tesseract", None, rules)
    assert refused.value.error_class == "not_image" and refused.value.user_message().startswith("not_image: ")


def test_the_worker_checks_who_asks_before_reading_a_request(ws: Workspace, worker_process: Callable[..., object]):
    """Wrong token: 401 before the body is read (the request declares 10 MB and sends none of it); the right
    token and a body over the bound: 413, also unread; an operation the worker was not given: 404."""
    import http.client
    import json as json_

    worker_process()
    _wait(lambda: (ws.root / "worker" / "requests.json").exists(), 10, "the request endpoint")
    where = json_.loads((ws.root / "worker" / "requests.json").read_text())
    assert oct((ws.root / "worker" / "requests.json").stat().st_mode & 0o777) == "0o600"

    def ask(token: str, op: str, length: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", where["port"], timeout=10)
        conn.putrequest("POST", f"/{op}")
        conn.putheader("X-Worker-Token", token)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()  # headers only: an answer now means the body was never waited for
        status = conn.getresponse().status
        conn.close()
        return status

    assert ask("wrong", "ocr-preview", 10 * 2**20) == 401
    assert ask(where["token"], "ocr-preview", 10 * 2**30) == 413
    assert ask(where["token"], "shell", 10) == 404


def test_clip_zero_shot_on_one_image_is_scored_by_the_worker_on_its_loaded_model(
    ws: Workspace, tiny_clip: ClipSpec, worker_process: Callable[..., object]
):
    """The Describe page's "try one image" with CLIP goes to the worker (one load there for every try), and
    scores as the page's own process does; a bad image comes back as the worker's refusal."""
    from services.stages.describe.categories import save_list
    from services.stages.describe.zero_shot_try import try_zero_shot

    categories = save_list(ws, "kinds", ["cat", "truck", "tree"], "typed")
    data = make_jpeg(64, 48, seed=3)
    here, where = try_zero_shot(ws, data, tiny_clip, categories)
    assert where == "here" and set(here.scores) == {"cat", "truck", "tree"}
    assert abs(sum(here.scores.values()) - 1) < 1e-3 and here.categories[0] == max(here.scores, key=here.scores.get)
    worker_process()
    there, where = try_zero_shot(ws, data, tiny_clip, categories)
    assert where == "worker" and there.categories == here.categories
    assert all(abs(there.scores[c] - here.scores[c]) < 1e-4 for c in here.scores)
    again, _ = try_zero_shot(ws, make_jpeg(64, 48, seed=4), tiny_clip, categories)
    assert set(again.scores) == set(here.scores)
    _wait(lambda: (s := read_status(ws)) is not None and any("clip" in r for r in s.resident), 10, "CLIP resident")
    status = read_status(ws)
    assert status is not None and status.model_loads == 1  # two tries, one load
    with pytest.raises(WorkbenchError) as refused:
        try_zero_shot(ws, b"not an image", tiny_clip, categories)
    assert refused.value.error_class == "not_image"


def test_search_is_answered_by_the_worker_with_its_loaded_model_and_index(
    ws: Workspace, tiny_clip: ClipSpec, worker_process: Callable[..., object], tmp_path: Path
):
    """A text or image query goes to the worker (CLIP and the vector index stay loaded there) and ranks as the
    caller's own process does."""
    from services.core.datasets import dataset_tags
    from services.stages.explore.browse import BrowseFilter
    from services.stages.explore.search import SearchError, search

    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / "tree", per_tag=3), "few"))
    assert manager.run(start_embed(ws, manager, "few", tiny_clip, loader_workers=0)).state == "completed"
    here, where = search(ws, text="a red square", k=4)
    assert where == "here" and len(here.hits) == 4
    worker_process()
    there, where = search(ws, text="a red square", k=4, dataset="few")
    assert where == "worker" and [h.image_hash for h in there.hits] == [h.image_hash for h in here.hits]
    assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(there.hits, here.hits, strict=True))
    like, where = search(ws, like=here.hits[0].image_hash, k=2)
    assert where == "worker" and here.hits[0].image_hash not in [h.image_hash for h in like.hits]
    red = BrowseFilter(("few",), tags=("red",))  # a Browse filter crosses to the worker and is applied there
    ranked, where = search(ws, text="a red square", k=10, within=red)
    red_images = {h for h, tags in dataset_tags(ws, "few").items() if "red" in tags}
    assert where == "worker" and {h.image_hash for h in ranked.hits} == red_images
    assert 0 < len(red_images) < len(dataset_tags(ws, "few"))  # the filter bites
    with pytest.raises(WorkbenchError, match="not an image|cannot be decoded|not_image|image"):
        search(ws, image=b"not an image", k=2)
    with pytest.raises(SearchError, match="exactly one query"):
        search(ws, k=2)


def test_api_ocr_is_read_by_the_worker_when_one_serves(
    ws: Workspace, worker_process: Callable[..., object], monkeypatch: pytest.MonkeyPatch
):
    """POST /ocr in the API's process goes to the workspace's worker (one copy of the engine per workspace),
    answers as before, and still logs each result to the CSV in order."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app
    from services.core.settings import load_settings
    from tests.support.text_images import render_png

    monkeypatch.setenv("WORKBENCH_OCR__ENGINE", "tesseract")
    local = Workspace(ws.root, load_settings())
    client = TestClient(create_app(local, "tok"))
    auth = {"Authorization": "Bearer tok"}
    image = {"file": ("x.png", render_png("Z5O1234S678", mono=True), "image/png")}
    alone = client.post("/ocr?rules=seed-003", headers=auth, files=image)
    assert alone.status_code == 200 and alone.json()["code"] == "25012345678"
    worker_process()
    served = client.post("/ocr?rules=seed-003", headers=auth, files=image)
    assert served.status_code == 200
    assert {**served.json(), "serial": 0} == {**alone.json(), "serial": 0}
    assert served.json()["serial"] == alone.json()["serial"] + 1
    _wait(lambda: "ocr tesseract" in ((s := read_status(ws)) and s.resident or []), 10, "the engine in the worker")
    bad = client.post("/ocr", headers=auth, files={"file": ("n.png", b"text", "image/png")})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("not_image: ")
    local.close()

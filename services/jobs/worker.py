"""The workspace's long-lived worker: it runs the jobs handed to it in its own process, one after another, so
the models a job loads (CLIP per model and device, the OCR engines) are still loaded for the next job.

A job is handed over by marking its row (`worker_queued_at`); the catalog stays the record of jobs and items,
and `JobManager.run` runs a job here exactly as it does anywhere else (journal, heartbeat, cancel, resume), in a
thread of its own: several jobs at once, those that load a model one at a time. One
worker serves a workspace (a lock file); it writes its status (pid, beat, jobs run, model loads, resident
models) for Home and the CLI. A worker that is killed leaves its job `interrupted`; the next worker resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace, pid_alive, write_atomic
from services.jobs.manager import JobManager, JobProgress
from services.jobs.worker_requests import RequestHandler, RequestServer
from services.jobs.worker_status import WORKER_QUEUED, WorkerStatus, read_status, worker_folder

log = logging.getLogger(__name__)

BEAT_SECONDS = 1.0


class WorkerBusyError(WorkbenchError):
    error_class = "worker_busy"
    http_status = 409


def clip_model_counts() -> tuple[int, list[str]]:
    """CLIP models loaded in this process so far, and those held now (the default for a worker's status; the
    CLI's worker adds the OCR engines)."""
    from services.io.clip_models import clip_load_count, resident_clips

    return clip_load_count(), resident_clips()


class Worker:
    """Serve one workspace until stopped: resume what a killed worker left, then run handed jobs in the order
    they were handed over, up to `worker.jobs_at_once` at a time (each in a thread of this process) and at most
    `worker.model_jobs_at_once` of those that load a model (CLIP, OCR engines; one by default, as a GPU wants):
    a long download never holds a small classify back, and two jobs never load the same model side by side."""

    def __init__(
        self,
        ws: Workspace,
        poll_seconds: float = 0.3,
        parent: int | None = None,
        model_counts: Callable[[], tuple[int, list[str]]] = clip_model_counts,
        request_handlers: dict[str, RequestHandler] | None = None,
    ) -> None:
        self.ws = ws
        self.request_handlers = request_handlers or {}  # what pages may ask of its models (worker_requests.py)
        self.model_counts = model_counts  # model loads so far and models held now, for the status
        self.parent = parent  # the dashboard that started this worker: it leaves, idle, when that process ends
        self.manager = JobManager(ws)
        self.poll_seconds = poll_seconds
        self.status = WorkerStatus(os.getpid(), socket.gethostname(), time.time(), time.time())
        self._stop = threading.Event()  # take no new job
        self._gone = threading.Event()  # the worker has ended (its beat stops)
        self._signalled = False
        self._finished: queue.Queue[tuple[int, JobProgress | None]] = queue.Queue()
        self._running: dict[int, bool] = {}  # job id -> whether it holds a model (changed by the serving loop)
        self._running_lock = threading.Lock()

    def stop(self) -> None:
        self._stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM or Ctrl+C: stop the running jobs after their items in flight, queue them again, and end."""
        self._signalled = True
        self._stop.set()

    @contextlib.contextmanager
    def _only_worker(self) -> Iterator[None]:
        lock = open(worker_folder(self.ws) / "worker.lock", "a+")  # noqa: SIM115 (held for the worker's life)
        try:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = read_status(self.ws)
                who = f" (pid {other.pid} on {other.host})" if other else ""
                raise WorkerBusyError(f"a worker already serves this workspace{who}") from None
            yield
        finally:
            lock.close()

    def _write_status(self) -> None:
        self.status.beat_at = time.time()
        with self._running_lock:
            self.status.current_jobs = sorted(self._running)
        self.status.model_loads, self.status.resident = self.model_counts()
        write_atomic(worker_folder(self.ws) / "status.json", json.dumps(asdict(self.status)).encode())

    def _beat(self) -> None:
        while not self._gone.wait(BEAT_SECONDS):
            try:
                self._write_status()
            except OSError:
                log.warning("worker status could not be written", exc_info=True)

    def next_job(self, model_slot_free: bool = True) -> int | None:
        """A job a killed worker left running (it resumes first), else the oldest one handed over; one that
        loads a model only while `model_slot_free` (a job that does not may go ahead of it meanwhile)."""
        rows = self.manager.catalog.query(
            f"""SELECT id, kind, state FROM jobs WHERE state IN ('created', 'running')
                AND json_extract(params, '$.{WORKER_QUEUED}') IS NOT NULL
                ORDER BY state = 'created', json_extract(params, '$.{WORKER_QUEUED}'), id"""
        )
        for row in rows:
            if row["id"] in self._running:
                continue
            if row["state"] == "running" and self.manager.progress(row["id"]).state != "interrupted":
                continue  # running elsewhere (`jobs run` at a shell)
            if not model_slot_free and self._holds_model(row["kind"]):
                continue
            return int(row["id"])
        return None

    def _holds_model(self, kind: str) -> bool:
        try:
            return bool(getattr(self.manager.task(kind), "holds_model", False))
        except WorkbenchError:
            return False  # an unknown kind: its run fails and says so

    def _run_job(self, job_id: int) -> None:
        """In the job's thread: run it as anywhere else (its own manager; the catalog has a connection per
        thread), then report how it ended to the serving loop."""
        ended: JobProgress | None = None
        try:
            ended = JobManager(self.ws).run(job_id)
        except WorkbenchError as exc:  # claimed elsewhere meanwhile (`jobs run` at a shell): skip it
            log.warning("worker: job %s not run: %s", job_id, exc)
        except Exception:
            log.exception("worker: job %s ended with an unexpected error", job_id)
        finally:
            self._finished.put((job_id, ended))

    def _collect(self, on_job: Callable[[JobProgress], None] | None) -> None:
        while True:
            try:
                job_id, ended = self._finished.get_nowait()
            except queue.Empty:
                return
            with self._running_lock:
                self._running.pop(job_id, None)
            if ended is None:
                continue
            if self._signalled and ended.state == "cancelled":
                # stopped because the worker was told to stop: back to the front of the queue, not cancelled
                with self.manager.catalog.write() as conn:
                    conn.execute(
                        "UPDATE jobs SET state = 'created', pid = NULL, finished_at = NULL, cancel_requested = 0 "
                        "WHERE id = ? AND state = 'cancelled'",
                        (job_id,),
                    )
                log.info("worker stopping: job %s goes back to the queue", job_id)
            self.status.jobs_run += 1
            self._write_status()
            if on_job is not None:
                on_job(ended)

    def _should_leave(self) -> bool:
        if self.parent is not None and not pid_alive(self.parent):
            log.info("worker: the dashboard (pid %s) has stopped; so does its worker", self.parent)
            return True
        return not self.ws.root.is_dir()  # the workspace was removed under it

    def serve(self, max_jobs: int | None = None, on_job: Callable[[JobProgress], None] | None = None) -> int:
        """Run handed jobs until stopped (or once `max_jobs` have been started and have ended); returns how many
        ran."""
        from services.io.clip_models import CLIP_FAMILY
        from services.io.resident_models import MB, RESIDENT

        settings = self.ws.settings.worker
        RESIDENT.set_limits({CLIP_FAMILY: self.ws.settings.clip.resident_models}, settings.model_memory_mb * MB)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = (signal.signal(signal.SIGTERM, self._on_signal), signal.signal(signal.SIGINT, self._on_signal))
        started = 0
        cancelled_ours = False
        with self._only_worker():
            requests = None
            if self.request_handlers:
                max_body = self.ws.settings.max_upload_mb * 2**20
                requests = RequestServer(self.ws, self.request_handlers, max_body).start()
            self._write_status()
            beat = threading.Thread(target=self._beat, daemon=True, name="worker-beat")
            beat.start()
            log.info("worker %s serving %s", self.status.pid, self.ws.root)
            try:
                while True:
                    self._collect(on_job)
                    taking = not self._stop.is_set() and (max_jobs is None or started < max_jobs)
                    if not taking:
                        if self._signalled and not cancelled_ours:
                            for running in list(self._running):
                                self.manager.cancel(running)  # each stops after its items in flight
                            cancelled_ours = True
                        if not self._running:
                            break
                        time.sleep(0.1)
                        continue
                    job_id: int | None = None
                    if len(self._running) < max(1, settings.jobs_at_once):
                        models_busy = sum(self._running.values())
                        job_id = self.next_job(model_slot_free=models_busy < max(1, settings.model_jobs_at_once))
                    if job_id is None:
                        if not self._running and self._should_leave():
                            break
                        self._stop.wait(self.poll_seconds)
                        continue
                    holds_model = self._holds_model(self.manager.task_for_job(job_id).kind)
                    with self._running_lock:
                        self._running[job_id] = holds_model
                    started += 1
                    threading.Thread(target=self._run_job, args=(job_id,), name=f"job-{job_id}", daemon=True).start()
                    self._write_status()
            finally:
                if requests is not None:
                    requests.stop()
                self._gone.set()
                beat.join(timeout=5)
                self.status.beat_at = 0.0  # read as gone at once
                with self._running_lock:
                    self._running.clear()
                with contextlib.suppress(OSError):
                    write_atomic(worker_folder(self.ws) / "status.json", json.dumps(asdict(self.status)).encode())
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous[0])
                    signal.signal(signal.SIGINT, previous[1])
        return self.status.jobs_run

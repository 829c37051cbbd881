"""The workspace's long-lived worker: it runs the jobs handed to it in its own process, one after another, so
the models a job loads (CLIP per model and device, the OCR engines) are still loaded for the next job.

A job is handed over by marking its row (`worker_queued_at`); the catalog stays the record of jobs and items,
and `JobManager.run` runs a job here exactly as it does anywhere else (journal, heartbeat, cancel, resume). One
worker serves a workspace (a lock file); it writes its status (pid, beat, jobs run, model loads, resident
models) for Home and the CLI. A worker that is killed leaves its job `interrupted`; the next worker resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace, pid_alive, write_atomic
from services.jobs.manager import JobManager, JobProgress

log = logging.getLogger(__name__)

WORKER_QUEUED = "worker_queued_at"  # a job parameter: handed to the workspace's worker at (epoch seconds)
BEAT_SECONDS = 1.0
STALE_SECONDS = 10.0  # a status not written for this long is a worker that is gone


class WorkerBusyError(WorkbenchError):
    error_class = "worker_busy"
    http_status = 409


@dataclass
class WorkerStatus:
    """What a worker says about itself, rewritten every second."""

    pid: int
    host: str
    started_at: float
    beat_at: float
    jobs_run: int = 0
    model_loads: int = 0
    current_job: int | None = None
    resident: list[str] = field(default_factory=list)

    def is_alive(self, now: float | None = None) -> bool:
        if (now or time.time()) - self.beat_at > STALE_SECONDS:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)


def _folder(ws: Workspace) -> Any:
    folder = ws.root / "worker"
    folder.mkdir(exist_ok=True)
    return folder


def read_status(ws: Workspace) -> WorkerStatus | None:
    """The worker's last status, alive or not; None when no worker ever served this workspace."""
    try:
        data = json.loads((ws.root / "worker" / "status.json").read_text())
        return WorkerStatus(**data)
    except (OSError, ValueError, TypeError):
        return None


def live_worker(ws: Workspace) -> WorkerStatus | None:
    """The worker serving this workspace now, if any."""
    status = read_status(ws)
    return status if status is not None and status.is_alive() else None


def hand_to_worker(manager: JobManager, job_id: int) -> None:
    """Queue a job for the workspace's worker (it runs jobs in the order they were handed over)."""
    manager.update_params(job_id, {WORKER_QUEUED: time.time()})


def worker_queue(manager: JobManager) -> list[JobProgress]:
    """Jobs handed to the worker and not started yet, in the order it will run them."""
    rows = manager.catalog.query(
        f"""SELECT id FROM jobs WHERE state = 'created' AND json_extract(params, '$.{WORKER_QUEUED}') IS NOT NULL
            ORDER BY json_extract(params, '$.{WORKER_QUEUED}'), id"""
    )
    return [manager.progress(r["id"]) for r in rows]


def worker_summary(ws: Workspace) -> str:
    """One line on who runs handed jobs: the live worker (what it has run and holds), or that none does."""
    now = live_worker(ws)
    if now is None:
        last = read_status(ws)
        gone = f" (the last one, pid {last.pid}, stopped)" if last else ""
        return (
            f"No worker serves this workspace{gone}: each job runs in a process of its own and loads its models "
            "again. Start one with `workbench worker` (`make run` does)."
        )
    job = f", running job {now.current_job}" if now.current_job else ""
    return (
        f"Worker pid {now.pid} on {now.host}, up {_duration(time.time() - now.started_at)}: {now.jobs_run} jobs run, "
        f"{now.model_loads} model loads{job}; loaded: {', '.join(now.resident) or 'none'}"
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _model_counts() -> tuple[int, list[str]]:
    """Model loads in this process so far, and the models loaded now (CLIP, OCR engines)."""
    from services.io.clip_models import clip_load_count, resident_clips
    from services.stages.ocr.engines import engine_load_count, resident_engines

    return clip_load_count() + engine_load_count(), resident_clips() + resident_engines()


class Worker:
    """Serve one workspace until stopped: resume what a killed worker left, then run handed jobs in order."""

    def __init__(self, ws: Workspace, poll_seconds: float = 0.3, parent: int | None = None) -> None:
        self.ws = ws
        self.parent = parent  # the dashboard that started this worker: it leaves, idle, when that process ends
        self.manager = JobManager(ws)
        self.poll_seconds = poll_seconds
        self.status = WorkerStatus(os.getpid(), socket.gethostname(), time.time(), time.time())
        self._stop = threading.Event()
        self._signalled = False

    def stop(self) -> None:
        self._stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM or Ctrl+C: stop after the job running now (which stops after its items in flight)."""
        self._signalled = True
        self._stop.set()

    def _requeue_if_stopped_by_us(self, job_id: int, ended: JobProgress) -> None:
        """A job stopped because the worker was told to stop (not cancelled by a person) goes back to the front
        of the queue: the next worker resumes it."""
        if self._signalled and ended.state == "cancelled" and not ended.cancel_requested:
            with self.manager.catalog.write() as conn:
                conn.execute(
                    "UPDATE jobs SET state = 'created', pid = NULL, finished_at = NULL WHERE id = ? AND state = "
                    "'cancelled'",
                    (job_id,),
                )
            log.info("worker stopping: job %s goes back to the queue", job_id)

    @contextlib.contextmanager
    def _only_worker(self) -> Iterator[None]:
        lock = open(_folder(self.ws) / "worker.lock", "a+")  # noqa: SIM115 (held for the worker's life)
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
        self.status.model_loads, self.status.resident = _model_counts()
        write_atomic(_folder(self.ws) / "status.json", json.dumps(asdict(self.status)).encode())

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self._write_status()
            except OSError:
                log.warning("worker status could not be written", exc_info=True)

    def next_job(self) -> int | None:
        """A job a killed worker left running (it resumes first), else the oldest one handed over."""
        rows = self.manager.catalog.query(
            f"""SELECT id, state FROM jobs WHERE state IN ('created', 'running')
                AND json_extract(params, '$.{WORKER_QUEUED}') IS NOT NULL
                ORDER BY state = 'created', json_extract(params, '$.{WORKER_QUEUED}'), id"""
        )
        for row in rows:
            if row["state"] == "created" or self.manager.progress(row["id"]).state == "interrupted":
                return int(row["id"])
        return None

    def serve(self, max_jobs: int | None = None, on_job: Callable[[JobProgress], None] | None = None) -> int:
        """Run handed jobs until `stop()` (or `max_jobs` have run); returns how many ran."""
        from services.io.clip_models import set_resident_limit

        set_resident_limit(self.ws.settings.clip.resident_models)

        def handler(signum: int, frame: Any) -> None:
            self._on_signal(signum, frame)

        setattr(handler, "also_on_job_stop", True)  # noqa: B010 (a job's own handler passes the signal on)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = (signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGINT, handler))
        with self._only_worker():
            self._write_status()
            beat = threading.Thread(target=self._beat, daemon=True, name="worker-beat")
            beat.start()
            log.info("worker %s serving %s", self.status.pid, self.ws.root)
            try:
                while not self._stop.is_set() and (max_jobs is None or self.status.jobs_run < max_jobs):
                    job_id = self.next_job()
                    if job_id is None:
                        if self.parent is not None and not pid_alive(self.parent):
                            log.info("worker: the dashboard (pid %s) has stopped; so does its worker", self.parent)
                            break
                        if not self.ws.root.is_dir():
                            break  # the workspace was removed under it
                        self._stop.wait(self.poll_seconds)
                        continue
                    self.status.current_job = job_id
                    self._write_status()
                    try:
                        ended = self.manager.run(job_id)
                    except WorkbenchError as exc:  # claimed elsewhere meanwhile (`jobs run` at a shell): skip it
                        log.warning("worker: job %s not run: %s", job_id, exc)
                        ended = None
                    if ended is not None:
                        self._requeue_if_stopped_by_us(job_id, ended)
                    self.status.jobs_run += ended is not None
                    self.status.current_job = None
                    self._write_status()
                    self.manager.start_queued_page_jobs()
                    if ended is not None and on_job is not None:
                        on_job(ended)
            finally:
                self._stop.set()
                beat.join(timeout=5)
                self.status.beat_at = 0.0  # read as gone at once
                with contextlib.suppress(OSError):
                    write_atomic(_folder(self.ws) / "status.json", json.dumps(asdict(self.status)).encode())
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous[0])
                    signal.signal(signal.SIGINT, previous[1])
        return self.status.jobs_run

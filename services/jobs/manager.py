"""Long jobs as rows in the catalog: created, run (here or in a detached process), resumed, cancelled,
retried, with per-item status and progress that every page and CLI reads the same way.

A job's items live in `job_items`; a run takes the pending ones in `seq` order, hands them to its task, and
commits results in small batches. Workers also append each finished item to a journal file the moment it
is done, so a run killed with SIGKILL loses at most the items that were in flight: the next run replays the
journals first and never fetches a finished item again. A heartbeat row tells a live run from a dead one.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from services import APP_ROOT
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace, is_disk_full, pid_alive, remove_stale_temp_files
from services.jobs.job_context import RUNNING_JOB, JobLogFilter, in_job_context
from services.jobs.params import EXECUTOR_KEY, JobParams, check_params, stored_row
from services.jobs.worker_status import WORKER_QUEUED, live_worker

log = logging.getLogger(__name__)

TASKS: dict[str, str] = {
    "download_urls": "services.stages.download.urls:UrlDownloadTask",
    "download_s3": "services.stages.download.s3:S3DownloadTask",
    "import_folder": "services.stages.download.folder_import:FolderImportTask",
    "preprocess": "services.stages.preprocess.stage:PreprocessTask",
    "describe": "services.stages.describe.stage:DescribeTask",
    "categorize_csv": "services.stages.describe.csv_categorize:CsvCategorizeTask",
    "categorize_clip": "services.stages.describe.categorize_clip:CategorizeClipTask",
    "embed": "services.stages.embed.stage:EmbedTask",
    "train_tags": "services.stages.train.stage:TrainTask",
    "classify": "services.stages.classify.stage:ClassifyTask",
    "ocr": "services.stages.ocr.stage:OcrTask",
    "export": "services.stages.export.stage:ExportTask",
    "phash": "services.stages.explore.perceptual:PhashTask",
}
FINAL_STATES = ("completed", "cancelled", "failed")
PAGE_JOB = "from_page"  # a job parameter: started from a page, counted against page_jobs.max_running
PAGE_QUEUED = "page_queued_at"  # a job parameter: waiting for a page-job slot since (epoch seconds)
PAGE_START_GRACE_SECONDS = 60.0  # a page job counts as starting this long before its process claims it


def page_worker_limit(settings: Any) -> int:
    """The most worker processes a page may give one job: the machine's cores, or `page_jobs.max_workers` when
    that is lower (the CLI takes any number)."""
    cores = os.cpu_count() or 1
    configured = settings.page_jobs.max_workers
    return max(1, min(cores, configured) if configured else cores)


DISK_FULL = "disk_full"  # an item's failure class that stops any job (interrupted, items left pending)
_DISK_FULL_TEXT = ("[Errno 28]", "[Errno 122]", "No space left on device", "Disk quota exceeded", "disk is full")
STOP_REASON_BYTES = 4096


class JobError(WorkbenchError):
    """A job-level problem a user must act on (the message says how)."""

    error_class = "job"
    http_status = 409


class JobBusyError(JobError):
    error_class = "job_busy"
    http_status = 409


@dataclass
class ImageRecord:
    hash: str
    format: str
    nbytes: int
    width: int
    height: int
    path: str | None
    is_placeholder: bool = False


@dataclass
class ItemResult:
    key: str
    status: str  # ok | failed
    attempts: int = 1
    error_class: str | None = None
    error_message: str | None = None
    image: ImageRecord | None = None
    source: tuple[str, str] | None = None  # (kind, locator) recorded when ok
    derived: list[tuple[str, str, int, int]] = field(default_factory=list)  # (variant, relpath, w, h)
    result: dict[str, Any] | None = None
    image_hash: str | None = None  # the image this item is about, when it records no new image
    stages: list[tuple[str, str, str, dict[str, Any] | None, str | None]] = field(default_factory=list)
    # per-stage results (stage, settings_hash, status, result, error) for `image_hash`

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ItemResult:
        data = json.loads(line)
        image = ImageRecord(**data.pop("image")) if data.get("image") else None
        data.pop("image", None)
        source = tuple(data.pop("source")) if data.get("source") else None
        derived = [tuple(d) for d in data.pop("derived", [])]
        stages = [tuple(x) for x in data.pop("stages", [])]
        return cls(image=image, source=source, derived=derived, stages=stages, **data)

    @property
    def subject_hash(self) -> str | None:
        return self.image.hash if self.image else self.image_hash


@dataclass
class PendingItem:
    key: str
    locator: str | None
    attempts: int


@dataclass
class JobProgress:
    id: int
    kind: str
    title: str
    state: str  # created, running, interrupted, completed, cancelled, failed
    done: int
    failed: int
    total: int
    rate: float  # items per second in the current (or last) run
    eta_seconds: float | None
    created_at: float
    finished_at: float | None
    error: str | None
    log_path: str | None
    dataset_id: int | None
    params: dict[str, Any]
    cancel_requested: bool

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed)

    @property
    def fraction(self) -> float:
        return (self.done + self.failed) / self.total if self.total else 0.0

    @property
    def is_active(self) -> bool:
        return self.state == "running"


class RunContext:
    """What a task sees while it runs: where to report results and whether to stop."""

    def __init__(self, manager: JobManager, job_id: int, on_progress: Callable[[JobProgress], None] | None):
        self.manager = manager
        self.job_id = job_id
        self.stop_event = threading.Event()
        self.fatal_error: str | None = None
        self.fatal_class: str | None = None
        self._on_progress = on_progress
        self.journal_dir = manager.ws.job_dir(job_id)
        self.cancel_flag = self.journal_dir / "cancel"

    @property
    def stop_requested(self) -> bool:
        """Set by SIGTERM, Ctrl+C, a fatal item, or `cancel()` (seen here through the cancel flag file)."""
        if not self.stop_event.is_set() and self.cancel_flag.exists():
            self.stop_event.set()
        return self.stop_event.is_set()

    def report(self, results: list[ItemResult]) -> None:
        task = self.manager.task_for_job(self.job_id)
        fatal_classes = task.fatal_classes | {DISK_FULL}  # a full disk stops every kind of job
        results = [_mark_disk_full(r) for r in results]
        fatal = [r for r in results if r.status == "failed" and r.error_class in fatal_classes]
        keep = [r for r in results if not (r.status == "failed" and r.error_class in fatal_classes)]
        self.manager.apply_results(self.job_id, keep)
        if fatal and self.fatal_error is None:
            self.fatal_error = fatal[0].error_message or fatal[0].error_class
            self.fatal_class = fatal[0].error_class
            log.error("job %s stopped: %s", self.job_id, self.fatal_error)
            self.request_stop()
        if self._on_progress is not None:
            self._on_progress(self.manager.progress(self.job_id))

    def request_stop(self) -> None:
        self.stop_event.set()
        self.cancel_flag.touch()


class JobTask(Protocol):
    kind: ClassVar[str]
    params_model: ClassVar[type[JobParams]]  # what the job row's parameters hold (services/jobs/params.py)
    fatal_classes: ClassVar[frozenset[str]]
    sticky_classes: ClassVar[frozenset[str]]  # failures that retry-failed cannot fix (e.g. missing)
    holds_model: ClassVar[bool]  # loads a model (CLIP, OCR engines): the worker runs such jobs one at a time

    def prerequisite(self, params: dict[str, Any]) -> int | None: ...

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None: ...

    def process(
        self, ws: Workspace, job_id: int, params: dict[str, Any], items: Iterator[PendingItem], ctx: RunContext
    ) -> None: ...

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None: ...


class JobManager:
    """One per process (the dashboard keeps it in `st.cache_resource`); all state is in the catalog."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.catalog = ws.catalog
        self._tasks: dict[str, JobTask] = {}

    # --- creating and reading ------------------------------------------------------------------------

    def task(self, kind: str) -> JobTask:
        if kind not in self._tasks:
            if kind not in TASKS:
                raise JobError(f"unknown job kind {kind!r}; known: {', '.join(sorted(TASKS))}")
            module, _, name = TASKS[kind].partition(":")
            self._tasks[kind] = getattr(importlib.import_module(module), name)()
        return self._tasks[kind]

    def task_for_job(self, job_id: int) -> JobTask:
        return self.task(self._row(job_id)["kind"])

    def create(self, kind: str, title: str, params: JobParams | dict[str, Any], dataset_id: int | None = None) -> int:
        """A new job row from the kind's params model (a `start_*` builds it); refused now, not in the
        background, if the kind is unknown or a parameter is missing or wrong."""
        row = stored_row(self.task(kind).params_model, kind, params)
        with self.catalog.write() as conn:
            cur = conn.execute(
                """INSERT INTO jobs (kind, title, dataset_id, params, state, created_at)
                   VALUES (?, ?, ?, ?, 'created', ?)""",
                (kind, title, dataset_id, json.dumps(row), time.time()),
            )
            return int(cur.lastrowid or 0)

    def _row(self, job_id: int) -> Any:
        row = self.catalog.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job with id {job_id}")
        return row

    def params(self, job_id: int) -> dict[str, Any]:
        return dict(json.loads(self._row(job_id)["params"]))

    def progress(self, job_id: int) -> JobProgress:
        return self._progress_from_row(self._row(job_id))

    def list(self, limit: int = 50, active_only: bool = False) -> list[JobProgress]:
        rows = self.catalog.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        jobs = [self._progress_from_row(r) for r in rows]
        return [j for j in jobs if j.is_active] if active_only else jobs

    def _progress_from_row(self, row: Any) -> JobProgress:
        now = time.time()
        state = row["state"]
        if state == "running" and not self._is_live(row, now):
            state = "interrupted"
        done, failed, total = row["n_ok"], row["n_failed"], row["n_total"]
        rate, eta = 0.0, None
        if row["run_started_at"]:
            end = row["finished_at"] if row["state"] in FINAL_STATES and row["finished_at"] else now
            if state == "interrupted":
                end = row["heartbeat_at"] or end
            elapsed = max(1e-6, end - row["run_started_at"])
            rate = max(0, done + failed - row["run_done_at_start"]) / elapsed
            remaining = max(0, total - done - failed)
            eta = remaining / rate if rate > 0 and state == "running" else None
        return JobProgress(
            id=row["id"],
            kind=row["kind"],
            title=row["title"],
            state=state,
            done=done,
            failed=failed,
            total=total,
            rate=rate,
            eta_seconds=eta,
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            error=self._interrupted_error(row) if state == "interrupted" else row["error"],
            log_path=row["log_path"],
            dataset_id=row["dataset_id"],
            params=json.loads(row["params"]),
            cancel_requested=bool(row["cancel_requested"]),
        )

    def _interrupted_error(self, row: Any) -> str | None:
        """The stored cause, or the one a run left in its `stop-reason` file when the catalog was not writable."""
        if row["error"]:
            return str(row["error"])
        return _read_stop_reason(self.ws.root / "jobs" / str(row["id"]))

    def _is_live(self, row: Any, now: float) -> bool:
        if row["heartbeat_at"] is None or now - row["heartbeat_at"] > self.ws.settings.job_stale_seconds:
            return False
        if row["host"] == socket.gethostname() and row["pid"]:
            return pid_alive(int(row["pid"]))
        return True

    def failures(self, job_id: int, limit: int = 200) -> builtins.list[dict[str, Any]]:
        rows = self.catalog.query(
            """SELECT item_key, locator, error_class, error_message, attempts FROM job_items
               WHERE job_id = ? AND status = 'failed' ORDER BY seq LIMIT ?""",
            (job_id, limit),
        )
        return [dict(r) for r in rows]

    def failure_counts(self, job_id: int) -> dict[str, int]:
        rows = self.catalog.query(
            """SELECT error_class, COUNT(*) AS n FROM job_items WHERE job_id = ? AND status = 'failed'
               GROUP BY error_class ORDER BY n DESC""",
            (job_id,),
        )
        return {r["error_class"] or "unknown": r["n"] for r in rows}

    # --- items ---------------------------------------------------------------------------------------

    def add_items(self, job_id: int, items: Sequence[tuple[str, str | None]]) -> int:
        """Add (key, locator) items; keys already in the job are ignored (a URL is fetched once per job)."""
        with self.catalog.write() as conn:
            start = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM job_items WHERE job_id = ?", (job_id,))
            seq0 = int(start.fetchone()[0])
            before = conn.total_changes
            conn.executemany(
                """INSERT OR IGNORE INTO job_items (job_id, item_key, seq, locator, status)
                   VALUES (?, ?, ?, ?, 'pending')""",
                [(job_id, key, seq0 + i + 1, loc) for i, (key, loc) in enumerate(items)],
            )
            return conn.total_changes - before

    def mark_known(self, job_id: int, known: dict[str, str]) -> None:
        """Items whose source is already stored: done without a fetch (a URL is fetched once, ever)."""
        if not known:
            return
        with self.catalog.write() as conn:
            conn.executemany(
                """UPDATE job_items SET status = 'ok', image_hash = ?, result = '{"cached": true}',
                   updated_at = ? WHERE job_id = ? AND item_key = ? AND status = 'pending'""",
                [(h, time.time(), job_id, key) for key, h in known.items()],
            )

    def set_executor(self, job_id: int, url: str | None) -> None:
        """Run this job's chunks on a Dask cluster (`dask://host:port`), or locally (None)."""
        from services.jobs.executors import check_executor_url

        checked = check_executor_url(url)
        with self.catalog.write() as conn:
            row = conn.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
            params = json.loads(row["params"])
            if checked:
                params["executor"] = checked
            else:
                params.pop("executor", None)
            conn.execute("UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params), job_id))

    def update_params(self, job_id: int, values: dict[str, Any]) -> None:
        """Add options to a job's parameters (e.g. `raw_csv`); a resumed run sees them too."""
        with self.catalog.write() as conn:
            row = conn.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobError(f"no job with id {job_id}")
            params = {**json.loads(row["params"]), **values}
            conn.execute("UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params), job_id))

    def mark_failed(self, job_id: int, failures: dict[str, tuple[str, str]]) -> None:
        """Items refused while planning (e.g. a zip member with '..'): failed with the reason, never run."""
        with self.catalog.write() as conn:
            conn.executemany(
                """UPDATE job_items SET status = 'failed', error_class = ?, error_message = ?, updated_at = ?
                   WHERE job_id = ? AND item_key = ? AND status = 'pending'""",
                [(cls, msg, time.time(), job_id, key) for key, (cls, msg) in failures.items()],
            )

    def pending_items(self, job_id: int, page: int = 1000) -> Iterator[PendingItem]:
        """Pending items in dispatch order, read page by page so memory stays flat at any size."""
        last = 0
        while True:
            rows = self.catalog.query(
                """SELECT item_key, locator, attempts, seq FROM job_items
                   WHERE job_id = ? AND status = 'pending' AND seq > ? ORDER BY seq LIMIT ?""",
                (job_id, last, page),
            )
            if not rows:
                return
            for r in rows:
                yield PendingItem(r["item_key"], r["locator"], r["attempts"])
            last = rows[-1]["seq"]

    def apply_results(self, job_id: int, results: builtins.list[ItemResult]) -> None:
        """Record results of items still pending (so a journal replayed twice counts once)."""
        if not results:
            return
        now = time.time()
        n_ok = n_failed = 0
        with self.catalog.write() as conn:
            for r in results:
                still_pending = conn.execute(
                    "SELECT 1 FROM job_items WHERE job_id = ? AND item_key = ? AND status = 'pending'",
                    (job_id, r.key),
                ).fetchone()
                if still_pending is None:
                    continue
                # the image first: the catalog's triggers read it (a placeholder joins no dataset) when the item
                # turns ok below
                if r.image is not None:
                    img = r.image
                    self.catalog.record_image(
                        conn,
                        image_hash=img.hash,
                        fmt=img.format,
                        nbytes=img.nbytes,
                        width=img.width,
                        height=img.height,
                        path=img.path,
                        is_placeholder=img.is_placeholder,
                    )
                    if r.status == "ok" and r.source is not None:
                        self.catalog.record_source(conn, r.source[0], r.source[1], img.hash)
                conn.execute(
                    """UPDATE job_items SET status = ?, attempts = attempts + ?, error_class = ?,
                       error_message = ?, image_hash = ?, result = ?, updated_at = ?
                       WHERE job_id = ? AND item_key = ?""",
                    (
                        r.status,
                        r.attempts,
                        r.error_class,
                        r.error_message,
                        r.subject_hash,
                        json.dumps(r.result) if r.result else None,
                        now,
                        job_id,
                        r.key,
                    ),
                )
                subject = r.subject_hash
                if subject is not None:
                    for variant, relpath, w, h in r.derived:
                        self.catalog.record_derived(conn, subject, variant, relpath, w, h)
                    for stage, settings_hash, status, result, error in r.stages:
                        self.catalog.record_stage(conn, subject, stage, settings_hash, status, result, error)
                if r.status == "ok":
                    n_ok += 1
                else:
                    n_failed += 1
            conn.execute(
                "UPDATE jobs SET n_ok = n_ok + ?, n_failed = n_failed + ?, heartbeat_at = ? WHERE id = ?",
                (n_ok, n_failed, now, job_id),
            )

    def recount(self, job_id: int) -> None:
        with self.catalog.write() as conn:
            conn.execute(
                """UPDATE jobs SET
                     n_total = (SELECT COUNT(*) FROM job_items WHERE job_id = :id),
                     n_ok = (SELECT COUNT(*) FROM job_items WHERE job_id = :id AND status = 'ok'),
                     n_failed = (SELECT COUNT(*) FROM job_items WHERE job_id = :id AND status = 'failed')
                   WHERE id = :id""",
                {"id": job_id},
            )

    def _replay_journals(self, job_id: int) -> int:
        replayed = 0
        for path in sorted(self.ws.job_dir(job_id).glob("journal-*.jsonl")):
            results = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    result = _mark_disk_full(ItemResult.from_json(line))
                except (ValueError, TypeError, KeyError):
                    continue  # a line cut by the kill; that item is simply run again
                if result.error_class != DISK_FULL:  # not the item's fault: it stays pending
                    results.append(result)
            for start in range(0, len(results), 500):
                self.apply_results(job_id, results[start : start + 500])
            replayed += len(results)
            path.unlink()
        return replayed

    # --- running -------------------------------------------------------------------------------------

    def run(
        self,
        job_id: int,
        on_progress: Callable[[JobProgress], None] | None = None,
        executor: Executor | None = None,
    ) -> JobProgress:
        """Run (or resume) a job in this process until it completes, is cancelled, fails or is interrupted.

        A full disk interrupts the job: items not yet recorded stay pending (none is marked failed for it),
        the cause is stored, and `jobs resume` continues once space is freed. If even the final UPDATE cannot
        be written, the row keeps `running` with this process's pid, which reads as `interrupted` once the
        process is gone; the cause then comes from the job's `stop-reason` file, reserved when the run began."""
        self._claim(job_id)
        claimed_at = time.time()
        job_dir = self.ws.job_dir(job_id)
        running_job = RUNNING_JOB.set(job_id)  # this run's log lines, in this thread and those it starts
        ctx = RunContext(self, job_id, on_progress)
        stop_heartbeat = threading.Event()
        beat = threading.Thread(target=in_job_context(self._heartbeat), args=(job_id, ctx, stop_heartbeat), daemon=True)
        beat.start()
        previous_sigterm = _install_sigterm(ctx)
        handler: logging.Handler | None = None
        state: str = "failed"
        error: str | None = "the run ended unexpectedly"
        release_executor: Callable[[], None] | None = None
        try:
            _reserve_stop_reason(job_dir)
            row = self._row(job_id)
            handler = self._open_log(job_id, row["kind"])
            task = self.task(row["kind"])
            params = json.loads(row["params"])
            check_params(task.params_model, row["kind"], params, new=False)  # a row that cannot run says why
            removed = remove_stale_temp_files(self.ws.root, claimed_at, _output_folders(params))
            if removed:
                log.info("job %s: removed %d temporary files left by killed runs", job_id, len(removed))
            replayed = self._replay_journals(job_id)
            if replayed:
                log.info("job %s: replayed %d journaled results from an earlier run", job_id, replayed)
            if not row["planned"]:
                self._complete_prerequisite(job_id, task.prerequisite(params))
                task.plan(self.ws, job_id, params)
                self.catalog.conn.execute("UPDATE jobs SET planned = 1 WHERE id = ?", (job_id,))
            self.recount(job_id)
            self.catalog.conn.execute("UPDATE jobs SET run_done_at_start = n_ok + n_failed WHERE id = ?", (job_id,))
            log.info("job %s (%s) running: %s", job_id, row["kind"], row["title"])
            if executor is None and params.get("executor"):  # a Dask cluster named when the job was made
                from services.jobs.executors import executor_from_url

                executor, release_executor = executor_from_url(params["executor"])
            if executor is not None:
                params = {**params, EXECUTOR_KEY: executor}
            task.process(self.ws, job_id, params, self.pending_items(job_id), ctx)
            self.recount(job_id)
            left = self.progress(job_id).pending
            if ctx.fatal_error and ctx.fatal_class == DISK_FULL:
                state, error = "interrupted", _disk_full_error(self.ws.root, job_id, ctx.fatal_error)
            elif ctx.fatal_error:
                state, error = "failed", ctx.fatal_error
            elif ctx.stop_requested:
                state, error = "cancelled", None
            elif left:
                state, error = "failed", f"{left} items were left unprocessed; resume the job to run them"
            else:
                task.finish(self.ws, job_id, params)
                state, error = "completed", None
        except KeyboardInterrupt:
            state, error = "cancelled", None
            raise
        except Exception as exc:
            if is_disk_full(exc):
                log.error("job %s interrupted: disk full", job_id, exc_info=True)
                state, error = "interrupted", _disk_full_error(self.ws.root, job_id, f"{exc.__class__.__name__}: {exc}")
            else:
                log.exception("job %s failed", job_id)
                state, error = "failed", f"{exc.__class__.__name__}: {exc}"
        finally:
            if release_executor is not None:
                release_executor()
            stop_heartbeat.set()
            beat.join(timeout=5)
            _restore_sigterm(previous_sigterm)
            unrecorded = self._record_end(job_id, state, error)
            if unrecorded is None and state in ("completed", "cancelled"):
                for path in job_dir.glob("journal-*.jsonl"):
                    path.unlink()  # every line is in the catalog now
            ctx.cancel_flag.unlink(missing_ok=True)
            log.info("job %s %s%s", job_id, state, f": {error}" if error else "")
            if handler is not None:
                logging.getLogger("services").removeHandler(handler)
                handler.close()
                for job_filter in handler.filters:
                    if isinstance(job_filter, JobLogFilter):
                        job_filter.close()
            RUNNING_JOB.reset(running_job)
        progress = self.progress(job_id)
        if unrecorded is not None:  # the row still says running (this process is alive); say what happened
            progress = dataclasses.replace(progress, state="interrupted", error=unrecorded)
        try:  # a slot for page jobs may have opened: start the next queued one
            self.start_queued_page_jobs()
        except Exception:  # never the reason a finished job reports a failure
            log.warning("could not start queued page jobs after job %s", job_id, exc_info=True)
        return progress

    def _complete_prerequisite(self, job_id: int, prerequisite: int | None) -> None:
        """A job this one depends on (a job of its own: its row, items and log) is run here first unless it has
        completed; a prerequisite that ends otherwise stops this run with its state and error."""
        if prerequisite is None or self.progress(prerequisite).state == "completed":
            return
        log.info("job %s: running job %s first (its output is this job's input)", job_id, prerequisite)
        done = self.run(prerequisite)
        if done.state != "completed":
            raise JobError(f"job {job_id} needs job {prerequisite}, which ended {done.state}: {done.error or ''}")

    def _open_log(self, job_id: int, kind: str) -> logging.Handler:
        stamp = time.strftime("%Y%m%d_%H%M%S")
        log_path = self.ws.root / "logs" / f"{kind.split('_')[0]}_{stamp}_job{job_id}.log"
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(JobLogFilter(job_id))  # jobs run side by side in the worker: each log its own lines
        logging.getLogger("services").addHandler(handler)
        logging.getLogger("services").setLevel(logging.INFO)
        self.catalog.conn.execute("UPDATE jobs SET log_path = ? WHERE id = ?", (str(log_path), job_id))
        return handler

    def _record_end(self, job_id: int, state: str, error: str | None) -> str | None:
        """Store how the run ended. When the catalog cannot be written (a full disk) the cause goes into the
        reserved `stop-reason` file instead, the row reads as interrupted once this process is gone, and the
        cause is returned."""
        try:
            with self.catalog.write() as conn:
                conn.execute(
                    """UPDATE jobs SET state = ?, error = ?, finished_at = ?, heartbeat_at = ?, pid = NULL
                       WHERE id = ?""",
                    (state, error, time.time(), time.time(), job_id),
                )
            return None
        except (sqlite3.Error, OSError) as exc:
            log.error("job %s: could not record its end (%s: %s)", job_id, state, error, exc_info=True)
            if state == "interrupted" and error:
                reason = error
            else:
                ended = f"the run ended {state}{f' ({error})' if error else ''} but the catalog could not record it"
                reason = _disk_full_error(self.ws.root, job_id, f"{ended}: {exc.__class__.__name__}: {exc}")
            _write_stop_reason(self.ws.root / "jobs" / str(job_id), reason)
            return reason

    def _claim(self, job_id: int) -> None:
        with self.catalog.write() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobError(f"no job with id {job_id}")
            if row["state"] == "running" and self._is_live(row, time.time()):
                raise JobBusyError(f"job {job_id} is already running (pid {row['pid']} on {row['host']})")
            now = time.time()
            params = json.loads(row["params"])
            if params.pop(PAGE_QUEUED, None) is not None:  # started some other way (the CLI): no longer queued
                conn.execute("UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params), job_id))
            conn.execute(
                """UPDATE jobs SET state = 'running', pid = ?, host = ?, heartbeat_at = ?, run_started_at = ?,
                   cancel_requested = 0, error = NULL, finished_at = NULL WHERE id = ?""",
                (os.getpid(), socket.gethostname(), now, now, job_id),
            )
        (self.ws.job_dir(job_id) / "cancel").unlink(missing_ok=True)

    def _heartbeat(self, job_id: int, ctx: RunContext, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            try:
                self.catalog.conn.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time(), job_id))
                if self.catalog.scalar("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)):
                    ctx.request_stop()
            except Exception:  # a busy database must not kill the job; the next beat tries again
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)
        self.catalog.close()

    def start_background(self, job_id: int, *, via_worker: bool = True) -> int:
        """Run the job away from the caller, surviving the browser tab and the dashboard: handed to the
        workspace's worker when one serves it (its models stay loaded between jobs), else (or with
        `via_worker=False`) in a detached process of its own. Returns the pid of the process that will run it."""
        progress = self.progress(job_id)
        if progress.state == "running":
            raise JobBusyError(f"job {job_id} is already running")
        worker = live_worker(self.ws) if via_worker else None
        if worker is not None:
            self.hand_to_worker(job_id)
            return worker.pid
        out = self.ws.root / "logs" / f"runner-{job_id}.out"
        with open(out, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services", "--workspace", str(self.ws.root), "jobs", "run", str(job_id)],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(APP_ROOT),
            )
        return proc.pid

    def hand_to_worker(self, job_id: int) -> None:
        """Queue a job for the workspace's worker (it runs jobs in the order they were handed over). A job that
        ended (Resume or Retry of a cancelled, failed or completed one) is `created` again: queued, not yet run."""
        self.update_params(job_id, {WORKER_QUEUED: time.time()})
        with self.catalog.write() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'created', pid = NULL WHERE id = ? AND state IN ('cancelled', 'failed', "
                "'interrupted', 'completed')",
                (job_id,),
            )

    def worker_queue(self) -> builtins.list[JobProgress]:
        """Jobs handed to the worker and not started yet, in the order it will run them."""
        rows = self.catalog.query(
            f"""SELECT id FROM jobs WHERE state = 'created' AND json_extract(params, '$.{WORKER_QUEUED}') IS NOT NULL
                ORDER BY json_extract(params, '$.{WORKER_QUEUED}'), id"""
        )
        return [self.progress(r["id"]) for r in rows]

    # --- jobs started from pages: a server-wide limit (the CLI is never held back) ----------------------

    def start_from_page(self, job_id: int) -> bool:
        """Start a job a page made, detached, unless `page_jobs.max_running` jobs started from pages are
        running or starting already: then it is queued (it stays `created`, nothing is lost) and starts by
        itself when one of them ends. True when it started now. Counting and reserving happen in one write
        transaction, so sessions clicking at once cannot pass the limit together."""
        limit = max(1, self.ws.settings.page_jobs.max_running)
        with self.catalog.write() as conn:
            row = conn.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobError(f"no job with id {job_id}")
            params = {**json.loads(row["params"]), PAGE_JOB: True}
            if self._page_jobs_busy(conn, job_id) >= limit:
                params.setdefault(PAGE_QUEUED, time.time())
                conn.execute("UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params), job_id))
                return False
            params.pop(PAGE_QUEUED, None)
            self._reserve(conn, job_id, params)
        self.start_background(job_id)
        return True

    def start_queued_page_jobs(self) -> builtins.list[int]:
        """Start queued page jobs, oldest first, while fewer than `page_jobs.max_running` run; their ids."""
        waiting = "state = 'created' AND json_extract(params, '$.page_queued_at') IS NOT NULL"
        if self.catalog.scalar(f"SELECT COUNT(*) FROM jobs WHERE {waiting}") == 0:  # the usual case: no lock
            return []
        limit = max(1, self.ws.settings.page_jobs.max_running)
        started: builtins.list[int] = []
        while True:
            with self.catalog.write() as conn:
                if self._page_jobs_busy(conn) >= limit:
                    break
                row = conn.execute(
                    f"SELECT id, params FROM jobs WHERE {waiting} ORDER BY json_extract(params, '$.page_queued_at'), id"
                ).fetchone()
                if row is None:
                    break
                params = json.loads(row["params"])
                params.pop(PAGE_QUEUED, None)
                self._reserve(conn, row["id"], params)
            self.start_background(row["id"])
            started.append(row["id"])
        return started

    def page_jobs_busy(self) -> int:
        """Jobs started from pages that are running or starting now."""
        return self._page_jobs_busy(self.catalog.conn)

    def _page_jobs_busy(self, conn: sqlite3.Connection, exclude: int | None = None) -> int:
        rows = conn.execute(
            """SELECT * FROM jobs WHERE state IN ('running', 'created') AND id != ?
               AND json_extract(params, '$.from_page') = 1""",
            (exclude if exclude is not None else -1,),
        ).fetchall()
        now = time.time()
        busy = 0
        for row in rows:
            if row["state"] == "running":
                busy += self._is_live(row, now)
            elif row["heartbeat_at"] is not None and now - row["heartbeat_at"] < PAGE_START_GRACE_SECONDS:
                busy += 1  # started a moment ago: its process has not claimed it yet
        return busy

    @staticmethod
    def _reserve(conn: sqlite3.Connection, job_id: int, params: dict[str, Any]) -> None:
        """Count a job as starting (heartbeat_at on a created job) until its process claims it."""
        conn.execute(
            "UPDATE jobs SET params = ?, heartbeat_at = ? WHERE id = ?", (json.dumps(params), time.time(), job_id)
        )

    def cancel(self, job_id: int) -> JobProgress:
        """Ask a running job to stop after the items in flight; a job not running is marked cancelled."""
        progress = self.progress(job_id)
        with self.catalog.write() as conn:
            if progress.state == "running":
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                (self.ws.job_dir(job_id) / "cancel").touch()
            elif progress.state in ("created", "interrupted", "failed"):
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, pid = NULL WHERE id = ?",
                    (time.time(), job_id),
                )
        return self.progress(job_id)

    def retryable_failures(self, job_id: int) -> int:
        """Failed items that `reset_failed` would queue again (not those of classes no retry can fix)."""
        sticky = self.task_for_job(job_id).sticky_classes
        return sum(n for cls, n in self.failure_counts(job_id).items() if cls not in sticky)

    def reset_failed(self, job_id: int) -> int:
        """Make failed items pending again (not those no retry can fix); returns how many."""
        task = self.task_for_job(job_id)
        if self.progress(job_id).state == "running":
            raise JobBusyError(f"job {job_id} is running; cancel it or wait before retrying its failures")
        sticky = sorted(task.sticky_classes)
        marks = ",".join("?" * len(sticky)) or "''"
        with self.catalog.write() as conn:
            cur = conn.execute(
                f"""UPDATE job_items SET status = 'pending', error_class = NULL, error_message = NULL,
                    image_hash = NULL, result = NULL
                    WHERE job_id = ? AND status = 'failed' AND COALESCE(error_class, '') NOT IN ({marks})""",
                (job_id, *sticky),
            )
            conn.execute("UPDATE jobs SET state = 'created', finished_at = NULL WHERE id = ?", (job_id,))
            count = cur.rowcount
        self.recount(job_id)
        return count

    def wait(self, job_id: int, timeout: float = 600.0, poll: float = 0.2) -> JobProgress:
        """Block until the job is no longer running (for the CLI's `--wait` and for tests)."""
        deadline = time.time() + timeout
        while True:
            progress = self.progress(job_id)
            if progress.state in FINAL_STATES or progress.state == "interrupted":
                return progress
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {progress.state} after {timeout}s")
            time.sleep(poll)


class Journal:
    """Append-only per-process file of finished items: each line is written the moment an item is done,
    so a run killed with SIGKILL loses only the items in flight."""

    def __init__(self, job_dir: Path | str) -> None:
        Path(job_dir).mkdir(parents=True, exist_ok=True)
        path = Path(job_dir) / f"journal-{os.getpid()}.jsonl"
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.cancel_flag = Path(job_dir) / "cancel"

    def write(self, result: ItemResult) -> None:
        os.write(self.fd, (result.to_json() + "\n").encode("utf-8"))

    @property
    def cancelled(self) -> bool:
        return self.cancel_flag.exists()

    def close(self) -> None:
        os.close(self.fd)


def dispatch_chunks(
    items: Iterator[PendingItem],
    submit: Callable[[list[PendingItem]], Future[list[ItemResult]]],
    ctx: RunContext,
    chunk_size: int,
    max_in_flight: int,
) -> None:
    """Feed chunks of items to an executor with a bounded number in flight, reporting as chunks finish."""
    in_flight: set[Future[list[ItemResult]]] = set()
    exhausted = False
    while True:
        while not exhausted and not ctx.stop_requested and len(in_flight) < max_in_flight:
            chunk = list(itertools.islice(items, chunk_size))
            if not chunk:
                exhausted = True
                break
            in_flight.add(submit(chunk))
        if not in_flight:
            return
        done, in_flight = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
        for fut in done:
            ctx.report(fut.result())


def _install_sigterm(ctx: RunContext) -> Any:
    """SIGTERM and a first Ctrl+C stop the run cleanly after the items in flight (resumable)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))

    def on_interrupt(signum: int, frame: Any) -> None:
        if ctx.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        ctx.request_stop()

    signal.signal(signal.SIGTERM, on_interrupt)
    signal.signal(signal.SIGINT, on_interrupt)
    return previous


def _restore_sigterm(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _mark_disk_full(result: ItemResult) -> ItemResult:
    """A failure caused by a full disk (whatever class the worker gave it) is `disk_full`: not the item's fault."""
    if result.status == "failed" and result.error_class != DISK_FULL:
        text = f"{result.error_class or ''} {result.error_message or ''}"
        if any(marker in text for marker in _DISK_FULL_TEXT):
            return dataclasses.replace(result, error_class=DISK_FULL)
    return result


def _disk_full_error(root: Path, job_id: int, detail: str) -> str:
    return (
        f"disk full ({detail}); free space where {root} is, then `python -m services jobs resume {job_id}` continues it"
    )


def _output_folders(params: dict[str, Any]) -> list[Path]:
    """Where a job writes outside the workspace (`out`): searched for its temporary files too."""
    out = params.get("out")
    if not out:
        return []
    path = Path(out)
    return [path] if path.is_dir() else [path.parent]


def _reserve_stop_reason(job_dir: Path) -> None:
    """Allocate the `stop-reason` file now, so the cause of a stop can be written even on a full disk
    (overwriting allocated blocks needs no new space on ext4, xfs and tmpfs)."""
    try:
        with open(job_dir / "stop-reason", "wb") as fh:
            fh.write(b"\0" * STOP_REASON_BYTES)
    except OSError:
        log.warning("could not reserve %s", job_dir / "stop-reason", exc_info=True)


def _write_stop_reason(job_dir: Path, reason: str) -> None:
    data = reason.encode("utf-8")[:STOP_REASON_BYTES]
    try:
        fd = os.open(job_dir / "stop-reason", os.O_WRONLY)
    except OSError:
        return
    try:
        os.pwrite(fd, data + b"\0" * (STOP_REASON_BYTES - len(data)), 0)
    except OSError:
        log.error("could not write the stop reason of %s", job_dir, exc_info=True)
    finally:
        os.close(fd)


def _read_stop_reason(job_dir: Path) -> str | None:
    try:
        text = (job_dir / "stop-reason").read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None

"""What the workspace's worker says about itself (`worker/status.json`, rewritten every second), read by the job
manager (hand a job over only while a worker is alive), Home and `worker --status`. No import of the manager or the
worker: both import this."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.core.workspace import Workspace, pid_alive

WORKER_QUEUED = "worker_queued_at"  # a job parameter: handed to the workspace's worker at (epoch seconds)
STALE_SECONDS = 10.0  # a status not written for this long is a worker that is gone


@dataclass
class WorkerStatus:
    """What a worker says about itself, rewritten every second."""

    pid: int
    host: str
    started_at: float
    beat_at: float
    jobs_run: int = 0
    model_loads: int = 0
    current_jobs: list[int] = field(default_factory=list)
    resident: list[str] = field(default_factory=list)

    def is_alive(self, now: float | None = None) -> bool:
        if (now or time.time()) - self.beat_at > STALE_SECONDS:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)


def worker_folder(ws: Workspace) -> Path:
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
    jobs = ", ".join(str(j) for j in now.current_jobs)
    job = f", running job{'s' if len(now.current_jobs) > 1 else ''} {jobs}" if now.current_jobs else ""
    return (
        f"Worker pid {now.pid} on {now.host}, up {_duration(time.time() - now.started_at)}: {now.jobs_run} jobs run, "
        f"{now.model_loads} model loads{job}; loaded: {', '.join(now.resident) or 'none'}"
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

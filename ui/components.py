"""Widgets shared by pages: the live job panel, job tables, formatting."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from services.core.errors import WorkbenchError
from services.core.settings import Settings
from services.core.workspace import Workspace
from services.jobs.manager import PAGE_QUEUED, JobBusyError, JobError, JobManager, JobProgress, page_worker_limit
from services.stages.download.urls import labelled_csv_path
from services.stages.explore.saved_views import SavedView
from ui.errors import show_error
from ui.page_state import BIND
from ui.server_path import display_locators, display_path
from ui.text import code, md

if TYPE_CHECKING:
    from streamlit.runtime.uploaded_file_manager import UploadedFile

STATE_ICONS = {
    "created": ":material/schedule:",
    "running": ":material/progress_activity:",
    "interrupted": ":material/warning:",
    "completed": ":material/check_circle:",
    "cancelled": ":material/cancel:",
    "failed": ":material/error:",
}


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {(seconds % 3600) // 60}m"


def jobs_frame(jobs: list[JobProgress]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": j.id,
                "job": j.title,
                "state": j.state,
                "progress": j.fraction,
                "ok": j.done,
                "failed": j.failed,
                "total": j.total,
                "rate /s": round(j.rate, 1),
                "ETA": format_seconds(j.eta_seconds),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at)),
            }
            for j in jobs
        ]
    )


def jobs_table(jobs: list[JobProgress], key: str) -> None:
    if not jobs:
        st.caption("No jobs yet.")
        return
    st.dataframe(
        jobs_frame(jobs),
        hide_index=True,
        key=key,
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
    )


def _act(label: str, action: Callable[[int], object], job_id: int) -> None:
    try:
        action(job_id)
    except (JobBusyError, JobError) as exc:
        st.error(f"{label}: {md(exc)}")
        return
    st.rerun()


def job_panel(manager: JobManager, job_id: int) -> None:
    """Live progress of one job, refreshed every second while it runs, with cancel / resume / retry."""
    initial = manager.progress(job_id)
    every = 1.0 if initial.state in ("running", "created") else None

    @st.fragment(run_every=every)
    def _panel() -> None:
        p = manager.progress(job_id)
        shown_state, icon = p.state, STATE_ICONS.get(p.state, "")
        if p.state == "completed" and p.failed and not p.done:  # finished, but nothing came of it
            shown_state, icon = "completed: every item failed", ":material/error:"
        elif p.state == "completed" and p.failed:
            shown_state, icon = f"completed with {p.failed:,} failed", ":material/warning:"
        st.markdown(f"**Job {p.id}** · {md(p.title)} · {icon} `{shown_state}`")
        st.progress(p.fraction, text=f"{p.done + p.failed:,} of {p.total:,} items")
        cols = st.columns(5)
        cols[0].metric("ok", f"{p.done:,}")
        cols[1].metric("failed", f"{p.failed:,}")
        cols[2].metric("total", f"{p.total:,}")
        cols[3].metric("rate", f"{p.rate:.1f}/s" if p.rate > 0 else "-")  # "-": nothing new was processed
        cols[4].metric("ETA", format_seconds(p.eta_seconds))
        if p.error:
            st.error(md(p.error))
        elif p.state == "completed" and p.failed and not p.done:
            st.warning(f"All {p.failed:,} items failed; the failure classes below say why.", icon=":material/error:")
        if p.state == "interrupted":
            st.warning("This job stopped without finishing (its process is gone). Resume continues where it left off.")
        if p.state == "created" and p.params.get(PAGE_QUEUED):
            manager.start_queued_page_jobs()  # a slot may have opened while no job process was there to see it
            st.info(f"Queued: {queued_reason(manager)}.", icon=":material/schedule:")
        buttons = st.columns(4)
        if p.state == "running":
            if buttons[0].button("Cancel", key=f"cancel-{job_id}", icon=":material/stop:"):
                manager.cancel(job_id)
                st.toast(f"Job {job_id} will stop after the items in flight.")
        elif p.state in ("interrupted", "cancelled", "failed", "created") and p.pending:
            if buttons[0].button("Resume", key=f"resume-{job_id}", icon=":material/play_arrow:"):
                _act("Resume", manager.start_from_page, job_id)
        retryable = manager.retryable_failures(job_id) if p.failed and p.state != "running" else 0
        if retryable:  # failures no retry can fix (a refused zip member, not an image) are not offered
            if buttons[1].button(f"Retry {retryable:,} failed", key=f"retry-{job_id}", icon=":material/replay:"):
                _act("Retry", lambda j: (manager.reset_failed(j), manager.start_from_page(j)), job_id)
        if p.state in ("running", "created") and every is None:
            st.rerun()
        if p.failed:
            counts = manager.failure_counts(job_id)
            st.caption("Failures by class: " + ", ".join(f"{md(k)} {v:,}" for k, v in counts.items()))
            failures = pd.DataFrame(manager.failures(job_id, limit=200))
            if "locator" in failures:  # no server paths on a team server
                kept = [loc if isinstance(loc, str) else None for loc in failures["locator"]]  # None reads as NaN
                failures["locator"] = display_locators(manager.ws, kept)
            st.dataframe(failures, hide_index=True, key=f"fail-{job_id}")
        if p.state == "completed" and p.kind.startswith("download"):
            path = labelled_csv_path(manager.ws, job_id, p.params)
            if Path(path).is_file() and Path(path).stat().st_size > 50 * 1024 * 1024:
                shown = display_path(manager.ws, path)
                st.caption(f"Labelled CSV written to {code(shown)} (too large to offer for download here).")
            elif Path(path).is_file():
                st.download_button(
                    "Labelled CSV",
                    data=Path(path).read_bytes(),
                    file_name=Path(path).name,
                    mime="text/csv",
                    key=f"csv-{job_id}",
                    icon=":material/download:",
                )
                st.caption(f"Written to {code(display_path(manager.ws, path))}")
        if p.log_path:
            st.caption(f"Log: {code(display_path(manager.ws, p.log_path))}")
        if every is not None and p.state not in ("running", "created"):
            st.rerun()

    _panel()


def save_upload(ws: Workspace, upload: UploadedFile) -> Path:
    """Stream an upload to `uploads/` once (reruns reuse the file); the name is sanitised by the workspace and
    cut to fit a file system (a 5,000-character name failed with ENAMETOOLONG). The size limit is enforced
    by the server before the file gets here (ui/upload_gate.py, settings.max_upload_mb)."""
    original = Path(upload.name)
    name = f"{original.stem[:100]}{original.suffix[:16]}"
    path = ws.upload_path(f"{upload.file_id[:12]}_{name}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")  # the pid: a killed run's leftover is swept
        upload.seek(0)
        with open(tmp, "wb") as fh:
            shutil.copyfileobj(upload, fh, 8 * 2**20)
        tmp.replace(path)
    return path


def launch(manager: JobManager, job_id: int) -> bool:
    """Start a job detached, on the Dask cluster chosen in the sidebar when there is one, or queue it when the
    server already runs `page_jobs.max_running` jobs started from pages (it then starts when one ends). Says
    which in a toast; True when it started now."""
    executor = st.session_state.get("executor-url")
    if executor:
        manager.set_executor(job_id, executor)
    if manager.start_from_page(job_id):
        st.toast(f"Job {job_id} started")
        return True
    st.toast(f"Job {job_id} queued: {queued_reason(manager)}", icon=":material/schedule:")
    return False


def queued_reason(manager: JobManager) -> str:
    limit = manager.ws.settings.page_jobs.max_running
    return (
        f"{manager.page_jobs_busy()} jobs started from pages are running, at most {limit} at once on this server "
        "(setting page_jobs.max_running); it starts by itself when one ends"
    )


def workers_input(ws: Workspace, label: str, default: int, key: str, container: DeltaGenerator | None = None) -> int:
    """Worker processes for a job started from a page: at most the machine's cores (or the lower
    `page_jobs.max_workers`), so no page can start more processes than the server has cores for one job."""
    limit = page_worker_limit(ws.settings)
    widget = container.number_input if container is not None else st.number_input
    chosen = widget(label, 0, limit, min(default, limit), bind=BIND, key=key,
                    help=f"At most {limit} on this server (its cores, or the setting page_jobs.max_workers); "
                    "0 runs in the job's own process.")  # fmt: skip
    return min(int(chosen or 0), limit)


def executor_setting() -> None:
    """The sidebar's 'Run jobs on': local or a Dask scheduler for the shardable stages. On a server with
    sign-in, only the schedulers an administrator lists in `dask_schedulers` are offered (a typed address
    would let any signed-in user make the server connect anywhere); an open workbench takes any address."""
    from services.core.auth import sign_in_required
    from services.core.settings import load_settings
    from services.jobs.executors import ExecutorError, check_page_executor, listed_schedulers
    from ui.auth import _oidc_configured

    settings = load_settings()
    restricted = sign_in_required(settings) or _oidc_configured()
    try:
        if restricted:
            listed = listed_schedulers(settings.dask_schedulers)
            value = st.sidebar.selectbox(
                "Run jobs on",
                ["local", *listed],
                bind=BIND,
                key="executor-choice",
                help="local, or a Dask scheduler an administrator listed in the dask_schedulers setting",
            )
        else:
            hint = "local, or dask://HOST:PORT for download, preprocess, embed and classify"
            value = st.sidebar.text_input("Run jobs on", value="local", bind=BIND, key="executor-input", help=hint)
        st.session_state["executor-url"] = check_page_executor(value, settings.dask_schedulers, restricted)
    except ExecutorError as exc:
        st.session_state["executor-url"] = None
        st.sidebar.error(md(exc))  # it quotes what was typed


def s3_endpoint_input(settings: Settings, label: str, key: str, column: Any = st) -> tuple[str | None, bool]:
    """An S3 endpoint text input: (endpoint or None for AWS, whether requests to it carry the server's AWS
    credentials). On a server with sign-in only an endpoint an administrator lists (`s3_endpoints`,
    `download.s3_endpoint_url`) is signed for: any other is read anonymously, so a typed host never receives
    the key id or the session token (services.io.s3_client.endpoint_is_signed)."""
    from services.io.s3_client import endpoint_is_signed, listed_endpoints
    from ui.auth import sign_in_configured

    restricted = sign_in_configured(settings)
    help_text = None
    if restricted:
        listed = listed_endpoints(settings)
        shown = ", ".join(listed) if listed else "none"
        help_text = (
            f"With the server's AWS credentials: AWS (leave empty) and the administrator's endpoints ({shown}). "
            "Any other endpoint is read anonymously: public buckets only."
        )
    endpoint = column.text_input(
        label, value=settings.download.s3_endpoint_url or "", bind=BIND, key=key, help=help_text
    )
    endpoint = endpoint.strip() or None
    signed = endpoint_is_signed(settings, endpoint, restricted)
    if not signed:
        column.caption(
            ":material/lock_open: Not an endpoint the administrator lists (`s3_endpoints`): it is read without "
            "the server's credentials, so only a public bucket works."
        )
    return endpoint, signed


def save_view_form(prefix: str, what: str, save: Callable[[str, str], SavedView]) -> None:
    """Save a selection as a new dataset (a saved view) that every stage takes."""
    with st.popover("Save as a dataset", icon=":material/bookmark_add:"):
        st.caption(f"A new dataset of {md(what)}: the same stored images (nothing is copied), with their tags "
                   "and input rows, for every stage (embed, classify, describe, OCR, compare, export).")  # fmt: skip
        name = st.text_input("Dataset name", max_chars=120, key=f"{prefix}-view-name")
        kind = st.selectbox("Kind", ["view", "REAL", "GEN", "train", "test"], key=f"{prefix}-view-kind",
                            help="REAL and GEN are the sets Compare puts side by side.")  # fmt: skip
        if st.button("Save", key=f"{prefix}-view-save", disabled=not name.strip(), icon=":material/save:"):
            try:
                saved = save(name.strip(), kind or "view")
            except WorkbenchError as exc:
                show_error(exc)
            else:
                st.success(f"Saved dataset {md(repr(saved.name))}: {saved.images:,} images ({md(saved.source)}).")

"""A page's state in its URL, so a browser reload (or a link a colleague opens) shows the same page.

Inputs are bound to query parameters with Streamlit's own binding (`bind=BIND` on a keyed widget): the URL
holds what was typed or picked, never an upload or a secret, and a link only fills the inputs in; nothing
runs until someone presses a button, and every value still passes the page's guards then. The job a page
follows is a plain query parameter beside them (`?pp-job=16`); without one, the page shows its latest job of
its kinds, so a reload never loses the job panel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

import streamlit as st

from services.jobs.manager import JobError, JobManager, JobProgress

BIND: Final[Literal["query-params"]] = "query-params"
RECENT_JOBS = 200  # how far back a page looks for its latest job


def follow_job(key: str, job_id: int) -> None:
    """The page follows this job from now on, in this session and in the URL."""
    st.session_state[key] = int(job_id)
    st.query_params[key] = str(int(job_id))


def _existing_job(manager: JobManager, text: str) -> int | None:
    """The job a URL names, when it is a job id of this workspace; None for anything else (a link to a job
    that is gone, or not a number)."""
    if not (text.isdigit() and len(text) < 12):
        return None
    try:
        manager.progress(int(text))
    except JobError:
        return None
    return int(text)


def followed_job(
    manager: JobManager, key: str, kinds: tuple[str, ...], accept: Callable[[JobProgress], bool] | None = None
) -> int | None:
    """The job the page's panel shows: the one started in this session, else the one the URL names (after a
    reload), else the page's latest job of these kinds (that `accept` takes); None when the page never ran one."""
    if (current := st.session_state.get(key)) is not None:
        return int(current)
    named = _existing_job(manager, st.query_params.get(key, ""))
    shown = (
        named
        if named is not None
        else next(
            (j.id for j in manager.list(limit=RECENT_JOBS) if j.kind in kinds and (accept is None or accept(j))), None
        )
    )
    if shown is not None:
        follow_job(key, shown)
    return shown


def followed_jobs(manager: JobManager, key: str) -> list[int]:
    """Several jobs a page follows (a list kept in the session and in the URL as `?key=3,4`)."""
    if (current := st.session_state.get(key)) is not None:
        return [int(j) for j in current]
    named = (_existing_job(manager, part) for part in st.query_params.get(key, "").split(",")[:20])
    found = [j for j in named if j is not None]
    if found:
        follow_jobs(key, found)
    return found


def follow_jobs(key: str, job_ids: list[int]) -> None:
    """The page follows these jobs from now on, in this session and in the URL."""
    st.session_state[key] = [int(j) for j in job_ids]
    st.query_params[key] = ",".join(str(int(j)) for j in job_ids)

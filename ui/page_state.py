"""A page's state in its URL, so a browser reload (or a link a colleague opens) shows the same page.

Inputs are bound to query parameters with Streamlit's own binding (`bind=BIND` on a keyed widget): the URL
holds what was typed or picked, never an upload or a secret, and a link only fills the inputs in; nothing
runs until someone presses a button, and every value still passes the page's guards then. The job a page
follows is a plain query parameter beside them (`?pp-job=16`); without one, the page shows its latest job of
its kinds, so a reload never loses the job panel.
"""

from __future__ import annotations

from typing import Final, Literal

import streamlit as st

from services.jobs import JobError, JobManager

BIND: Final[Literal["query-params"]] = "query-params"
RECENT_JOBS = 200  # how far back a page looks for its latest job


def follow_job(key: str, job_id: int) -> None:
    """The page follows this job from now on, in this session and in the URL."""
    st.session_state[key] = int(job_id)
    st.query_params[key] = str(int(job_id))


def followed_job(manager: JobManager, key: str, kinds: tuple[str, ...]) -> int | None:
    """The job the page's panel shows: the one started in this session, else the one the URL names (after a
    reload), else the page's latest job of these kinds; None when the page has never run one."""
    if (current := st.session_state.get(key)) is not None:
        return int(current)
    raw = st.query_params.get(key, "")
    if raw.isdigit() and len(raw) < 12:
        try:
            manager.progress(int(raw))
        except JobError:  # a link to a job that is gone: fall back to the latest
            pass
        else:
            follow_job(key, int(raw))
            return int(raw)
    latest = next((j.id for j in manager.list(limit=RECENT_JOBS) if j.kind in kinds), None)
    if latest is not None:
        follow_job(key, latest)
    return latest


def followed_jobs(manager: JobManager, key: str) -> list[int]:
    """Several jobs a page follows (a list kept in the session and in the URL as `?key=3,4`)."""
    if (current := st.session_state.get(key)) is not None:
        return [int(j) for j in current]
    found: list[int] = []
    for part in st.query_params.get(key, "").split(",")[:20]:
        if part.isdigit() and len(part) < 12:
            try:
                manager.progress(int(part))
            except JobError:
                continue
            found.append(int(part))
    if found:
        follow_jobs(key, found)
    return found


def follow_jobs(key: str, job_ids: list[int]) -> None:
    st.session_state[key] = [int(j) for j in job_ids]
    st.query_params[key] = ",".join(str(int(j)) for j in job_ids)

"""Home: what the workspace holds and which jobs run, aggregated in SQL so it stays fast at any size."""

import pandas as pd
import streamlit as st

from services.core.datasets import list_datasets
from services.demo.builder import build_demo
from services.jobs.worker_status import worker_summary
from services.stages.compare.label_sets import LABEL_SET_KIND
from ui.components import job_panel, jobs_table
from ui.server_path import display_path
from ui.state import get_job_manager, get_workspace
from ui.text import code

ws = get_workspace()
manager = get_job_manager()

st.title("Image workbench")
st.caption("From a list of URLs or an S3 prefix to a downloaded, described, embedded, classified and compared dataset.")


def shown_source(source: str) -> str:
    """A URL or s3:// source as it is; a server path as pages show paths (display_path)."""
    return source if "://" in source else display_path(ws, source)


overview = ws.catalog.overview()
cols = st.columns(4)
cols[0].metric("Images", f"{overview['images']:,}")
cols[1].metric("Stored", f"{overview['image_bytes'] / 1e6:,.1f} MB")
cols[2].metric("Datasets", f"{overview['datasets']:,}")
cols[3].metric("Jobs", f"{overview['jobs']:,}")

st.subheader("Datasets")
datasets = list_datasets(ws.catalog)
if datasets:
    st.dataframe(
        pd.DataFrame(
            [
                {"name": d.name, "kind": d.kind, "rows": d.rows,
                 "images": None if d.kind == LABEL_SET_KIND else d.images, "source": shown_source(d.source)}
                for d in datasets
            ]
        ),
        hide_index=True,
        key="home-datasets",
    )  # fmt: skip
    if any(d.kind == LABEL_SET_KIND for d in datasets):
        st.caption(f"`{LABEL_SET_KIND}`: a categorised CSV imported for Compare; it holds labels, not images.")
else:
    st.info(
        "No datasets yet. Start on the Download page, or run `python -m services download urls CSV --dataset NAME`, "
        "or build the demo: sample photos, generated images, tagged shapes, OCR parts and categorised CSVs, made "
        "offline in about half a minute (`python -m services demo`)."
    )
    if st.button("Build the demo workspace", key="home-demo", icon=":material/auto_awesome:"):
        with st.status("Building the demo workspace", expanded=True) as status:
            made = build_demo(ws, progress=st.write)
            status.update(label="Demo ready", state="complete")
        shown = display_path(ws, str(made["checkpoint"]))
        st.success(f"Demo CLIP checkpoint (random weights, colours only): {code(shown)}")
        st.rerun()

st.subheader("Jobs")
manager.start_queued_page_jobs()  # queued page jobs start when a slot opens (a killed job frees one too)
st.caption(worker_summary(ws))
queue = manager.worker_queue()
if queue:
    st.markdown(f"**Queue**: the worker runs these {len(queue)} jobs next, in this order")
    st.dataframe(
        pd.DataFrame([{"order": i, "job": p.id, "what": p.title} for i, p in enumerate(queue, 1)]),
        hide_index=True,
        key="home-queue",
    )
running = manager.list(limit=20, active_only=True)
for job in running:
    with st.container(border=True):
        job_panel(manager, job.id)
st.caption("Recent jobs")
jobs_table(manager.list(limit=25), key="home-jobs")

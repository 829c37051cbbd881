"""Home: what the workspace holds and which jobs run, aggregated in SQL so it stays fast at any size."""

import pandas as pd
import streamlit as st

from services.core.datasets import dataset_id_of, list_datasets
from services.core.errors import WorkbenchError
from services.demo.builder import build_demo
from services.jobs.worker_status import worker_summary
from services.stages.compare.label_sets import LABEL_SET_KIND
from services.stages.explore.duplicate_choices import dropped_count
from services.stages.export.stage import FORMAT_LABELS, label_choices, page_export_folder, start_export
from ui.components import job_panel, jobs_table, launch
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
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
export_job: int | None = None  # shown in the export panel, not twice among the running jobs
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
    exportable = [d.name for d in datasets if d.kind != LABEL_SET_KIND and d.images]
    with st.expander("Export a dataset"):
        if not exportable:
            st.caption("No dataset with stored images yet.")
        else:
            ex_dataset = st.selectbox("Dataset", exportable, bind=BIND, key="home-export-dataset")
            ex_format = st.radio("Format", list(FORMAT_LABELS), format_func=FORMAT_LABELS.__getitem__,
                                 horizontal=True, bind=BIND, key="home-export-format")  # fmt: skip
            ex_by = st.selectbox("Labels from", label_choices(ws, ex_dataset), bind=BIND, key="home-export-by",
                                 help="tag: the folder each image was imported from; column:NAME: a column of "
                                 "the input CSV", disabled=ex_format == "seed000")  # fmt: skip
            target = page_export_folder(ws, ex_dataset, ex_format)
            st.caption(f"Into {code(display_path(ws, target))}; exporting again there writes only what is missing.")
            include_dropped = False
            if ex_format != "seed000" and (dropped := dropped_count(ws, dataset_id_of(ws.catalog, ex_dataset))):
                include_dropped = st.checkbox(
                    f"Include the {dropped:,} images chosen to drop as near-duplicates", bind=BIND,
                    key="home-export-dropped", help="Chosen on the Explore page (Duplicates) or by `duplicates "
                    "--drop-extras`; left out of exports unless this is ticked.",
                )  # fmt: skip
            if st.button("Export", key="home-export-start", icon=":material/file_export:"):
                try:
                    started = start_export(ws, manager, ex_dataset, ex_format, target, by=ex_by,
                                           include_dropped=include_dropped)  # fmt: skip
                except WorkbenchError as exc:
                    show_error(exc)
                else:
                    launch(manager, started)
                    follow_job("home-export-job", started)
            if (export_job := followed_job(manager, "home-export-job", ("export",))) is not None:
                with st.container(border=True):
                    job_panel(manager, export_job)
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
running = [j for j in manager.list(limit=20, active_only=True) if j.id != export_job]
for job in running:
    with st.container(border=True):
        job_panel(manager, job.id)
st.caption("Recent jobs")
jobs_table(manager.list(limit=25), key="home-jobs")

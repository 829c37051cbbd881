"""Download: URL CSVs (upload or server path), S3 prefixes with a pre-download analysis, and S3 batch mode."""

from pathlib import Path

import pandas as pd
import streamlit as st

from services.core.datasets import DatasetError, read_csv_header
from services.core.errors import WorkbenchError
from services.core.names import to_name
from services.core.server_paths import CSV_FILE, FOLDER
from services.io.s3_client import S3AccessError
from services.jobs.params import StoreParams, int_range
from services.stages.download.s3 import analyze_s3, plan_batch, start_s3_download
from services.stages.download.urls import guess_kind, start_url_download, url_columns
from ui.components import job_panel, jobs_table, launch, s3_endpoint_input, save_upload, workers_input
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
from ui.server_path import server_path_input
from ui.state import get_job_manager, get_workspace
from ui.text import code, md

ws = get_workspace()
manager = get_job_manager()
KINDS = ["train", "test", "REAL", "GEN", "other"]

st.title("Download")
st.caption(
    "Every URL is fetched once, every image stored once per content hash, every failure named per row. "
    "Jobs run in the background: close the tab and come back, or follow them with `python -m services jobs list`."
)


def _csv_source(key: str, label: str) -> Path | None:
    how = st.radio("Source", ["Upload a CSV", "Path on the server"], horizontal=True, bind=BIND, key=f"{key}-how")
    if how == "Upload a CSV":
        upload = st.file_uploader(label, type=["csv"], key=f"{key}-upload", max_upload_size=ws.settings.max_upload_mb)
        if upload is None:
            return None
        return save_upload(ws, upload)
    return server_path_input(ws, "CSV path", CSV_FILE, f"{key}-path", placeholder="/data/train.csv")


def _shown_name(path: Path) -> str:
    """The name the user knows the file by: the uploaded file's own name, not the stored upload's."""
    return ws.shown_name(path)


def _dataset_default(path: Path) -> str:
    return to_name(Path(_shown_name(path)).stem, "dataset")


def _name_follows_file(key: str, csv_path: Path) -> None:
    """A new CSV offers its own dataset name (a kept name would clash with the last file's dataset); a reload
    keeps the name in the URL."""
    source = _shown_name(csv_path)
    if st.session_state.get(f"{key}-source") != source:
        st.session_state[f"{key}-source"] = source
        st.session_state[f"{key}-dataset"] = _dataset_default(csv_path)


def _start(job_id: int) -> None:
    launch(manager, job_id)
    follow_job("download-job", job_id)
    st.session_state["job-pick"] = job_id  # the panel below follows the new job at once


tab_urls, tab_s3, tab_batch = st.tabs(["URL CSV", "S3", "S3 batch"])

with tab_urls:
    csv_path = _csv_source("urls", "CSV with an image URL column (e.g. image_link, group_id, entity_name, ...)")
    if csv_path is not None:
        try:
            header = read_csv_header(csv_path)
            preview = pd.read_csv(csv_path, nrows=10, dtype=str, keep_default_na=False)
            candidates = url_columns(csv_path, header)
        except (DatasetError, ValueError) as exc:
            st.error(f"Cannot read {code(_shown_name(csv_path))}: {md(exc)}")
            header, candidates = [], []
        if header:
            st.caption(f"First rows of {code(_shown_name(csv_path))}")
            st.dataframe(preview, hide_index=True, key="urls-preview")
        if header and not candidates:
            st.error(
                f"{code(_shown_name(csv_path))} has no column of image URLs (http:// or https://) in its first rows. "
                f"Its columns: {', '.join(code(c) for c in header)}. Upload a CSV with a URL column, such as seed "
                "000's `image_link`."
            )
        elif header:
            _name_follows_file("urls", csv_path)
            with st.form("urls-form"):
                left, right = st.columns(2)
                url_column = left.selectbox(
                    "URL column",
                    candidates,
                    index=0,
                    help="Columns whose cells are URLs.",
                    bind=BIND,
                    key="urls-column",
                )
                dataset = right.text_input("Dataset name", bind=BIND, key="urls-dataset")
                guessed = guess_kind(Path(_shown_name(csv_path)))
                kind = left.selectbox(
                    "Kind", KINDS, index=KINDS.index(guessed) if guessed in KINDS else 0, bind=BIND, key="urls-kind"
                )
                resize = right.number_input(
                    "Resize to N x N (0 = keep originals only)", 0, int_range(StoreParams, "resize")[1], 0, step=32,
                    bind=BIND, key="urls-resize",
                )  # fmt: skip
                workers = workers_input(ws, "Worker processes", ws.settings.download.workers, "urls-workers", left)
                placeholder = right.checkbox(
                    "Placeholder image for failed rows (seed 000 behaviour)", bind=BIND, key="urls-placeholder"
                )
                discard = right.checkbox("Keep only the resized copy", bind=BIND, key="urls-discard")
                submitted = st.form_submit_button("Start download", type="primary", icon=":material/download:")
            if submitted:
                try:
                    job_id = start_url_download(
                        ws,
                        manager,
                        csv_path,
                        dataset,
                        url_column=url_column,
                        kind=kind,
                        resize=int(resize) or None,
                        keep_originals=not (discard and resize),
                        placeholder=placeholder,
                        workers=int(workers),
                    )
                except WorkbenchError as exc:
                    show_error(exc)
                else:
                    _start(job_id)

with tab_s3:
    s3_csv = _csv_source("s3", "CSV of file names, with or without a header")
    if s3_csv is not None:
        _name_follows_file("s3", s3_csv)
    left, right = st.columns(2)
    bucket = left.text_input("Bucket", value=ws.settings.download.s3_bucket or "", bind=BIND, key="s3-bucket")
    prefix = right.text_input("Prefix", value="datalake_training/", bind=BIND, key="s3-prefix")
    endpoint, signed = s3_endpoint_input(ws.settings, "Endpoint URL (S3-compatible stores only)", "s3-endpoint", left)
    s3_dataset = right.text_input("Dataset name", bind=BIND, key="s3-dataset")
    if st.button("Analyse", key="s3-analyse", icon=":material/search:", disabled=not (s3_csv and bucket)):
        try:
            st.session_state["s3-analysis"] = analyze_s3(ws, s3_csv, bucket, prefix, endpoint, signed=signed)  # type: ignore[arg-type]
        except (DatasetError, S3AccessError) as exc:
            st.session_state.pop("s3-analysis", None)
            st.error(md(exc))
    analysis = st.session_state.get("s3-analysis")
    if analysis is not None:
        summary = analysis.summary()
        cols = st.columns(5)
        cols[0].metric("Names", f"{analysis.unique_names:,}")
        cols[1].metric("Already done", f"{len(analysis.already_done):,}")
        cols[2].metric("Available", f"{analysis.available:,}")
        cols[3].metric("Missing", f"{len(analysis.missing):,}")
        cols[4].metric("Ambiguous", f"{len(analysis.ambiguous):,}")
        st.caption(f"{summary['objects listed']:,} objects listed under {code(summary['source'])}")
        if analysis.missing:
            st.warning("Missing, e.g.: " + ", ".join(code(m) for m in analysis.missing[:5]))
        if analysis.ambiguous:
            st.warning("Ambiguous names are not downloaded; each matches several objects:")
            st.json(summary["ambiguous examples"])
        if st.button(
            f"Confirm: download {analysis.available:,} files", type="primary", key="s3-confirm", icon=":material/check:"
        ):
            try:
                name = s3_dataset or _dataset_default(Path(analysis.csv_path))
                job_id = start_s3_download(ws, manager, analysis, name)
            except WorkbenchError as exc:
                show_error(exc)
            else:
                st.session_state.pop("s3-analysis", None)
                _start(job_id)

with tab_batch:
    st.caption("Every `KIND_name.csv` in a drop folder becomes its own dataset; the prefix comes from the kind.")
    folder = server_path_input(
        ws, "Drop folder on the server", FOLDER, "batch-folder", placeholder="downloader/to_download"
    )
    left, right = st.columns(2)
    batch_bucket = left.text_input("Bucket", value=ws.settings.download.s3_bucket or "", bind=BIND, key="batch-bucket")
    template = right.text_input(
        "Prefix template", value=ws.settings.download.s3_prefix_template, bind=BIND, key="batch-template"
    )
    batch_endpoint, batch_signed = s3_endpoint_input(ws.settings, "Endpoint URL", "batch-endpoint", left)
    if folder and batch_bucket:
        try:
            entries, skipped = plan_batch(folder, template)
        except WorkbenchError as exc:
            show_error(exc)
            entries, skipped = [], []
        for path, reason in skipped:
            st.caption(f"Skipped {code(path.name)}: {md(reason)}")
        if entries:
            st.dataframe(
                pd.DataFrame(
                    [
                        {"file": e.csv_path.name, "kind": e.kind, "prefix": e.prefix, "dataset": e.dataset}
                        for e in entries
                    ]
                ),
                hide_index=True,
                key="batch-plan",
            )
            if st.button("Analyse all", key="batch-analyse", icon=":material/search:"):
                try:
                    st.session_state["batch-analyses"] = [
                        (e, analyze_s3(ws, e.csv_path, batch_bucket, e.prefix, batch_endpoint, signed=batch_signed))
                        for e in entries
                    ]
                except WorkbenchError as exc:
                    show_error(exc)
            analyses = st.session_state.get("batch-analyses") or []
            if analyses:
                st.dataframe(
                    pd.DataFrame(
                        [
                            {
                                "dataset": e.dataset,
                                "names": a.unique_names,
                                "already done": len(a.already_done),
                                "available": a.available,
                                "missing": len(a.missing),
                                "ambiguous": len(a.ambiguous),
                            }
                            for e, a in analyses
                        ]
                    ),
                    hide_index=True,
                    key="batch-analysis",
                )
                if st.button("Confirm: download all", type="primary", key="batch-confirm", icon=":material/check:"):
                    for e, a in analyses:
                        try:
                            _start(start_s3_download(ws, manager, a, e.dataset, kind=e.kind))
                        except DatasetError as exc:
                            st.error(f"{md(e.csv_path.name)}: {md(exc)}")
                    st.session_state.pop("batch-analyses", None)

st.divider()
st.subheader("Download jobs")
jobs = [j for j in manager.list(limit=50) if j.kind.startswith("download")]
current = followed_job(manager, "download-job", ("download_urls", "download_s3"))
if current is not None:
    ids = [j.id for j in jobs]
    chosen = st.selectbox(
        "Job",
        ids,
        index=ids.index(current) if current in ids else 0,
        format_func=lambda i: f"job {i}",
        bind=BIND,
        key="job-pick",
    )
    with st.container(border=True):
        job_panel(manager, int(chosen))
jobs_table(jobs, key="download-jobs")

"""Embed & Train: import a tagged folder or zip, embed it with open_clip, train per-tag classifiers."""

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from services.core.datasets import DatasetError, get_dataset, list_datasets
from services.core.errors import WorkbenchError
from services.core.server_paths import FOLDER_OR_ZIP
from services.io.embedding_store import EmbeddingStore, embedding_key
from services.jobs.manager import JobProgress, page_worker_limit
from services.jobs.params import ClipJobParams, int_range
from services.stages.download.folder_import import start_folder_import
from services.stages.embed.stage import start_embed
from services.stages.train.metrics import SMALL_TEST_POSITIVES
from services.stages.train.models import MODEL_TYPES, headline_metrics, list_models
from services.stages.train.stage import AUTO_CV_FOLDS, TrainParams, has_trainable_tags, start_training, trainable_tags
from ui.clip_picker import clip_model_picker
from ui.components import job_panel, launch, save_upload
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
from ui.server_path import display_path, server_path_input
from ui.state import get_job_manager, get_workspace
from ui.text import code, md, plot_text

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings

st.title("Embed & Train")
st.caption("CLIP embeddings stored once per image and model; one logistic regression and one calibrated linear "
           "SVM per tag, trained against the `other-training` negatives on standardised features with balanced "
           "classes, C and the decision threshold chosen on validation folds.")  # fmt: skip


def start(key: str, create: Callable[[], int]) -> None:
    """Create a job (errors shown, nothing queued), run it detached and follow it below."""
    try:
        job_id = create()
    except WorkbenchError as exc:
        show_error(exc)
        return
    launch(manager, job_id)
    follow_job(key, job_id)


def follow(key: str, kind: str, accept: Callable[[JobProgress], bool] | None = None) -> None:
    """The panel of the section's job: started here, named in the URL, or the latest of its kind."""
    if (job_id := followed_job(manager, key, (kind,), accept)) is not None:
        with st.container(border=True):
            job_panel(manager, job_id)


def not_a_classify_import(job: JobProgress) -> bool:
    """The Classify page imports what it classifies (datasets of kind `classify`): not this page's imports."""
    found = get_dataset(ws.catalog, str(job.params.get("dataset", "")))
    return found is None or found.kind != "classify"


# --- import ---------------------------------------------------------------------------------------------

st.subheader("1. Import a tagged dataset")
st.caption("Folder name = tag. Zips (and zips inside them, two levels deep) are read in place; members with "
           "`..`, symlinks, encryption or absurd compression are refused with the reason.")  # fmt: skip
how = st.radio("From", ["Folder or zip on the server", "Upload a zip"], horizontal=True, bind=BIND, key="et-how")
source: Path | None = None
default_name = "the folder or zip name"
if how == "Upload a zip":
    upload = st.file_uploader(
        "Zip of tag folders", type=["zip"], key="et-upload", max_upload_size=settings.max_upload_mb
    )
    if upload is not None:
        source = save_upload(ws, upload)
        default_name = Path(upload.name).stem
else:
    source = server_path_input(ws, "Folder or .zip path", FOLDER_OR_ZIP, "et-path", placeholder="/data/tagged-images")
name = st.text_input(
    "Dataset name",
    bind=BIND,
    key="et-name",
    placeholder=f"default: {source.stem if source and how != 'Upload a zip' else default_name}",
)
if st.button("Import", key="et-import", icon=":material/drive_folder_upload:", disabled=source is None):
    chosen_name = name or (default_name if how == "Upload a zip" else None)
    start("et-import-job", lambda: start_folder_import(ws, manager, source, chosen_name))  # type: ignore[arg-type]
follow("et-import-job", "import_folder", not_a_classify_import)

names = [d.name for d in list_datasets(ws.catalog)]
if not names:
    st.info("No datasets yet: import a tagged folder or zip above.")
    st.stop()
with_tags = [n for n in names if has_trainable_tags(ws, n)]
dataset = st.selectbox(
    "Dataset", names, index=names.index(with_tags[0]) if with_tags else 0, bind=BIND, key="et-dataset",
    format_func=lambda n: n if n in with_tags else f"{n} (no tags)",
)  # fmt: skip

# --- model ----------------------------------------------------------------------------------------------

st.subheader("2. Embed")
picked = clip_model_picker(ws, "et")
spec, weights_ok = picked.spec, picked.ok
key = embedding_key(spec)
b1, b2 = st.columns(2)
batch_size = b1.number_input(
    "Batch size", *int_range(ClipJobParams, "batch_size"), settings.clip.batch_size, bind=BIND, key="et-batch"
)
limit = page_worker_limit(settings)
loader_workers = b2.number_input(
    "Decoding processes (empty: chosen for the device)", 0, limit,
    None if settings.clip.loader_workers is None else min(settings.clip.loader_workers, limit),
    bind=BIND, key="et-workers",
    help=f"At most {limit} on this server (its cores, or the setting page_jobs.max_workers).",
)  # fmt: skip
workers = None if loader_workers is None else min(int(loader_workers), limit)
if st.button("Embed", type="primary", key="et-embed", icon=":material/memory:", disabled=not weights_ok):
    start("et-embed-job", lambda: start_embed(ws, manager, dataset, spec, int(batch_size), workers))
follow("et-embed-job", "embed")
st.caption(f"{EmbeddingStore(ws, key).count():,} vectors stored for {code(key)}.")

# --- train ----------------------------------------------------------------------------------------------

st.subheader("3. Train")
CV_CHOICES = {"auto": None, "off": 0, "3 folds": 3, "5 folds": 5, "10 folds": 10}
try:
    available = trainable_tags(ws, dataset)
    no_tags_reason = (
        f"{md(dataset)} has no tags to train on: its images sit at the top of what was imported, not in tag folders. "
        "A tagged dataset has one sub-folder per tag (and `other-training` for negatives); import one above."
    )
except DatasetError as exc:
    available, no_tags_reason = {}, f"{md(exc)}."
if not available:
    others = md(", ".join(n for n in with_tags if n != dataset))
    st.info(no_tags_reason + (f" Datasets with tags: {others}." if others else ""), icon=":material/info:")
else:
    tags = st.multiselect(
        "Tags", list(available), default=list(available), bind=BIND, key="et-tags",
        format_func=lambda t: f"{t} ({available[t]:,})",
    )  # fmt: skip
    t1, t2, t3 = st.columns([3, 2, 2])
    types = t1.multiselect("Models", list(MODEL_TYPES), default=list(MODEL_TYPES), bind=BIND, key="et-types",
                           format_func=lambda t: MODEL_TYPES[t])  # fmt: skip
    test_size = t2.slider("Test share", 0.05, 0.5, 0.1, 0.05, bind=BIND, key="et-test")
    seed = t3.number_input("Seed", *int_range(TrainParams, "seed"), 0, bind=BIND, key="et-seed")
    cv_label = st.selectbox(
        "Cross-validation", list(CV_CHOICES), bind=BIND, key="et-cv",
        help=f"auto: {AUTO_CV_FOLDS} folds for a tag with under {SMALL_TEST_POSITIVES} tagged test images, whose "
        "metrics are then reported from the folds; off: the test split only. Each fold picks its own C and "
        "threshold, like the final model.",
    )  # fmt: skip
    if st.button("Train", type="primary", key="et-train", icon=":material/model_training:", disabled=not tags):
        folds = CV_CHOICES[cv_label]
        start(
            "et-train-job",
            lambda: start_training(
                ws, manager, dataset, key, tags=tags, types=types, test_size=test_size, seed=int(seed), cv_folds=folds
            ),
        )
    follow("et-train-job", "train_tags")

# --- results --------------------------------------------------------------------------------------------

models = list_models(ws, dataset, key)
st.subheader("Models")
if not models:
    st.caption(f"No models for {md(dataset)} on {code(key)} yet: train some above (the models listed here are those "
               "trained on this dataset's vectors from the CLIP model chosen above).")  # fmt: skip
else:

    def interval(ci: list[float] | None) -> str:
        return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—"

    rows = []
    small = []
    for m in models:
        metrics, h = m.manifest["metrics"], headline_metrics(m.manifest)
        if h.warning:
            small.append(f"{m.tag} ({metrics['n_test_positive']})")
        rows.append({
            "tag": m.tag, "model": m.model_type, "metrics from": h.source, "AP": h.average_precision,
            "AP 95% CI": interval(h.ap_ci), "F1": h.f1, "F1 95% CI": interval(h.f1_ci), "threshold": h.threshold,
            "precision": h.precision, "recall": h.recall, "ROC AUC": h.roc_auc, "tagged": h.n_positive,
            "negative": h.n_negative, "test AP": metrics["average_precision"], "test F1": metrics["f1"],
            "test tagged": metrics["n_test_positive"],
        })  # fmt: skip
    if small:
        st.warning(
            f"Small test splits (under {SMALL_TEST_POSITIVES} tagged images): {md(', '.join(sorted(set(small))))}. "
            "A handful of test images makes AP and F1 noisy, so cross-validated metrics are shown for these where "
            "they were computed ('metrics from'); read the bootstrap 95% intervals beside each figure.",
            icon=":material/warning:",
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="et-metrics")
    tag = st.selectbox("PR curve for", sorted({m.tag for m in models}), bind=BIND, key="et-pr-tag")
    figure = go.Figure()
    for m in models:
        if m.tag == tag:  # the curve of the metrics shown: the pooled cross-validation folds when reported
            metrics = m.manifest["metrics"]
            curve = (metrics["cv"] if metrics.get("reported") == "cv" else metrics)["pr_curve"]
            figure.add_scatter(x=curve["recall"], y=curve["precision"], mode="lines",
                               name=f"{m.model_type} ({headline_metrics(m.manifest).source})")  # fmt: skip
    figure.update_layout(xaxis_title="recall", yaxis_title="precision", title=f"Precision-recall: {plot_text(tag)}",
                         xaxis_range=[0, 1.02], yaxis_range=[0, 1.02])  # fmt: skip
    st.plotly_chart(figure, key="et-pr")
with st.expander("Every model in the workspace"):
    everything = list_models(ws)
    st.dataframe(
        pd.DataFrame([{"model": m.name, "dataset": m.manifest["dataset"], "embedding": m.manifest["embedding_key"],
                       "AP": headline_metrics(m.manifest).average_precision,
                       "metrics from": headline_metrics(m.manifest).source, "threshold": m.threshold,
                       "file": display_path(ws, m.path)} for m in everything]),
        hide_index=True, key="et-all-models",
    )  # fmt: skip

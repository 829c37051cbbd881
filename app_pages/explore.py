"""Explore: search the catalog's images by text, by an example image, or "more like this" on any result."""

from pathlib import Path

import streamlit as st

from services.core.datasets import image_paths, list_datasets
from services.core.errors import WorkbenchError
from services.io.clip_models import ModelUnavailableError
from services.io.embedding_store import EmbeddingStore, list_embedding_keys
from services.stages.explore.search import MAX_TEXT_CHARS, embedded_datasets, hit_names, pick_key, search
from ui.errors import show_error
from ui.page_state import BIND
from ui.state import get_workspace
from ui.text import md

ws = get_workspace()
COLUMNS = 6
ALL = "All datasets"

st.title("Explore")
st.caption(
    "Search every embedded image by what it shows, in words or by an example, with the CLIP model the images "
    "were embedded with. Results are ranked by cosine similarity; “More like this” searches from any result."
)

keys = list_embedding_keys(ws)
if not keys:
    st.info(
        "No image has a CLIP vector yet: embed a dataset on the Embed & Train page (or `python -m services embed`)."
    )
    st.stop()

names = embedded_datasets(ws)
unembedded = len(list_datasets(ws.catalog)) - len(names)
c1, c2, c3 = st.columns([2, 2, 1])
scope = c1.selectbox(
    "Search in", [ALL, *names], bind=BIND, key="ex-dataset",
    help="Datasets with CLIP vectors." + (f" {unembedded} more are not embedded yet: embed them on Embed & Train."
                                          if unembedded else ""),
)  # fmt: skip
dataset = None if scope == ALL else scope
try:
    default_key = pick_key(ws, dataset)
except WorkbenchError as exc:
    show_error(exc)
    st.stop()
counts = {k: EmbeddingStore(ws, k).count() for k in keys}
key = c2.selectbox(
    "Embedding model", keys, index=keys.index(default_key), format_func=lambda k: f"{k} ({counts[k]:,} images)",
    key="ex-model", help="Starts at the model that embedded most of the dataset searched.",
)  # fmt: skip
k = int(c3.number_input("Results", 1, 200, 12, bind=BIND, key="ex-k"))

how = st.radio("Search by", ["Text", "An image", "More like a stored image"], horizontal=True, bind=BIND, key="ex-how")
query: dict[str, object] = {}
if how == "Text":
    text = st.text_input(
        "Describe what you look for", max_chars=MAX_TEXT_CHARS, placeholder="a red truck at night", bind=BIND,
        key="ex-text",
    )  # fmt: skip
    if text.strip():
        query = {"text": text.strip()}
elif how == "An image":
    upload = st.file_uploader(
        "An example image", type=["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"], key="ex-upload",
        max_upload_size=ws.settings.max_upload_mb,
    )  # fmt: skip
    if upload is not None:
        query = {"image": upload.getvalue()}
else:
    like = st.text_input("Image hash (sha256, or seed 004's hash_id)", bind=BIND, key="ex-like")
    if like.strip():
        query = {"like": like.strip().lower()}

if st.button("Search", type="primary", key="ex-run", icon=":material/search:", disabled=not query):
    st.session_state["ex-query"] = query
asked = st.session_state.get("ex-query")
if not asked:
    st.stop()

try:
    result, where = search(ws, dataset=dataset, k=k, key=key, **asked)
except (WorkbenchError, ModelUnavailableError) as exc:
    show_error(exc)
    st.stop()
hashes = [h.image_hash for h in result.hits]
paths = image_paths(ws, hashes)
shown_names = hit_names(ws, hashes, dataset)
what = "the text" if "text" in asked else "the image" if "image" in asked else f"image {str(asked['like'])[:12]}…"
st.caption(
    f"{len(result.hits)} images nearest to {md(what)} in {md(result.key)} ({result.index} search, "
    f"{result.seconds:.2f} s {'in the workspace worker' if where == 'worker' else 'here'})."
)
grid = st.columns(COLUMNS)
for n, hit in enumerate(result.hits):
    cell = grid[n % COLUMNS]
    name = shown_names.get(hit.image_hash, "")
    if hit.image_hash in paths:
        cell.image(str(ws.abspath(paths[hit.image_hash])), caption=f"{hit.score:.3f} · {md(Path(name).name)}")
    else:
        cell.caption(f"{hit.score:.3f} · {md(name)} (no stored file)")
    if cell.button("More like this", key=f"ex-like-{n}", icon=":material/image_search:"):
        st.session_state["ex-query"] = {"like": hit.image_hash}
        st.rerun()

"""Compare REAL vs GEN: category distributions, tests, embedding space, confounds, report."""

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from services.core.datasets import DatasetError, image_paths
from services.core.errors import WorkbenchError
from services.core.names import file_name, to_name
from services.io.embedding_store import EmbeddingStore
from services.stages.clusters.clustering import cluster_sets
from services.stages.compare.chart_files import CHART_FORMATS, ChartRenderError, chart_zip
from services.stages.compare.embeddings import (
    MIN_CATEGORY_IMAGES,
    RESAMPLES,
    EmbeddingComparison,
    EmbeddingModel,
    compare_embeddings,
    confounds,
    local_models,
    weights_on_disk,
)
from services.stages.compare.label_sets import (
    FAILED,
    MIN_EXPECTED,
    TEST_NAMES,
    ImageLink,
    LabelSet,
    SetImages,
    category_depth,
    category_hashes,
    compare_sets,
    count_with_label,
    image_dataset_names,
    image_link,
    import_categorized_csv,
    item_images,
    items_with_label,
    label_counts,
    label_set_from_gemini,
    list_label_sets,
    set_images,
    set_role,
)
from services.stages.compare.report import (
    COLOURS,
    DISTANCE_HEADER,
    RATES_HEADER,
    RATES_NOTE,
    cluster_section,
    counts_figure,
    depth_section,
    difference_figure,
    distance_rows,
    fmt_interval,
    grouped_figure,
    html_report,
    projection_figure,
    rates_rows,
    thumbnail_jpeg,
    write_tables,
)
from services.stages.describe.categories import list_lists
from services.stages.embed.stage import start_embed
from services.stages.explore.saved_views import save_view
from ui.components import job_panel, launch, save_upload, save_view_form
from ui.errors import show_error
from ui.page_state import BIND, follow_jobs, followed_jobs
from ui.server_path import display_path
from ui.state import get_job_manager, get_workspace
from ui.text import code, md

ws = get_workspace()
manager = get_job_manager()
PAGE_SIZE = 12
AUTO_LINK_ITEMS = 100_000  # larger sets link their names to images on request, not on every first view

st.title("Compare REAL vs GEN")
st.caption("Category shares of two sets, tested per category with correction for many tests; counts are "
           "aggregated in the database, so a million images per set chart as fast as a hundred.")  # fmt: skip


# --- cached look-ups (keyed by what changes them: a set's creation time, the newest job, the stored shards) ---


def _workspace_version() -> int:
    """Grows when images arrive (every import or download is a job): links to images may change then."""
    return int(ws.catalog.scalar("SELECT COALESCE(MAX(id), 0) FROM jobs") or 0)


@st.cache_data(max_entries=64, show_spinner=False)
def _link(_set: LabelSet, set_key: tuple[int, float], version: int, root: str) -> ImageLink:
    return image_link(ws, _set)


@st.cache_resource(max_entries=4, show_spinner="Finding the sets' images…")  # shared, not copied: read only
def _images(_set: LabelSet, set_key: tuple[int, float], version: int, root: str) -> SetImages:
    return set_images(ws, _set)


@st.cache_data(max_entries=64, show_spinner=False)
def _depth(_set: LabelSet, set_key: tuple[int, float], root: str) -> dict[int, int]:
    return category_depth(ws, _set)


@st.cache_resource(max_entries=4, show_spinner="Reading which images have vectors…")  # read only
def _stored(key: str, shards: tuple[str, ...], root: str) -> frozenset[str]:
    return frozenset(EmbeddingStore(ws, key).stored_hashes())


@st.cache_data(max_entries=64, show_spinner=False)
def _coverage(_images: SetImages, set_key: tuple[int, float], version: int, key: str, shards: tuple[str, ...],
              root: str) -> int:  # fmt: skip
    stored = _stored(key, shards, root)
    return sum(h in stored for h in set(_images.hashes.values()))


@st.cache_data(max_entries=2000, show_spinner=False)
def _thumbnail(path: str, mtime: float) -> bytes | None:
    return thumbnail_jpeg(Path(path))


def link_of(label_set: LabelSet) -> ImageLink:
    return _link(label_set, (label_set.id, label_set.created_at), _workspace_version(), str(ws.root))


def images_of(label_set: LabelSet) -> SetImages:
    return _images(label_set, (label_set.id, label_set.created_at), _workspace_version(), str(ws.root))


def show_thumbnails(
    entries: list[tuple[str, str | None]], columns: int, caption: Callable[[str], str] | None = None
) -> None:
    """A grid of small JPEGs (made once per file and cached); an entry without a stored image shows its name."""
    grid = st.columns(columns)
    for i, (item, rel) in enumerate(entries):
        label = md(caption(item) if caption else item[:24])  # item names come from users' CSVs
        path = ws.abspath(rel) if rel else None
        data = _thumbnail(str(path), path.stat().st_mtime) if path is not None and path.is_file() else None
        if data is not None:
            grid[i % columns].image(data, caption=label, width="stretch")
        else:
            grid[i % columns].caption(f"{label} (no stored image)")


# --- sets ---------------------------------------------------------------------------------------------------

with st.expander("Add a set", expanded=len(list_label_sets(ws)) < 2):
    csv_tab, gemini_tab = st.tabs(["Categorised CSV", "A dataset's Gemini categories"])
    with csv_tab:
        upload = st.file_uploader("image_name,description,categories", type=["csv"], key="cmp-upload",
                                  max_upload_size=ws.settings.max_upload_mb)  # fmt: skip
        csv_name = st.text_input("Set name", bind=BIND, key="cmp-csv-name", placeholder="default: the file name")
        st.caption("`image_name` is matched to imported images by name, so galleries, embeddings and image "
                   "properties work once the images themselves are in the workspace.")  # fmt: skip
        if st.button("Import CSV", key="cmp-import", disabled=upload is None) and upload is not None:
            try:
                saved = import_categorized_csv(ws, save_upload(ws, upload), csv_name or upload.name.rsplit(".", 1)[0])
                st.success(f"{md(saved.name)}: {saved.items:,} images")
            except WorkbenchError as exc:
                show_error(exc)
    with gemini_tab:
        datasets = image_dataset_names(ws)
        lists = [x.label for x in list_lists(ws, all_versions=True)]
        g1, g2 = st.columns(2)
        dataset = g1.selectbox("Dataset", datasets, bind=BIND, key="cmp-dataset") if datasets else None
        chosen_list = g2.selectbox("Category list", lists, bind=BIND, key="cmp-list") if lists else None
        if not datasets or not lists:
            st.caption("Needs a dataset and a category list: import images, then categorise them on the Describe "
                       "& Categorize page.")  # fmt: skip
        if st.button("Build set", key="cmp-build", disabled=not (dataset and chosen_list)):
            category_list = next(x for x in list_lists(ws, all_versions=True) if x.label == chosen_list)
            try:
                saved = label_set_from_gemini(ws, dataset or "", category_list)
                depth = category_depth(ws, saved)
                beyond = sum(n for k, n in depth.items() if k > 2)
                st.success(f"{md(saved.name)}: {saved.items:,} images"
                           + (f"; {beyond:,} answers gave more than two valid categories, all counted" if beyond
                              else ""))  # fmt: skip
            except WorkbenchError as exc:
                show_error(exc)

all_sets = list_label_sets(ws)
if len(all_sets) < 2:
    st.info("Add two sets to compare (a categorised CSV, or a dataset categorised on the Describe page).")
    st.stop()
names = [s.name for s in all_sets]
roles = {s.name: set_role(ws, s) for s in all_sets}
preset_a = next((i for i, n in enumerate(names) if roles[n] == "REAL"), 0)
preset_b = next((i for i, n in enumerate(names) if roles[n] == "GEN" and i != preset_a), 1 if preset_a == 0 else 0)
c1, c2, c3 = st.columns(3)
name_a = c1.selectbox("A (e.g. REAL)", names, index=preset_a, bind=BIND, key="cmp-a")
name_b = c2.selectbox("B (e.g. GEN)", names, index=preset_b, bind=BIND, key="cmp-b")
test = c3.selectbox("Test per category", ["g-test", "chi-square"], bind=BIND, key="cmp-test",
                    help=f"Used where every expected count is at least {MIN_EXPECTED}; Fisher's exact test "
                         "elsewhere.")  # fmt: skip
if name_a == name_b:
    st.warning("A and B are the same set: pick two different sets.")
    st.stop()
set_a, set_b = next(s for s in all_sets if s.name == name_a), next(s for s in all_sets if s.name == name_b)
result = compare_sets(ws, set_a, set_b, test)
m1, m2, m3, m4 = st.columns(4)
for column, label_set, n in ((m1, set_a, result.n_a), (m2, set_b, result.n_b)):
    failed, unknown = (result.special[FAILED][0 if label_set is set_a else 1],
                       result.special["unknown"][0 if label_set is set_a else 1])  # fmt: skip
    column.metric(f"{md(label_set.name)} images", f"{label_set.items:,}",
                  help="Every item with an answer; shares are among the categorised ones.")  # fmt: skip
    column.caption(f"{n:,} categorised · {failed:,} failed · {unknown:,} unknown")
m3.metric("Jensen-Shannon divergence", f"{result.jsd:.4f}", help="0: identical category distributions, 1: disjoint.")
m4.metric("Categories differing (q < 0.05)", sum(s.q_value is not None and s.q_value < 0.05 for s in result.categories))
for warning in result.warnings:
    st.warning(md(warning))
if not result.categories:
    st.info("Neither set has a categorised item (every item failed or is unknown): nothing to chart. The failed and "
            "unknown rates are compared below.")  # fmt: skip

# --- charts: every bar is clickable ------------------------------------------------------------------------

st.caption("Click a bar in any of these charts to see that category's images from both sets below.")
one, grouped, normalised, difference = st.tabs(["One set", "Grouped", "% of images", "Difference"])
events: dict[str, Any] = {}
with one:
    single = st.radio("Set", [set_a.name, set_b.name], horizontal=True, bind=BIND, key="cmp-single", format_func=md)
    chosen = set_a if single == set_a.name else set_b
    counts = {k: v for k, v in label_counts(ws, chosen).items() if k not in result.special}
    chosen_n = result.n_a if chosen is set_a else result.n_b
    colour = COLOURS["a"] if chosen is set_a else COLOURS["b"]
    events["cmp-one"] = st.plotly_chart(counts_figure(chosen.name, counts, chosen_n, colour), key="cmp-one",
                                        on_select="rerun", selection_mode="points")  # fmt: skip
with grouped:
    events["cmp-grouped"] = st.plotly_chart(grouped_figure(result), key="cmp-grouped", on_select="rerun",
                                            selection_mode="points")  # fmt: skip
with normalised:
    events["cmp-normalised"] = st.plotly_chart(grouped_figure(result, normalised=True), key="cmp-normalised",
                                               on_select="rerun", selection_mode="points")  # fmt: skip
with difference:
    events["cmp-difference"] = st.plotly_chart(difference_figure(result), key="cmp-difference", on_select="rerun",
                                               selection_mode="points")  # fmt: skip


def clicked_category(point: dict[str, Any]) -> str | None:
    data = point.get("customdata")
    if isinstance(data, list):
        data = data[0] if data else None
    return str(data) if data else (point.get("x") if isinstance(point.get("x"), str) else point.get("y"))


choices = [s.category for s in result.categories] + list(result.special)
if st.session_state.get("cmp-gallery-category") not in [*choices, None]:  # the sets changed under it
    del st.session_state["cmp-gallery-category"]
for chart, event in events.items():
    points = event.get("selection", {}).get("points", []) if isinstance(event, dict) else []
    signature = repr(points)
    if points and signature != st.session_state.get(f"{chart}-seen"):  # a new click on this chart
        st.session_state[f"{chart}-seen"] = signature
        category = clicked_category(points[0])
        if category in choices:
            st.session_state["cmp-gallery-category"] = category
            st.session_state["cmp-gallery-page"] = 1

# --- gallery ---------------------------------------------------------------------------------------------

st.subheader("Images of a category")
category = st.selectbox("Images of category", choices, index=None, bind=BIND, key="cmp-gallery-category",
                        placeholder="click a bar above, or pick one", label_visibility="collapsed")  # fmt: skip
if not category:
    st.caption("No category chosen yet: click a bar in a chart above, or pick a category here.")
else:
    totals = {s.name: count_with_label(ws, s, category) for s in (set_a, set_b)}
    pages = max(1, math.ceil(max(totals.values()) / PAGE_SIZE))
    if st.session_state.get("cmp-gallery-page", 1) > pages:  # a category with fewer pages than the last one
        st.session_state["cmp-gallery-page"] = 1
    page = int(st.number_input(f"Page (of {pages})", 1, pages, bind=BIND, key="cmp-gallery-page")) if pages > 1 else 1
    left, right = st.columns(2)
    for column, label_set in ((left, set_a), (right, set_b)):
        with column:
            st.markdown(f"**{md(label_set.name)}: {md(category)}** ({totals[label_set.name]:,} images)")
            entries = items_with_label(ws, label_set, category, PAGE_SIZE, (page - 1) * PAGE_SIZE)
            if not entries:
                st.caption(f"No image of {md(label_set.name)} carries {md(repr(category))}"
                           + (" on this page." if totals[label_set.name] else "."))  # fmt: skip
                continue
            if not any(path for _, path in entries):
                link = link_of(label_set)
                st.caption(md(link.explain(label_set.name)) if link.dataset is None else
                           f"None of these is a stored image of dataset {md(repr(link.dataset))}.")  # fmt: skip
            show_thumbnails(entries, 3)

# --- tables ----------------------------------------------------------------------------------------------

st.subheader("Per category")
st.caption(f"Shares are among categorised images ({result.n_a:,} in {md(set_a.name)}, {result.n_b:,} in "
           f"{md(set_b.name)}). "
           f"Test: the {TEST_NAMES[test]} where every expected count is at least {MIN_EXPECTED}, Fisher's exact "
           "test otherwise; q: Benjamini-Hochberg over every tested category.")  # fmt: skip
if result.categories:
    table = pd.DataFrame([{
        "category": s.category, f"{set_a.name}": s.count_a, f"{set_b.name}": s.count_b,
        f"% {set_a.name}": round(s.share_a * 100, 2), f"% {set_b.name}": round(s.share_b * 100, 2),
        "difference (pp)": round(s.difference * 100, 2),
        "95% CI (pp)": f"[{s.ci_low * 100:+.2f}, {s.ci_high * 100:+.2f}]", "test": s.test,
        "p": s.p_value, "q": s.q_value, "note": s.warning or "",
    } for s in result.categories])  # fmt: skip
    st.dataframe(table, hide_index=True, key="cmp-stats")
else:
    st.caption("No category in either set.")
st.markdown("**Failed and unknown**")
if any(r.count_a or r.count_b for r in result.rates):
    rates = pd.DataFrame(rates_rows(result), columns=RATES_HEADER).rename(columns={"A": set_a.name, "B": set_b.name})
    st.dataframe(rates, hide_index=True, key="cmp-rates")
    st.caption(RATES_NOTE)
else:
    st.caption("No failed and no unknown items in either set: every item has a category.")
depth_a, depth_b = (_depth(s, (s.id, s.created_at), str(ws.root)) for s in (set_a, set_b))
st.caption("Categories per categorised image: " + "; ".join(
    f"{md(s.name)} " + (", ".join(f"{k}: {v:,}" for k, v in d.items()) or "none")
    for s, d in ((set_a, depth_a), (set_b, depth_b))
) + ". Answers with more than the two categories asked for are counted in full.")  # fmt: skip

# --- embedding space -------------------------------------------------------------------------------------


def pick_model() -> EmbeddingModel | None:
    """A plain picker of local models (a stand-in until the shared local-model picker in ui/ exists)."""
    models = local_models(ws)  # checkpoints checked; pretrained tags not yet (that imports open_clip: seconds)
    asked = not models and st.button("Look for local CLIP weights", key="cmp-find-models-button")
    if not models and (asked or st.session_state.get("cmp-find-models")):
        st.session_state["cmp-find-models"] = True
        with st.spinner("Looking for local CLIP weights…"):
            models = local_models(ws, check_pretrained=True)
        if not models:
            st.info("No CLIP weights on this machine: pull a model's weights (`python -m services models pull "
                    "MODEL/TAG`, or the Embed & Train page), or set clip.checkpoint to a local file, then embed both "
                    "sets here.")  # fmt: skip
    if not models:
        st.caption("No vectors in this workspace yet, and no local checkpoint configured.")
        return None
    labels = [m.label for m in models]
    picked = st.selectbox("CLIP model", labels, bind=BIND, key="cmp-model",
                          help="Models whose weights are on this machine, and models with vectors in this workspace "
                               "(\"vectors only\": no local weights to embed more).")  # fmt: skip
    return models[labels.index(picked)]


def vector_coverage(model: EmbeddingModel) -> tuple[dict[str, SetImages], dict[str, int]] | None:
    """Per set: its images and how many have vectors, said in words; offers to embed the datasets that lack
    them. None while large sets wait for the user to ask (linking reads the whole catalog)."""
    if max(set_a.items, set_b.items) > AUTO_LINK_ITEMS and not st.session_state.get("cmp-link-requested"):
        st.caption(f"These sets hold up to {max(set_a.items, set_b.items):,} items: finding their images and counting "
                   "vectors reads the whole catalog (about 10 s per million items on a small machine), so it waits "
                   "for you.")  # fmt: skip
        if st.button("Find the sets' images and vectors", key="cmp-link"):
            st.session_state["cmp-link-requested"] = True
            st.rerun()
        return None
    shards = tuple(EmbeddingStore(ws, model.key).shards())
    images = {s.name: images_of(s) for s in (set_a, set_b)}
    lacking: dict[str, SetImages] = {}
    coverage: dict[str, int] = {}
    for s in (set_a, set_b):
        imgs = images[s.name]
        total = len(set(imgs.hashes.values()))
        have = coverage[s.name] = _coverage(imgs, (s.id, s.created_at), _workspace_version(), model.key, shards,
                                            str(ws.root))  # fmt: skip
        if not imgs.hashes:
            st.warning(f"{md(s.name)}: no vectors possible, {md(imgs.explain(s.name).split(': ', 1)[1])}")
            continue
        text = f"{md(s.name)}: {have:,} of {total:,} images have vectors for {md(model.label)}"
        text += f" ({imgs.missing:,} items are not stored images)" if imgs.missing else ""
        st.caption(f":orange[{text}]" if have < total else text)
        if have < total:
            lacking[s.name] = imgs
    if lacking:
        offer_embedding(model, lacking)
    for job_id in followed_jobs(manager, "cmp-embed-jobs"):
        with st.container(border=True):
            job_panel(manager, int(job_id))
    return images, coverage


def offer_embedding(model: EmbeddingModel, lacking: dict[str, SetImages]) -> None:
    """A button that starts the Embed stage's job for each dataset holding a set's unembedded images."""
    datasets_to_embed = sorted({imgs.link.dataset for imgs in lacking.values() if imgs.link.dataset})
    if model.local is None:  # a pretrained tag: is it in the local cache? (only asked when it matters)
        with st.spinner("Looking for the model's weights on this machine…"):
            model = dataclasses.replace(model, local=weights_on_disk(model.spec))
    if not model.local:
        st.info(f"{md(' and '.join(lacking))} lack vectors for this model, and its weights are not on this machine: "
                "pick a local model to embed them.")  # fmt: skip
        return
    if st.button(f"Embed {md(', '.join(datasets_to_embed))} with {md(model.label)}", key="cmp-embed-start",
                 icon=":material/memory:", type="primary"):  # fmt: skip
        started = []
        for name in datasets_to_embed:
            try:
                job_id = start_embed(ws, manager, name, model.spec)
            except (DatasetError, ValueError, RuntimeError) as exc:
                st.error(f"{md(name)}: {md(exc)}")
                continue
            launch(manager, job_id)
            started.append(job_id)
        follow_jobs("cmp-embed-jobs", started)


def show_distances(
    model: EmbeddingModel, images: dict[str, SetImages], coverage: dict[str, int]
) -> EmbeddingComparison | None:
    """The Compare embeddings button and its results: FD and KID with intervals, per category, the map."""
    ready = all(coverage[s.name] >= 2 for s in (set_a, set_b))
    resamples = int(st.number_input("Bootstrap resamples", 0, 2000, RESAMPLES, step=50, bind=BIND, key="cmp-resamples",
                                    help="For the FD and KID intervals; 0 skips them (seconds instead of tens of "
                                         "seconds on large sets)."))  # fmt: skip
    if st.button("Compare embeddings", key="cmp-embed", disabled=not ready):
        try:
            with st.spinner("Fréchet distance, KID, bootstrap intervals, domain classifier…"):
                by_category = category_hashes(ws, set_a, set_b, images[set_a.name], images[set_b.name])
                st.session_state["cmp-embedded"] = (
                    (set_a.name, set_b.name, model.key),
                    compare_embeddings(ws, model.key, list(images[set_a.name].hashes.values()),
                                       list(images[set_b.name].hashes.values()), by_category, resamples=resamples),
                )  # fmt: skip
        except ValueError as exc:
            st.error(md(exc))
    if not ready:
        st.caption("Compare embeddings needs at least two images with vectors in each set.")
    previous = st.session_state.get("cmp-embedded")
    if not previous or previous[0] != (set_a.name, set_b.name, model.key):
        return None
    embedded: EmbeddingComparison = previous[1]
    e1, e2, e3 = st.columns(3)
    e1.metric("Fréchet distance", f"{embedded.fd:.4f}")
    e1.caption(f"95% CI {fmt_interval(embedded.fd_ci)}")
    e2.metric("KID", f"{embedded.kid:.5f}")
    e2.caption(f"95% CI {fmt_interval(embedded.kid_ci, 5)}")
    e3.metric("Domain classifier AUC", f"{embedded.auc:.3f}")
    e3.caption(f"{embedded.n_a:,} and {embedded.n_b:,} vectors; intervals: basic bootstrap, "
               f"{embedded.resamples} resamples")  # fmt: skip
    for warning in embedded.warnings:
        st.warning(md(warning))
    if embedded.per_category:
        st.dataframe(pd.DataFrame(distance_rows(embedded), columns=DISTANCE_HEADER), hide_index=True,
                     key="cmp-distances")  # fmt: skip
    else:
        st.caption("No per-category figures: neither set has categories on its embedded images.")
    show_map(embedded)
    show_duplicates(embedded, images)
    return embedded


def show_map(embedded: EmbeddingComparison) -> None:
    st.caption("Lasso points on the map to see their images.")
    lasso = st.plotly_chart(projection_figure(embedded, (set_a.name, set_b.name)), key="cmp-projection",
                            on_select="rerun", selection_mode="lasso")  # fmt: skip
    chosen_points = lasso.get("selection", {}).get("points", []) if isinstance(lasso, dict) else []
    if chosen_points:
        st.caption(f"{len(chosen_points)} images selected" + (", the first 24 shown" if len(chosen_points) > 24
                                                              else ""))  # fmt: skip
        lassoed = [str(p["customdata"]) for p in chosen_points if p.get("customdata")]
        picked_hashes = lassoed[:24]
        paths = image_paths(ws, picked_hashes)
        in_a = set(embedded.hashes_a)
        show_thumbnails([(h, paths.get(h)) for h in picked_hashes], 6, caption=lambda h: "A" if h in in_a else "B")
        described = f"lassoed on the map of {set_a.name} and {set_b.name}"
        save_view_form("cmp-lasso", f"the {len(lassoed):,} images lassoed on the map", lambda name, kind: save_view(
            ws, name, lassoed, kind=kind, description=described))  # fmt: skip


def show_duplicates(embedded: EmbeddingComparison, images: dict[str, SetImages]) -> None:
    if not embedded.duplicates:
        st.caption("No near-duplicates across the sets (no pair with cosine ≥ 0.95 among the vectors used).")
        return
    item_of_a = {h: i for i, h in images[set_a.name].hashes.items()}
    item_of_b = {h: i for i, h in images[set_b.name].hashes.items()}
    st.markdown(f"**Near-duplicates across the sets**: the {len(embedded.duplicates)} closest pairs with cosine "
                "≥ 0.95, the three closest shown")  # fmt: skip
    rows = [(item_of_a.get(a, a), item_of_b.get(b, b), round(c, 4)) for a, b, c in embedded.duplicates]
    st.dataframe(pd.DataFrame(rows, columns=[set_a.name, set_b.name, "cosine"]), hide_index=True, key="cmp-dups")
    closest = embedded.duplicates[:3]
    paths = image_paths(ws, [h for a, b, _ in closest for h in (a, b)])
    show_thumbnails(
        [(h, paths.get(h)) for a, b, _ in closest for h in (a, b)],
        6,
        caption=lambda h: f"A {item_of_a[h][:20]}" if h in item_of_a else f"B {item_of_b.get(h, h)[:20]}",
    )


st.subheader("Embedding space")
st.caption(f"Fréchet distance and KID between the sets' CLIP vectors with 95% bootstrap intervals, overall and per "
           f"category (where both sets have at least {MIN_CATEGORY_IMAGES} embedded images of it), a domain "
           "classifier's AUC (0.5: indistinguishable) and a 2-D map.")  # fmt: skip
embedded = None
model = pick_model()
linked = vector_coverage(model) if model is not None else None
if model is not None and linked is not None:
    embedded = show_distances(model, *linked)

# --- clusters --------------------------------------------------------------------------------------------

st.subheader("Clusters")
st.caption("Both sets clustered together (on the embedding above when computed, else on descriptions): which "
           "kinds of image B has more of than A, and the words that describe them.")  # fmt: skip
if st.button("Find clusters", key="cmp-clusters"):
    try:
        chosen_key = embedded.key if embedded is not None else None
        st.session_state["cmp-cluster-report"] = cluster_sets(ws, set_a, set_b, chosen_key)
    except ValueError as exc:
        st.error(f"{md(exc)}. Clusters need descriptions (a CSV's description column, or Gemini descriptions) or "
                 "vectors for both sets.")  # fmt: skip
cluster_report = st.session_state.get("cmp-cluster-report")
if cluster_report is not None and cluster_report.a == set_a.name and cluster_report.b == set_b.name:
    st.caption(f"{len(cluster_report.clusters)} clusters by {cluster_report.method} on {cluster_report.features}. "
               "Click a row to see its images.")  # fmt: skip
    table = pd.DataFrame([{"cluster": "noise" if c.id == -1 else c.id, set_a.name: c.n_a, set_b.name: c.n_b,
                           "log2 lift": round(c.lift, 3), "keywords": ", ".join(c.keywords)}
                          for c in cluster_report.clusters])  # fmt: skip
    picked_cluster = st.dataframe(table, hide_index=True, key="cmp-cluster-table", on_select="rerun",
                                  selection_mode="single-row")  # fmt: skip
    rows = picked_cluster.get("selection", {}).get("rows", []) if isinstance(picked_cluster, dict) else []
    if rows:
        c = cluster_report.clusters[rows[0]]
        found = item_images(ws, set_a, c.items_a) | item_images(ws, set_b, c.items_b)
        entries = [(i, found[i][1] if i in found else None) for i in c.items_a + c.items_b]
        show_thumbnails(entries, 8, caption=lambda i: "A" if i in c.items_a else "B")
    if cluster_report.keywords:
        st.dataframe(pd.DataFrame([vars(k) for k in cluster_report.keywords]), hide_index=True, key="cmp-keywords")
    else:
        st.caption("No keyword table: the sets have no descriptions to count words in.")
else:
    st.caption("Not run yet for these two sets.")

# --- confounds -------------------------------------------------------------------------------------------

st.subheader("Confounds")
st.caption("Format, resolution, file size and JPEG quality per set: if these alone separate the sets, a model (or "
           "FD) may be measuring them rather than content.")  # fmt: skip
if st.button("Check image properties per set", key="cmp-confounds"):
    sets = {s.name: list(images_of(s).hashes.values()) for s in (set_a, set_b)}
    st.session_state["cmp-confound-result"] = ((set_a.name, set_b.name), confounds(ws, sets))
confound_saved = st.session_state.get("cmp-confound-result")
found_confounds = None
if confound_saved and confound_saved[0] == (set_a.name, set_b.name):
    found_confounds = confound_saved[1]
    for s in (set_a, set_b):
        if not found_confounds.rows.get(s.name):
            st.info(f"No image properties for {md(link_of(s).explain(s.name))}")
    if all(found_confounds.rows.values()):
        if found_confounds.warnings:
            for warning in found_confounds.warnings:
                st.warning(md(warning))
        else:
            st.success("No property differs enough to explain a difference on its own.")
    st.dataframe(pd.DataFrame(found_confounds.summary()), hide_index=True, key="cmp-confound-table")
    st.caption("Per set: " + "; ".join(f"{md(name)} {found_confounds.sampled.get(name, 0):,} of "
                                       f"{found_confounds.of.get(name, 0):,} images looked at"
                                       for name in found_confounds.rows))  # fmt: skip
else:
    st.caption("Not checked yet for these two sets.")

# --- export ----------------------------------------------------------------------------------------------

st.subheader("Export")
if st.button("Write the HTML report and CSV tables", key="cmp-report"):
    stem = file_name(f"compare-{to_name(set_a.name)}-vs-{to_name(set_b.name)}")  # free text, never a path
    out = ws.root / "exports" / f"{stem}.html"
    clustered = st.session_state.get("cmp-cluster-report")
    sections = [depth_section(result, depth_a, depth_b)]
    if clustered is not None and clustered.a == set_a.name and clustered.b == set_b.name:
        sections.append(cluster_section(clustered))
    try:
        html_report(result, out, embedded, found_confounds, sections=sections)
        write_tables(result, out.parent / stem, ws.settings.csv_formula_guard)
    except OSError as exc:  # a full disk or a read-only workspace: said here, never a trace
        st.error(f"Could not write the report: {md(exc.strerror or exc)}. Free space in the workspace and try again.")
    else:
        st.session_state["cmp-report-path"] = (str(out), set_a.name, set_b.name, test)
written = st.session_state.get("cmp-report-path")
if written and tuple(written[1:]) == (set_a.name, set_b.name, test) and Path(written[0]).is_file():
    report_path = Path(written[0])  # the report of the sets and test picked now, not of an earlier pick
    st.download_button("Report (HTML)", report_path.read_bytes(), file_name=report_path.name, key="cmp-report-download")
    st.caption(f"Written to {code(display_path(ws, report_path))} with CSV tables beside it")
else:
    st.caption("The report holds what this page shows: charts, tables, and the embedding figures and image "
               "properties once computed above.")  # fmt: skip
chart_format = st.radio("Charts as", CHART_FORMATS, horizontal=True, bind=BIND, key="cmp-chart-format")
if st.button(f"Draw the charts as {chart_format.upper()} files", key="cmp-charts"):
    try:
        with st.spinner("Drawing the charts (kaleido, with the server's Chromium)..."):
            st.session_state["cmp-charts-zip"] = (chart_zip(result, chart_format), set_a.name, set_b.name, chart_format)
    except ChartRenderError as exc:
        show_error(exc)
drawn = st.session_state.get("cmp-charts-zip")
if drawn and tuple(drawn[1:]) == (set_a.name, set_b.name, chart_format):
    stem = file_name(f"charts-{to_name(set_a.name)}-vs-{to_name(set_b.name)}")
    st.download_button(f"Charts ({chart_format.upper()}, zip)", drawn[0], file_name=f"{stem}.zip",
                       key="cmp-charts-download")  # fmt: skip
    st.caption("The seeds' reports/*.png: each set's categories, both side by side, as shares, and the differences")

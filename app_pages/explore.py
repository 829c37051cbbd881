"""Explore: search the catalog's images by text, by an example image, or "more like this" on any result; find
near-duplicate groups and choose which copies exports keep."""

from pathlib import Path
from typing import Any, Literal

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from services.core.datasets import image_paths, list_datasets
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.clip_models import ModelUnavailableError
from services.io.embedding_store import EmbeddingStore, list_embedding_keys
from services.stages.describe.categorize_clip import CLIP_STAGE
from services.stages.describe.stage import CATEGORIZE_STAGE, DESCRIBE_STAGE
from services.stages.explore.browse import (
    MAX_NAME_CHARS,
    SORTS,
    BrowseFilter,
    browse_count,
    browse_page,
    categories_of,
    classifiers_of,
    describe_filter,
    flags_of,
    formats_of,
    stages_run,
    tags_of,
)
from services.stages.explore.duplicate_choices import current_choices, image_sizes, record_choices, suggested_choices
from services.stages.explore.image_detail import image_detail
from services.stages.explore.neighbours import (
    DEFAULT_THRESHOLD,
    MAX_K,
    DuplicateGroup,
    leaks,
    near_duplicate_groups,
    outliers,
)
from services.stages.explore.perceptual import DEFAULT_MAX_DISTANCE, start_phash, unhashed_images
from services.stages.explore.perceptual import MAX_INLINE as PHASH_INLINE
from services.stages.explore.saved_views import save_browse_view, save_view
from services.stages.explore.search import MAX_K as MAX_RANKED
from services.stages.explore.search import MAX_TEXT_CHARS, embedded_datasets, hit_names, pick_key, search
from services.stages.ocr.stage import OCR_STAGE
from ui.auth import current_user
from ui.components import job_panel, launch, save_view_form
from ui.errors import show_error
from ui.page_state import BIND, follow_jobs, followed_jobs
from ui.server_path import display_locators
from ui.state import get_job_manager, get_workspace
from ui.text import md

ws = get_workspace()
COLUMNS = 6
ALL = "All datasets"
GROUPS_PER_PAGE = 10
LEAK_PAIRS_SHOWN = 60
BROWSE_PAGE = 24
CHOICE_FILTERS: dict[str, Literal["any", "kept", "dropped"]] = {"any": "any", "kept": "kept", "dropped": "dropped"}
OCR_FILTERS: dict[str, Literal["any", "read", "valid", "invalid"]] = {
    "any": "any", "a code was read": "read", "a valid code": "valid", "read but not valid": "invalid",
}  # fmt: skip


def duplicates_view(ws: Workspace, names: list[str], keys: list[str]) -> None:
    """Near-duplicate groups of the chosen datasets, a page of groups at a time, each image with a drop box."""
    c1, c2, c3 = st.columns([3, 1, 2])
    chosen = c1.multiselect("Datasets", names, default=names[:1], bind=BIND, key="ex-dup-datasets",
                            help="Groups form within and across the datasets chosen.")  # fmt: skip
    threshold = float(c2.number_input("Cosine at least", 0.80, 1.0, DEFAULT_THRESHOLD, 0.005, format="%.3f",
                                      bind=BIND, key="ex-dup-threshold",
                                      help="Calibrate on your data: look at the groups just above it."))  # fmt: skip
    edited = st.checkbox(
        f"Also edited copies (perceptual hashes at most {DEFAULT_MAX_DISTANCE} bits apart)", bind=BIND,
        key="ex-dup-phash", help="Resized, re-encoded, brightened or slightly cropped copies of one picture. Each "
        "image's hash is computed once from its file (a job for a dataset's images), then kept. Flat synthetic "
        "graphics hash alike: check the groups before dropping.",
    )  # fmt: skip
    if not chosen:
        st.info("Choose at least one dataset.")
        return
    if edited and not _phashes_ready(ws, chosen):
        return
    try:
        key = pick_key(ws, chosen[0])
    except WorkbenchError as exc:
        show_error(exc)
        return
    key = c3.selectbox("Embedding model", keys, index=keys.index(key), key="ex-dup-model")
    phash = DEFAULT_MAX_DISTANCE if edited else None
    asked = (tuple(chosen), threshold, key, phash)
    if st.button("Find near-duplicates", type="primary", key="ex-dup-run", icon=":material/content_copy:"):
        try:
            with st.spinner("Reading every image's nearest neighbours…"):
                fresh = near_duplicate_groups(ws, key, chosen, threshold, phash_distance=phash)
                st.session_state["ex-dup-groups"] = (asked, fresh)
        except WorkbenchError as exc:
            show_error(exc)
            return
        st.session_state["ex-dup-page"] = 1
        _new_boxes()
    found = st.session_state.get("ex-dup-groups")
    if not found:
        return
    if found[0] != asked:
        st.caption("The settings changed since the groups were found: find them again to see the new groups.")
    groups: list[DuplicateGroup] = found[1]
    members = [h for g in groups for h in g.members]
    if not groups:
        st.success(f"No near-duplicates at cosine ≥ {found[0][1]:.3f}.")
        return
    chosen_now = current_choices(ws, members)
    dropped = sum(1 for c in chosen_now.values() if c == "drop")
    plural = "s" if len(groups) != 1 else ""
    st.write(f"**{len(groups):,} group{plural}**, {len(members):,} images; {dropped:,} chosen to drop (exports "
             "leave them out).")  # fmt: skip
    if st.button("Keep the best copy of every group, drop the rest", key="ex-dup-suggest",
                 help="The best copy: the most pixels, then the largest file."):  # fmt: skip
        record_choices(ws, suggested_choices(ws, groups), current_user(), f"Explore: cosine >= {found[0][1]:.3f}")
        _new_boxes("Kept the best copy of every group and dropped the rest.")
        st.rerun()
    if saved := st.session_state.pop("ex-dup-saved", None):
        st.success(saved)
    pages = max(1, -(-len(groups) // GROUPS_PER_PAGE))
    page = int(st.number_input(f"Page (of {pages})", 1, pages, bind=BIND, key="ex-dup-page"))
    shown = groups[(page - 1) * GROUPS_PER_PAGE : page * GROUPS_PER_PAGE]
    on_page = [h for g in shown for h in g.members]
    paths = image_paths(ws, on_page)
    shown_names = hit_names(ws, on_page)
    sizes = image_sizes(ws, on_page)
    for n, group in enumerate(shown, (page - 1) * GROUPS_PER_PAGE + 1):
        with st.container(border=True):
            st.caption(f"Group {n}: {len(group.members)} images, {group.describe()}")
            cells = st.columns(COLUMNS)
            for i, image_hash in enumerate(group.members):
                cell = cells[i % COLUMNS]
                name = short_name(shown_names.get(image_hash, ""))
                width, height = sizes.get(image_hash, (0, 0))
                caption = f"{md(name)} · {width}×{height}"
                if image_hash in paths:
                    cell.image(str(ws.abspath(paths[image_hash])), caption=caption)
                else:
                    cell.caption(f"{caption} (no stored file)")
                cell.checkbox("Drop", value=chosen_now.get(image_hash) == "drop", key=_box(image_hash))
    if st.button("Save the choices on this page", key="ex-dup-save", icon=":material/save:"):
        changes = {}
        for image_hash in on_page:
            wanted = "drop" if st.session_state.get(_box(image_hash)) else "keep"
            if wanted != chosen_now.get(image_hash, "keep"):
                changes[image_hash] = wanted
        if changes:
            record_choices(ws, changes, current_user(), "Explore page")
        _new_boxes(f"Saved {len(changes)} changed choices." if changes else "Nothing changed.")
        st.rerun()


def _phashes_ready(ws: Workspace, chosen: list[str]) -> bool:
    """Whether the chosen datasets' perceptual hashes are (nearly) all there; else a button starts the job that
    computes them (a few missing ones are computed with the groups)."""
    manager = get_job_manager()
    followed = followed_jobs(manager, "ex-dup-phash-jobs")
    running = [j for j in followed if manager.progress(j).state in ("created", "running")]
    if running:
        for job_id in running:
            job_panel(manager, job_id)
        return False
    missing = unhashed_images(ws, chosen)
    if missing <= PHASH_INLINE:
        return True
    st.info(f"{missing:,} images of {md(', '.join(chosen))} have no perceptual hash yet: compute them first "
            "(a job, one decode an image; then the groups take them).")  # fmt: skip
    if st.button("Compute perceptual hashes", key="ex-dup-phash-start", icon=":material/fingerprint:"):
        started = []
        for name in chosen:
            try:
                job_id = start_phash(ws, manager, name)
            except WorkbenchError as exc:
                show_error(exc)
                continue
            launch(manager, job_id)
            started.append(job_id)
        follow_jobs("ex-dup-phash-jobs", started)
        st.rerun()
    return False


def browse_view(ws: Workspace) -> None:
    """A dataset, several, or the whole catalog as a paged grid, filtered and sorted on what the catalog knows
    about its images (each image once)."""
    summaries = [d for d in list_datasets(ws.catalog) if d.images]
    if not summaries:
        st.info("No dataset with stored images yet: start on the Download page.")
        return
    c1, c2, c3 = st.columns([3, 1, 1])
    datasets = tuple(c1.multiselect(
        "Datasets", [d.name for d in summaries], default=[summaries[0].name], bind=BIND, key="ex-br-datasets",
        placeholder="The whole catalog", help="None chosen: every dataset. An image held by several is shown once.",
    ))  # fmt: skip
    kinds = tuple(c2.multiselect("Kinds", sorted({d.kind for d in summaries}), bind=BIND, key="ex-br-kinds",
                                 placeholder="Any kind", help="Only the chosen datasets of these kinds."))  # fmt: skip
    try:
        classifiers = classifiers_of(ws, datasets, kinds)
    except WorkbenchError as exc:
        show_error(exc)
        return
    sorts = [s for s in SORTS if classifiers or "score" not in s]
    sort = c3.selectbox("Sort by", sorts, bind=BIND, key="ex-br-sort") or sorts[0]
    with st.expander("Filters", expanded=True):
        f1, f2, f3 = st.columns(3)
        tags = f1.multiselect("Folder tags (any of)", tags_of(ws, datasets, kinds), bind=BIND, key="ex-br-tags")
        formats = f2.multiselect("Formats", formats_of(ws), bind=BIND, key="ex-br-formats")
        name = f3.text_input("Name contains", max_chars=MAX_NAME_CHARS, bind=BIND, key="ex-br-name")
        g1, g2, g3, g4 = st.columns(4)
        min_width = int(g1.number_input("Width at least (px)", 0, 100_000, 0, 16, bind=BIND, key="ex-br-min-width"))
        min_height = int(g2.number_input("Height at least (px)", 0, 100_000, 0, 16, bind=BIND,
                                         key="ex-br-min-height"))  # fmt: skip
        flags = flags_of(ws, datasets, kinds)
        flag = g3.selectbox("Quality flag", ["(any)", *flags], bind=BIND, key="ex-br-flag",
                            disabled=not flags, help="Set by Preprocess's quality checks.")  # fmt: skip
        choice = g4.selectbox("Near-duplicate choice", list(CHOICE_FILTERS), bind=BIND, key="ex-br-choice")
        model, min_score = None, None
        if classifiers:
            h1, h2 = st.columns([2, 1])
            picked = h1.selectbox("Classifier score", ["(none)", *classifiers], format_func=lambda m: classifiers.get(
                m, m), bind=BIND, key="ex-br-model")  # fmt: skip
            if picked != "(none)":
                model = picked
                min_score = float(h2.slider("Score at least", 0.0, 1.0, 0.0, 0.01, bind=BIND, key="ex-br-score"))
        results = _result_filters(ws, datasets, kinds)
    if "score" in sort and model is None:
        st.caption("Sorting by score: choose a classifier under Filters.")
        return
    selection = BrowseFilter(
        datasets, kinds, tuple(tags), tuple(formats), min_width, min_height, name_contains=name.strip(),
        flag=None if flag == "(any)" else flag, score_model=model, min_score=min_score or None,
        choice=CHOICE_FILTERS.get(choice or "any", "any"), sort=sort, **results,
    )  # fmt: skip
    embedded = embedded_datasets(ws)
    if any(d.name in embedded for d in summaries if d.name in datasets or not datasets):
        ranked_by = st.text_input(
            "Rank by what they show (CLIP)", max_chars=MAX_TEXT_CHARS, placeholder="a red truck at night", bind=BIND,
            key="ex-br-text", help=f"The images that pass the filters, best match first (the first {MAX_RANKED:,}).",
        ).strip()  # fmt: skip
        if ranked_by:
            _ranked_grid(ws, selection, ranked_by)
            return
    try:
        total = browse_count(ws, selection)
        pages = max(1, -(-total // BROWSE_PAGE))
        page = int(st.number_input(f"Page (of {pages:,})", 1, pages, 1, bind=BIND, key="ex-br-page"))
        rows = browse_page(ws, selection, (min(page, pages) - 1) * BROWSE_PAGE, BROWSE_PAGE)
    except WorkbenchError as exc:
        show_error(exc)
        return
    held = (
        browse_count(ws, BrowseFilter(datasets, kinds))
        if selection != BrowseFilter(datasets, kinds, sort=sort)
        else total
    )
    where = datasets[0] if len(datasets) == 1 else f"{len(datasets)} datasets" if datasets else "the catalog"
    st.caption(f"{total:,} of the {held:,} images of {md(where)}{' (' + ', '.join(kinds) + ')' if kinds else ''} "
               f"pass the filters; {sort}.")  # fmt: skip
    if total:
        save_view_form("ex-br", f"the {total:,} images that pass, in this order",
                        lambda name, kind: save_browse_view(ws, name, selection, kind=kind))  # fmt: skip
    captions = []
    for r in rows:
        score = f" · {r.score:.3f}" if r.score is not None else ""
        captions.append((r.image_hash, f"{r.width}×{r.height} · {file_size(r.bytes)}{score}"))
    _grid(ws, captions, prefix="ex-br", names={r.image_hash: f"{r.dataset}: {r.name}" for r in rows})


def _ranked_grid(ws: Workspace, selection: BrowseFilter, text: str) -> None:
    """The filtered images ranked by a text query: filters combined with search."""
    page = int(st.number_input("Page", 1, MAX_RANKED // BROWSE_PAGE, 1, bind=BIND, key="ex-br-rank-page"))
    try:
        result, where = search(ws, text=text, k=min(MAX_RANKED, page * BROWSE_PAGE), within=selection)
    except (WorkbenchError, ModelUnavailableError) as exc:
        show_error(exc)
        return
    hits = result.hits[(page - 1) * BROWSE_PAGE :]
    total = browse_count(ws, selection)
    st.caption(f"The {total:,} images that pass the filters, ranked by the text in {md(result.key)}: "
               f"{(page - 1) * BROWSE_PAGE + 1 if hits else 0:,} to {len(result.hits):,} "
               f"({result.seconds:.2f} s {'in the workspace worker' if where == 'worker' else 'here'}).")  # fmt: skip
    if result.hits:
        ranked = [h.image_hash for h in result.hits]
        save_view_form("ex-br-rank", f"the {len(ranked)} ranked images, best first", lambda name, kind: save_view(
            ws, name, ranked, source_dataset=selection.one_dataset, kind=kind,
            description=f"{describe_filter(selection)}; ranked by the text {text!r}"))  # fmt: skip
    _grid(ws, [(h.image_hash, f"{h.score:.3f}") for h in hits], prefix="ex-br-rank")


def _result_filters(ws: Workspace, datasets: tuple[str, ...], kinds: tuple[str, ...]) -> dict[str, Any]:
    """Filters on what the stages found (Gemini's and CLIP's categories, the description, the OCR reading),
    offered only for the stages that ran on these datasets."""
    ran = stages_run(ws, datasets, kinds)
    offered = [s for s in (CATEGORIZE_STAGE, CLIP_STAGE, DESCRIBE_STAGE, OCR_STAGE) if s in ran]
    if not offered:
        st.caption("Filters on categories, descriptions and OCR readings appear once those stages ran here.")
        return {}
    found: dict[str, Any] = {}
    cells = iter(st.columns(len(offered) + (OCR_STAGE in ran)))
    for stage, field, label in ((CATEGORIZE_STAGE, "category", "Gemini category"),
                                (CLIP_STAGE, "clip_category", "CLIP zero-shot category")):  # fmt: skip
        if stage in ran:
            options = ["(any)", *categories_of(ws, stage)]
            picked = next(cells).selectbox(label, options, bind=BIND, key=f"ex-br-{field.replace('_', '-')}")
            found[field] = None if picked in (None, "(any)") else picked
    if DESCRIBE_STAGE in ran:
        text = next(cells).text_input(
            "Description contains",
            max_chars=MAX_NAME_CHARS,
            bind=BIND,
            key="ex-br-desc",
            help="Any text of Gemini's description: its summary, objects, attributes.",
        )
        found["description_contains"] = text.strip()
    if OCR_STAGE in ran:
        reading = next(cells).selectbox("OCR reading", list(OCR_FILTERS), bind=BIND, key="ex-br-ocr")
        found["ocr"] = OCR_FILTERS.get(reading or "any", "any")
        found["ocr_code_contains"] = (
            next(cells)
            .text_input("OCR code contains", max_chars=MAX_NAME_CHARS, bind=BIND, key="ex-br-ocr-code")
            .strip()
        )
    return found


def outliers_view(ws: Workspace, names: list[str]) -> None:
    """The most unusual images of the chosen datasets: uniqueness = 1 - mean cosine of the k nearest."""
    c1, c2, c3 = st.columns([3, 1, 1])
    chosen = c1.multiselect("Datasets", names, default=names[:1], bind=BIND, key="ex-out-datasets",
                            help="Each image is compared with the images of the datasets chosen.")  # fmt: skip
    k = int(c2.number_input("Neighbours (k)", 1, MAX_K, 10, bind=BIND, key="ex-out-k"))
    top = int(c3.number_input("Show", 6, 300, 24, 6, bind=BIND, key="ex-out-top"))
    if not chosen:
        st.info("Choose at least one dataset.")
        return
    asked = (tuple(chosen), k)
    if st.button("Rank by uniqueness", type="primary", key="ex-out-run", icon=":material/scatter_plot:"):
        try:
            key = pick_key(ws, chosen[0])
            with st.spinner("Reading every image's nearest neighbours…"):
                st.session_state["ex-out-ranked"] = (asked, key, outliers(ws, key, chosen, k))
        except WorkbenchError as exc:
            show_error(exc)
            return
    found = st.session_state.get("ex-out-ranked")
    if not found:
        return
    if found[0] != asked:
        st.caption("The settings changed since the ranking: rank again to see the new one.")
    _, key, ranked = found
    st.caption(f"{len(ranked):,} images ranked by uniqueness in {md(key)}; the most unusual first (a caption: "
               "uniqueness · cosine of the nearest · name).")  # fmt: skip
    shown = ranked[:top]
    _grid(ws, [(o.image_hash, f"{o.uniqueness:.3f} · {o.nearest:.3f}") for o in shown], prefix="ex-out")


def leaks_view(ws: Workspace, names: list[str]) -> None:
    """Images of one dataset with a near-duplicate in another (a test set and its training set)."""
    if len(names) < 2:
        st.info("A leak report compares two embedded datasets; embed a second one on Embed & Train.")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    mine = c1.selectbox("Images of", names, bind=BIND, key="ex-leak-dataset")
    others = [n for n in names if n != mine]
    theirs = c2.selectbox("Near an image of", others, bind=BIND, key="ex-leak-against")
    threshold = float(c3.number_input("Cosine at least", 0.80, 1.0, DEFAULT_THRESHOLD, 0.005, format="%.3f",
                                      bind=BIND, key="ex-leak-threshold"))  # fmt: skip
    if theirs is None:
        return
    try:
        key = pick_key(ws, mine)
        with st.spinner("Looking for each image's nearest neighbour in the other dataset…"):
            found = leaks(ws, key, mine, theirs, threshold)
    except WorkbenchError as exc:
        show_error(exc)
        return
    if not found:
        st.success(f"No image of {md(mine)} has a near-duplicate in {md(theirs)} at cosine ≥ {threshold:.3f}.")
        return
    st.warning(f"{len(found):,} images of {md(mine)} have a near-duplicate in {md(theirs)} (cosine ≥ "
               f"{threshold:.3f}); each pair: the image, then its nearest in {md(theirs)}.")  # fmt: skip
    pairs = found[:LEAK_PAIRS_SHOWN]
    _grid(ws, [(h, f"{score:.3f}") for a, b, score in pairs for h in (a, b)], columns=4, prefix="ex-leak")
    if len(found) > LEAK_PAIRS_SHOWN:
        st.caption(f"The first {LEAK_PAIRS_SHOWN} pairs; all of them: `duplicates --dataset {mine} --against "
                   f"{theirs} --csv leaks.csv`.")  # fmt: skip


def _grid(
    ws: Workspace,
    cells: list[tuple[str, str]],
    columns: int = COLUMNS,
    prefix: str = "ex-grid",
    names: dict[str, str] | None = None,
) -> None:
    """Images with a caption each, in rows of `columns`; each opens its detail. `names`: what to call each
    image ("dataset: name"), else its name in the first dataset holding it."""
    hashes = [h for h, _ in cells]
    paths = image_paths(ws, hashes)
    shown_names = names if names is not None else hit_names(ws, hashes)
    for n, (image_hash, caption) in enumerate(cells):
        if n % columns == 0:
            row = st.columns(columns)  # a row at a time: images of different heights stay aligned
        text = f"{caption} · {md(short_name(shown_names.get(image_hash, '')))}"
        if image_hash in paths:
            row[n % columns].image(str(ws.abspath(paths[image_hash])), caption=text)
        else:
            row[n % columns].caption(f"{text} (no stored file)")
        _detail_button(row[n % columns], image_hash, f"{prefix}-{n}")


def _detail_button(cell: DeltaGenerator, image_hash: str, key: str) -> None:
    if cell.button("Details", key=f"{key}-detail", icon=":material/info:", type="tertiary"):
        show_detail(image_hash)


@st.dialog("Image detail", width="large")
def show_detail(image_hash: str) -> None:
    """Everything the catalog holds about one image: its file, sources, datasets and tags, every stage result,
    scores, labels, near-duplicate choices."""
    try:
        d = image_detail(ws, image_hash)
    except WorkbenchError as exc:
        show_error(exc)
        return
    left, right = st.columns([1, 2])
    if d.path:
        left.image(str(ws.abspath(d.path)))
    right.markdown(f"`{d.hash}`  \n{d.format} · {d.width}×{d.height} px · {file_size(d.bytes)}")
    if d.aliases:
        right.caption(" · ".join(f"{md(k)}: `{v[:24]}…`" for k, v in d.aliases.items()))
    if d.phash:
        right.caption(f"perceptual hash `{d.phash}`")
    if right.button("More like this", key="ex-detail-like", icon=":material/image_search:"):
        st.session_state["ex-query"] = {"like": d.hash}
        st.session_state["ex-to-search"] = True  # the view switch is set before it is drawn, on the next run
        st.rerun()
    st.markdown("**In datasets**")
    st.dataframe([{**m, "tags": ", ".join(m["tags"])} for m in d.datasets], hide_index=True)
    st.markdown("**Sources**")
    shown = display_locators(ws, [s["locator"] for s in d.sources])
    st.dataframe([{"kind": s["kind"], "where": loc} for s, loc in zip(d.sources, shown, strict=True)], hide_index=True)
    if d.scores:
        st.markdown("**Classifier scores**")
        st.dataframe(d.scores, hide_index=True)
    if d.labels:
        st.markdown("**Labels (categorised CSVs and label sets)**")
        st.dataframe(d.labels, hide_index=True)
    if d.choices:
        st.markdown("**Near-duplicate choices** (the latest counts)")
        st.dataframe(d.choices, hide_index=True)
    st.markdown(f"**Stage results** ({len(d.results)})")
    for r in d.results:
        with st.expander(f"{r['stage']} · {r['settings']} · {r['status']}"):
            if r["error"]:
                st.error(md(r["error"]))
            if isinstance(r["result"], dict | list):
                st.json(r["result"], expanded=2)
            elif r["result"] is not None:
                st.text(str(r["result"]))


def file_size(n: int) -> str:
    """Bytes as a person reads them: 301 B, 16.6 KB, 2.4 MB."""
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:,.1f} KB" if n < 1024**2 else f"{n / 1024**2:,.1f} MB"


def short_name(name: str) -> str:
    """ "dataset: folder/file.png" as "dataset: file.png" (the dataset says where, the file which)."""
    dataset, sep, rest = name.partition(": ")
    return f"{dataset}: {Path(rest).name}" if sep else Path(name).name


def _box(image_hash: str) -> str:
    """A Drop box's key: new boxes (showing the recorded choices) after every recording."""
    return f"ex-drop-{st.session_state.get('ex-dup-version', 0)}-{image_hash[:16]}"


def _new_boxes(message: str | None = None) -> None:
    st.session_state["ex-dup-version"] = st.session_state.get("ex-dup-version", 0) + 1
    if message:
        st.session_state["ex-dup-saved"] = message


st.title("Explore")
st.caption(
    "Search every embedded image by what it shows, in words or by an example, with the CLIP model the images "
    "were embedded with. Results are ranked by cosine similarity; “More like this” searches from any result. "
    "Browse pages through a dataset, several or the whole catalog with filters on what the catalog knows. "
    "Duplicates finds near-copies and records which copy each export keeps; Outliers ranks the most unusual "
    "images; Leaks lists the images of one dataset with a near-copy in another (a test set and its training set)."
)

VIEWS = ["Search", "Browse", "Duplicates", "Outliers", "Leaks"]
if st.session_state.pop("ex-to-search", False):
    st.session_state["ex-mode"] = "Search"
mode = st.radio("View", VIEWS, horizontal=True, bind=BIND, key="ex-mode")
if mode == "Browse":  # the catalog alone: no vectors needed
    browse_view(ws)
    st.stop()
keys = list_embedding_keys(ws)
if not keys:
    st.info(
        "No image has a CLIP vector yet: embed a dataset on the Embed & Train page (or `python -m services embed`) "
        "to search it and find duplicates, outliers and leaks; Browse needs none."
    )
    st.stop()
names = embedded_datasets(ws)
if mode == "Duplicates":
    duplicates_view(ws, names, keys)
    st.stop()
if mode == "Outliers":
    outliers_view(ws, names)
    st.stop()
if mode == "Leaks":
    leaks_view(ws, names)
    st.stop()

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
if result.hits:
    described = f"the {len(result.hits)} results, best first"
    save_view_form("ex-search", described, lambda name, kind: save_view(
        ws, name, hashes, source_dataset=dataset, description=f"search for {what}, top {k}", kind=kind))  # fmt: skip
for n, hit in enumerate(result.hits):
    if n % COLUMNS == 0:
        grid = st.columns(COLUMNS)  # a row at a time: images of different heights stay aligned
    cell = grid[n % COLUMNS]
    name = shown_names.get(hit.image_hash, "")
    if hit.image_hash in paths:
        cell.image(str(ws.abspath(paths[hit.image_hash])), caption=f"{hit.score:.3f} · {md(Path(name).name)}")
    else:
        cell.caption(f"{hit.score:.3f} · {md(name)} (no stored file)")
    if cell.button("More like this", key=f"ex-like-{n}", icon=":material/image_search:"):
        st.session_state["ex-query"] = {"like": hit.image_hash}
        st.rerun()
    _detail_button(cell, hit.image_hash, f"ex-hit-{n}")

"""Preprocess: pick a dataset and a recipe, preview before/after, run as a job, browse the results."""

import streamlit as st

from services.core.datasets import image_count, list_datasets
from services.core.errors import WorkbenchError
from services.core.server_paths import FOLDER_OR_ZIP
from services.stages.download.folder_import import start_folder_import
from services.stages.preprocess.quality import FLAGS
from services.stages.preprocess.recipes import (
    RecipeExistsError,
    draft_of,
    is_builtin,
    list_recipes,
    load_recipe,
    recipe_versions,
    renamed,
    save_recipe,
)
from services.stages.preprocess.stage import (
    preview,
    quality_counts,
    results_page,
    sample_images,
    start_preprocess,
)
from ui.components import job_panel, launch, workers_input
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
from ui.recipe_editor import edit_recipe
from ui.server_path import server_path_input
from ui.state import get_job_manager, get_workspace
from ui.text import code, md

ws = get_workspace()
manager = get_job_manager()
PAGE_SIZE = 12

st.title("Preprocess")
st.caption("OCR-ready copies of a dataset's images from a recipe. Results are kept per recipe version; "
           "rerunning skips what is done.")  # fmt: skip

with st.expander("Import a folder from the server as a dataset"):
    folder = server_path_input(ws, "Folder or .zip", FOLDER_OR_ZIP, "pp-folder", placeholder="/data/parts")
    if st.button("Import folder", key="pp-import", icon=":material/drive_folder_upload:", disabled=not folder):
        try:
            job_id = start_folder_import(ws, manager, folder)  # type: ignore[arg-type]
        except WorkbenchError as exc:
            show_error(exc)
        else:
            launch(manager, job_id)
            follow_job("pp-job", job_id)

names = [d.name for d in list_datasets(ws.catalog)]
if not names:
    st.info("No datasets yet: download some on the Download page, or import a folder above.")
    st.stop()


def _save_name_default(name: str) -> str:
    """What "Save as" offers for a recipe: its own name, or a new one for a read-only built-in."""
    return f"{name}-custom" if is_builtin(name) else name


def _follow_selection() -> None:
    """The "Save as" name and the version follow the recipe picked (not the first one looked at)."""
    st.session_state["pp-save-name"] = _save_name_default(st.session_state["pp-recipe"])
    st.session_state.pop("pp-version", None)
    st.session_state.pop("pp-confirm", None)


if (chosen := st.session_state.pop("pp-select-next", None)) is not None:  # just saved: show what was saved
    st.session_state["pp-recipe"] = chosen
    st.session_state["pp-save-name"] = chosen
    st.session_state.pop("pp-version", None)

left, middle, right = st.columns([4, 4, 2])
dataset = left.selectbox("Dataset", names, bind=BIND, key="pp-dataset")
recipe_name = middle.selectbox("Recipe", list_recipes(ws.root), bind=BIND, key="pp-recipe", on_change=_follow_selection)
versions = recipe_versions(ws.root, recipe_name)
version = right.selectbox("Version", versions[::-1], bind=BIND, key="pp-version", disabled=len(versions) < 2)
try:
    base = load_recipe(ws.root, recipe_name, version)
except WorkbenchError as exc:
    show_error(exc)
    st.stop()
kind = "built-in, read-only" if is_builtin(base.name) else f"{len(versions)} saved version(s)"
st.caption(f"{md(base.description)}  \nVersion {base.version} ({kind}) · settings `{base.settings_hash[:10]}`")
st.session_state.setdefault("pp-save-name", _save_name_default(recipe_name))

with st.container(border=True):
    st.markdown("**Recipe**")
    edited = edit_recipe(base, key="pp-editor")
    recipe = draft_of(base, edited) if edited is not None else None
    if recipe is not None and recipe is not base:
        st.caption(f"Edited, not saved: runs as {code(recipe.name)} (version {recipe.version}) until you save it.")
    save_left, save_right = st.columns([3, 1])
    save_as = save_left.text_input("Save as", bind=BIND, key="pp-save-name", label_visibility="collapsed")

    def _save(overwrite: bool) -> None:
        try:
            saved = save_recipe(ws.root, renamed(edited, save_as.strip()), overwrite=overwrite)  # type: ignore[arg-type]
        except RecipeExistsError as exc:
            st.session_state["pp-confirm"] = (save_as.strip(), str(exc))
        except WorkbenchError as exc:
            show_error(exc)
        else:
            st.session_state.pop("pp-confirm", None)
            st.session_state["pp-select-next"] = saved.name
            st.session_state["pp-saved"] = f"Saved {md(saved.name)} v{saved.version}"
            st.rerun()

    if save_right.button("Save recipe", key="pp-save", icon=":material/save:", disabled=edited is None):
        _save(overwrite=False)
    pending = st.session_state.get("pp-confirm")
    if pending is not None and pending[0] == save_as.strip():
        st.warning(f"{md(pending[1])}. Save anyway?")
        if st.button("Save as a new version", key="pp-save-confirm", icon=":material/check:"):
            _save(overwrite=True)
    if (message := st.session_state.pop("pp-saved", None)) is not None:
        st.success(message)

n_images = image_count(ws, dataset)
st.subheader("Preview")
if not n_images:
    st.warning(f"Dataset {md(repr(dataset))} has no stored images yet.")
elif recipe is not None:
    seed = st.session_state.get("pp-seed", 0)
    if st.button("Other samples", key="pp-shuffle", icon=":material/shuffle:"):
        st.session_state["pp-seed"] = seed = seed + 1
    for p in preview(ws, recipe, sample_images(ws, dataset, 3, seed)):
        before, after = st.columns(2)
        if p.error or p.before is None or p.after is None:
            st.error(f"{p.image_hash[:12]}: {md(p.error or 'no preview')}")
            continue
        before.image(p.before, caption=f"before · {p.image_hash[:12]}", clamp=True, width=320)
        after.image(
            p.after, caption="after" + (f" · flags: {', '.join(p.flags)}" if p.flags else ""), clamp=True, width=320
        )

st.subheader("Run")
workers = workers_input(ws, "Worker processes", ws.settings.download.workers, "pp-workers")
if st.button(
    f"Run {md((recipe or base).name)} on {n_images:,} images",
    type="primary",
    key="pp-run",
    icon=":material/play_arrow:",
    disabled=recipe is None or not n_images,
):
    job_id = start_preprocess(ws, manager, dataset, recipe, int(workers))  # type: ignore[arg-type]
    launch(manager, job_id)
    follow_job("pp-job", job_id)
if (pp_job := followed_job(manager, "pp-job", ("preprocess",))) is not None:
    with st.container(border=True):
        job_panel(manager, pp_job)

st.subheader("Results")
counts = quality_counts(ws, dataset)
cols = st.columns(len(FLAGS))
for col, flag in zip(cols, FLAGS, strict=True):
    col.metric(flag.replace("_", " "), f"{counts.get(flag, 0):,}")
shown = recipe or base
chosen = st.multiselect("Only images flagged", list(FLAGS), bind=BIND, key="pp-flags")
view = [dataset, shown.settings_hash, sorted(chosen)]
starts = st.session_state.get("pp-starts")  # the view, then the key each page starts after (keyset pages)
if not starts or starts[0] != view:
    starts = st.session_state["pp-starts"] = [view, 0]
page = len(starts) - 2
rows, total = results_page(ws, shown, dataset, chosen, starts[-1], PAGE_SIZE)
if not total:
    _, done = results_page(ws, shown, dataset, [], 0, 1) if chosen else (None, 0)
    if done:  # results exist; the flags picked match none of them
        st.caption(f"None of the {done:,} results of {md(shown.name)} is flagged {md(' or '.join(chosen))}.")
    else:
        st.caption(f"No results yet for {md(shown.name)} (settings `{shown.settings_hash[:10]}`) on {md(dataset)}.")
else:
    pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
    nav = st.columns([1, 2, 1])
    if nav[0].button("Previous", key="pp-prev", disabled=page == 0):
        starts.pop()
        st.rerun()
    nav[1].caption(f"Page {page + 1} of {pages} · {total:,} images")
    if nav[2].button("Next", key="pp-next", disabled=page + 1 >= pages or not rows):
        starts.append(rows[-1].seq)
        st.rerun()
    grid = st.columns(4)
    for i, row in enumerate(rows):
        grid[i % 4].image(str(ws.abspath(row.output)), caption=", ".join(row.flags) or row.image_hash[:12])

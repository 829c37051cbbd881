"""OCR: pick an engine, recipe and rules, preview with boxes drawn, run over a dataset, check accuracy."""

from typing import Any

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw
from pydantic import ValidationError

from services.core import csv_safety
from services.core.datasets import DatasetSummary, entries_page, image_count, list_datasets
from services.core.errors import WorkbenchError
from services.io.imaging import ImageCheckError
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.accuracy import NAME_MATCHING, read_ground_truth, score_against_truth, truth_report_csv
from services.stages.ocr.engines import engine_status, resolve_engine
from services.stages.ocr.preview import preview
from services.stages.ocr.rules import OcrRules, RulesError, list_rules, load_rules, save_rules
from services.stages.ocr.stage import (
    OcrResult,
    decode_bytes,
    fit_problems,
    ocr_readings,
    ocr_results,
    ocr_settings_hash,
    oriented_size,
    prepare,
    start_ocr,
)
from services.stages.preprocess.recipes import list_recipes, load_recipe, parse_recipe
from ui.components import job_panel, launch, save_upload
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
from ui.state import get_job_manager, get_workspace
from ui.text import code, md

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings
PAGE_SIZE = 4  # uploaded images previewed at once
FIT_SAMPLE = 24  # dataset images whose size is checked against the recipe
TABLE_LIMIT = 1000  # readings shown in the table (the CSV holds all)

st.title("OCR")
st.caption("Preprocessing recipe, then line detection and recognition, then rules that repair look-alike "
           "characters and accept only valid codes. Every reading is logged to the CSV log.")  # fmt: skip

status = engine_status(settings)
with st.expander("Engines on this machine", expanded=False):
    for name, problem in status.items():
        st.markdown(f"- **{name}**: " + ("available" if problem is None else f"unavailable: {md(problem)}"))
available = [n for n, p in status.items() if p is None]
if not available:
    st.error("No OCR engine can run here. " + "; ".join(f"{k}: {md(v)}" for k, v in status.items()))
    st.stop()
c1, c2, c3 = st.columns(3)
engine_choice = c1.selectbox("Engine", ["auto", *available], bind=BIND, key="ocr-engine")
engine = resolve_engine(engine_choice, settings)
c1.caption(f"auto uses {resolve_engine('auto', settings)}")
recipe_name = c2.selectbox("Preprocess recipe", ["(none)", *list_recipes(ws.root)], bind=BIND, key="ocr-recipe")
st.session_state.setdefault("ocr-rules", "seed-003")  # the default; saving edited rules selects them
rules_name = c3.selectbox("Rules", list_rules(ws.root), bind=BIND, key="ocr-rules")
try:
    recipe = load_recipe(ws.root, recipe_name) if recipe_name != "(none)" else None
    base_rules = load_rules(ws.root, rules_name)
except WorkbenchError as exc:
    show_error(exc)
    st.stop()
if recipe is not None:
    c2.caption(md(recipe.description) if recipe.description else f"{len(recipe.ops)} steps")  # users' text
c3.caption(md(base_rules.description))


def save_and_select(edited: OcrRules, name: str) -> None:
    """Save the edited rules under `name` and select them, so a job can use them at once."""
    try:
        description = edited.description if name == edited.name else f"Edited from {edited.name}."
        path = save_rules(ws.root, edited.model_copy(update={"name": name, "description": description}))
    except (RulesError, ValueError) as exc:
        st.session_state["ocr-rules-save-error"] = str(exc)
        return
    st.session_state["ocr-rules"] = name
    st.session_state["ocr-rules-saved"] = f"Saved rules {md(repr(path.stem))} and selected."


with st.expander("Edit the rules"):
    strip = st.text_input("Characters to strip", base_rules.strip, bind=BIND, key=f"ocr-strip-{rules_name}")
    pattern = st.text_input("Validation pattern (full match, after mapping)", base_rules.pattern or "",
                            bind=BIND, key=f"ocr-pattern-{rules_name}")  # fmt: skip
    table = st.data_editor(
        pd.DataFrame({"from": list(base_rules.mapping), "to": list(base_rules.mapping.values())}),
        num_rows="dynamic", key=f"ocr-map-{rules_name}",
    )  # fmt: skip
    invalid = False
    try:
        mapping = {str(r["from"]): str(r["to"] or "") for _, r in table.dropna(subset=["from"]).iterrows() if r["from"]}
        rules = OcrRules(name=rules_name, description=base_rules.description, strip=strip, mapping=mapping,
                         pattern=pattern or None)  # fmt: skip
    except ValidationError as exc:  # the reason only (a pattern RE2 cannot run, a mapping of two characters)
        st.error("Rules not valid: " + "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()))
        rules, invalid = base_rules, True
    except ValueError as exc:
        st.error(md(exc))
        rules, invalid = base_rules, True
    save_as = st.text_input(
        "Save as", value="" if rules_name in ("none", "seed-003") else rules_name, bind=BIND, key="ocr-save"
    )
    st.button("Save rules", key="ocr-save-rules", disabled=not save_as or invalid, on_click=save_and_select,
              args=(rules, save_as))  # fmt: skip
    if saved := st.session_state.pop("ocr-rules-saved", None):
        st.success(saved)
    if failed := st.session_state.pop("ocr-rules-save-error", None):
        st.error(md(failed))


def ordered_for_ocr(datasets: list[DatasetSummary]) -> list[str]:
    """Datasets of text parts (imported for OCR) first, newest first; photos and the rest after them."""
    ocr = sorted((d for d in datasets if d.kind.lower() == "ocr"), key=lambda d: d.created_at, reverse=True)
    return [d.name for d in ocr] + [d.name for d in datasets if d.kind.lower() != "ocr"]


def warn_misfit(sized: list[tuple[str, int, int]], what: str, short: bool = False) -> None:
    """The recipe's crop checked against these image sizes: a warning naming the images it does not fit."""
    problems = fit_problems(recipe, sized)
    if recipe is None or not problems:
        return
    if short:
        st.warning(f"Recipe **{md(recipe.name)}** does not fit {len(problems)} of {len(sized)} {md(what)} (first: "
                   f"{code(problems[0][0])}, {md(problems[0][1])}). The job fails those images with `recipe_misfit`.",
                   icon=":material/crop:")  # fmt: skip
        return
    shown = "\n".join(f"- {code(name)}: {md(problem)}" for name, problem in problems[:5])
    more = f"\n- ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    st.warning(
        f"Recipe **{md(recipe.name)}** does not fit {len(problems)} of {len(sized)} {md(what)}:\n{shown}{more}\n\n"
        "An image outside the crop box fails with `recipe_misfit`; a cut box reads only part of the image. "
        "Pick another recipe (or none), or save a copy with a crop box that fits on the Preprocess page.",
        icon=":material/crop:",
    )


@st.cache_data(max_entries=64, show_spinner=False)
def read_preview(
    data: bytes, engine: str, model: str, recipe_json: str | None, rules_json: str
) -> tuple[Image.Image | None, OcrResult | None, str | None]:
    """(image with boxes drawn, result, None) or (None, None, why not); cached so reruns do not read again.
    The reading happens in the workspace's worker when one runs (its engines stay loaded), else here."""
    recipe = parse_recipe(recipe_json) if recipe_json else None
    try:
        original = decode_bytes(data, settings.download.max_pixels)
        prepared = prepare(original, recipe, settings.download.max_pixels)  # a recipe's output is bounded too
        found, _ = preview(ws, data, engine, recipe_json, rules_json)
    except ImageCheckError as exc:
        return None, None, f"{exc.error_class}: {exc.message}"
    except (WorkbenchError, ValueError) as exc:  # RecipeMisfitError is a ValueError; the worker's refusals
        return None, None, str(exc)
    drawn = Image.fromarray(prepared).convert("RGB")
    draw = ImageDraw.Draw(drawn)
    for line in found.lines:
        draw.rectangle(line["box"], outline=(0, 170, 0) if line["valid"] else (220, 0, 0), width=3)
    return drawn, found, None


def show_preview(name: str, data: bytes) -> None:
    recipe_json = recipe.model_dump_json() if recipe else None
    drawn, found, problem = read_preview(data, engine, settings.ocr.trocr_model, recipe_json, rules.model_dump_json())
    if drawn is None or found is None:
        st.error(f"**{md(name)}**: {md(problem)}")
        return
    left, right = st.columns([3, 2])
    left.image(drawn, caption=f"{md(name)} · boxes: green passes the rules, red does not")
    if found.valid and found.code:
        shown = found.code
    elif found.raw:
        shown = "InvalidCode"
    else:
        shown = "No text"
    right.metric(f"Code in {md(name)}", shown)
    if not found.raw:
        right.caption("No text line was found in this image" + (" after the recipe." if recipe else "."))
    elif not found.valid:
        edited = " (edited)" if rules != base_rules else ""
        right.caption(f"Read {code(found.raw)}, which the rules {md(repr(rules_name))}{edited} do not accept.")
    with right.expander("Details"):
        st.json({"code": found.code, "cord": found.cord, "raw": found.raw, "valid": found.valid,
                 "confidence": found.confidence, "lines": found.lines})  # fmt: skip


def sample_sizes(dataset: str) -> list[tuple[str, int, int]]:
    """(name, width, height) of the dataset's first images, read from their headers (what the recipe meets)."""
    sized = []
    for _, rel, image_name in entries_page(ws, dataset, 0, FIT_SAMPLE):
        try:
            sized.append((image_name, *oriented_size(ws.abspath(rel))))
        except (OSError, ImageCheckError):
            pass  # a file that is gone or unreadable fails in the job with its own reason
    return sized


# --- images ---------------------------------------------------------------------------------------------

st.subheader("Images")
how = st.radio("From", ["Upload images", "A dataset"], horizontal=True, bind=BIND, key="ocr-how")
datasets = list_datasets(ws.catalog)
names = ordered_for_ocr(datasets)
if how == "Upload images":
    uploads = st.file_uploader(
        "Images", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"], accept_multiple_files=True,
        key="ocr-upload", max_upload_size=settings.max_upload_mb,
    )  # fmt: skip
    if not uploads:
        st.caption("Upload one or more images to preview the engine, recipe and rules on each of them.")
    else:
        sized = []
        for upload in uploads:
            try:
                sized.append((upload.name, *oriented_size(upload.getvalue())))
            except ImageCheckError:
                pass  # its preview says why it cannot be read
        warn_misfit(sized, "uploaded images")
        pages = (len(uploads) + PAGE_SIZE - 1) // PAGE_SIZE
        page = 1
        if pages > 1:
            page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, bind=BIND, key="ocr-upload-page"))
        first = (page - 1) * PAGE_SIZE
        shown = uploads[first : first + PAGE_SIZE]
        st.caption(f"Images {first + 1}–{first + len(shown)} of {len(uploads)}")
        for upload in shown:
            with st.container(border=True):
                show_preview(upload.name, upload.getvalue())
        if st.button(f"Add {len(uploads)} image{'' if len(uploads) == 1 else 's'} as a dataset", key="ocr-import"):
            folder = ws.root / "uploads" / f"ocr-{uploads[0].file_id[:8]}"
            folder.mkdir(parents=True, exist_ok=True)
            for upload in uploads:
                save_upload(ws, upload).replace(folder / ws.upload_path(upload.name).name)  # the workspace's guard
            job = start_folder_import(ws, manager, folder, folder.name, kind="ocr")
            st.session_state["ocr-dataset"] = folder.name
            st.session_state["ocr-target"] = folder.name
            imported = manager.run(job)  # a handful of uploaded files: imported right here
            unread = f" ({imported.failed:,} could not be read)" if imported.failed else ""
            st.success(f"Added {imported.done:,} images as dataset `{folder.name}`{unread}: run it below.")
            names = ordered_for_ocr(list_datasets(ws.catalog))
elif not names:
    st.info("No datasets yet: upload images above and add them as a dataset, or import a folder with "
            "`python -m services ocr FOLDER`.")  # fmt: skip
else:
    dataset = st.selectbox(
        "Dataset", names, bind=BIND, key="ocr-dataset", help="Datasets imported for OCR are listed first."
    )
    n_images = image_count(ws, dataset)
    if not n_images:
        st.warning(f"Dataset {md(repr(dataset))} has no stored images yet: its download or import has not finished.")
    else:
        warn_misfit(sample_sizes(dataset), f"sampled images of {dataset}")
        index = st.number_input(f"Preview image (of {n_images:,})", 1, n_images, 1, bind=BIND, key="ocr-preview-index")
        _, rel, image_name = (entries_page(ws, dataset, int(index) - 1, 1) or entries_page(ws, dataset, 0, 1))[0]
        try:
            data = ws.abspath(rel).read_bytes()
        except OSError as exc:
            st.error(f"{md(image_name)}: {md(exc.strerror or exc)}")
        else:
            show_preview(image_name, data)

# --- batch ----------------------------------------------------------------------------------------------

st.subheader("Run over a dataset")
target = st.selectbox(
    "Dataset to read", names, bind=BIND, key="ocr-target", help="Datasets imported for OCR are listed first."
)
if target is None:
    st.caption("No datasets yet: add uploaded images as a dataset above, or import a folder with the CLI.")
if target is not None:
    warn_misfit(sample_sizes(target), f"sampled images of {target}", short=True)
saved_rules = rules_name if rules == base_rules else None
if saved_rules is None:
    st.warning("The rules are edited: save them first (a job uses saved rules so it can be resumed). The results "
               f"below are for the saved rules {md(repr(rules_name))}.")  # fmt: skip
if st.button("Run OCR", type="primary", key="ocr-run", disabled=target is None or saved_rules is None,
             icon=":material/document_scanner:"):  # fmt: skip
    try:
        job_id = start_ocr(ws, manager, target or "", engine, None if recipe is None else recipe.name, rules_name)
    except WorkbenchError as exc:
        show_error(exc)
    else:
        launch(manager, job_id)
        follow_job("ocr-job", job_id)
if (ocr_job := followed_job(manager, "ocr-job", ("ocr",))) is not None:
    with st.container(border=True):
        job_panel(manager, ocr_job)

if target:
    settings_hash = ocr_settings_hash(engine, settings.ocr.trocr_model, recipe, base_rules)
    readings = ocr_readings(ws, target, settings_hash, TABLE_LIMIT)
    rows = readings.rows
    recipe_words = f"recipe {md(recipe.name)}" if recipe else "no recipe"
    if not rows:
        st.caption(f"No readings yet for {md(target)} with {engine}, {recipe_words} and rules {md(rules_name)}: "
                   "press Run OCR. (Results are kept per engine, recipe and rules: changing one shows its "
                   "own.)")  # fmt: skip
    else:
        failed, accepted = readings.failed, readings.accepted
        st.caption(f"{readings.total:,} images with {engine}, {recipe_words} and rules {md(rules_name)}: {accepted:,} "
                   f"read and accepted by the rules, {readings.total - accepted - failed:,} not accepted (or no text), "
                   f"{failed:,} failed (see the error column).")  # fmt: skip
        columns = ["image", "code", "raw", "valid", "confidence", "cord", "error"]
        frame = pd.DataFrame(rows)[columns]
        st.dataframe(frame, hide_index=True, key="ocr-results")
        if readings.total > len(rows):
            st.caption(f"Showing the first {len(rows):,} of {readings.total:,}; the CSV holds them all.")

        def all_readings(dataset: str = target, settings_key: str = settings_hash) -> list[dict[str, Any]]:
            """Every reading, for the CSV and the accuracy report: read when asked for, not on every run."""
            return [r for r in ocr_results(ws, dataset, settings_key) if r["raw"] is not None or r["error"]]

        def results_csv() -> bytes:
            every = all_readings()
            return csv_safety.to_bytes(
                columns, ([r.get(c) for c in columns] for r in every), settings.csv_formula_guard
            )

        st.download_button("Results CSV", results_csv, file_name=f"ocr-{target}.csv", key="ocr-results-csv")

        st.markdown("**Accuracy against ground truth**")
        truth_file = st.file_uploader("Ground truth CSV (image_name,text)", type=["csv"], key="ocr-truth",
                                      help=NAME_MATCHING.capitalize() + ".")  # fmt: skip
        if truth_file is not None:
            try:
                truth = read_ground_truth(truth_file.getvalue())
            except (ValueError, UnicodeDecodeError) as exc:
                st.error(f"{md(truth_file.name)}: {md(exc)}")
            else:
                every = all_readings()
                report = score_against_truth(truth, every)
                if report.overall is None:
                    st.warning(
                        f"No match: none of the {report.truth_rows:,} ground-truth rows names one of the "
                        f"{report.result_rows:,} images read, so there is nothing to score. "
                        f"{NAME_MATCHING.capitalize()}. Images here are named like "
                        + ", ".join(code(r["image"]) for r in every[:3])
                        + (f"; the CSV names {', '.join(code(n) for n in list(truth)[:3])}." if truth else ".")
                    )
                else:
                    score = report.overall
                    m1, m2, m3, m4 = st.columns(4)
                    m1.metric("Images compared", f"{score.images:,} of {report.truth_rows:,}")
                    m2.metric("CER", f"{score.cer:.2%}")
                    m3.metric("WER", f"{score.wer:.2%}")
                    m4.metric("Exact match", f"{score.exact:.0%}")
                    if report.unmatched:
                        more = " ..." if len(report.unmatched) > 5 else ""
                        st.caption(f"{len(report.unmatched):,} ground-truth rows match no image read: "
                                   f"{md(', '.join(report.unmatched[:5]))}{more}")  # fmt: skip
                    rates = {c: st.column_config.NumberColumn(c.upper(), format="percent") for c in ("cer", "wer")}
                    scores = pd.DataFrame([vars(s) for s in report.images])
                    st.dataframe(scores, hide_index=True, key="ocr-accuracy", column_config=rates)
                    st.download_button("Accuracy CSV", truth_report_csv(report, settings.csv_formula_guard).encode(),
                                       file_name=f"ocr-accuracy-{target}.csv", key="ocr-accuracy-csv")  # fmt: skip

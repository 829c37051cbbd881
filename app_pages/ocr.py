"""OCR: pick an engine, recipe and rules, preview with boxes drawn, run over a dataset, check accuracy."""

from pathlib import PurePosixPath

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from services.datasets import DatasetError, DatasetSummary, dataset_images, list_datasets
from services.folder_import import start_folder_import
from services.imaging import ImageCheckError
from services.ocr import (
    OcrResult,
    decode_bytes,
    fit_problems,
    ocr_results,
    ocr_settings_hash,
    oriented_size,
    prepare,
    read_image,
    start_ocr,
)
from services.ocr_accuracy import NAME_MATCHING, read_ground_truth, score_against_truth
from services.ocr_engines import EngineUnavailableError, engine_status, resolve_engine
from services.ocr_rules import OcrRules, RulesError, list_rules, load_rules, save_rules
from services.recipes import RecipeError, list_recipes, load_recipe, parse_recipe
from ui.components import job_panel, launch, save_upload
from ui.state import get_job_manager, get_workspace

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings
PAGE_SIZE = 4  # uploaded images previewed at once
FIT_SAMPLE = 24  # dataset images whose size is checked against the recipe

st.title("OCR")
st.caption("Preprocessing recipe, then line detection and recognition, then rules that repair look-alike "
           "characters and accept only valid codes. Every reading is logged to the CSV log.")  # fmt: skip

status = engine_status(settings)
with st.expander("Engines on this machine", expanded=False):
    for name, problem in status.items():
        st.markdown(f"- **{name}**: " + ("available" if problem is None else f"unavailable: {problem}"))
available = [n for n, p in status.items() if p is None]
if not available:
    st.error("No OCR engine can run here. " + "; ".join(f"{k}: {v}" for k, v in status.items()))
    st.stop()
c1, c2, c3 = st.columns(3)
engine_choice = c1.selectbox("Engine", ["auto", *available], key="ocr-engine")
engine = resolve_engine(engine_choice, settings)
c1.caption(f"auto uses {resolve_engine('auto', settings)}")
recipe_name = c2.selectbox("Preprocess recipe", ["(none)", *list_recipes(ws.root)], key="ocr-recipe")
rules_name = c3.selectbox("Rules", list_rules(ws.root), index=list_rules(ws.root).index("seed-003"), key="ocr-rules")
try:
    recipe = load_recipe(ws.root, recipe_name) if recipe_name != "(none)" else None
    base_rules = load_rules(ws.root, rules_name)
except (RecipeError, RulesError) as exc:
    st.error(str(exc))
    st.stop()
if recipe is not None:
    c2.caption(recipe.description or f"{len(recipe.ops)} steps")
c3.caption(base_rules.description)

with st.expander("Edit the rules"):
    strip = st.text_input("Characters to strip", base_rules.strip, key=f"ocr-strip-{rules_name}")
    pattern = st.text_input("Validation pattern (full match, after mapping)", base_rules.pattern or "",
                            key=f"ocr-pattern-{rules_name}")  # fmt: skip
    table = st.data_editor(
        pd.DataFrame({"from": list(base_rules.mapping), "to": list(base_rules.mapping.values())}),
        num_rows="dynamic", key=f"ocr-map-{rules_name}",
    )  # fmt: skip
    try:
        mapping = {str(r["from"]): str(r["to"] or "") for _, r in table.dropna(subset=["from"]).iterrows() if r["from"]}
        rules = OcrRules(name=rules_name, description=base_rules.description, strip=strip, mapping=mapping,
                         pattern=pattern or None)  # fmt: skip
    except ValueError as exc:
        st.error(str(exc))
        rules = base_rules
    save_as = st.text_input("Save as", value="" if rules_name in ("none", "seed-003") else rules_name, key="ocr-save")
    if st.button("Save rules", key="ocr-save-rules", disabled=not save_as):
        try:
            st.success(f"Saved to `{save_rules(ws.root, rules.model_copy(update={'name': save_as}))}`")
        except RulesError as exc:
            st.error(str(exc))


def ordered_for_ocr(datasets: list[DatasetSummary]) -> list[str]:
    """Datasets of text parts (imported for OCR) first, newest first; photos and the rest after them."""
    ocr = sorted((d for d in datasets if d.kind.lower() == "ocr"), key=lambda d: d.created_at, reverse=True)
    return [d.name for d in ocr] + [d.name for d in datasets if d.kind.lower() != "ocr"]


def warn_misfit(sized: list[tuple[str, int, int]], what: str) -> None:
    """The recipe's crop checked against these image sizes: a warning naming the images it does not fit."""
    problems = fit_problems(recipe, sized)
    if recipe is None or not problems:
        return
    shown = "\n".join(f"- `{name}`: {problem}" for name, problem in problems[:5])
    more = f"\n- ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    st.warning(
        f"Recipe **{recipe.name}** does not fit {len(problems)} of {len(sized)} {what}:\n{shown}{more}\n\n"
        "An image outside the crop box fails with `recipe_misfit`; a cut box reads only part of the image. "
        "Pick another recipe (or none), or save a copy with a crop box that fits on the Preprocess page.",
        icon=":material/crop:",
    )


@st.cache_data(max_entries=64, show_spinner=False)
def read_preview(
    data: bytes, engine: str, model: str, recipe_json: str | None, rules_json: str
) -> tuple[Image.Image | None, OcrResult | None, str | None]:
    """(image with boxes drawn, result, None) or (None, None, why not); cached so reruns do not read again."""
    recipe = parse_recipe(recipe_json) if recipe_json else None
    rules = OcrRules.model_validate_json(rules_json)
    try:
        original = decode_bytes(data, settings.download.max_pixels)
        prepared = prepare(original, recipe)
        found = read_image(engine, settings, original, recipe, rules)
    except ImageCheckError as exc:
        return None, None, f"{exc.error_class}: {exc.message}"
    except (EngineUnavailableError, ValueError) as exc:  # RecipeMisfitError is a ValueError
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
        st.error(f"**{name}**: {problem}")
        return
    left, right = st.columns([3, 2])
    left.image(drawn, caption=f"{name} · boxes: green passes the rules, red does not")
    if found.valid and found.code:
        shown = found.code
    elif found.raw:
        shown = "InvalidCode"
    else:
        shown = "No text"
    right.metric(f"Code in {name}", shown)
    if not found.raw:
        right.caption("No text line was found in this image" + (" after the recipe." if recipe else "."))
    elif not found.valid:
        right.caption(f"Read `{found.raw}`, which the rules {rules_name!r} do not accept.")
    with right.expander("Details"):
        st.json({"code": found.code, "cord": found.cord, "raw": found.raw, "valid": found.valid,
                 "confidence": found.confidence, "lines": found.lines})  # fmt: skip


def upload_name(name: str) -> str:
    """An uploaded file's own name, never a path (the folder import keeps it as the image name)."""
    base = PurePosixPath(name.replace("\\", "/").replace("\x00", "")).name
    return base if base not in ("", ".", "..") else "upload"


# --- images ---------------------------------------------------------------------------------------------

st.subheader("Images")
how = st.radio("From", ["Upload images", "A dataset"], horizontal=True, key="ocr-how")
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
            page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key="ocr-upload-page"))
        first = (page - 1) * PAGE_SIZE
        shown = uploads[first : first + PAGE_SIZE]
        st.caption(f"Images {first + 1}–{first + len(shown)} of {len(uploads)}")
        for upload in shown:
            with st.container(border=True):
                show_preview(upload.name, upload.getvalue())
        if st.button(f"Add {len(uploads)} images as a dataset", key="ocr-import"):
            folder = ws.root / "uploads" / f"ocr-{uploads[0].file_id[:8]}"
            folder.mkdir(parents=True, exist_ok=True)
            for upload in uploads:
                save_upload(ws, upload).replace(folder / upload_name(upload.name))
            job = start_folder_import(ws, manager, folder, folder.name, kind="ocr")
            st.session_state["ocr-dataset"] = folder.name
            st.session_state["ocr-target"] = folder.name
            manager.run(job)  # a handful of uploaded files: imported right here
            st.success(f"Added as dataset `{folder.name}`: run it below.")
            names = ordered_for_ocr(list_datasets(ws.catalog))
elif not names:
    st.info("No datasets yet: upload images above and add them as a dataset, or import a folder with "
            "`python -m services ocr FOLDER`.")  # fmt: skip
else:
    dataset = st.selectbox("Dataset", names, key="ocr-dataset", help="Datasets imported for OCR are listed first.")
    images = dataset_images(ws, dataset)
    if not images:
        st.warning(f"Dataset {dataset!r} has no stored images yet: its download or import has not finished.")
    else:
        sample = [(f"image {i + 1}", ws.abspath(rel)) for i, (_, rel) in enumerate(images[:FIT_SAMPLE])]
        sized = []
        for label, path in sample:
            try:
                sized.append((label, *oriented_size(path.read_bytes())))
            except (OSError, ImageCheckError):
                pass
        warn_misfit(sized, f"sampled images of {dataset}")
        index = st.number_input(f"Preview image (of {len(images)})", 1, len(images), 1, key="ocr-preview-index")
        try:
            data = ws.abspath(images[int(index) - 1][1]).read_bytes()
        except OSError as exc:
            st.error(f"image {int(index)} of {dataset}: {exc.strerror or exc}")
        else:
            show_preview(f"image {int(index)}", data)

# --- batch ----------------------------------------------------------------------------------------------

st.subheader("Run over a dataset")
target = st.selectbox("Dataset to read", names, key="ocr-target", help="Datasets imported for OCR are listed first.")
if target is None:
    st.caption("No datasets yet: add uploaded images as a dataset above, or import a folder with the CLI.")
saved_rules = rules_name if rules == base_rules else None
if saved_rules is None:
    st.warning("The rules are edited: save them first (a job uses saved rules so it can be resumed). The results "
               f"below are for the saved rules {rules_name!r}.")  # fmt: skip
if st.button("Run OCR", type="primary", key="ocr-run", disabled=target is None or saved_rules is None,
             icon=":material/document_scanner:"):  # fmt: skip
    try:
        job_id = start_ocr(ws, manager, target or "", engine, None if recipe is None else recipe.name, rules_name)
    except (DatasetError, EngineUnavailableError, RulesError, RecipeError) as exc:
        st.error(str(exc))
    else:
        launch(manager, job_id)
        st.session_state["ocr-job"] = job_id
if st.session_state.get("ocr-job"):
    with st.container(border=True):
        job_panel(manager, int(st.session_state["ocr-job"]))

if target:
    settings_hash = ocr_settings_hash(engine, settings.ocr.trocr_model, recipe, base_rules)
    rows = [r for r in ocr_results(ws, target, settings_hash) if r["raw"] is not None or r["error"]]
    recipe_words = f"recipe {recipe.name}" if recipe else "no recipe"
    if not rows:
        st.caption(f"No readings yet for {target} with {engine}, {recipe_words} and rules {rules_name}: press Run "
                   "OCR. (Results are kept per engine, recipe and rules: changing one shows its own.)")  # fmt: skip
    else:
        failed = sum(1 for r in rows if r["error"])
        accepted = sum(1 for r in rows if r["valid"])
        st.caption(f"{len(rows):,} images read with {engine}, {recipe_words} and rules {rules_name}: "
                   f"{accepted:,} accepted by the rules, {failed:,} failed.")  # fmt: skip
        frame = pd.DataFrame(rows)[["image", "code", "raw", "valid", "confidence", "cord", "error"]]
        st.dataframe(frame, hide_index=True, key="ocr-results")
        st.download_button("Results CSV", frame.to_csv(index=False).encode(), file_name=f"ocr-{target}.csv",
                           key="ocr-results-csv")  # fmt: skip

        st.markdown("**Accuracy against ground truth**")
        truth_file = st.file_uploader("Ground truth CSV (image_name,text)", type=["csv"], key="ocr-truth",
                                      help=NAME_MATCHING.capitalize() + ".")  # fmt: skip
        if truth_file is not None:
            try:
                truth = read_ground_truth(truth_file.getvalue())
            except (ValueError, UnicodeDecodeError) as exc:
                st.error(f"{truth_file.name}: {exc}")
            else:
                report = score_against_truth(truth, rows)
                if report.overall is None:
                    st.warning(
                        f"No match: none of the {report.truth_rows:,} ground-truth rows names one of the "
                        f"{report.result_rows:,} images read, so there is nothing to score. "
                        f"{NAME_MATCHING.capitalize()}. Images here are named like "
                        + ", ".join(f"`{r['image']}`" for r in rows[:3])
                        + (f"; the CSV names {', '.join(f'`{n}`' for n in list(truth)[:3])}." if truth else ".")
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
                                   f"{', '.join(report.unmatched[:5])}{more}")  # fmt: skip
                    scores = pd.DataFrame([vars(s) for s in report.images])
                    st.dataframe(scores, hide_index=True, key="ocr-accuracy")
                    st.download_button("Accuracy CSV", scores.to_csv(index=False).encode(),
                                       file_name=f"ocr-accuracy-{target}.csv", key="ocr-accuracy-csv")  # fmt: skip

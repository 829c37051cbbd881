"""OCR: pick an engine, recipe and rules, preview with boxes drawn, run over a dataset, check accuracy."""

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from services.datasets import DatasetError, dataset_images, list_datasets
from services.folder_import import start_folder_import
from services.imaging import ImageCheckError
from services.ocr import (
    accuracy,
    decode_bytes,
    ocr_results,
    ocr_settings_hash,
    prepare,
    read_ground_truth,
    read_image,
    start_ocr,
)
from services.ocr_engines import EngineUnavailableError, engine_status, resolve_engine
from services.ocr_rules import OcrRules, RulesError, list_rules, load_rules, save_rules
from services.recipes import RecipeError, list_recipes, load_recipe
from ui.components import job_panel, launch, save_upload
from ui.state import get_job_manager, get_workspace

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings

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
            save_rules(ws.root, OcrRules.model_validate({**rules.model_dump(), "name": save_as.strip()}))
            st.success(f"Saved rules {save_as.strip()!r}")
        except RulesError as exc:
            st.error(str(exc))

# --- images ---------------------------------------------------------------------------------------------

st.subheader("Images")
how = st.radio("From", ["Upload images", "A dataset"], horizontal=True, key="ocr-how")
dataset: str | None = None
preview_bytes: bytes | None = None
if how == "Upload images":
    uploads = st.file_uploader(
        "Images", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"], accept_multiple_files=True,
        key="ocr-upload", max_upload_size=settings.max_upload_mb,
    )  # fmt: skip
    if uploads:
        preview_bytes = uploads[0].getvalue()
        if st.button(f"Add {len(uploads)} images as a dataset", key="ocr-import"):
            folder = ws.root / "uploads" / f"ocr-{uploads[0].file_id[:8]}"
            folder.mkdir(parents=True, exist_ok=True)
            for upload in uploads:
                save_upload(ws, upload).replace(folder / upload.name.replace("/", "_"))
            job = start_folder_import(ws, manager, folder, folder.name, kind="ocr")
            st.session_state["ocr-dataset"] = folder.name
            manager.run(job)  # a handful of uploaded files: imported right here
else:
    names = [d.name for d in list_datasets(ws.catalog)]
    if names:
        dataset = st.selectbox("Dataset", names, key="ocr-dataset")
        images = dataset_images(ws, dataset)
        if images:
            index = st.number_input("Preview image", 1, len(images), 1, key="ocr-preview-index")
            preview_bytes = ws.abspath(images[int(index) - 1][1]).read_bytes()

if preview_bytes is not None:
    try:
        original = decode_bytes(preview_bytes, settings.download.max_pixels)
        prepared = prepare(original, recipe)
        found = read_image(engine, settings, original, recipe, rules)
    except (ImageCheckError, EngineUnavailableError, ValueError) as exc:
        st.error(str(exc))
    else:
        drawn = Image.fromarray(prepared).convert("RGB")
        draw = ImageDraw.Draw(drawn)
        for line in found.lines:
            draw.rectangle(line["box"], outline=(0, 170, 0) if line["valid"] else (220, 0, 0), width=3)
        left, right = st.columns([3, 2])
        left.image(drawn, caption="boxes: green passes the rules, red does not")
        right.metric("Code", found.code or "InvalidCode")
        right.json({"code": found.code, "cord": found.cord, "raw": found.raw, "valid": found.valid,
                    "confidence": found.confidence, "lines": found.lines})  # fmt: skip

# --- batch ----------------------------------------------------------------------------------------------

st.subheader("Run over a dataset")
names = [d.name for d in list_datasets(ws.catalog)]
target = st.selectbox("Dataset to read", names, key="ocr-target") if names else None
if st.button("Run OCR", type="primary", key="ocr-run", disabled=target is None, icon=":material/document_scanner:"):
    saved_rules = rules_name if rules == base_rules else None
    if saved_rules is None:
        st.warning("Save the edited rules first: a job uses saved rules so it can be resumed.")
    else:
        try:
            job_id = start_ocr(ws, manager, target or "", engine, None if recipe is None else recipe.name, saved_rules)
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
    if rows:
        frame = pd.DataFrame(rows)[["image", "code", "raw", "valid", "confidence", "cord", "error"]]
        st.dataframe(frame, hide_index=True, key="ocr-results")
        st.download_button("Results CSV", frame.to_csv(index=False).encode(), file_name=f"ocr-{target}.csv",
                           key="ocr-results-csv")  # fmt: skip
        truth_file = st.file_uploader("Ground truth CSV (image_name,text)", type=["csv"], key="ocr-truth")
        if truth_file is not None:
            try:
                truth = read_ground_truth(truth_file.getvalue())
            except (ValueError, UnicodeDecodeError) as exc:
                st.error(str(exc))
            else:
                by_name = {r["image"]: r for r in rows}
                pairs = [(text, by_name[name]["code"] or by_name[name]["raw"] or "") for name, text in truth.items()
                         if name in by_name]  # fmt: skip
                score = accuracy(pairs)
                m1, m2, m3, m4 = st.columns(4)
                m1.metric("Images compared", f"{score.images:,}")
                m2.metric("CER", f"{score.cer:.2%}")
                m3.metric("WER", f"{score.wer:.2%}")
                m4.metric("Exact match", f"{score.exact:.0%}")
    else:
        st.caption(f"No readings yet for {target} with {engine}, this recipe and these rules.")

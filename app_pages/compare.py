"""Compare REAL vs GEN: category distributions, tests, embedding space, confounds, report."""

import pandas as pd
import streamlit as st

from services.categories import list_lists
from services.clusters import cluster_sets
from services.compare import (
    CompareError,
    compare_sets,
    get_label_set,
    import_categorized_csv,
    items_with_label,
    iter_set_items,
    label_counts,
    label_set_from_gemini,
    list_label_sets,
)
from services.compare_embeddings import compare_embeddings, confounds
from services.compare_report import (
    cluster_section,
    counts_figure,
    difference_figure,
    grouped_figure,
    html_report,
    projection_figure,
)
from services.datasets import image_paths, list_datasets
from services.embeddings import list_embedding_keys
from ui.components import save_upload
from ui.server_path import display_path
from ui.state import get_workspace

ws = get_workspace()
st.title("Compare REAL vs GEN")
st.caption("Category shares of two sets, tested per category with correction for many tests; counts are "
           "aggregated in the database, so a million images per set chart as fast as a hundred.")  # fmt: skip

with st.expander("Add a set", expanded=len(list_label_sets(ws)) < 2):
    csv_tab, gemini_tab = st.tabs(["Categorised CSV", "A dataset's Gemini categories"])
    with csv_tab:
        upload = st.file_uploader("image_name,description,categories", type=["csv"], key="cmp-upload",
                                  max_upload_size=ws.settings.max_upload_mb)  # fmt: skip
        csv_name = st.text_input("Set name", key="cmp-csv-name", placeholder="default: the file name")
        if st.button("Import CSV", key="cmp-import", disabled=upload is None) and upload is not None:
            try:
                saved = import_categorized_csv(ws, save_upload(ws, upload), csv_name or upload.name.rsplit(".", 1)[0])
                st.success(f"{saved.name}: {saved.items:,} images")
            except CompareError as exc:
                st.error(str(exc))
    with gemini_tab:
        datasets = [d.name for d in list_datasets(ws.catalog) if d.kind != "categorized-csv"]
        lists = [x.label for x in list_lists(ws, all_versions=True)]
        g1, g2 = st.columns(2)
        dataset = g1.selectbox("Dataset", datasets, key="cmp-dataset") if datasets else None
        chosen_list = g2.selectbox("Category list", lists, key="cmp-list") if lists else None
        if st.button("Build set", key="cmp-build", disabled=not (dataset and chosen_list)):
            name, _, version = (chosen_list or "").rpartition(" v")
            category_list = next(x for x in list_lists(ws, all_versions=True) if x.label == chosen_list)
            try:
                saved = label_set_from_gemini(ws, dataset or "", category_list)
                st.success(f"{saved.name}: {saved.items:,} images")
            except CompareError as exc:
                st.error(str(exc))

sets = [s.name for s in list_label_sets(ws)]
if len(sets) < 2:
    st.info("Add two sets to compare (a categorised CSV, or a dataset categorised on the Describe page).")
    st.stop()
c1, c2, c3 = st.columns(3)
name_a = c1.selectbox("A (e.g. REAL)", sets, index=0, key="cmp-a")
name_b = c2.selectbox("B (e.g. GEN)", sets, index=1, key="cmp-b")
test = c3.selectbox("Test per category", ["g-test", "chi-square"], key="cmp-test")
set_a, set_b = get_label_set(ws, name_a), get_label_set(ws, name_b)
result = compare_sets(ws, set_a, set_b, test)
m1, m2, m3, m4 = st.columns(4)
m1.metric(f"{set_a.name} images", f"{set_a.items:,}")
m2.metric(f"{set_b.name} images", f"{set_b.items:,}")
m3.metric("Jensen-Shannon divergence", f"{result.jsd:.4f}")
m4.metric("Categories differing (q < 0.05)", sum(s.q_value is not None and s.q_value < 0.05 for s in result.categories))
for warning in result.warnings:
    st.warning(warning)

one, grouped, normalised, difference = st.tabs(["One set", "Grouped", "% of images", "Difference"])
with one:
    single = st.radio("Set", [set_a.name, set_b.name], horizontal=True, key="cmp-single")
    chosen = set_a if single == set_a.name else set_b
    counts = {k: v for k, v in label_counts(ws, chosen).items() if k not in result.special}
    st.plotly_chart(counts_figure(chosen.name, counts, chosen.items), key="cmp-one")
with grouped:
    event = st.plotly_chart(grouped_figure(result), key="cmp-grouped", on_select="rerun", selection_mode="points")
with normalised:
    st.plotly_chart(grouped_figure(result, normalised=True), key="cmp-normalised")
with difference:
    st.plotly_chart(difference_figure(result), key="cmp-difference")

points = event.get("selection", {}).get("points", []) if isinstance(event, dict) else []
choices = [s.category for s in result.categories] + list(result.special)
if points and points[0].get("x") != st.session_state.get("cmp-last-click"):  # a new bar was clicked
    st.session_state["cmp-last-click"] = points[0]["x"]
    st.session_state["cmp-gallery-category"] = points[0]["x"]
category = st.selectbox(
    "Images of category", choices, index=None, key="cmp-gallery-category", placeholder="click a bar or pick one"
)
if category:
    left, right = st.columns(2)
    for column, label_set in ((left, set_a), (right, set_b)):
        column.markdown(f"**{label_set.name}: {category}**")
        items = items_with_label(ws, label_set, category, 12)
        grid = column.columns(3)
        for i, (item, path) in enumerate(items):
            if path:
                grid[i % 3].image(str(ws.abspath(path)), caption=item[:12])
            else:
                grid[i % 3].caption(item)
        if not items:
            column.caption("none")

st.subheader("Per category")
st.dataframe(pd.DataFrame(result.frame()), hide_index=True, key="cmp-stats")
st.caption("Not categories: " + ", ".join(f"{k} {a:,} vs {b:,}" for k, (a, b) in result.special.items()))

st.subheader("Embedding space")
keys = list_embedding_keys(ws)
embedded = None
if not keys:
    st.caption("No embeddings in this workspace yet (Embed & Train page).")
else:
    key = st.selectbox("Embedding model", keys, key="cmp-key")
    if st.button("Compare embeddings", key="cmp-embed"):
        items_a, items_b = list(iter_set_items(ws, set_a)), list(iter_set_items(ws, set_b))
        try:
            st.session_state["cmp-embedded"] = (compare_embeddings(ws, key, items_a, items_b), items_a, items_b)
        except ValueError as exc:
            st.error(str(exc))
    if st.session_state.get("cmp-embedded"):
        embedded, items_a, items_b = st.session_state["cmp-embedded"]
        e1, e2, e3 = st.columns(3)
        e1.metric("Fréchet distance", f"{embedded.fd:.4f}")
        e2.metric("KID", f"{embedded.kid:.5f}")
        e3.metric("Domain classifier AUC", f"{embedded.auc:.3f}")
        for warning in embedded.warnings:
            st.warning(warning)
        from services.embeddings import EmbeddingStore

        hashes = EmbeddingStore(ws, key).load(items_a).hashes + EmbeddingStore(ws, key).load(items_b).hashes
        lasso = st.plotly_chart(projection_figure(embedded, (set_a.name, set_b.name), hashes), key="cmp-projection",
                                on_select="rerun", selection_mode="lasso")  # fmt: skip
        chosen_points = lasso.get("selection", {}).get("points", []) if isinstance(lasso, dict) else []
        if chosen_points:
            st.caption(f"{len(chosen_points)} images selected")
            lasso_grid = st.columns(6)
            paths = image_paths(ws, [p["customdata"] for p in chosen_points[:24]])
            for i, path in enumerate(paths.values()):
                lasso_grid[i % 6].image(str(ws.abspath(path)))
        if embedded.duplicates:
            st.dataframe(pd.DataFrame(embedded.duplicates, columns=["A", "B", "cosine"]), hide_index=True,
                         key="cmp-dups")  # fmt: skip

st.subheader("Clusters")
st.caption("Both sets clustered together (on the embedding above when computed, else on descriptions): which "
           "kinds of image B has more of than A, and the words that describe them.")  # fmt: skip
if st.button("Find clusters", key="cmp-clusters"):
    try:
        chosen_key = st.session_state["cmp-embedded"][0].key if st.session_state.get("cmp-embedded") else None
        st.session_state["cmp-cluster-report"] = cluster_sets(ws, set_a, set_b, chosen_key)
    except ValueError as exc:
        st.error(str(exc))
cluster_report = st.session_state.get("cmp-cluster-report")
if cluster_report is not None and cluster_report.a == set_a.name and cluster_report.b == set_b.name:
    st.caption(f"{len(cluster_report.clusters)} clusters by {cluster_report.method} on {cluster_report.features}")
    table = pd.DataFrame([{"cluster": "noise" if c.id == -1 else c.id, set_a.name: c.n_a, set_b.name: c.n_b,
                           "log2 lift": round(c.lift, 3), "keywords": ", ".join(c.keywords)}
                          for c in cluster_report.clusters])  # fmt: skip
    picked_cluster = st.dataframe(table, hide_index=True, key="cmp-cluster-table", on_select="rerun",
                                  selection_mode="single-row")  # fmt: skip
    rows = picked_cluster.get("selection", {}).get("rows", []) if isinstance(picked_cluster, dict) else []
    if rows:
        c = cluster_report.clusters[rows[0]]
        paths = image_paths(ws, c.items_a + c.items_b)
        cluster_grid = st.columns(8)
        for i, item in enumerate(c.items_a + c.items_b):
            if item in paths:
                cluster_grid[i % 8].image(str(ws.abspath(paths[item])), caption="A" if item in c.items_a else "B")
    st.dataframe(pd.DataFrame([vars(k) for k in cluster_report.keywords]), hide_index=True, key="cmp-keywords")

st.subheader("Confounds")
if st.button("Check image properties per set", key="cmp-confounds"):
    found = confounds(ws, {set_a.name: list(iter_set_items(ws, set_a)), set_b.name: list(iter_set_items(ws, set_b))})
    for warning in found.warnings or ["no property differs enough to explain a difference on its own"]:
        st.warning(warning) if found.warnings else st.success(warning)
    summary = [{"set": name, **pd.DataFrame(rows).describe(include="all").loc[["mean"]].to_dict("records")[0]}
               for name, rows in found.rows.items() if rows]  # fmt: skip
    if summary:
        st.dataframe(pd.DataFrame(summary), hide_index=True, key="cmp-confound-table")

st.subheader("Export")
if st.button("Write the HTML report and CSV tables", key="cmp-report"):
    from services.compare_report import write_tables

    out = ws.root / "exports" / f"compare-{set_a.name}-vs-{set_b.name}.html"
    clustered = st.session_state.get("cmp-cluster-report")
    html_report(result, out, embedded, sections=[cluster_section(clustered)] if clustered is not None else None)
    write_tables(result, out.parent / f"compare-{set_a.name}-vs-{set_b.name}", ws.settings.csv_formula_guard)
    st.session_state["cmp-report-path"] = str(out)
if st.session_state.get("cmp-report-path"):
    from pathlib import Path

    report_path = Path(st.session_state["cmp-report-path"])
    st.download_button("Report (HTML)", report_path.read_bytes(), file_name=report_path.name, key="cmp-report-download")
    st.caption(f"Written to `{display_path(ws, report_path)}` with CSV tables beside it")

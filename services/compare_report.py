"""Charts (plotly figures) and exports (a self-contained HTML report, CSV tables) for a comparison.

The figures are built from aggregated counts only, so a million-row set costs the same as a hundred-row one.
The pages render these same figures; the report inlines plotly.js once so it opens offline.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from services import csv_safety
from services.clusters import ClusterReport
from services.compare import Comparison
from services.compare_embeddings import Confounds, EmbeddingComparison
from services.workspace import Workspace, write_atomic

COLOURS = {"a": "#1f77b4", "b": "#d62728"}


def counts_figure(name: str, counts: dict[str, int], items: int) -> go.Figure:
    """Count per category for one set (special labels excluded), largest first."""
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    figure = go.Figure(go.Bar(x=[k for k, _ in ordered], y=[v for _, v in ordered], marker_color=COLOURS["a"]))
    figure.update_layout(title=f"{name}: images per category ({items:,} images)", yaxis_title="images")
    return figure


def grouped_figure(c: Comparison, normalised: bool = False) -> go.Figure:
    """Both sets over every category either uses; as counts or as % of each set's images."""
    cats = [s.category for s in sorted(c.categories, key=lambda s: -(s.share_a + s.share_b))]
    by = {s.category: s for s in c.categories}
    figure = go.Figure()
    for key, label_set, values in (
        ("a", c.a, [by[x].share_a * 100 if normalised else by[x].count_a for x in cats]),
        ("b", c.b, [by[x].share_b * 100 if normalised else by[x].count_b for x in cats]),
    ):
        figure.add_bar(x=cats, y=values, name=label_set.name, marker_color=COLOURS[key], customdata=[key] * len(cats))
    figure.update_layout(
        barmode="group",
        title="% of images carrying each category (multi-label: may sum past 100%)"
        if normalised
        else "Images per category",
        yaxis_title="% of images" if normalised else "images",
    )
    return figure


def difference_figure(c: Comparison) -> go.Figure:
    """Share in B minus share in A, with 95% intervals, sorted by difference; significant ones marked."""
    stats = sorted(c.categories, key=lambda s: s.difference)
    colours = [COLOURS["b"] if s.difference > 0 else COLOURS["a"] for s in stats]
    figure = go.Figure(
        go.Bar(
            y=[s.category for s in stats],
            x=[s.difference * 100 for s in stats],
            orientation="h",
            marker_color=colours,
            marker_opacity=[1.0 if (s.q_value is not None and s.q_value < 0.05) else 0.45 for s in stats],
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [(s.ci_high - s.difference) * 100 for s in stats],
                "arrayminus": [(s.difference - s.ci_low) * 100 for s in stats],
            },
            hovertext=[f"q = {s.q_value:.3g}" if s.q_value is not None else (s.warning or "") for s in stats],
        )  # fmt: skip
    )
    figure.update_layout(
        title=f"{c.b.name} minus {c.a.name}, percentage points (95% CI; solid: q < 0.05)",
        xaxis_title="difference in % of images",
        height=max(400, 22 * len(stats)),
    )
    return figure


def projection_figure(e: EmbeddingComparison, names: tuple[str, str], hashes: list[str]) -> go.Figure:
    figure = go.Figure()
    for key, name, rows in (("a", names[0], slice(0, e.n_a)), ("b", names[1], slice(e.n_a, e.n_a + e.n_b))):
        figure.add_scattergl(
            x=e.coords[rows, 0], y=e.coords[rows, 1], mode="markers", name=name, customdata=hashes[rows],
            marker={"color": COLOURS[key], "size": 5, "opacity": 0.6},
        )  # fmt: skip
    figure.update_layout(title=f"{e.method} of the {e.key} embeddings", dragmode="lasso")
    return figure


def write_tables(c: Comparison, out: Path, guard: bool = True) -> list[Path]:
    """The tables as CSV; category and set names are formula-guarded unless `guard` is False (csv_safety)."""
    out.mkdir(parents=True, exist_ok=True)
    stats_path = out / "category_stats.csv"
    with csv_safety.open_for_write(stats_path, guard) as writer:
        writer.writerow(["category", f"count_{c.a.name}", f"count_{c.b.name}", f"share_{c.a.name}",
                         f"share_{c.b.name}", "difference", "ci_low", "ci_high", c.test, "p_value", "q_value",
                         "warning"])  # fmt: skip
        for s in c.categories:
            writer.writerow([s.category, s.count_a, s.count_b, f"{s.share_a:.6f}", f"{s.share_b:.6f}",
                             f"{s.difference:.6f}", f"{s.ci_low:.6f}", f"{s.ci_high:.6f}",
                             "" if s.statistic is None else f"{s.statistic:.6g}",
                             "" if s.p_value is None else f"{s.p_value:.6g}",
                             "" if s.q_value is None else f"{s.q_value:.6g}", s.warning or ""])  # fmt: skip
    special_path = out / "unknown_and_failed.csv"
    with csv_safety.open_for_write(special_path, guard) as writer:
        writer.writerow(["label", c.a.name, c.b.name])
        for label, (n_a, n_b) in c.special.items():
            writer.writerow([label, n_a, n_b])
    return [stats_path, special_path]


def html_report(
    c: Comparison,
    out: Path,
    embeddings: EmbeddingComparison | None = None,
    confound: Confounds | None = None,
    figures: list[go.Figure] | None = None,
    sections: list[str] | None = None,
) -> Path:
    """One HTML file with everything (plotly.js inlined once, so it opens without a network)."""
    figures = figures or [grouped_figure(c), grouped_figure(c, normalised=True), difference_figure(c)]
    parts = [f"<h1>{html.escape(c.a.name)} vs {html.escape(c.b.name)}</h1>",
             f"<p>{c.a.items:,} and {c.b.items:,} images; Jensen-Shannon divergence of the category distributions "
             f"{c.jsd:.4f} (0 identical, 1 disjoint); per-category {html.escape(c.test)} with Benjamini-Hochberg "
             "correction.</p>"]  # fmt: skip
    parts += [f"<p class=warn>{html.escape(w)}</p>" for w in c.warnings]
    for i, figure in enumerate(figures):
        parts.append(figure.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    parts.append("<h2>Categories</h2>" + _table(
        ["category", c.a.name, c.b.name, "difference (pp)", "95% CI", "q", "note"],
        [[s.category, s.count_a, s.count_b, f"{s.difference * 100:+.2f}",
          f"[{s.ci_low * 100:+.2f}, {s.ci_high * 100:+.2f}]", "" if s.q_value is None else f"{s.q_value:.3g}",
          s.warning or ""] for s in sorted(c.categories, key=lambda s: s.q_value if s.q_value is not None else 2)],
    ))  # fmt: skip
    parts.append("<h2>Not categories</h2>" + _table(
        ["label", c.a.name, c.b.name], [[k, a, b] for k, (a, b) in c.special.items()]
    ))  # fmt: skip
    if embeddings is not None:
        parts.append("<h2>Embedding space</h2>" + _table(
            ["embedding", "n A", "n B", "FD", "KID", "domain classifier AUC (5-fold)"],
            [[embeddings.key, embeddings.n_a, embeddings.n_b, f"{embeddings.fd:.4f}", f"{embeddings.kid:.5f}",
              f"{embeddings.auc:.3f}"]],
        ))  # fmt: skip
        parts += [f"<p class=warn>{html.escape(w)}</p>" for w in embeddings.warnings]
    if confound is not None:
        parts += [f"<p class=warn>{html.escape(w)}</p>" for w in confound.warnings]
    parts += sections or []
    style = "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 6px}.warn{color:#a60}"
    document = f"<!doctype html><html><head><meta charset=utf-8><title>Comparison</title><style>{style}</style>" \
               f"</head><body>{''.join(parts)}</body></html>"  # fmt: skip
    write_atomic(out, document.encode("utf-8"))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def cluster_section(report: ClusterReport, thumbnails: dict[str, str] | None = None) -> str:
    """The clusters as HTML (every model-written or user-written text escaped); `thumbnails` maps an item to a
    data URI shown in its cluster's strip."""
    thumbnails = thumbnails or {}
    rows = []
    for c in report.clusters:
        strip = "".join(
            f'<img src="{html.escape(thumbnails[i])}" width=48 height=48 alt="">'
            for i in (c.items_a[:4] + c.items_b[:4]) if i in thumbnails
        )  # fmt: skip
        name = "noise" if c.id == -1 else str(c.id)
        rows.append([name, c.n_a, c.n_b, f"{c.share_a:.3f}", f"{c.share_b:.3f}", f"{c.lift:+.2f}",
                     ", ".join(c.keywords), strip])  # fmt: skip
    header = ["cluster", report.a, report.b, f"share {report.a}", f"share {report.b}", "log2 lift", "keywords", ""]
    body = _table(header[:-1], [r[:-1] for r in rows])
    # the thumbnail strips are built from data URIs we made, so they go in unescaped, one row per cluster
    strips = "".join(f"<p><b>cluster {html.escape(str(r[0]))}</b> {r[-1]}</p>" for r in rows if r[-1])
    words = _table(["keyword", report.a, report.b, "log2 lift"],
                   [[k.keyword, k.n_a, k.n_b, f"{k.lift:+.2f}"] for k in report.keywords])  # fmt: skip
    return (f"<h2>Clusters ({html.escape(report.method)} on {html.escape(report.features)})</h2>{body}{strips}"
            f"<h3>Keywords</h3>{words}")  # fmt: skip


def thumbnail_uris(ws: Workspace, items: list[str], side: int = 64) -> dict[str, str]:
    """Small JPEG data URIs of the items that are stored images (a self-contained report needs no files)."""
    import base64
    import io

    from PIL import Image

    from services.datasets import image_paths

    out = {}
    for item, rel in image_paths(ws, items).items():
        try:
            with Image.open(ws.abspath(rel)) as opened:
                img = opened.convert("RGB")
                img.thumbnail((side, side))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=80)
            out[item] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        except OSError:
            continue
    return out

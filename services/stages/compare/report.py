"""Charts (plotly figures) and exports (a self-contained HTML report, CSV tables) for a comparison.

The figures are built from aggregated counts only, so a million-row set costs the same as a hundred-row one.
The pages render these same figures; the report inlines plotly.js once so it opens offline.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from services.core import csv_safety
from services.core.workspace import Workspace, write_atomic
from services.stages.clusters.clustering import ClusterReport
from services.stages.compare.embeddings import Confounds, EmbeddingComparison
from services.stages.compare.label_sets import MIN_EXPECTED, TEST_NAMES, Comparison

COLOURS = {"a": "#1f77b4", "b": "#d62728"}


def _label(text: str) -> str:
    """A user's name as plotly text: plotly reads a few HTML tags in labels (`<a href>` makes a link), so
    they are escaped and shown as typed. Selections read `customdata`, which keeps the name itself."""
    return html.escape(text, quote=False)


def _labels(texts: list[str]) -> list[str]:
    return [_label(t) for t in texts]


def counts_figure(name: str, counts: dict[str, int], items: int, colour: str = COLOURS["a"]) -> go.Figure:
    """Count per category for one set (special labels excluded), largest first, in the set's colour."""
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    cats = [k for k, _ in ordered]
    figure = go.Figure(go.Bar(x=_labels(cats), y=[v for _, v in ordered], marker_color=colour, customdata=cats))
    figure.update_layout(title=f"{_label(name)}: images per category ({items:,} categorised images)",
                         yaxis_title="images")  # fmt: skip
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
        figure.add_bar(
            x=_labels(cats), y=values, name=_label(label_set.name), marker_color=COLOURS[key], customdata=cats
        )
    figure.update_layout(
        barmode="group",
        title="% of categorised images carrying each category (multi-label: may sum past 100%)"
        if normalised
        else "Images per category",
        yaxis_title="% of categorised images" if normalised else "images",
    )
    return figure


def difference_figure(c: Comparison) -> go.Figure:
    """Share in B minus share in A, with 95% intervals, sorted by difference; significant ones marked."""
    stats = sorted(c.categories, key=lambda s: s.difference)
    colours = [COLOURS["b"] if s.difference > 0 else COLOURS["a"] for s in stats]
    # significance is the fill (hatched: not significant), so a click's selection fading does not hide it
    significant = [s.q_value is not None and s.q_value < 0.05 for s in stats]
    figure = go.Figure(
        go.Bar(
            y=_labels([s.category for s in stats]),
            x=[s.difference * 100 for s in stats],
            orientation="h",
            marker_color=colours,
            marker_pattern_shape=["" if sig else "/" for sig in significant],
            marker_pattern_fillmode="replace",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [(s.ci_high - s.difference) * 100 for s in stats],
                "arrayminus": [(s.difference - s.ci_low) * 100 for s in stats],
            },
            hovertext=[
                f"{s.test}, q = {s.q_value:.3g}" if s.q_value is not None else _label(s.warning or "") for s in stats
            ],
            customdata=[s.category for s in stats],
        )  # fmt: skip
    )
    figure.update_layout(
        title=f"{_label(c.b.name)} minus {_label(c.a.name)}, percentage points (95% CI; solid: q < 0.05, hatched: "
        "not significant)",
        xaxis_title="difference in % of categorised images",
        height=max(400, 22 * len(stats)),
    )
    return figure


def projection_figure(e: EmbeddingComparison, names: tuple[str, str]) -> go.Figure:
    """Both sets' vectors in 2-D; each point carries its image hash (the lasso's gallery)."""
    figure = go.Figure()
    for key, name, rows, hashes in (("a", names[0], slice(0, e.n_a), e.hashes_a),
                                    ("b", names[1], slice(e.n_a, e.n_a + e.n_b), e.hashes_b)):  # fmt: skip
        figure.add_scattergl(
            x=e.coords[rows, 0], y=e.coords[rows, 1], mode="markers", name=_label(name), customdata=hashes,
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
                         f"share_{c.b.name}", "difference", "ci_low", "ci_high", "test", "statistic", "p_value",
                         "q_value", "warning"])  # fmt: skip
        for s in c.categories:
            writer.writerow([s.category, s.count_a, s.count_b, f"{s.share_a:.6f}", f"{s.share_b:.6f}",
                             f"{s.difference:.6f}", f"{s.ci_low:.6f}", f"{s.ci_high:.6f}", s.test,
                             "" if s.statistic is None else f"{s.statistic:.6g}",
                             "" if s.p_value is None else f"{s.p_value:.6g}",
                             "" if s.q_value is None else f"{s.q_value:.6g}", s.warning or ""])  # fmt: skip
    special_path = out / "unknown_and_failed.csv"
    with csv_safety.open_for_write(special_path, guard) as writer:
        writer.writerow(["label", c.a.name, c.b.name])
        for label, (n_a, n_b) in c.special.items():
            writer.writerow([label, n_a, n_b])
    return [stats_path, special_path]


def fmt_interval(ci: tuple[float, float], digits: int = 4) -> str:
    low, high = ci
    return "no interval" if math.isnan(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def rates_rows(c: Comparison) -> list[list[Any]]:
    """Failed and unknown, each with its own rate per set, difference, interval and test."""
    return [
        [r.label, f"{r.count_a:,} of {r.of_a:,} ({r.rate_a:.1%})", f"{r.count_b:,} of {r.of_b:,} ({r.rate_b:.1%})",
         f"{r.difference * 100:+.2f}", f"[{r.ci_low * 100:+.2f}, {r.ci_high * 100:+.2f}]", r.test,
         "" if r.p_value is None else f"{r.p_value:.3g}"]
        for r in c.rates
    ]  # fmt: skip


RATES_HEADER = ["", "A", "B", "difference (pp)", "95% CI", "test", "p"]
RATES_NOTE = ("Failed: among all items. Unknown: among answered items. Neither enters a category's share; they are "
              "compared here on their own, outside the categories' Benjamini-Hochberg family.")  # fmt: skip


def distance_rows(e: EmbeddingComparison) -> list[list[Any]]:
    """Per category: FD and KID with intervals, or why not."""
    rows: list[list[Any]] = []
    for d in e.per_category:
        if d.distance is None:
            rows.append([d.category, d.embedded_a, d.embedded_b, "too few", "", "too few", "", d.note])
        else:
            rows.append([d.category, d.embedded_a, d.embedded_b, f"{d.distance.fd:.4f}",
                         fmt_interval(d.distance.fd_ci), f"{d.distance.kid:.5f}", fmt_interval(d.distance.kid_ci, 5),
                         d.note])  # fmt: skip
    return rows


DISTANCE_HEADER = ["category", "embedded A", "embedded B", "FD", "FD 95% CI", "KID", "KID 95% CI", "note"]


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
             f"<p>{c.a.items:,} and {c.b.items:,} items, of which {c.n_a:,} and {c.n_b:,} categorised (the "
             "denominator of every share; failed and unknown items are compared apart below). Jensen-Shannon "
             f"divergence of the category distributions {c.jsd:.4f} (0 identical, 1 disjoint). Per category: the "
             f"{html.escape(TEST_NAMES[c.test])} where every expected count is at least {MIN_EXPECTED}, Fisher's "
             "exact test otherwise, with Benjamini-Hochberg correction over all of them.</p>"]  # fmt: skip
    parts += [f"<p class=warn>{html.escape(w)}</p>" for w in c.warnings]
    for i, figure in enumerate(figures):
        parts.append(figure.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    parts.append("<h2>Categories</h2>" + _table(
        ["category", c.a.name, c.b.name, "difference (pp)", "95% CI", "test", "p", "q", "note"],
        [[s.category, s.count_a, s.count_b, f"{s.difference * 100:+.2f}",
          f"[{s.ci_low * 100:+.2f}, {s.ci_high * 100:+.2f}]", s.test,
          "" if s.p_value is None else f"{s.p_value:.3g}", "" if s.q_value is None else f"{s.q_value:.3g}",
          s.warning or ""] for s in sorted(c.categories, key=lambda s: s.q_value if s.q_value is not None else 2)],
    ))  # fmt: skip
    rates_header = ["", c.a.name, c.b.name, *RATES_HEADER[3:]]
    parts.append("<h2>Failed and unknown</h2>" + _table(rates_header, rates_rows(c)) + f"<p>{RATES_NOTE}</p>")
    if embeddings is not None:
        e = embeddings
        parts.append(f"<h2>Embedding space ({html.escape(e.key)})</h2>" + _table(
            ["", "vectors A", "vectors B", "FD", "FD 95% CI", "KID", "KID 95% CI", "domain classifier AUC (5-fold)"],
            [["all images", e.n_a, e.n_b, f"{e.fd:.4f}", fmt_interval(e.fd_ci), f"{e.kid:.5f}",
              fmt_interval(e.kid_ci, 5), f"{e.auc:.3f}"]],
        ) + f"<p>Intervals: basic bootstrap, {e.resamples} resamples of each set.</p>")  # fmt: skip
        parts += [f"<p class=warn>{html.escape(w)}</p>" for w in e.warnings]
        if e.per_category:
            parts.append("<h3>Per category</h3>" + _table(DISTANCE_HEADER, distance_rows(e)))
    if confound is not None:
        summary = confound.summary()
        if summary:
            header: list[str] = []  # the widest row's keys (a set without images has "set", "images" only)
            for row in summary:
                header = list(row) if len(row) > len(header) else header
            rows = [["" if row.get(k) is None else row.get(k) for k in header] for row in summary]
            parts.append("<h2>Image properties</h2>" + _table(header, rows))
        parts += [f"<p class=warn>{html.escape(w)}</p>" for w in confound.warnings]
    parts += sections or []
    style = "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 6px}.warn{color:#a60}"
    document = f"<!doctype html><html><head><meta charset=utf-8><title>Comparison</title><style>{style}</style>" \
               f"</head><body>{''.join(parts)}</body></html>"  # fmt: skip
    write_atomic(out, document.encode("utf-8"))
    return out


def depth_section(c: Comparison, depth_a: dict[int, int], depth_b: dict[int, int]) -> str:
    """How many categories the categorised items carry, per set (answers past two included)."""
    depths = sorted(set(depth_a) | set(depth_b))
    rows = [[f"{n} categor{'y' if n == 1 else 'ies'}", depth_a.get(n, 0), depth_b.get(n, 0)] for n in depths]
    return "<h2>Categories per image</h2>" + _table(["", c.a.name, c.b.name], rows)


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


def thumbnail_jpeg(path: Path, side: int = 160) -> bytes | None:
    """A small square JPEG of an image file, the whole image padded (None when it cannot be read): what a
    gallery sends to the browser instead of the original."""
    import io

    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a fraction of full size
            img = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    img = ImageOps.pad(img, (side, side), color=(240, 240, 240))  # whole image, square: grids line up
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def thumbnail_uris(
    ws: Workspace, items: list[str], side: int = 64, paths: dict[str, str] | None = None
) -> dict[str, str]:
    """Small JPEG data URIs of the items that are stored images (a self-contained report needs no files);
    `paths` maps items to stored paths where items are not image hashes (a CSV set's file names)."""
    import base64

    from services.core.datasets import image_paths

    out = {}
    for item, rel in (paths if paths is not None else image_paths(ws, items)).items():
        data = thumbnail_jpeg(ws.abspath(rel), side)
        if data is not None:
            out[item] = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return out

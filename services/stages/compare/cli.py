"""CLI for Compare REAL vs GEN: `compare` (report and tables) and `compare-import` (a categorised CSV).

Merged into the root app by `services.cli.app`; shares its workspace and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import RawCsvOpt, cli_workspace, csv_guard, fail
from services.stages.compare.embeddings import RESAMPLES
from services.stages.compare.label_sets import resolve_set

commands = typer.Typer()


@commands.command("compare")
def compare(
    a: Annotated[str, typer.Option("--a", help="Set A (e.g. REAL): a categorised CSV, a label set or a dataset.")],
    b: Annotated[str, typer.Option("--b", help="Set B (e.g. GEN), the same way.")],
    out: Annotated[Path, typer.Option(help="The HTML report to write; CSV tables go beside it.")],
    list_name: Annotated[str | None, typer.Option("--list", help="For datasets: their Gemini category list.")] = None,
    test: Annotated[str, typer.Option(help="g-test or chi-square (Fisher's exact test where counts are small).")] = (
        "g-test"
    ),
    embedding: Annotated[str | None, typer.Option(help="Embedding key for FD, KID and the domain AUC.")] = None,
    raw_csv: RawCsvOpt = False,
    resamples: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples for the FD and KID intervals (0: no intervals).")
    ] = RESAMPLES,
    charts: Annotated[
        Path | None,
        typer.Option(help="Also write the charts as image files here (the seeds' reports/*.png), drawn by kaleido."),
    ] = None,
    chart_format: Annotated[str, typer.Option(help="png or svg.")] = "png",
) -> None:
    """Category distributions of two sets: charts, per-category tests, divergence, optional embedding metrics."""
    from services.stages.compare.embeddings import compare_embeddings, confounds
    from services.stages.compare.label_sets import category_depth, category_hashes, compare_sets, set_images
    from services.stages.compare.report import depth_section, fmt_interval, html_report, write_tables

    ws = cli_workspace()
    set_a, set_b = resolve_set(ws, a, list_name), resolve_set(ws, b, list_name)
    result = compare_sets(ws, set_a, set_b, test)
    images_a, images_b = set_images(ws, set_a), set_images(ws, set_b)
    hashes_a, hashes_b = list(images_a.hashes.values()), list(images_b.hashes.values())
    embedded = None
    if embedding:
        try:
            labels = category_hashes(ws, set_a, set_b, images_a, images_b)
            embedded = compare_embeddings(ws, embedding, hashes_a, hashes_b, labels, resamples=resamples)
        except ValueError as exc:
            fail(f"{exc} ({images_a.explain(set_a.name)}; {images_b.explain(set_b.name)})")
    depth = depth_section(result, category_depth(ws, set_a), category_depth(ws, set_b))
    found = confounds(ws, {set_a.name: hashes_a, set_b.name: hashes_b})
    report = html_report(result, out, embedded, found, sections=[depth])
    tables = write_tables(result, out.parent, csv_guard(raw_csv))
    significant = [s for s in result.categories if s.q_value is not None and s.q_value < 0.05]
    typer.echo(f"{set_a.name}: {result.n_a:,} categorised of {set_a.items:,}, {set_b.name}: {result.n_b:,} "
               f"of {set_b.items:,}; {len(result.categories)} categories, JSD {result.jsd:.4f}")  # fmt: skip
    for s in sorted(significant, key=lambda s: -abs(s.difference))[:10]:
        typer.echo(f"  {s.category}: {s.share_a:.1%} vs {s.share_b:.1%} ({s.test}, q {s.q_value:.2g})")
    for r in result.rates:
        if r.count_a or r.count_b:
            p = "" if r.p_value is None else f", {r.test} p {r.p_value:.2g}"
            typer.echo(f"  {r.label}: {r.rate_a:.1%} vs {r.rate_b:.1%} (not in any share{p})")
    if embedded is not None:
        typer.echo(f"embeddings ({embedded.n_a:,} and {embedded.n_b:,} vectors): FD {embedded.fd:.4f} "
                   f"{fmt_interval(embedded.fd_ci)}, KID {embedded.kid:.5f} {fmt_interval(embedded.kid_ci, 5)}, "
                   f"domain AUC {embedded.auc:.3f}")  # fmt: skip
        for d in embedded.per_category:
            if d.distance is None:
                typer.echo(f"  {d.category}: {d.note}")
            else:
                typer.echo(f"  {d.category}: FD {d.distance.fd:.4f} {fmt_interval(d.distance.fd_ci)}, KID "
                           f"{d.distance.kid:.5f} {fmt_interval(d.distance.kid_ci, 5)}")  # fmt: skip
    for images, label_set in ((images_a, set_a), (images_b, set_b)):
        if images.missing:
            typer.echo(f"note: {images.explain(label_set.name)}")
    for warning in result.warnings + (embedded.warnings if embedded else []) + found.warnings:
        typer.echo(f"warning: {warning}")
    typer.echo(f"report: {report}; tables: {', '.join(str(t) for t in tables)}")
    if charts is not None:
        from services.stages.compare.chart_files import write_chart_files

        files = write_chart_files(result, charts, chart_format)
        typer.echo(f"charts: {', '.join(f.name for f in files)} in {charts}")


@commands.command("compare-import")
def compare_import(
    path: Annotated[Path, typer.Argument(help="A categorised CSV: image_name,description,categories.")],
    name: Annotated[str | None, typer.Option(help="Set name (default: the file name).")] = None,
) -> None:
    """Import a seeds' categorised CSV as a dataset and a label set."""
    from services.stages.compare.label_sets import import_categorized_csv

    label_set = import_categorized_csv(cli_workspace(), path, name)
    typer.echo(f"label set {label_set.name!r}: {label_set.items:,} images")

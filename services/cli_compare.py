"""CLI for Compare REAL vs GEN: `compare` (report and tables) and `compare-import` (a categorised CSV).

Registered on the main app by `services.cli`; shares its workspace and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli import RawCsvOpt, _csv_guard, _fail, _ws, app
from services.compare import CompareError, LabelSet
from services.workspace import Workspace


def resolve_set(ws: Workspace, name: str, list_name: str | None) -> LabelSet:
    """A CSV file (imported), an existing label set, or a dataset's Gemini categories for `list_name`."""
    from services.compare import get_label_set, import_categorized_csv, label_set_from_gemini, resolve_list
    from services.datasets import get_dataset

    path = Path(name).expanduser()
    if path.suffix.lower() == ".csv" and path.is_file():
        return import_categorized_csv(ws, path)
    if get_dataset(ws.catalog, name) is not None and list_name:
        return label_set_from_gemini(ws, name, resolve_list(ws, list_name))
    return get_label_set(ws, name)


@app.command("compare")
def compare(
    a: Annotated[str, typer.Option("--a", help="Set A (e.g. REAL): a categorised CSV, a label set or a dataset.")],
    b: Annotated[str, typer.Option("--b", help="Set B (e.g. GEN), the same way.")],
    out: Annotated[Path, typer.Option(help="The HTML report to write; CSV tables go beside it.")],
    list_name: Annotated[str | None, typer.Option("--list", help="For datasets: their Gemini category list.")] = None,
    test: Annotated[str, typer.Option(help="g-test or chi-square.")] = "g-test",
    embedding: Annotated[str | None, typer.Option(help="Embedding key for FD, KID and the domain AUC.")] = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Category distributions of two sets: charts, per-category tests, divergence, optional embedding metrics."""
    from services.compare import compare_sets, iter_set_items
    from services.compare_embeddings import compare_embeddings, confounds
    from services.compare_report import html_report, write_tables

    ws = _ws()
    try:
        set_a, set_b = resolve_set(ws, a, list_name), resolve_set(ws, b, list_name)
        result = compare_sets(ws, set_a, set_b, test)
    except CompareError as exc:
        _fail(str(exc))
    items_a, items_b = list(iter_set_items(ws, set_a)), list(iter_set_items(ws, set_b))
    embedded = None
    if embedding:
        try:
            embedded = compare_embeddings(ws, embedding, items_a, items_b)
        except ValueError as exc:
            _fail(str(exc))
    report = html_report(result, out, embedded, confounds(ws, {set_a.name: items_a, set_b.name: items_b}))
    tables = write_tables(result, out.parent, _csv_guard(raw_csv))
    significant = [s for s in result.categories if s.q_value is not None and s.q_value < 0.05]
    typer.echo(f"{set_a.name}: {set_a.items:,} images, {set_b.name}: {set_b.items:,} images, "
               f"{len(result.categories)} categories, JSD {result.jsd:.4f}")  # fmt: skip
    for s in sorted(significant, key=lambda s: -abs(s.difference))[:10]:
        typer.echo(f"  {s.category}: {s.share_a:.1%} vs {s.share_b:.1%} (q {s.q_value:.2g})")
    if embedded is not None:
        typer.echo(f"embeddings: FD {embedded.fd:.4f}, KID {embedded.kid:.5f}, domain AUC {embedded.auc:.3f}")
    for warning in result.warnings + (embedded.warnings if embedded else []):
        typer.echo(f"warning: {warning}")
    typer.echo(f"report: {report}; tables: {', '.join(str(t) for t in tables)}")


@app.command("compare-import")
def compare_import(
    path: Annotated[Path, typer.Argument(help="A categorised CSV: image_name,description,categories.")],
    name: Annotated[str | None, typer.Option(help="Set name (default: the file name).")] = None,
) -> None:
    """Import a seeds' categorised CSV as a dataset and a label set."""
    from services.compare import import_categorized_csv

    try:
        label_set = import_categorized_csv(_ws(), path, name)
    except CompareError as exc:
        _fail(str(exc))
    typer.echo(f"label set {label_set.name!r}: {label_set.items:,} images")


@app.command("clusters")
def clusters(
    a: Annotated[str, typer.Option("--a", help="Set A: a categorised CSV, a label set or a dataset.")],
    b: Annotated[str, typer.Option("--b", help="Set B, the same way.")],
    list_name: Annotated[str | None, typer.Option("--list", help="For datasets: their Gemini category list.")] = None,
    embedding: Annotated[str | None, typer.Option(help="Cluster on this CLIP embedding (else descriptions).")] = None,
    method: Annotated[str, typer.Option(help="auto, hdbscan or kmeans.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="An HTML report of the clusters and keywords.")] = None,
) -> None:
    """Cluster both sets together; per cluster and keyword: counts, shares and the log2 lift of B over A."""
    from services.clusters import cluster_sets
    from services.compare import compare_sets
    from services.compare_report import cluster_section, html_report, thumbnail_uris

    ws = _ws()
    try:
        set_a, set_b = resolve_set(ws, a, list_name), resolve_set(ws, b, list_name)
        report = cluster_sets(ws, set_a, set_b, embedding, method)
    except (CompareError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{len(report.clusters)} clusters by {report.method} on {report.features}")
    for c in report.clusters[:15]:
        name = "noise" if c.id == -1 else f"cluster {c.id}"
        typer.echo(f"  {name}: {c.n_a} vs {c.n_b}, log2 lift {c.lift:+.2f}  [{', '.join(c.keywords[:5])}]")
    if out is not None:
        items = [i for c in report.clusters for i in c.items_a[:4] + c.items_b[:4]]
        section = cluster_section(report, thumbnail_uris(ws, items))
        html_report(compare_sets(ws, set_a, set_b), out, sections=[section])
        typer.echo(f"report: {out}")

"""CLI for the Clusters stage: `clusters` (two sets clustered together, lift and keywords per cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import cli_workspace, fail
from services.stages.compare.label_sets import CompareError, resolve_set

commands = typer.Typer()


@commands.command("clusters")
def clusters(
    a: Annotated[str, typer.Option("--a", help="Set A: a categorised CSV, a label set or a dataset.")],
    b: Annotated[str, typer.Option("--b", help="Set B, the same way.")],
    list_name: Annotated[str | None, typer.Option("--list", help="For datasets: their Gemini category list.")] = None,
    embedding: Annotated[str | None, typer.Option(help="Cluster on this CLIP embedding (else descriptions).")] = None,
    method: Annotated[str, typer.Option(help="auto, hdbscan or kmeans.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="An HTML report of the clusters and keywords.")] = None,
) -> None:
    """Cluster both sets together; per cluster and keyword: counts, shares and the log2 lift of B over A."""
    from services.stages.clusters.clustering import cluster_sets
    from services.stages.compare.label_sets import compare_sets, item_images
    from services.stages.compare.report import cluster_section, html_report, thumbnail_uris

    ws = cli_workspace()
    try:
        set_a, set_b = resolve_set(ws, a, list_name), resolve_set(ws, b, list_name)
        report = cluster_sets(ws, set_a, set_b, embedding, method)
    except (CompareError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{len(report.clusters)} clusters by {report.method} on {report.features}")
    for c in report.clusters[:15]:
        name = "noise" if c.id == -1 else f"cluster {c.id}"
        typer.echo(f"  {name}: {c.n_a} vs {c.n_b}, log2 lift {c.lift:+.2f}  [{', '.join(c.keywords[:5])}]")
    if out is not None:
        shown_a = [i for c in report.clusters for i in c.items_a[:4]]
        shown_b = [i for c in report.clusters for i in c.items_b[:4]]
        paths = {i: p for i, (_, p) in (item_images(ws, set_a, shown_a) | item_images(ws, set_b, shown_b)).items()}
        section = cluster_section(report, thumbnail_uris(ws, shown_a + shown_b, paths=paths))
        html_report(compare_sets(ws, set_a, set_b), out, sections=[section])
        typer.echo(f"report: {out}")

"""CLI for Explore: `search` (by text, by an image file, or more like a stored image) and `search-index`.

Merged into the root app by `services.cli.app`; shares its workspace and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import CheckpointOpt, ModelOpt, PretrainedOpt, cli_workspace, clip_spec, fail

commands = typer.Typer()


@commands.command("search")
def search(
    text: Annotated[str | None, typer.Option(help="What to look for, in words ('a red truck at night').")] = None,
    image: Annotated[Path | None, typer.Option(help="Or an image file: images like it.")] = None,
    like: Annotated[str | None, typer.Option(help="Or a stored image's hash (sha256 or seed hash_id).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset's images.")] = None,
    k: Annotated[int, typer.Option(help="How many results.", min=1, max=1000)] = 20,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
) -> None:
    """The stored images nearest to the query in CLIP space, best first: rank, cosine score, hash, name."""
    from services.compat.seed_hash_ids import find_image
    from services.stages.explore.search import hit_names, pick_key
    from services.stages.explore.search import search as run_search

    ws = cli_workspace()
    data = None
    if image is not None:
        if not image.is_file():
            fail(f"{image}: not a file")
        if image.stat().st_size > ws.settings.max_upload_mb * 2**20:
            fail(f"{image}: over the {ws.settings.max_upload_mb} MB upload limit")
        data = image.read_bytes()
    if like is not None:
        found = find_image(ws, like)
        if found is None:
            fail(f"no stored image {like[:16]}... in this workspace")
        like = found
    spec = clip_spec(model, pretrained, checkpoint) if (model or pretrained or checkpoint) else None
    key = pick_key(ws, dataset, spec)
    result, where = run_search(ws, text=text, image=data, like=like, dataset=dataset, k=k, key=key)
    names = hit_names(ws, [h.image_hash for h in result.hits], dataset)
    for rank, hit in enumerate(result.hits, 1):
        typer.echo(f"{rank}\t{hit.score:.4f}\t{hit.image_hash}\t{names.get(hit.image_hash, '')}")
    typer.echo(
        f"{len(result.hits)} results from {result.key} ({result.index} search, {result.seconds:.3f} s, "
        f"{'by the workspace worker' if where == 'worker' else 'in this process'})",
        err=True,
    )


@commands.command("search-index")
def search_index(
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    dataset: Annotated[str | None, typer.Option(help="The model that embedded this dataset.")] = None,
) -> None:
    """Build or update the vector index of an embedding model now (searches do it when they need to)."""
    from services.stages.explore.search import pick_key
    from services.stages.explore.vector_index import VectorIndex

    ws = cli_workspace()
    spec = clip_spec(model, pretrained, checkpoint) if (model or pretrained or checkpoint) else None
    key = pick_key(ws, dataset, spec)
    state = VectorIndex(ws, key).sync()
    typer.echo(f"{key}: {state['vectors']} vectors, {state['mode']} search (nprobe {state['nprobe']}), "
               f"{state['seconds']:.1f} s")  # fmt: skip

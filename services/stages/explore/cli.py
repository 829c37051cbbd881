"""CLI for Explore: `search` (by text, by an image file, or more like a stored image) and `search-index`.

Merged into the root app by `services.cli.app`; shares its workspace and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import (
    CheckpointOpt,
    ExecutorOpt,
    ModelOpt,
    PretrainedOpt,
    cli_workspace,
    clip_spec_if_named,
    fail,
    finish_job,
)

commands = typer.Typer()
SaveViewOpt = Annotated[
    str | None, typer.Option(help="Also save the results as a new dataset of this name (a saved view).")
]
KindOpt = Annotated[str, typer.Option(help="The saved view's kind (REAL, GEN, train, test...).")]


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
    save_view: SaveViewOpt = None,
    kind: KindOpt = "view",
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
    spec = clip_spec_if_named(model, pretrained, checkpoint)
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
    if save_view is not None:
        from services.stages.explore.saved_views import save_view as save

        query = f"text {text!r}" if text else f"like {like[:12]}" if like else f"image {image.name if image else ''}"
        hashes = [h.image_hash for h in result.hits]
        saved = save(ws, save_view, hashes, source_dataset=dataset, description=f"search {query}, top {k}", kind=kind)
        typer.echo(f"saved view {saved.name!r}: {saved.images} images ({saved.source})", err=True)


@commands.command("search-index")
def search_index(
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    dataset: Annotated[str | None, typer.Option(help="The model that embedded this dataset.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Build the index anew instead of adding new vectors.")] = False,
    executor: ExecutorOpt = None,
) -> None:
    """Build or update the vector index of an embedding model now (searches do it when they need to); with
    --executor dask://HOST:PORT a build assigns each store shard's vectors to their lists on the cluster's
    workers (they need the workspace at the same path)."""
    from services.jobs.executors import check_executor_url, executor_from_url
    from services.stages.explore.search import pick_key
    from services.stages.explore.vector_index import VectorIndex

    ws = cli_workspace()
    spec = clip_spec_if_named(model, pretrained, checkpoint)
    key = pick_key(ws, dataset, spec)
    if check_executor_url(executor) is None:
        state = VectorIndex(ws, key).sync(rebuild=rebuild)
    else:
        pool, close = executor_from_url(str(executor))
        try:
            state = VectorIndex(ws, key).sync(rebuild=rebuild, executor=pool)
        finally:
            close()
    typer.echo(f"{key}: {state['vectors']} vectors, {state['mode']} search (nprobe {state['nprobe']}), "
               f"{state['seconds']:.1f} s")  # fmt: skip


DatasetsOpt = Annotated[list[str], typer.Option("--dataset", help="A dataset (repeat for several).")]


@commands.command("duplicates")
def duplicates(
    dataset: DatasetsOpt,
    threshold: Annotated[float, typer.Option(help="Cosine at or above which two images are near-duplicates.")] = 0.95,
    k: Annotated[int, typer.Option(help="Neighbours looked at per image.", min=1, max=100)] = 10,
    against: Annotated[str | None, typer.Option(help="Leak report: images of --dataset near one of this.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write the groups (or leaks) to this CSV.")] = None,
    phash: Annotated[
        int | None,
        typer.Option(
            help="Also join edited copies: perceptual hashes at most this many bits apart (12 is a start).",
            min=0,
            max=32,
        ),
    ] = None,
    drop_extras: Annotated[
        bool, typer.Option(help="Record a choice per group: keep its best copy (most pixels), drop the rest.")
    ] = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Near-duplicate groups within and across the datasets (CLIP cosine >= --threshold), each image with its
    keep/drop choice (exports leave dropped images out); with --against, the images of one dataset that have a
    near-duplicate in another (a test set and its training set)."""
    from services.core import csv_safety
    from services.stages.explore.duplicate_choices import current_choices, record_choices, suggested_choices
    from services.stages.explore.neighbours import leaks, near_duplicate_groups
    from services.stages.explore.search import hit_names, pick_key

    if drop_extras and against is not None:
        fail("--drop-extras chooses within groups; a leak report (--against) records nothing")

    ws = cli_workspace()
    spec = clip_spec_if_named(model, pretrained, checkpoint)
    key = pick_key(ws, dataset[0], spec)
    rows: list[list[str]] = []
    if against is not None:
        if len(dataset) != 1:
            fail("--against compares one --dataset with another")
        found = leaks(ws, key, dataset[0], against, threshold)
        names = hit_names(ws, [h for pair in found for h in pair[:2]])
        for mine, theirs, score in found:
            typer.echo(f"{score:.4f}\t{mine}\t{names.get(mine, '')}\t{theirs}\t{names.get(theirs, '')}")
            rows.append([f"{score:.5f}", mine, names.get(mine, ""), theirs, names.get(theirs, "")])
        header = ["cosine", "image_hash", "name", "near_hash", "near_name"]
        typer.echo(f"{len(found)} images of {dataset[0]} have a near-duplicate in {against} ({key})", err=True)
    else:
        groups = near_duplicate_groups(ws, key, dataset, threshold, k, phash)
        members = [h for g in groups for h in g.members]
        if drop_extras:
            suggested = suggested_choices(ws, groups)
            record_choices(ws, suggested, cli_user(), f"duplicates --drop-extras at cosine >= {threshold}")
        names = hit_names(ws, members)
        chosen = current_choices(ws, members)
        for n, group in enumerate(groups, 1):
            typer.echo(f"group {n}: {len(group.members)} images, {group.describe()}")
            for member in group.members:
                choice = chosen.get(member, "-")
                typer.echo(f"  {choice}\t{member}\t{names.get(member, '')}")
                rows.append([str(n), member, names.get(member, ""), choice])
        header = ["group", "image_hash", "name", "choice"]
        by_phash = f" or perceptual hashes <= {phash} bits apart" if phash is not None else ""
        typer.echo(f"{len(groups)} groups, {len(members)} images, at cosine >= {threshold}{by_phash} ({key})",
                   err=True)  # fmt: skip
        if drop_extras:
            dropped = sum(1 for c in suggested.values() if c == "drop")
            typer.echo(f"recorded: {dropped} dropped, {len(groups)} kept (exports leave dropped images out)", err=True)
    if csv_out is not None:
        with csv_safety.open_for_write(csv_out, csv_safety.guard_enabled(ws.settings)) as writer:
            writer.writerow(header)
            writer.writerows(rows)
        typer.echo(f"written {csv_out}", err=True)


@commands.command("duplicate-choice")
def duplicate_choice(
    drop: Annotated[list[str] | None, typer.Option(help="An image hash to drop from exports (repeat).")] = None,
    keep: Annotated[list[str] | None, typer.Option(help="An image hash to keep (undoes a drop; repeat).")] = None,
    note: Annotated[str, typer.Option(help="Why, kept in the audit trail.")] = "",
) -> None:
    """Record keep/drop choices on near-duplicate images by hash (sha256 or seed hash_id); the latest counts."""
    from services.compat.seed_hash_ids import find_image
    from services.stages.explore.duplicate_choices import record_choices

    ws = cli_workspace()
    asked = [(h, "drop") for h in drop or []] + [(h, "keep") for h in keep or []]
    if not asked:
        fail("give at least one --drop HASH or --keep HASH")
    choices: dict[str, str] = {}
    for given, choice in asked:
        found = find_image(ws, given)
        if found is None:
            fail(f"no stored image {given[:16]}... in this workspace")
        choices[found] = choice
    record_choices(ws, choices, cli_user(), note)
    for image_hash, choice in choices.items():
        typer.echo(f"{choice}\t{image_hash}")


def cli_user() -> str:
    """Who made a choice from the command line: the account running it."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@commands.command("phash")
def phash_cmd(
    dataset: Annotated[str, typer.Option(help="The dataset whose images get a perceptual hash.")],
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
) -> None:
    """Perceptual hashes (64-bit pHash) for every image of the dataset not hashed yet, as a job: what
    `duplicates --phash` and the Duplicates view read to join edited copies."""
    from services.jobs.manager import JobManager
    from services.stages.explore.perceptual import start_phash

    ws = cli_workspace()
    manager = JobManager(ws)
    job_id = start_phash(ws, manager, dataset)
    typer.echo(f"job {job_id} created: perceptual hashes for {dataset!r}")
    finish_job(manager, job_id, background, executor)


@commands.command("outliers")
def outliers(
    dataset: DatasetsOpt,
    top: Annotated[int, typer.Option(help="How many to list.", min=1)] = 20,
    k: Annotated[int, typer.Option(help="Neighbours the uniqueness is taken over.", min=1, max=100)] = 10,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
) -> None:
    """The most unusual images of the datasets: uniqueness = 1 - mean cosine of the k nearest neighbours."""
    from services.stages.explore.neighbours import outliers as find_outliers
    from services.stages.explore.search import hit_names, pick_key

    ws = cli_workspace()
    spec = clip_spec_if_named(model, pretrained, checkpoint)
    key = pick_key(ws, dataset[0], spec)
    found = find_outliers(ws, key, dataset, k)[:top]
    names = hit_names(ws, [o.image_hash for o in found])
    for rank, o in enumerate(found, 1):
        typer.echo(f"{rank}\t{o.uniqueness:.4f}\t{o.nearest:.4f}\t{o.image_hash}\t{names.get(o.image_hash, '')}")
    typer.echo(f"rank, uniqueness, nearest cosine, hash, name ({key}, k={k})", err=True)


@commands.command("browse")
def browse_cmd(
    dataset: Annotated[
        list[str] | None, typer.Option(help="A dataset to browse (repeat for several; none: the whole catalog).")
    ] = None,
    of_kind: Annotated[
        list[str] | None, typer.Option(help="Only datasets of this kind: REAL, GEN, train, test, view (repeat).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A folder tag (repeat: any of them).")] = None,
    image_format: Annotated[list[str] | None, typer.Option("--format", help="PNG, JPEG... (repeat).")] = None,
    min_width: Annotated[int, typer.Option(min=0)] = 0,
    min_height: Annotated[int, typer.Option(min=0)] = 0,
    name_contains: Annotated[str, typer.Option(help="A part of the image's name.")] = "",
    flag: Annotated[str | None, typer.Option(help="A quality flag the image carries.")] = None,
    classifier: Annotated[str | None, typer.Option(help="A classifier's model sha: its scores shown.")] = None,
    min_score: Annotated[float | None, typer.Option(help="With --classifier: at least this score.")] = None,
    choice: Annotated[str, typer.Option(help="Near-duplicate choice: any, kept or dropped.")] = "any",
    category: Annotated[str | None, typer.Option(help="A category Gemini gave the image.")] = None,
    clip_category: Annotated[str | None, typer.Option(help="A category CLIP zero-shot gave it.")] = None,
    description_contains: Annotated[str, typer.Option(help="A part of Gemini's description.")] = "",
    ocr: Annotated[str, typer.Option(help="OCR reading: any, read, valid or invalid.")] = "any",
    ocr_code_contains: Annotated[str, typer.Option(help="A part of the code OCR read.")] = "",
    sort: Annotated[str, typer.Option(help="input order, name, largest file, most pixels, highest score...")] = (
        "input order"
    ),
    text: Annotated[str | None, typer.Option(help="Rank the images that pass by this text (CLIP).")] = None,
    page: Annotated[int, typer.Option(min=1)] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=500)] = 50,
    save_view: SaveViewOpt = None,
    kind: KindOpt = "view",
) -> None:
    """The images of a dataset, several, or the whole catalog that pass the filters, a page at a time: hash,
    dataset, name, format, size, pixels, score (each image once, under the first dataset holding it); with
    --save-view, every image that passes is saved as a new dataset (a saved view) in the order shown."""
    from services.stages.explore.browse import BrowseFilter, browse
    from services.stages.explore.search import hit_names

    ws = cli_workspace()
    f = BrowseFilter(
        tuple(dataset or ()), tuple(of_kind or ()), tuple(tag or ()), tuple(image_format or ()), min_width,
        min_height, name_contains=name_contains, flag=flag, score_model=classifier, min_score=min_score, choice=choice,  # type: ignore[arg-type]
        category=category, clip_category=clip_category, description_contains=description_contains,
        ocr=ocr, ocr_code_contains=ocr_code_contains, sort=sort,  # type: ignore[arg-type]
    )  # fmt: skip
    if text is not None:  # the filtered images ranked by what they show
        from services.stages.explore.search import search as run_search

        result, _ = run_search(ws, text=text, k=min(1000, page * per_page), within=f)
        names = hit_names(ws, [h.image_hash for h in result.hits], f.one_dataset)
        for rank, hit in enumerate(result.hits[(page - 1) * per_page :], (page - 1) * per_page + 1):
            typer.echo(f"{rank}\t{hit.score:.4f}\t{hit.image_hash}\t{names.get(hit.image_hash, '')}")
        typer.echo(f"{len(result.hits)} images ranked by the text ({result.key}, {result.seconds:.3f} s)", err=True)
        return
    rows, total = browse(ws, f, (page - 1) * per_page, per_page)
    for r in rows:
        score = "" if r.score is None else f"{r.score:.4f}"
        typer.echo(f"{r.image_hash}\t{r.dataset}\t{r.name}\t{r.format}\t{r.bytes}\t{r.width}x{r.height}\t{score}")
    typer.echo(f"{total:,} images pass; page {page} of {max(1, -(-total // per_page)):,}", err=True)
    if save_view is not None:
        from services.stages.explore.saved_views import save_browse_view

        saved = save_browse_view(ws, save_view, f, kind=kind)
        typer.echo(f"saved view {saved.name!r}: {saved.images} images ({saved.source})", err=True)


@commands.command("image-detail")
def image_detail_cmd(
    image_hash: Annotated[str, typer.Argument(help="The image's sha256 (or seed 004's hash_id).")],
) -> None:
    """Everything the catalog holds about one image, as JSON: file, sources, datasets and tags, every stage
    result, classifier scores, labels, near-duplicate choices, other names."""
    import json

    from services.compat.seed_hash_ids import find_image
    from services.stages.explore.image_detail import image_detail

    ws = cli_workspace()
    found = find_image(ws, image_hash.strip().lower())
    if found is None:
        fail(f"no stored image {image_hash[:16]}... in this workspace")
    typer.echo(json.dumps(image_detail(ws, found).as_dict(), indent=2, default=str))

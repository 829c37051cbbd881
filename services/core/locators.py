"""Where an image came from, as it is shown outside the server (the REST API, pages on a team server).

A source's locator is a URL, an `s3://` key, or an absolute server path (a file, or a zip member
`/srv/in/a.zip!dir/b.jpg`). URLs and S3 keys are shown as they are. A server path is shown relative to the
folder or zip it was imported from, with that folder's name (`parts/p.png`, `a.zip!dir/b.jpg`), or by its file
name when no import root holds it: never where the server keeps its files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

from services.core.catalog import Catalog


def import_roots(catalog: Catalog) -> list[str]:
    """Every dataset's source that is a server path (folders and zips that were imported, uploads)."""
    return [r["source"] for r in catalog.query("SELECT DISTINCT source FROM datasets") if r["source"].startswith("/")]


METADATA_ONLY_PREFIX = "seed-metadata:"  # an image imported from seed metadata without its file: + its path


def shown_locator(locator: str, roots: Iterable[str]) -> str:
    """`locator` without its server path: relative to the most specific import root holding it, else the
    file (or zip) name; URLs and `s3://` keys unchanged. A metadata-only image's path (where a seed metadata
    file said its file was) is shown the same way after its prefix."""
    if locator.startswith(METADATA_ONLY_PREFIX):
        return METADATA_ONLY_PREFIX + shown_locator(locator[len(METADATA_ONLY_PREFIX) :], roots)
    if "://" in locator or not locator.startswith("/"):
        return locator
    file_part, bang, member = locator.partition("!")
    path = PurePosixPath(file_part)
    best: PurePosixPath | None = None
    for text in roots:
        root = PurePosixPath(text)
        if (path == root or root in path.parents) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    if best is None or best == PurePosixPath("/"):
        shown = path.name
    else:
        shown = str(PurePosixPath(best.name) / path.relative_to(best)) if path != best else best.name
    return shown + bang + member

"""Import a folder tree or a zip of one as a dataset: every image stored by content hash, tagged by the name
of the folder it sits in (seed 004's convention; `other-training` / `other-validation` hold negatives).

Zips are read in place (`services.io.archives`), including zips inside the folder or inside the zip up to a
depth limit; refused members (paths with `..`, symlinks, encryption, bombs, non-images) are recorded as
failed items with the reason. Input files are never changed. The same image under two folders carries both
tags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from services.core.datasets import DatasetError, ensure_dataset, insert_rows
from services.core.workspace import Workspace, write_atomic
from services.io.archives import IMAGE_SUFFIXES, ArchiveError, ArchiveLimits, list_images
from services.jobs.manager import JobManager
from services.jobs.params import JobParams, StoreParams, job_params
from services.stages.download.urls import DownloadTaskBase

BATCH = 5000


def start_folder_import(
    ws: Workspace,
    manager: JobManager,
    folder: Path,
    dataset: str | None = None,
    *,
    kind: str = "folder",
    workers: int | None = None,
) -> int:
    """A job that stores every image under `folder` (or in the zip `folder`, or the one image file `folder`) in
    the workspace."""
    folder = Path(folder).expanduser().resolve()
    is_zip = folder.is_file() and folder.suffix.lower() == ".zip"
    is_image = folder.is_file() and folder.suffix.lower() in IMAGE_SUFFIXES
    if not folder.is_dir() and not is_zip and not is_image:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"{folder}: not a folder, a .zip file or an image file ({kinds})")
    name = dataset or (folder.name if folder.is_dir() else folder.stem)
    ds = ensure_dataset(ws.catalog, name, kind, str(folder), ["path", "tag"])
    entries_file = None
    if is_image:  # one image (seed 004 classified a single file too): one entry, no tag
        entries_path = ws.root / "uploads" / f"single-import-{ds.id}.json"
        write_atomic(entries_path, json.dumps([[folder.name, str(folder), ""]]).encode("utf-8"))
        entries_file = str(entries_path)
    processes = workers if workers is not None else 0
    with job_params("import_folder"):  # entries_file only for one image: a folder's row holds what it always held
        if entries_file:
            params = FolderImportParams(folder=str(folder), dataset=name, workers=processes, entries_file=entries_file)
        else:
            params = FolderImportParams(folder=str(folder), dataset=name, workers=processes)
    what = "zip" if is_zip else "image" if is_image else "folder"
    title = f"Import {what}: {name} ({folder.name})"  # titles show no server paths
    return manager.create("import_folder", title, params, ds.id)


def tagged_entries(root: Path, limits: ArchiveLimits) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(key, locator, tag) of every image under a folder or in a zip, and refused entries {key: reason}.
    Keys are relative to `root` (`cats/a.jpg`, `more.zip!dogs/b.jpg`); locators are absolute."""
    entries: list[tuple[str, str, str]] = []
    refused: dict[str, str] = {}
    if root.is_file():
        _add_zip(root, root, limits, entries, refused)
        return entries, refused
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = str(path.relative_to(root))
        suffix = path.suffix.lower()
        if suffix == ".zip":
            _add_zip(path, root, limits, entries, refused)
        elif suffix in IMAGE_SUFFIXES:
            entries.append((rel, str(path), path.parent.name if path.parent != root else ""))
    return entries, refused


def _add_zip(
    path: Path, root: Path, limits: ArchiveLimits, entries: list[tuple[str, str, str]], refused: dict[str, str]
) -> None:
    prefix = "" if path == root else str(path.relative_to(root)) + "!"
    try:
        members, skipped = list_images(path, limits)
    except ArchiveError as exc:
        refused[prefix.rstrip("!") or path.name] = str(exc)
        return
    cut = len(str(path)) + 1
    for m in members:
        entries.append((prefix + m.locator[cut:], m.locator, m.parent))
    for s in skipped:
        refused[prefix + s.locator[cut:]] = s.reason


class FolderImportParams(StoreParams):
    """A folder or zip import (or seed 004's JSON entries): what to read into which dataset."""

    folder: str
    entries_file: str | None = None


class FolderImportTask(DownloadTaskBase):
    params_model: ClassVar[type[JobParams]] = FolderImportParams
    kind: ClassVar[str] = "import_folder"
    source_kind: ClassVar[str] = "path"
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"not_image", "refused"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        manager = JobManager(ws)
        p = FolderImportParams.model_validate(params)
        root = Path(p.folder)
        dataset_id = ws.catalog.scalar("SELECT dataset_id FROM jobs WHERE id = ?", (job_id,))
        if p.entries_file:  # a seed metadata import: the files it names, with their tags
            entries = [tuple(e) for e in json.loads(Path(p.entries_file).read_text(encoding="utf-8"))]
            refused: dict[str, str] = {}
        else:
            entries, refused = tagged_entries(root, ArchiveLimits())
        for start in range(0, len(entries), BATCH):
            part = entries[start : start + BATCH]
            insert_rows(ws.catalog, dataset_id, [(start + i, [key, tag], key) for i, (key, _, tag) in enumerate(part)])
            manager.add_items(job_id, [(key, locator) for key, locator, _ in part])
            kind_of = {locator: ("zip" if "!" in locator else "path") for _, locator, _ in part}
            known: dict[str, str] = {}
            for kind in ("path", "zip"):
                known.update(ws.catalog.source_hashes(kind, [loc for loc, k in kind_of.items() if k == kind]))
            by_locator = {locator: key for key, locator, _ in part}
            manager.mark_known(job_id, {by_locator[loc]: h for loc, h in known.items()})
        if refused:
            manager.add_items(job_id, [(key, None) for key in refused])
            manager.mark_failed(job_id, {key: ("refused", reason) for key, reason in refused.items()})

"""The workspace folder: catalog, caches, stored images, derived copies, logs, uploads and exports.

Everything a run produces lives under one root so a team can move, back up or share it as a unit.
Stored files are named by content hash (`images/ab/abcd....jpg`), so two URLs or two paths that give the
same bytes share one file.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import diskcache

from services.catalog import Catalog, CatalogError, NewCatalogRefused
from services.settings import Settings, load_settings

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
CONTENT_FOLDERS = ("images", "derived", "embeddings", "models")  # what a catalog indexes


@dataclass
class Workspace:
    root: Path
    settings: Settings = field(default_factory=load_settings)
    allow_new_catalog: bool = False  # True only to start a new catalog over existing content on purpose

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        for sub in ("images", "derived", "logs", "uploads", "exports", "jobs", "cache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.catalog = self._open_catalog()
        self._cache: diskcache.Cache | None = None
        self._cache_lock = threading.Lock()

    def _open_catalog(self) -> Catalog:
        """The catalog; never a new empty one over a workspace that holds content (that would hide it all), and
        a damaged one named as such. Both leave every file as it was and say how to recover."""
        path = self.root / "catalog.sqlite"
        content = [] if self.allow_new_catalog else content_folders(self.root)
        try:
            return Catalog(path, create_if_new=not content)
        except NewCatalogRefused as exc:
            raise CatalogError(
                f"{exc}, but the workspace {self.root} holds {', '.join(f'{c}/' for c in content)}: a new empty "
                "catalog would hide it, so nothing was changed. Restore catalog.sqlite (and catalog.sqlite-wal if "
                "there is one) from a backup; or start a new catalog on purpose with `python -m services "
                f"--workspace {self.root} workspace new-catalog` and import the stored images again with "
                f"`download folder {self.root / 'images'}`"
            ) from None
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise
            raise CatalogError(
                f"{path} is damaged ({exc}); nothing was changed. Restore it from a backup; or recover what SQLite "
                f"can read with `sqlite3 {path} .recover | sqlite3 recovered.sqlite` and put that in its place; "
                f"or set it aside and start a new one with `python -m services --workspace {self.root} workspace "
                "new-catalog`"
            ) from None

    @classmethod
    def open(cls, root: Path | str | None = None, settings: Settings | None = None) -> Workspace:
        settings = settings or load_settings()
        return cls(Path(root) if root is not None else settings.workspace, settings)

    @property
    def cache(self) -> diskcache.Cache:
        """Request and job caches (diskcache: safe across the dashboard and job processes)."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = diskcache.Cache(str(self.root / "cache"), size_limit=2**30)
            return self._cache

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def job_dir(self, job_id: int) -> Path:
        path = self.root / "jobs" / str(job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def upload_path(self, filename: str) -> Path:
        """A safe place for an uploaded file: the name is reduced to [A-Za-z0-9._-] and never a path."""
        name = _SAFE_NAME.sub("_", Path(filename).name).strip("._") or "upload"
        return self.root / "uploads" / name

    def close(self) -> None:
        self.catalog.close()
        if self._cache is not None:
            self._cache.close()


def content_folders(root: Path) -> list[str]:
    """Which of images/, derived/, embeddings/, models/ hold anything (one directory entry is enough)."""
    found = []
    for name in CONTENT_FOLDERS:
        try:
            with os.scandir(root / name) as entries:
                if next(entries, None) is not None:
                    found.append(name)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def set_aside_catalog(root: Path) -> list[Path]:
    """Move a missing, empty or damaged catalog (and its -wal/-shm) to `catalog.sqlite.broken-<time>`, so a new
    one can be made without deleting anything; returns where the files went."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = root / f"catalog.sqlite{suffix}"
        if src.exists():
            target = root / f"catalog.sqlite{suffix}.broken-{stamp}"
            os.replace(src, target)
            moved.append(target)
    return moved


def image_relpath(image_hash: str, extension: str) -> str:
    """Where an original is stored, relative to the workspace (module-level: workers only know the root)."""
    return f"images/{image_hash[:2]}/{image_hash}.{extension}"


def derived_relpath(variant: str, image_hash: str, extension: str) -> str:
    """Where a derived copy (resize, recipe output) is stored, relative to the workspace."""
    return f"derived/{variant}/{image_hash[:2]}/{image_hash}.{extension}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary name and rename, so a killed process never leaves half a file under the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """A write refused for lack of space: OSError ENOSPC/EDQUOT, or SQLite's 'database or disk is full'
    (also when wrapped: the cause chain is followed)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False

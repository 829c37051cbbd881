"""The workspace folder: catalog, caches, stored images, derived copies, logs, uploads and exports.

Everything a run produces lives under one root so a team can move, back up or share it as a unit.
Stored files are named by content hash (`images/ab/abcd....jpg`), so two URLs or two paths that give the
same bytes share one file.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import diskcache

from services.catalog import Catalog
from services.settings import Settings, load_settings

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Workspace:
    root: Path
    settings: Settings = field(default_factory=load_settings)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        for sub in ("images", "derived", "logs", "uploads", "exports", "jobs", "cache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(self.root / "catalog.sqlite")
        self._cache: diskcache.Cache | None = None
        self._cache_lock = threading.Lock()

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

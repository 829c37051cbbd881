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

from services.core.catalog import Catalog, CatalogError, NewCatalogRefused
from services.core.settings import Settings, load_settings

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
UPLOAD_PREFIX = re.compile(r"^[0-9a-f-]{12}_(.+)$")  # ui.components.save_upload: the upload's file id, cut
CONTENT_FOLDERS = ("images", "derived", "embeddings", "models")  # what a catalog indexes


@dataclass
class Workspace:
    root: Path
    settings: Settings = field(default_factory=load_settings)
    allow_new_catalog: bool = False  # True only to start a new catalog over existing content on purpose

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        for sub in ("images", "derived", "logs", "uploads", "exports", "jobs", "cache", "tmp"):
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

    def shown_name(self, path: Path | str) -> str:
        """The name a person knows a file by: a stored upload without the prefix that keeps uploads apart
        (`1a2b3c4d-5e6f_urls.csv` is `urls.csv`), anything else its file name."""
        path = Path(path)
        match = UPLOAD_PREFIX.match(path.name)
        return match.group(1) if match and path.parent == self.root / "uploads" else path.name

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


def write_atomic(path: Path, data: bytes, staging: Path | None = None) -> None:
    """Write via a temporary name and rename, so a killed process never leaves half a file under the name.

    The temporary name carries the writer's pid (`.<name>.<pid>.<thread>.tmp`), so a later run can tell a
    leftover of a killed process from a file being written. `staging` (the workspace's `tmp/`, on the same
    filesystem) keeps the temporary files of the big content folders in one place that is cheap to sweep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = staging if staging is not None else path.parent
    tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        try:
            fh = open(tmp, "wb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            fh = open(tmp, "wb")  # noqa: SIM115
        with fh:
            fh.write(data)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV or staging is None:
                raise
            tmp.unlink(missing_ok=True)  # the staging folder is on another filesystem: write beside the target
            write_atomic(path, data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an error leaves no temporary file behind
        raise


# Temporary files of atomic writes, each naming the pid that writes it: write_atomic and csv_safety
# (`.<name>.<pid>.<thread>.tmp`), embedding shards (`.<ns>-<pid>-<hex>.npy.tmp`), page uploads (`.<name>.<pid>.part`).
_TEMP_NAMES = (
    re.compile(r"^\..+\.(?P<pid>\d+)\.\d+\.tmp$"),
    re.compile(r"^\.\d{20}-(?P<pid>\d+)-[0-9a-f]{8}\.(?:npy|hashes)\.tmp$"),
    re.compile(r"^\..+\.(?P<pid>\d+)\.part$"),
)
# Where they are, and how deep to look: never images/ or derived/ themselves (millions of files), whose
# writers stage in tmp/.
_TEMP_FOLDERS = (("tmp", 3), ("models", 4), ("embeddings", 1), ("exports", 1), ("uploads", 0))


def remove_stale_temp_files(root: Path, started_at: float, extra: list[Path] | None = None) -> list[Path]:
    """Remove temporary files that killed runs left behind: older than `started_at` (the run that sweeps) and
    written by a process that is no longer alive on this machine. Returns what was removed."""
    removed: list[Path] = []
    folders = [(root / name, depth) for name, depth in _TEMP_FOLDERS] + [(p, 0) for p in extra or []]
    for folder, depth in folders:
        for path in _walk(folder, depth):
            match = next((m for m in (p.match(path.name) for p in _TEMP_NAMES) if m), None)
            if match is None or pid_alive(int(match["pid"])):
                continue
            try:
                if path.stat().st_mtime < started_at - 2.0:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
    return removed


def _walk(folder: Path, depth: int) -> list[Path]:
    """Files under `folder`, at most `depth` folders down (no symlinks followed)."""
    files: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    files.append(Path(entry.path))
                elif depth > 0 and entry.is_dir(follow_symlinks=False):
                    files.extend(_walk(Path(entry.path), depth - 1))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    return files


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs here (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


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

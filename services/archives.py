"""Zip archives as image sources, read in place and bounded: nothing is extracted to disk by member name.

A member is addressed as `archive.zip!dir/inner.zip!pic.jpg` (nested zips up to a depth limit). Listing
checks every member before anything is read: absolute paths, `..`, symlinks, encryption, the member count,
the total uncompressed size, the compression ratio and the nesting depth are bounded, and each refused
member is reported with the reason instead of failing the archive.
"""

from __future__ import annotations

import io
import stat
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

SEPARATOR = "!"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class ArchiveError(ValueError):
    """The archive as a whole cannot be used (not a zip, too many members, too large)."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 200_000
    max_total_bytes: int = 20 * 2**30  # uncompressed, all members of all nested zips together
    max_member_bytes: int = 200 * 2**20  # an image member
    max_nested_bytes: int = 2**30  # a zip inside a zip, read into memory
    max_ratio: float = 200.0  # uncompressed / compressed, per member
    max_depth: int = 2  # zips inside zips inside the archive


@dataclass(frozen=True)
class Member:
    locator: str  # archive.zip!path or archive.zip!inner.zip!path
    inner_path: str  # the path inside its own (innermost) zip
    parent: str  # the containing folder name inside the zip, or the zip's own stem at its root
    size: int


@dataclass(frozen=True)
class Skipped:
    locator: str
    reason: str


def is_archive_locator(locator: str) -> bool:
    head = locator.split(SEPARATOR, 1)[0]
    return SEPARATOR in locator and head.lower().endswith(".zip")


def list_images(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> tuple[list[Member], list[Skipped]]:
    """Image members of a zip (and of zips inside it, up to the depth limit); refused members with reasons."""
    members: list[Member] = []
    skipped: list[Skipped] = []
    budget = {"members": 0, "bytes": 0}
    try:
        with zipfile.ZipFile(path) as zf:
            _walk(zf, str(path), Path(path).stem, 0, limits, budget, members, skipped)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path}: not a readable zip archive ({exc})") from None
    return members, skipped


def _walk(
    zf: zipfile.ZipFile,
    prefix: str,
    stem: str,
    depth: int,
    limits: ArchiveLimits,
    budget: dict[str, int],
    members: list[Member],
    skipped: list[Skipped],
) -> None:
    seen: set[str] = set()
    for info in zf.infolist():
        if info.is_dir():
            continue
        name = info.filename
        locator = f"{prefix}{SEPARATOR}{name}"
        budget["members"] += 1
        if budget["members"] > limits.max_members:
            raise ArchiveError(f"{prefix}: more than {limits.max_members} members")
        reason = _refusal(info, limits)
        if reason is None and name in seen:
            reason = "duplicate member name"
        seen.add(name)
        suffix = PurePosixPath(name).suffix.lower()
        if reason is None and suffix not in IMAGE_SUFFIXES and suffix != ".zip":
            reason = "not an image file"
        if reason is None:
            budget["bytes"] += info.file_size
            if budget["bytes"] > limits.max_total_bytes:
                raise ArchiveError(f"{prefix}: over {limits.max_total_bytes} bytes uncompressed in total")
        if reason is not None:
            skipped.append(Skipped(locator, reason))
            continue
        if suffix == ".zip":
            if depth + 1 > limits.max_depth:
                skipped.append(Skipped(locator, f"zip nested deeper than {limits.max_depth} levels"))
                continue
            try:
                with zipfile.ZipFile(io.BytesIO(zf.read(info))) as inner:
                    _walk(inner, locator, PurePosixPath(name).stem, depth + 1, limits, budget, members, skipped)
            except (zipfile.BadZipFile, RuntimeError) as exc:
                skipped.append(Skipped(locator, f"corrupt nested zip ({exc})"))
            continue
        parts = PurePosixPath(name).parts
        parent = parts[-2] if len(parts) > 1 else stem
        members.append(Member(locator, name, parent, info.file_size))


def _refusal(info: zipfile.ZipInfo, limits: ArchiveLimits, size_limit: int | None = None) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted"
    size_limit = size_limit or (
        limits.max_nested_bytes if info.filename.lower().endswith(".zip") else limits.max_member_bytes
    )
    if info.file_size > size_limit:
        return f"{info.file_size} bytes uncompressed (limit {size_limit})"
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        return f"compression ratio {info.file_size / info.compress_size:.0f} (limit {limits.max_ratio:.0f})"
    return None


class ArchiveReader:
    """Reads members by locator; keeps the last few opened archives (outer file, nested bytes) per thread."""

    def __init__(self, limits: ArchiveLimits = ArchiveLimits(), keep: int = 4) -> None:
        self.limits = limits
        self.keep = keep
        self._local = threading.local()

    def _open(self, key: str, opener: Callable[[], zipfile.ZipFile]) -> zipfile.ZipFile:
        cache: dict[str, zipfile.ZipFile] = getattr(self._local, "cache", None) or {}
        self._local.cache = cache
        if key not in cache:
            if len(cache) >= self.keep:
                oldest = next(iter(cache))
                cache.pop(oldest).close()
            cache[key] = opener()
        return cache[key]

    def read(self, locator: str) -> bytes:
        parts = locator.split(SEPARATOR)
        if len(parts) < 2:
            raise ArchiveError(f"{locator}: not an archive member")
        zf = self._open(parts[0], lambda: zipfile.ZipFile(parts[0]))
        for depth, inner in enumerate(parts[1:-1], start=1):
            if depth > self.limits.max_depth:
                raise ArchiveError(f"{locator}: nested deeper than {self.limits.max_depth} levels")
            key = SEPARATOR.join(parts[: depth + 1])
            zf = self._open(key, partial(self._nested, zf, inner))
        return self._member(zf, parts[-1])

    def _nested(self, outer: zipfile.ZipFile, name: str) -> zipfile.ZipFile:
        return zipfile.ZipFile(io.BytesIO(self._member(outer, name, self.limits.max_nested_bytes)))

    def _member(self, zf: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
        limit = limit or self.limits.max_member_bytes
        info = zf.getinfo(name)
        reason = _refusal(info, self.limits, limit)
        if reason is not None:
            raise ArchiveError(f"{name}: {reason}")
        with zf.open(info) as fh:
            data = fh.read(limit + 1)  # the header's size may lie: never read more than the limit
        if len(data) > limit:
            raise ArchiveError(f"{name}: over {limit} bytes uncompressed")
        return data

    def close(self) -> None:
        for zf in (getattr(self._local, "cache", None) or {}).values():
            zf.close()
        self._local.cache = {}

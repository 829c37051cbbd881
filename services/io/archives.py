"""Zip archives as image sources, read in place and bounded: nothing is extracted to disk by member name.

A member is addressed as `archive.zip!dir/inner.zip!pic.jpg` (nested zips up to a depth limit). Listing
checks every member before anything is read: absolute paths, `..`, symlinks, encryption, over-long names,
compression methods Python cannot read (Deflate64, ...), the member count, the total uncompressed size, the
compression ratio and the nesting depth are bounded, and each refused member is reported with the reason
instead of failing the archive. Reading a member whose bytes turn out corrupt (a bad CRC, a broken or
truncated deflate stream) raises `ArchiveError` with the reason, never a zipfile/zlib exception, so every
caller (imports, the API) refuses that one member and carries on.
"""

from __future__ import annotations

import io
import lzma
import stat
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from services.core.errors import WorkbenchError

SEPARATOR = "!"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Compression methods zipfile can read; anything else (Deflate64 from Windows Explorer, PPMd, AES) is refused
# at listing with its name, instead of a NotImplementedError when the member is read.
READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
METHOD_NAMES = {1: "Shrink", 6: "Implode", 9: "Deflate64", 10: "PKWARE Implode", 93: "Zstandard", 95: "XZ",
                96: "JPEG", 97: "WavPack", 98: "PPMd", 99: "AES"}  # fmt: skip
# What a corrupt member raises while it is decompressed: zipfile (bad CRC), zlib, lzma and bz2 (OSError)
# streams, EOF in a cut stream, an unsupported method or flag.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, EOFError, OSError, RuntimeError,
               ValueError)  # fmt: skip


class ArchiveError(WorkbenchError, ValueError):
    """The archive, or one member, cannot be used (not a zip, too many members, too large, corrupt data);
    `reason` is the cause without the name."""

    error_class = "archive"
    http_status = 400

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 200_000
    max_total_bytes: int = 20 * 2**30  # uncompressed, all members of all nested zips together
    max_member_bytes: int = 200 * 2**20  # an image member
    max_nested_bytes: int = 2**30  # a zip inside a zip, read into memory
    max_ratio: float = 200.0  # uncompressed / compressed, per member
    max_depth: int = 2  # zips inside zips inside the archive
    max_name_chars: int = 1024  # a member's path inside its zip (file systems stop at 255 per part)


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


def list_images(
    path: Path | IO[bytes], limits: ArchiveLimits = ArchiveLimits(), label: str | None = None
) -> tuple[list[Member], list[Skipped]]:
    """Image members of a zip (and of zips inside it, up to the depth limit); refused members with reasons.
    `path` may be an open, seekable binary file (an upload); `label` then names it in locators."""
    members: list[Member] = []
    skipped: list[Skipped] = []
    budget = {"members": 0, "bytes": 0}
    name = label or str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            _walk(zf, name, PurePosixPath(name).stem, 0, limits, budget, members, skipped)
    except ArchiveError:  # a limit of the whole archive (members, bytes): already says what and why
        raise
    except READ_ERRORS as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ArchiveError(f"{_short(name)}: not a readable zip archive ({_describe(exc)})") from None
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
                data = _read_member(zf, info, limits.max_nested_bytes)
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    _walk(inner, locator, PurePosixPath(name).stem, depth + 1, limits, budget, members, skipped)
            except ArchiveError as exc:
                skipped.append(Skipped(locator, f"corrupt nested zip ({exc.reason})"))
            except READ_ERRORS as exc:
                skipped.append(Skipped(locator, f"corrupt nested zip ({_describe(exc)})"))
            continue
        parts = PurePosixPath(name).parts
        parent = parts[-2] if len(parts) > 1 else stem
        members.append(Member(locator, name, parent, info.file_size))


def _refusal(info: zipfile.ZipInfo, limits: ArchiveLimits, size_limit: int | None = None) -> str | None:
    name = info.filename
    if len(name) > limits.max_name_chars:
        return f"name of {len(name)} characters (limit {limits.max_name_chars})"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.compress_type not in READABLE_METHODS:
        method = METHOD_NAMES.get(info.compress_type, "unknown")
        return f"compression method {info.compress_type} ({method}) is not supported"
    size_limit = size_limit or (
        limits.max_nested_bytes if info.filename.lower().endswith(".zip") else limits.max_member_bytes
    )
    if info.file_size > size_limit:
        return f"{info.file_size} bytes uncompressed (limit {size_limit})"
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        return f"compression ratio {info.file_size / info.compress_size:.0f} (limit {limits.max_ratio:.0f})"
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """At most `limit` bytes of one member (the header's size may lie); corrupt data raises ArchiveError."""
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except READ_ERRORS as exc:
        raise ArchiveError(f"{_short(info.filename)}: {_describe(exc)}", _describe(exc)) from None
    if len(data) > limit:
        raise ArchiveError(f"{_short(info.filename)}: over {limit} bytes uncompressed", f"over {limit} bytes")
    return data


def _describe(exc: BaseException) -> str:
    """A reason a person can act on, for what zipfile and the decompressors raise on corrupt data."""
    text = str(exc)
    if isinstance(exc, zipfile.BadZipFile) and "CRC" in text:
        return "corrupt data: bad CRC-32"
    if isinstance(exc, zlib.error | lzma.LZMAError):
        return f"corrupt compressed data ({text})"
    if isinstance(exc, EOFError):
        return "compressed data ends early (truncated)"
    if isinstance(exc, NotImplementedError):
        return f"unsupported zip feature ({text})"
    return f"unreadable ({exc.__class__.__name__}: {text})"


def _short(name: str, keep: int = 200) -> str:
    """A hostile name shortened for messages (the whole name stays in the locator)."""
    return name if len(name) <= keep else f"{name[:keep]}... ({len(name)} characters)"


class ArchiveReader:
    """Reads members by locator; keeps the last few opened archives (outer file, nested bytes) per thread.
    `root` is an open binary file read instead of the locator's outer path (an upload held by the API)."""

    def __init__(self, limits: ArchiveLimits = ArchiveLimits(), keep: int = 4, root: IO[bytes] | None = None) -> None:
        self.limits = limits
        self.keep = keep
        self.root = root
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
        try:
            zf = self._open(parts[0], lambda: zipfile.ZipFile(self.root or parts[0]))
        except READ_ERRORS as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ArchiveError(f"{_short(parts[0])}: not a readable zip archive ({_describe(exc)})") from None
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
            raise ArchiveError(f"{_short(name)}: {reason}", reason)
        return _read_member(zf, info, limit)  # the header's size may lie: never more than the limit

    def close(self) -> None:
        for zf in (getattr(self._local, "cache", None) or {}).values():
            zf.close()
        self._local.cache = {}

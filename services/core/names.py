"""Names that users and API clients give to saved things (recipes, OCR rules, category lists, datasets, models,
label sets), and the one way such a name becomes a file path.

A name is `[A-Za-z0-9._-]`, starts with a letter or digit, has no `..` and is at most `MAX_NAME_CHARS` long,
so it can never be a path: no separator, no parent reference, no absolute form, no hidden file. Where a name
does become a path, `resolve_in` joins it to its own folder and refuses anything that would resolve outside it
(a symlink planted in the folder included). Pydantic models and FastAPI parameters use `SafeName`; plain code
calls `check_name`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from services.core.errors import WorkbenchError

MAX_NAME_CHARS = 128
MAX_NAME_BYTES = 128  # dataset names, in UTF-8 (safe names are ASCII, so the same limit)
MAX_FILE_NAME_BYTES = 200  # file names the product builds from names (file systems allow 255 bytes)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
RULE = f"letters, digits, '.', '_' and '-', starting with a letter or digit, no '..', at most {MAX_NAME_CHARS}"


class InvalidNameError(WorkbenchError, ValueError):
    """A name that is not a safe name; the message says which item and why (and never echoes a long input)."""

    error_class = "invalid_name"
    http_status = 422


def name_problem(value: object) -> str | None:
    """Why `value` is not a safe name, or None when it is one."""
    if not isinstance(value, str):
        return "must be text"
    if not value:
        return "is empty"
    if len(value) > MAX_NAME_CHARS:
        return f"is {len(value)} characters long (at most {MAX_NAME_CHARS})"
    if not _NAME.fullmatch(value) or ".." in value:
        return f"must be a name, not a path: use {RULE}"
    return None


def check_name(value: object, what: str = "name") -> str:
    """`value` when it is a safe name; else InvalidNameError naming `what` (e.g. "recipe", "rules")."""
    problem = name_problem(value)
    if problem is not None:
        shown = f" {value[:40]!r}{'...' if len(value) > 40 else ''}" if isinstance(value, str) and value else ""
        raise InvalidNameError(f"{what}{shown} {problem}")
    return str(value)


def dataset_name_problem(value: str) -> str | None:
    """Why a new dataset name cannot be used, or None. Dataset names are free text (they are data, shown and
    queried as such) but also prefix export file names, so no separators, control characters or `.`/`..`,
    no leading `~` (a shell's home folder: a name must never read as a path), and at most `MAX_NAME_BYTES`
    bytes of UTF-8 (file systems count bytes: 128 `€` are 384)."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long in UTF-8 (at most {MAX_NAME_BYTES}; letters outside ASCII take 2 to 4)"
    if value.strip() in (".", "..") or any(c in value for c in "/\\") or any(_unprintable(c) for c in value):
        return "cannot contain '/', '\\' or control characters, or be '.' or '..' (it names export files)"
    if value.lstrip().startswith("~"):
        return "cannot start with '~' (a name is never a path)"
    return None


def _validated(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)  # pydantic, and the API's 422, name the field it belongs to
    return value


SafeName = Annotated[str, AfterValidator(_validated)]
"""A `str` that pydantic (and so FastAPI) accepts only when it is a safe name."""


def is_name(value: object) -> bool:
    return name_problem(value) is None


def to_name(text: str, fallback: str = "unnamed") -> str:
    """A safe name made from free text (a file stem, a folder name): unsafe runs become '_', cut to length."""
    name = _UNSAFE.sub("_", text).replace("..", "_").strip("._-")[:MAX_NAME_CHARS].rstrip("._-")
    return name if is_name(name) else fallback


def resolve_in(folder: Path, name: str, suffix: str = "", what: str = "name") -> Path:
    """`folder/<name><suffix>` for a safe name, refused (InvalidNameError) when it would resolve outside `folder`."""
    check_name(name, what)
    base = folder.resolve()
    path = (base / f"{name}{suffix}").resolve()
    if path.parent != base and base not in path.parents:
        raise InvalidNameError(f"{what} {name!r} resolves outside its folder")
    return path


def file_name(name: str, tail: str = "") -> str:
    """One file name made from a user's name (a dataset, set, recipe, list) and a tail the product chooses
    (`-job12.csv`): separators and control characters become `_`, a leading `.` or `~` is dropped, and a
    name too long for a file system (255 bytes, counted in UTF-8) is cut to `MAX_FILE_NAME_BYTES` with a
    short hash of the whole name, so two long names never share a file. Every export, report or log file
    named after something a user named goes through here."""
    clean = "".join("_" if c in "/\\" or _unprintable(c) else c for c in name).lstrip(".~ ")
    clean = clean or "unnamed"
    room = MAX_FILE_NAME_BYTES - len(tail.encode("utf-8"))
    encoded = clean.encode("utf-8")
    if len(encoded) > room:
        digest = hashlib.sha256(encoded).hexdigest()[:8]
        cut = encoded[: max(1, room - len(digest) - 1)].decode("utf-8", "ignore")  # never half a character
        clean = f"{cut}-{digest}"
    return clean + tail


def _unprintable(c: str) -> bool:
    """Control characters and lone surrogates (which no file system name can hold)."""
    return ord(c) < 32 or c == "\x7f" or 0xD800 <= ord(c) <= 0xDFFF

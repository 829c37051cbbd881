"""Category lists, versioned in the catalog, and the check every categorisation answer goes through.

A list is saved under a name; saving different content makes a new version, saving the same content again
does not. Stage results record the list's content hash, so editing a list recomputes categories under the
new version and keeps the old answers for comparison. `unknown` is always allowed and never stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.core import csv_safety
from services.core.errors import WorkbenchError
from services.core.names import name_problem
from services.core.workspace import Workspace

UNKNOWN = "unknown"
MAX_CATEGORIES = 500
MAX_CATEGORY_CHARS = 80
MAX_CATEGORY_CSV_BYTES = 2**20  # a list CSV (500 names of 80 characters is about 40 KB)


class CategoryError(WorkbenchError, ValueError):
    """A list that cannot be used; the message names the row or the cause."""

    error_class = "categories"
    http_status = 400


@dataclass(frozen=True)
class CategoryList:
    name: str
    version: int
    categories: tuple[str, ...]
    content_hash: str
    source: str
    created_at: float

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def allowed(self) -> tuple[str, ...]:
        """What an answer may contain: the list plus `unknown`."""
        return (*self.categories, UNKNOWN)


def normalise(categories: Iterable[str]) -> list[str]:
    """Trimmed, de-duplicated (case-insensitively, first spelling wins), `unknown` and blanks dropped. Reading
    stops at the first name past `MAX_CATEGORIES` distinct ones, so a huge file costs no more than a full list."""
    seen: set[str] = set()
    out: list[str] = []
    for i, raw in enumerate(categories, start=1):
        name = " ".join(str(raw).split())
        if not name or name.lower() == UNKNOWN:
            continue
        if len(name) > MAX_CATEGORY_CHARS:
            raise CategoryError(f"category {i} is {len(name)} characters long (at most {MAX_CATEGORY_CHARS})")
        if "," in name:
            raise CategoryError(f"category {i} ({name!r}) contains a comma, which the categories CSV uses as separator")
        if name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
            if len(out) > MAX_CATEGORIES:
                raise CategoryError(
                    f"more than {MAX_CATEGORIES} categories (the {MAX_CATEGORIES + 1}st distinct one is in entry {i}); "
                    f"at most {MAX_CATEGORIES} fit one request"
                )
    if not out:
        raise CategoryError("the list has no categories")
    return out


def content_hash(categories: list[str] | tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(categories)).encode("utf-8")).hexdigest()[:12]


def parse_category_csv(data: bytes, filename: str = "categories.csv") -> list[str]:
    """The `Category` column of a CSV (the seeds' `unique_categories.csv`), in file order. A list holds at most
    500 names of 80 characters (about 40 KB), so a file over `MAX_CATEGORY_CSV_BYTES` is refused unread."""
    if len(data) > MAX_CATEGORY_CSV_BYTES:
        raise CategoryError(
            f"{filename}: {len(data):,} bytes; a category list CSV is at most {MAX_CATEGORY_CSV_BYTES:,} bytes "
            f"({MAX_CATEGORIES} categories of up to {MAX_CATEGORY_CHARS} characters)"
        )
    rows = _csv_rows(data, filename)
    header = {name.strip().lower(): name for name in rows.fieldnames or []}
    if "category" not in header:
        raise CategoryError(f"{filename}: no `Category` column (columns: {', '.join(rows.fieldnames or []) or 'none'})")
    return normalise(row.get(header["category"]) or "" for row in rows)


def extract_categories(data: bytes, filename: str = "categorized.csv") -> list[str]:
    """Unique categories of a categorised CSV (`image_name,description,categories`), like the seeds' helper."""
    rows = _csv_rows(data, filename)
    header = {name.strip().lower(): name for name in rows.fieldnames or []}
    if "categories" not in header:
        raise CategoryError(f"{filename}: no `categories` column (columns: {', '.join(rows.fieldnames or [])})")
    column = header["categories"]
    found = (part for row in rows for part in (row.get(column) or "").split(","))
    return sorted(normalise(found), key=str.lower)  # stops after 501 distinct names, however long the file


def _csv_rows(data: bytes, filename: str) -> csv_safety.DictRows:
    """Rows with the formula guard stripped: categorised CSVs are often our own exports (csv_safety)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CategoryError(f"{filename}: not UTF-8 text (byte {exc.start})") from None
    return csv_safety.dict_reader(io.StringIO(text))


def save_list(ws: Workspace, name: str, categories: list[str], source: str) -> CategoryList:
    """Store a new version when the content differs from the latest one; otherwise return the latest."""
    name = name.strip()
    if (problem := name_problem(name)) is not None:
        raise CategoryError(f"list name {name[:40]!r} {problem}")
    cats = normalise(categories)
    digest = content_hash(cats)
    with ws.catalog.write() as conn:
        row = conn.execute(
            "SELECT * FROM category_lists WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
        if row is not None and row["content_hash"] == digest:
            return _from_row(row)
        version = (row["version"] + 1) if row is not None else 1
        conn.execute(
            """INSERT INTO category_lists (name, version, categories, content_hash, source, created_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (name, version, json.dumps(cats), digest, source, time.time()),
        )
    return load_list(ws, name, version)


def load_list(ws: Workspace, name: str, version: int | None = None) -> CategoryList:
    """A list by name (latest version unless one is given)."""
    if version is None:
        row = ws.catalog.conn.execute(
            "SELECT * FROM category_lists WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
    else:
        row = ws.catalog.conn.execute(
            "SELECT * FROM category_lists WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
    if row is None:
        known = ", ".join(r.label for r in list_lists(ws)) or "none yet"
        raise CategoryError(f"no category list {name!r}{f' v{version}' if version else ''} (lists: {known})")
    return _from_row(row)


def list_lists(ws: Workspace, all_versions: bool = False) -> list[CategoryList]:
    rows = ws.catalog.query("SELECT * FROM category_lists ORDER BY name, version DESC")
    lists = [_from_row(r) for r in rows]
    if all_versions:
        return lists
    latest: dict[str, CategoryList] = {}
    for item in lists:
        latest.setdefault(item.name, item)
    return list(latest.values())


def _from_row(row: Any) -> CategoryList:
    return CategoryList(
        name=row["name"],
        version=row["version"],
        categories=tuple(json.loads(row["categories"])),
        content_hash=row["content_hash"],
        source=row["source"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class ValidatedCategories:
    categories: list[str]  # one or two from the list, or ["unknown"]
    rejected: list[str]  # what the answer held that is not in the list
    extra: list[str] = field(default_factory=list)  # valid ones past `max_categories`, in the answer's order


def validate_answer(answer: Any, category_list: CategoryList, max_categories: int = 2) -> ValidatedCategories:
    """Keep the answer's categories that are in the list (matched case- and space-insensitively, the list's
    spelling kept): the first `max_categories` as the answer (what the prompt asks for), any further valid
    ones in `extra` rather than dropped without a trace; `unknown` when none is valid."""
    if isinstance(answer, str):
        answer = [part for part in answer.split(",")]
    if not isinstance(answer, list):
        answer = []
    canonical = {" ".join(c.lower().split()): c for c in category_list.categories}
    kept: list[str] = []
    rejected: list[str] = []
    for raw in answer:
        key = " ".join(str(raw).lower().split())
        if key == UNKNOWN or not key:
            continue
        match = canonical.get(key)
        if match is None:
            rejected.append(str(raw))
        elif match not in kept:
            kept.append(match)
    return ValidatedCategories(kept[:max_categories] or [UNKNOWN], rejected, kept[max_categories:])

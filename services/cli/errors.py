"""How the CLI ends on an error: one line that names the item and the cause, never a traceback by default.

A known error (a `WorkbenchError`, the base of the product's own exception classes; a missing or unreadable
file; a full disk; a damaged catalog) prints `error: <message>` and exits 2. Anything else prints
`error: <Class>: <message> (run with --debug for the traceback)` and exits 1. The traceback always goes to
`<workspace>/logs/cli.log`; with `--debug` it is also shown (typer's pretty traceback, with locals off: they can
hold keys and tokens).
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from services.core.errors import WorkbenchError, missing_extra
from services.core.log_setup import quiet_third_party_loggers
from services.core.workspace import is_disk_full


def one_line(text: str) -> str:
    return " ".join(text.split())


def known_message(exc: BaseException) -> str | None:
    """The one line for an error a user can act on, or None when it is unexpected."""
    if is_disk_full(exc):
        return (
            f"disk full ({one_line(str(exc))}): free space, then run the command again "
            "(`python -m services jobs resume ID` continues a job where it stopped)"
        )
    if isinstance(exc, WorkbenchError):
        return one_line(str(exc)) or type(exc).__name__
    extra = missing_extra(exc)
    if extra is not None:
        return extra
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return (
            f"the workspace catalog is damaged ({exc}): restore catalog.sqlite from a backup, or recover what "
            "SQLite can read with `sqlite3 catalog.sqlite .recover | sqlite3 recovered.sqlite`"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def _log_traceback(exc: BaseException, workspace: Path | None) -> None:
    """The traceback into the workspace's logs/cli.log (best effort: the disk may be the problem)."""
    if workspace is None or not (workspace / "logs").is_dir():
        return
    try:
        with open(workspace / "logs" / "cli.log", "a", encoding="utf-8") as fh:
            fh.write(f"--- {' '.join(sys.argv[1:])}\n")
            fh.write("".join(traceback.format_exception(exc)))
    except OSError:
        pass


class _OneLineFormatter(logging.Formatter):
    """`warning: <message>`: no traceback on the terminal (the job log and logs/cli.log keep it)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {one_line(record.getMessage())}"


def _warnings_as_lines() -> None:
    """Warnings and errors logged while a command runs reach stderr as one line each (without a handler on
    the root logger, Python's last-resort handler would print them with their tracebacks)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, _OneLineFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(_OneLineFormatter())
        root.addHandler(handler)


def run_cli(app: Callable[[], object], debug: Callable[[], bool], workspace: Callable[[], Path | None]) -> None:
    """Run the typer app; turn what escapes it into one line and an exit code."""
    logging.raiseExceptions = False  # a log write on a full disk must not print its own traceback
    quiet_third_party_loggers()
    _warnings_as_lines()
    try:
        app()
    except Exception as exc:
        _log_traceback(exc, workspace())
        if debug():
            raise  # typer prints its traceback (locals off)
        message = known_message(exc)
        if message is not None:
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            sys.exit(2)
        typer.secho(
            f"error: {type(exc).__name__}: {one_line(str(exc))} (run with --debug for the traceback)",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(1)


class OneLineErrors(TyperGroup):
    """The root command group: an error a user can act on (see `known_message`) ends the command here, as one
    line and exit 2, whoever invoked the app (the `workbench` entry point, `python -m services`, a test's
    CliRunner). With `--debug` it propagates, and `run_cli` shows the traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click Context
        try:
            return super().invoke(ctx)
        except Exception as exc:  # typer.Exit, Abort and usage errors have no known message: they pass through
            from services.cli.common import cli_debug, cli_workspace_root

            message = known_message(exc)
            if message is None or cli_debug():
                raise
            _log_traceback(exc, cli_workspace_root())
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

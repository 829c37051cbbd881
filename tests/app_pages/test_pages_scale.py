"""benchmarks/pages.py at CI size: every page and list command on a workspace 30 times larger than another
must not take much longer (the full benchmark runs at 10k, 100k and 1M images; see BENCHMARKS.md). A page that
reads a whole dataset on every run again, as Preprocess and Describe did before issue 16 (3 to 6 s a run at 100k
images then), fails here: each time at 30k must stay under twice the time at 1k plus 0.4 s, the faster of two
rounds counting."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.pages import LIST_COMMANDS, PAGES, build_workspace, time_commands, time_pages
from services.core.datasets import list_datasets
from services.core.workspace import Workspace

SMALL, LARGE = 1_000, 30_000


def test_every_page_and_list_command_costs_about_the_same_at_30x_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path))  # restored after the test; time_pages sets it
    times = {}
    for n in (SMALL, LARGE):
        build_workspace(tmp_path / f"ws-{n}", n)
        ws = Workspace(tmp_path / f"ws-{n}")
        try:
            shown = {d.name: (d.rows, d.images) for d in list_datasets(ws.catalog)}
        finally:
            ws.close()
        assert shown["photos"] == (n, n) and shown["tagged"] == (max(2000, n // 10),) * 2
        if n == SMALL:
            time_pages(tmp_path / f"ws-{n}", 1)  # the imports each page makes once per process
        rounds = [time_pages(tmp_path / f"ws-{n}", 3) for _ in range(2)]  # the faster of two: noise is one-sided
        pages = {page: {k: min(r[page][k] for r in rounds) for k in ("first", "rerun", "errors")} for page in PAGES}
        commands = [time_commands(tmp_path / f"ws-{n}") for _ in range(2)]
        times[n] = (pages, {c: min(r[c] for r in commands) for c in LIST_COMMANDS})
    small_pages, small_commands = times[SMALL]
    large_pages, large_commands = times[LARGE]
    for page in PAGES:
        assert large_pages[page]["errors"] == 0, page
        for run in ("first", "rerun"):
            assert large_pages[page][run] < 2 * small_pages[page][run] + 0.4, (page, run, large_pages[page])
    for command in LIST_COMMANDS:
        assert large_commands[command] < 2 * small_commands[command] + 0.4, (command, large_commands)

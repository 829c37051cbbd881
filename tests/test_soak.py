"""The soak check at CI size: URLs with every fault, a SIGKILL mid-run and a resume; nothing lost, nothing
twice, every row ok or failed with a class, memory flat (benchmarks/soak.py runs it at 50,000)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from soak import soak


def test_soak_with_a_kill_in_the_middle(tmp_path: Path):
    result = soak(1500, 0.4, tmp_path)
    assert result["first_exit"] == -9 and 0 < result["killed_at_done"] < 1500  # the kill came mid-run
    assert (result["state"], result["items_pending"]) == ("completed", 0)
    assert result["labelled_rows"] == 1500 and result["failed_without_class"] == 0
    assert result["job_items"] == result["unique_urls"]  # one item per URL: none lost, none duplicated
    assert result["images_stored"] == result["items_ok"]
    assert result["peak_rss_mb_resume"] <= 1.5 * result["peak_rss_mb_first"]

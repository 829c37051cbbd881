"""The soak check at CI size: URLs with every fault, a SIGKILL mid-run and a resume; nothing lost, nothing
twice, every row ok or failed with a class, memory flat (benchmarks/soak.py runs it at 50,000)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_soak_with_a_kill_in_the_middle(tmp_path: Path):
    out = tmp_path / "soak.json"
    script = [
        sys.executable,
        str(ROOT / "benchmarks" / "soak.py"),
        "--n",
        "1500",
        "--kill-at",
        "0.4",
        "--out",
        str(out),
    ]
    subprocess.run(script, check=True, capture_output=True, timeout=280)
    result = json.loads(out.read_text())
    assert result["first_exit"] == -9 and 0 < result["killed_at_done"] < 1500  # the kill came mid-run
    assert (result["state"], result["items_pending"]) == ("completed", 0)
    assert result["labelled_rows"] == 1500 and result["failed_without_class"] == 0
    assert result["job_items"] == result["unique_urls"]  # one item per URL: none lost, none duplicated
    assert result["images_stored"] == result["items_ok"]
    assert result["peak_rss_mb_resume"] <= 1.5 * result["peak_rss_mb_first"]

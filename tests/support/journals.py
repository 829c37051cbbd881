"""What a killed job had finished: items committed to the catalog plus those only in its journals."""

from __future__ import annotations

import json

from services.core.workspace import Workspace


def finished_at_kill(ws: Workspace, job_id: int) -> set[str]:
    rows = ws.catalog.query("SELECT item_key FROM job_items WHERE job_id = ? AND status != 'pending'", (job_id,))
    finished = {r["item_key"] for r in rows}
    for journal in ws.job_dir(job_id).glob("journal-*.jsonl"):
        for line in journal.read_text().splitlines():
            try:
                finished.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                pass  # a line cut by the kill: that item was not finished
    return finished

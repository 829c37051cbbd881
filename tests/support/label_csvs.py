"""Categorised CSVs in the seeds' format (image_name,description,categories) with known shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_csv

HEADER = ["image_name", "description", "categories"]


def categorised(path: Path, rows: list[tuple[str, str]]) -> Path:
    return write_csv(path, HEADER, [[name, "a description", cats] for name, cats in rows])


def synthetic(path: Path, n: int, shares: dict[str, float], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cats = [c for c, p in shares.items() if rng.random() < p] or ["unknown"]
        rows.append((f"{path.stem}_{i}.jpg", ", ".join(cats)))
    return categorised(path, rows)

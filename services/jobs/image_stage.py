"""The base of every per-image stage job: one item per stored image of a dataset, already-done images marked
done at planning, so a rerun touches only what is missing or failed."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from services.core.datasets import DatasetError, dataset_id_of, dataset_images, image_count
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.jobs.params import DatasetParams
from services.jobs.stage import ChunkedTask

PLAN_BATCH = 5000


class ImageStageTask(ChunkedTask):
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"not_image", "missing"})

    @abstractmethod
    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        """(stage, settings hash) pairs an image needs ok results for to count as done."""

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        manager = JobManager(ws)
        stages = self.done_stages(ws, params)
        images = dataset_images(ws, DatasetParams.model_validate(params).dataset)
        for start in range(0, len(images), PLAN_BATCH):
            part = images[start : start + PLAN_BATCH]
            manager.add_items(job_id, part)
            hashes = [h for h, _ in part]
            done = set(hashes)
            for stage, settings_hash in stages:
                done &= ws.catalog.stage_done(stage, settings_hash, hashes)
            manager.mark_known(job_id, {h: h for h in done})


def require_images(ws: Workspace, dataset: str) -> int:
    """The dataset's id, after checking it exists and has stored images (the error says what to do)."""
    if not image_count(ws, dataset):  # also raises, listing the datasets, when the name is unknown
        raise DatasetError(f"dataset {dataset!r} has no stored images yet; download or import them first")
    return dataset_id_of(ws.catalog, dataset)

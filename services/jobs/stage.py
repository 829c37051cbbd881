"""The loop every stage's work runs inside, written once: results journaled the moment they exist, a cancel
honoured between items, results reported to the run in the items' order.

A stage supplies only its work. A chunked stage (downloads, preprocess, OCR, CLIP categories, training) gives a
top-level generator `work(items, options, cancelled)` that yields one `ItemResult` per item it finishes and asks
`cancelled()` before it starts an item; `run_chunk` runs it in a worker process (or thread, or Dask worker) and
owns the journal. A stage whose model or client lives in the job process (embed, classify, describe) hands
its results to a `ResultLog`, which journals and reports them. No stage opens a journal or checks the cancel
flag file itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from services.core.workspace import Workspace
from services.jobs.manager import ItemResult, Journal, PendingItem, RunContext, dispatch_chunks
from services.jobs.params import JobParams, executor_of

ChunkItems = list[tuple[str, str | None]]  # (item key, locator) pairs, as a worker receives them


class ChunkOptions(Protocol):
    """What every stage's worker options carry: where the job's journals go."""

    @property
    def journal_dir(self) -> str: ...


OptionsT = TypeVar("OptionsT", bound=ChunkOptions)
BatchWork = Callable[[ChunkItems, OptionsT, Callable[[], bool]], Iterable[ItemResult]]


def run_chunk(work: BatchWork[OptionsT], items: ChunkItems, options: OptionsT) -> list[ItemResult]:
    """In a worker: run a stage's work on a chunk. Each result is journaled as soon as the work yields it (a run
    killed mid-chunk loses only the items in flight); after a cancel the work starts no new item, and the items
    it did not reach stay pending. Results come back in the chunk's item order."""
    journal = Journal(options.journal_dir)
    results: list[ItemResult] = []
    try:
        # The work asks `cancelled()` before it starts an item and finishes the ones it started (their
        # results are kept), so every result it yields is journaled, also after a cancel.
        for result in work(items, options, lambda: journal.cancelled):
            journal.write(result)
            results.append(result)
    finally:
        journal.close()
    order = {key: i for i, (key, _) in enumerate(items)}
    results.sort(key=lambda r: order.get(r.key, len(order)))
    return results


class ResultLog:
    """In the job process: journal a stage's results, then report them to the run (progress and commit).

    `journal` alone serves work whose results the run collects by itself (Describe's threads, whose chunks
    `dispatch_chunks` reports). Results of a class in `unjournaled` (a stage's fatal classes: a wrong key
    stops the run, the item is not at fault) are reported but never journaled, so a replay cannot mark the
    item failed."""

    def __init__(
        self, ws: Workspace, job_id: int, ctx: RunContext | None, unjournaled: Sequence[str] | frozenset[str] = ()
    ) -> None:
        self.journal_file = Journal(ws.job_dir(job_id))
        self.ctx = ctx
        self.unjournaled = frozenset(unjournaled)

    def journal(self, results: Iterable[ItemResult]) -> None:
        for result in results:
            if result.error_class not in self.unjournaled:
                self.journal_file.write(result)

    def __call__(self, results: list[ItemResult]) -> None:
        self.journal(results)
        if self.ctx is not None:
            self.ctx.report(results)

    @property
    def stopping(self) -> bool:
        """A cancel (flag file) or a stop of the run (Ctrl+C, SIGTERM, a fatal class): start no new item."""
        return (self.ctx is not None and self.ctx.stop_requested) or self.journal_file.cancelled

    def close(self) -> None:
        self.journal_file.close()

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ChunkedTask(ABC):
    """A task whose items run in chunks on an executor: `run_chunk(batch_work(), items, options)` in the
    workers. A task whose work lives in the job process overrides `process` and reports through a `ResultLog`."""

    kind: ClassVar[str] = ""
    params_model: ClassVar[type[JobParams]] = JobParams
    fatal_classes: ClassVar[frozenset[str]] = frozenset()
    sticky_classes: ClassVar[frozenset[str]] = frozenset()
    holds_model: ClassVar[bool] = False  # loads a model (CLIP, OCR): the worker runs such jobs one at a time

    def prerequisite(self, params: dict[str, Any]) -> int | None:
        """A job that must have completed before this one plans (its `after_job`); the manager runs it."""
        return JobParams.model_validate(params).after_job

    @abstractmethod
    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        """Create the job's items (idempotent: a killed planning is simply planned again)."""

    def batch_work(self) -> BatchWork[Any]:
        """The stage's work on a chunk of (key, locator) items: a picklable top-level generator that yields one
        result per item (`run_chunk` journals them and honours a cancel). Tasks that override `process` (a model
        or a shared client in the job process) need none."""
        raise NotImplementedError(f"{type(self).__name__} runs its own process()")

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> Any:
        """The picklable options passed with every chunk."""
        raise NotImplementedError(f"{type(self).__name__} runs its own process()")

    def release(self) -> None:  # noqa: B027 (an optional hook)
        """Drop per-process worker state after a run (cached clients, pools)."""

    def process(
        self, ws: Workspace, job_id: int, params: dict[str, Any], items: Iterator[PendingItem], ctx: RunContext
    ) -> None:
        from services.jobs.executors import make_executor

        options = self.chunk_options(ws, job_id, params)
        work = self.batch_work()
        p = JobParams.model_validate(params)
        workers = p.workers or 0
        given = executor_of(params)
        executor = given or make_executor(workers)
        try:
            dispatch_chunks(
                items,
                lambda chunk: executor.submit(run_chunk, work, [(i.key, i.locator) for i in chunk], options),
                ctx,
                chunk_size=p.chunk_size or ws.settings.download.chunk_size,
                max_in_flight=max(2, 2 * workers) if given is None else p.in_flight or 32,
            )
        finally:
            if given is None:
                executor.shutdown(wait=True, cancel_futures=True)
            self.release()

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Nothing by default; downloads write their labelled CSV here."""

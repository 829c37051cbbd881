"""Typed job parameters: what a job row stores, one pydantic model per job kind.

`JobManager.create` validates a new job's parameters against its kind's model (an unknown key is a bug in the
caller and refused), and `JobManager.run` validates a stored row again before planning, so a row that cannot
run fails at once with the field and the cause instead of a KeyError deep in a stage. Rows written by older
releases carry the same keys and keep resuming; keys they hold that a model does not know are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.core.errors import WorkbenchError


class JobParams(BaseModel):
    """What any job may hold besides its stage's own: how it runs and where it came from."""

    model_config = ConfigDict(extra="allow")

    workers: int | None = Field(default=None, ge=0, description="Worker processes (0: in the job process).")
    chunk_size: int | None = Field(default=None, ge=1)  # items per chunk sent to a worker
    in_flight: int | None = Field(default=None, ge=1)  # chunks in flight on a given executor
    executor: str | None = None  # `local` or `dask://HOST:PORT`
    from_page: bool | None = None  # started from a page: counted against page_jobs.max_running
    page_queued_at: float | None = None  # waiting for a page-job slot since (epoch seconds)
    raw_csv: bool | None = None  # this job's CSVs are written without the formula guard
    after_job: int | None = None  # a job whose output this one needs (Classify's import): completed first


class DatasetParams(JobParams):
    """What a job over one dataset holds: every per-image stage (one item per stored image)."""

    dataset: str


class StoreParams(JobParams):
    """What a job that stores images holds (URL, S3 and folder imports): the dataset and what to keep."""

    dataset: str
    resize: int | None = Field(
        default=None, ge=8, le=4096, description="Also store an N x N copy (aspect kept, padded)."
    )
    keep_originals: bool = True
    placeholder: bool = False
    out: str | None = None


class ClipJobParams(JobParams):
    """What a job that embeds with CLIP holds (embed, classify): the model, its embedding key, the loader."""

    spec: dict[str, Any]
    key: str
    batch_size: int = Field(ge=1, le=1024, description="Images per forward pass.")
    loader_workers: int | None = Field(default=None, ge=0, description="Processes decoding images for the model.")


class ParamsError(WorkbenchError):
    error_class = "job_params"
    http_status = 422


EXECUTOR_KEY = "_executor"  # the executor the manager hands a run, beside the stored parameters (never stored)


def executor_of(params: dict[str, Any]) -> Executor | None:
    """The executor the manager handed this run (`--executor dask://...`); not a stored parameter."""
    executor = params.get(EXECUTOR_KEY)
    return executor if isinstance(executor, Executor) else None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


@contextmanager
def job_params(kind: str) -> Iterator[None]:
    """Around building a kind's params model in a `start_*`: a value the model refuses is a `ParamsError` that
    names the field (one clear line at every front door), not a pydantic traceback."""
    try:
        yield
    except ValidationError as exc:
        raise ParamsError(f"{kind} job parameters: {_problems(exc)}") from None


def stored_row(model: type[JobParams], kind: str, params: JobParams | dict[str, Any]) -> dict[str, Any]:
    """What the job row stores: a params model as JSON (the keys its caller set, aliases as written), checked
    again like a row from elsewhere (a dict from a test or an older caller)."""
    if isinstance(params, JobParams):
        if not isinstance(params, model):
            raise ParamsError(f"{kind} jobs take {model.__name__}, not {type(params).__name__}")
        row = params.model_dump(mode="json", by_alias=True, exclude_unset=True)
    else:
        row = dict(params)
    check_params(model, kind, row, new=True)
    return row


def field_help(model: type[BaseModel], name: str) -> str:
    """A field's description: the help a CLI option or a page widget shows for it."""
    return model.model_fields[name].description or ""


def field_bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    """The closed range a field's model allows (`ge`, `le`), for a CLI option's `min`/`max` and a page widget's
    bounds; open bounds (`gt`, `lt`) are left to the model, which refuses such values with the field named."""
    low = high = None
    for rule in model.model_fields[name].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


def int_range(model: type[BaseModel], name: str) -> tuple[int, int]:
    """An integer field's closed range for a page's number input (0 and 2**31 - 1 where the model sets none)."""
    low, high = field_bounds(model, name)
    return int(low if low is not None else 0), int(high if high is not None else 2**31 - 1)


def check_params(model: type[JobParams], kind: str, params: dict[str, Any], *, new: bool) -> JobParams:
    """`params` read through the kind's model; a new job may not carry keys the model does not know."""
    try:
        checked = model.model_validate(params)
    except ValidationError as exc:
        raise ParamsError(f"{kind} job parameters: {_problems(exc)}") from None
    if new and checked.model_extra:
        raise ParamsError(f"{kind} job parameters: unknown {', '.join(sorted(checked.model_extra))}")
    return checked

"""Describe & Categorize stage with Gemini: structured descriptions and validated categories, as a resumable
job whose requests go through one rate budget, one retry policy and a request cache.

Modes: `describe` (one image call per image), `categorize` (a text call over the stored description, or one
image call that describes and categorises together when there is no description yet) and `both` (always
the one-call form). Results are stage rows keyed by (image hash, stage, settings hash), where the settings
hash covers the prompt version, the model, the image size and, for categories, the list's content: a rerun
makes no request for what is done, and a new model or list recomputes only under its own key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError

from services.core.datasets import DatasetError, dataset_id_of, image_count, stage_count
from services.core.settings import Settings
from services.core.workspace import Workspace
from services.io.gemini_client import GeminiAnswer, GeminiCaller, GeminiError, build_sdk_models, parse_json_object
from services.jobs.image_stage import ImageStageTask, require_images
from services.jobs.job_context import ContextThreadPoolExecutor
from services.jobs.manager import ItemResult, JobManager, PendingItem, RunContext, dispatch_chunks
from services.jobs.params import JobParams, job_params
from services.jobs.stage import ResultLog
from services.stages.describe.categories import CategoryList, load_list, validate_answer
from services.stages.describe.prompts import (
    CATEGORIZE_PROMPT_VERSION,
    DESCRIBE_PROMPT,
    DESCRIBE_PROMPT_VERSION,
    Description,
    categorize_from_description_prompt,
    categorize_schema,
    describe_and_categorize_prompt,
    describe_and_categorize_schema,
    describe_schema,
)

log = logging.getLogger(__name__)

DESCRIBE_STAGE = "describe"
CATEGORIZE_STAGE = "categorize:gemini"
MODES = ("describe", "categorize", "both")
TOKENS_PER_TILE = 258  # Gemini 2.x: an image costs 258 tokens per 768x768 tile (one tile up to 384 px)
CACHE_PREFIX = "gemini-request"


def describe_settings_hash(model: str, image_max_size: int) -> str:
    return _short_hash([DESCRIBE_PROMPT_VERSION, model, image_max_size])


def categorize_settings_hash(model: str, category_list: CategoryList) -> str:
    return _short_hash([CATEGORIZE_PROMPT_VERSION, model, category_list.content_hash])


def _short_hash(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:12]


# --- starting a job ---------------------------------------------------------------------------------


def start_describe(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    mode: str = "describe",
    category_list: CategoryList | None = None,
    concurrency: int | None = None,
) -> int:
    """Create a Gemini job; the model, image size and category list are frozen into it."""
    if mode not in MODES:
        raise DatasetError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if mode != "describe" and category_list is None:
        raise DatasetError(f"mode {mode!r} needs a category list")
    dataset_id = require_images(ws, dataset)
    settings = ws.settings
    with job_params("describe"):
        params = DescribeParams(
            dataset=dataset,
            mode=mode,
            model=settings.caption_model,
            image_max_size=settings.processing.image_max_size,
            concurrency=concurrency or settings.gemini.concurrency,
            list=None if category_list is None else (category_list.name, category_list.version),
        )
    what = {"describe": "Describe", "categorize": "Categorize", "both": "Describe + categorize"}[mode]
    title = f"{what}: {dataset} with {settings.caption_model}"
    if category_list is not None:
        title += f" ({category_list.label})"
    return manager.create("describe", title, params, dataset_id)


class DescribeSettings(BaseModel):
    """What a Gemini run freezes (the mode, the model, image size and category list): a job's plan, and what an
    estimate is made for before any job exists."""

    mode: str
    model: str
    image_max_size: int
    list: tuple[str, int] | None = None


@dataclass(frozen=True)
class JobPlan:
    """What a job's params mean, resolved once per run."""

    mode: str
    model: str
    image_max_size: int
    category_list: CategoryList | None
    describe_hash: str
    categorize_hash: str | None

    @classmethod
    def from_params(cls, ws: Workspace, params: dict[str, Any]) -> JobPlan:
        p = DescribeSettings.model_validate(params)
        category_list = load_list(ws, p.list[0], p.list[1]) if p.list else None
        return cls(
            mode=p.mode,
            model=p.model,
            image_max_size=p.image_max_size,
            category_list=category_list,
            describe_hash=describe_settings_hash(p.model, p.image_max_size),
            categorize_hash=categorize_settings_hash(p.model, category_list) if category_list else None,
        )

    def done_stages(self) -> list[tuple[str, str]]:
        """The stage results an image needs for this job to have nothing left to do for it."""
        if self.mode == "describe":
            return [(DESCRIBE_STAGE, self.describe_hash)]
        stages = [(CATEGORIZE_STAGE, self.categorize_hash or "")]
        if self.mode == "both":
            stages.append((DESCRIBE_STAGE, self.describe_hash))
        return stages


class DescribeParams(JobParams, DescribeSettings):
    """A Gemini run: the dataset and its threads, with the settings frozen into the job."""

    dataset: str
    concurrency: int | None = Field(default=None, ge=1, description="Requests in flight.")


class DescribeTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = DescribeParams
    kind: ClassVar[str] = "describe"
    # Nothing a retry can fix without the user: a bad key, an unknown model, no network at all.
    fatal_classes: ClassVar[frozenset[str]] = frozenset({"config", "auth", "not_found", "connection"})
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"not_image", "missing"})

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        return JobPlan.from_params(ws, params).done_stages()

    def process(self, ws: Workspace, job_id: int, params: dict[str, Any], items: Any, ctx: RunContext) -> None:
        """Requests are I/O: threads in this process share one client, one budget and one cache."""
        results = ResultLog(ws, job_id, ctx, unjournaled=self.fatal_classes)  # threads journal, dispatch reports
        worker = DescribeWorker(ws, JobPlan.from_params(ws, params), results)
        concurrency = max(1, DescribeParams.model_validate(params).concurrency or ws.settings.gemini.concurrency)
        build_sdk_models()  # before the threads: the SDK builds its models lazily and not thread-safely
        try:
            with ContextThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gemini") as pool:
                dispatch_chunks(
                    items,
                    lambda chunk: pool.submit(worker.run_chunk, chunk),
                    ctx,
                    chunk_size=1,
                    max_in_flight=concurrency,
                )
        finally:
            results.close()
            stats = worker.caller.stats if worker.caller else None
            if stats is not None:
                log.info(
                    "job %s: %d requests, %d rate-limited, %d server errors, %d input and %d output tokens",
                    job_id, stats.requests, stats.rate_limited, stats.server_errors, stats.input_tokens,
                    stats.output_tokens,
                )  # fmt: skip


class DescribeWorker:
    """Does one image: cached answer or request, validation, stage rows. Shared by the run's threads."""

    def __init__(self, ws: Workspace, plan: JobPlan, log: ResultLog | None = None) -> None:
        self.ws = ws
        self.plan = plan
        self.log = log
        self._caller: GeminiCaller | None = None
        self._lock = threading.Lock()

    @property
    def caller(self) -> GeminiCaller | None:
        return self._caller

    def _get_caller(self) -> GeminiCaller:
        with self._lock:
            if self._caller is None:
                settings: Settings = self.ws.settings.model_copy(update={"caption_model": self.plan.model})
                self._caller = GeminiCaller(settings)
            return self._caller

    def run_chunk(self, chunk: list[PendingItem]) -> list[ItemResult]:
        assert self.log is not None, "a job's worker has its result log"
        results = []
        for item in chunk:
            if self.log.stopping:
                break
            result = self.run_one(item.key, item.locator or "")
            self.log.journal([result])
            results.append(result)
        return results

    def run_one(self, image_hash: str, relpath: str) -> ItemResult:
        plan = self.plan
        stages: list[tuple[str, str, str, dict[str, Any] | None, str | None]] = []
        try:
            if plan.mode == "describe":
                stages.append(self._describe(image_hash, relpath))
            else:
                description = None if plan.mode == "both" else self._stored_description(image_hash)
                if description is not None:
                    stages.append(self.categorize_text(image_hash, description))
                else:
                    stages.extend(self._describe_and_categorize(image_hash, relpath))
        except GeminiError as exc:
            failed_stage = DESCRIBE_STAGE if plan.mode == "describe" else CATEGORIZE_STAGE
            settings_hash = plan.describe_hash if plan.mode == "describe" else (plan.categorize_hash or "")
            message = exc.message
            return ItemResult(
                key=image_hash,
                status="failed",
                attempts=exc.attempts,
                error_class=exc.error_class,
                error_message=message,
                image_hash=image_hash,
                stages=[(failed_stage, settings_hash, "failed", None, f"{exc.error_class}: {message}")],
            )
        summary = {stage: result for stage, _, _, result, _ in stages}
        out = {
            "categories": (summary.get(CATEGORIZE_STAGE) or {}).get("categories"),
            "summary": ((summary.get(DESCRIBE_STAGE) or {}).get("description") or {}).get("summary"),
        }
        return ItemResult(key=image_hash, status="ok", image_hash=image_hash, stages=stages, result=out)

    # --- the three request shapes ---

    def _describe(self, image_hash: str, relpath: str) -> tuple[str, str, str, dict[str, Any], None]:
        plan = self.plan
        key = _cache_key("describe", plan.model, DESCRIBE_PROMPT_VERSION, image_hash, plan.image_max_size)
        answer = self._ask(
            key, lambda: [self._image_part(relpath), DESCRIBE_PROMPT], describe_schema(), _validated_description
        )
        description = _validated_description(answer.data)
        result = {"description": description, **_provenance(plan.model, answer, "image")}
        return (DESCRIBE_STAGE, plan.describe_hash, "ok", result, None)

    def categorize_text(
        self, image_hash: str, description: dict[str, Any]
    ) -> tuple[str, str, str, dict[str, Any], None]:
        plan = self.plan
        assert plan.category_list is not None
        prompt = categorize_from_description_prompt(description, plan.category_list)
        key = _cache_key(
            "categorize-text", plan.model, CATEGORIZE_PROMPT_VERSION, image_hash, plan.category_list.content_hash,
            _short_hash([description]),
        )  # fmt: skip
        answer = self._ask(key, lambda: [prompt], categorize_schema(plan.category_list), _has_categories)
        provenance = _provenance(plan.model, answer, "description")
        result = {**_categories_result(answer.data, plan.category_list), **provenance}
        return (CATEGORIZE_STAGE, plan.categorize_hash or "", "ok", result, None)

    def _describe_and_categorize(
        self, image_hash: str, relpath: str
    ) -> list[tuple[str, str, str, dict[str, Any] | None, str | None]]:
        plan = self.plan
        assert plan.category_list is not None
        cats = plan.category_list
        key = _cache_key(
            "describe-categorize", plan.model, f"{DESCRIBE_PROMPT_VERSION}+{CATEGORIZE_PROMPT_VERSION}", image_hash,
            plan.image_max_size, cats.content_hash,
        )  # fmt: skip
        prompt = describe_and_categorize_prompt(cats)
        schema = describe_and_categorize_schema(cats)
        answer = self._ask(key, lambda: [self._image_part(relpath), prompt], schema, _described_and_categorized)
        description = _validated_description(answer.data)
        provenance = _provenance(plan.model, answer, "image")
        categories = {**_categories_result(answer.data, cats), **provenance}
        return [
            (DESCRIBE_STAGE, plan.describe_hash, "ok", {"description": description, **provenance}, None),
            (CATEGORIZE_STAGE, plan.categorize_hash or "", "ok", categories, None),
        ]

    # --- plumbing ---

    def _ask(
        self, key: str, parts: Callable[[], list[Any]], schema: dict[str, Any], check: Callable[[dict[str, Any]], Any]
    ) -> GeminiAnswer:
        """The cached answer for this exact request, or a new request; only answers that pass `check` are
        cached, so a retry of a bad answer asks again."""
        cached = self.ws.cache.get(key)
        if isinstance(cached, dict):
            try:
                data = parse_json_object(cached["text"])
                check(data)
                return GeminiAnswer(data, cached["text"], 0, 0, 0, 0.0)
            except (KeyError, GeminiError):
                self.ws.cache.delete(key)
        answer = self._get_caller().generate_json(parts(), schema, check)
        record = {"text": answer.text, "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens}
        self.ws.cache.set(key, record)
        return answer

    def _stored_description(self, image_hash: str) -> dict[str, Any] | None:
        row = self.ws.catalog.conn.execute(
            """SELECT result FROM stage_results WHERE image_hash = ? AND stage = ? AND settings_hash = ?
               AND status = 'ok'""",
            (image_hash, DESCRIBE_STAGE, self.plan.describe_hash),
        ).fetchone()
        if row is None or not row["result"]:
            return None
        return dict(json.loads(row["result"])["description"])

    def _image_part(self, relpath: str) -> Any:
        from google.genai import types

        data = prepare_image(self.ws.abspath(relpath), self.plan.image_max_size)
        return types.Part.from_bytes(data=data, mime_type="image/jpeg")


def _cache_key(kind: str, model: str, prompt_version: str, image_hash: str, *extra: Any) -> str:
    return f"{CACHE_PREFIX}:{kind}:{model}:{prompt_version}:{image_hash}:" + ":".join(str(e) for e in extra)


def _has_categories(data: dict[str, Any]) -> None:
    if not isinstance(data.get("categories"), list | str):
        raise GeminiError("malformed_response", f"no `categories` list in the answer: {json.dumps(data)[:80]}")


def _described_and_categorized(data: dict[str, Any]) -> None:
    _validated_description(data)
    _has_categories(data)


def _validated_description(data: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in data.items() if k != "categories"}
    try:
        return Description.model_validate(data).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        message = f"description does not match the schema: {where}: {first['msg']}"
        raise GeminiError("malformed_response", message) from None


def _categories_result(data: dict[str, Any], category_list: CategoryList) -> dict[str, Any]:
    checked = validate_answer(data.get("categories"), category_list)
    return {
        "categories": checked.categories,
        "rejected": checked.rejected,
        "extra": checked.extra,  # valid categories past the two asked for; Compare's label sets count them
        "list": category_list.label,
        "list_hash": category_list.content_hash,
    }


def _provenance(model: str, answer: GeminiAnswer, via: str) -> dict[str, Any]:
    return {
        "model": model,
        "via": via,
        "cached": answer.attempts == 0,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "attempts": answer.attempts,
    }


def prepare_image(path: Any, max_side: int) -> bytes:
    """The seeds' request image: EXIF orientation applied, RGB, longest side <= `max_side`, JPEG q90."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft("RGB", (max_side, max_side))
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise GeminiError("missing", f"{path} is gone from the workspace") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise GeminiError("not_image", f"{path}: cannot decode ({exc})") from None
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# --- trying one image (the page's "try one") -------------------------------------------------------


def try_one(
    ws: Workspace, image_hash: str, relpath: str, mode: str = "describe", category_list: CategoryList | None = None
) -> dict[str, Any]:
    """Run one image through the job's own code path, store its result, and return the stage results."""
    plan = JobPlan(
        mode=mode,
        model=ws.settings.caption_model,
        image_max_size=ws.settings.processing.image_max_size,
        category_list=category_list,
        describe_hash=describe_settings_hash(ws.settings.caption_model, ws.settings.processing.image_max_size),
        categorize_hash=categorize_settings_hash(ws.settings.caption_model, category_list) if category_list else None,
    )
    result = DescribeWorker(ws, plan).run_one(image_hash, relpath)  # no job: nothing to journal
    if result.status != "ok":
        raise GeminiError(result.error_class or "error", result.error_message or "failed")
    with ws.catalog.write() as conn:
        for stage, settings_hash, status, data, error in result.stages:
            ws.catalog.record_stage(conn, image_hash, stage, settings_hash, status, data, error)
    return {stage: data for stage, _, _, data, _ in result.stages}


# --- cost and time before a run ---------------------------------------------------------------------


@dataclass
class CostEstimate:
    images: int
    to_do: int
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None when the model is not in the price table
    seconds: float
    model: str

    def describe(self) -> str:
        cost = f"about ${self.cost_usd:,.2f}" if self.cost_usd is not None else "cost unknown (model not priced)"
        return (
            f"{self.to_do:,} of {self.images:,} images need a request: {self.requests:,} requests, "
            f"~{self.input_tokens:,} input and ~{self.output_tokens:,} output tokens, {cost}, "
            f"about {_duration(self.seconds)} at the configured rate"
        )


def estimate_cost(
    ws: Workspace, dataset: str, mode: str = "describe", category_list: CategoryList | None = None
) -> CostEstimate:
    """Requests, tokens, dollars and time for what a job would still do (done images cost nothing)."""
    settings = ws.settings
    model = settings.caption_model
    params = {
        "mode": mode,
        "model": model,
        "image_max_size": settings.processing.image_max_size,
        "list": None if category_list is None else [category_list.name, category_list.version],
    }
    plan = JobPlan.from_params(ws, params)
    n_images = image_count(ws, dataset)
    n_todo = n_images - _done_by_all(ws, dataset, plan.done_stages())
    n_text = 0  # images left to categorise that have a description: a text request each
    if mode == "categorize":
        described = (DESCRIBE_STAGE, plan.describe_hash)
        n_text = _done_by_all(ws, dataset, [described]) - _done_by_all(ws, dataset, [described, *plan.done_stages()])
    side = settings.processing.image_max_size
    image_tokens = TOKENS_PER_TILE * (1 if side <= 384 else math.ceil(side / 768) ** 2)
    gem = settings.gemini
    cats_text = "\n".join(category_list.categories) if category_list else ""
    describe_in = image_tokens + _text_tokens(DESCRIBE_PROMPT) + _text_tokens(json.dumps(describe_schema()))
    both_in = describe_in + 2 * _text_tokens(cats_text) + 60
    describe_out = _observed_output_tokens(ws, plan.describe_hash) or gem.expected_output_tokens_describe
    text_in = describe_out + 2 * _text_tokens(cats_text) + 80  # the stored description goes back in
    n_image = n_todo - n_text
    if mode == "describe":
        tokens_in, tokens_out = n_image * describe_in, n_image * describe_out
    else:
        out_both = describe_out + gem.expected_output_tokens_categorize
        tokens_in = n_image * both_in + n_text * text_in
        tokens_out = n_image * out_both + n_text * gem.expected_output_tokens_categorize
    price = gem.prices.get(model)
    cost = None
    if price is not None:
        cost = (tokens_in * price.input_per_million + tokens_out * price.output_per_million) / 1e6
    per_second = min(gem.requests_per_minute / 60.0, gem.concurrency / max(0.05, gem.expected_latency_seconds))
    return CostEstimate(
        images=n_images,
        to_do=n_todo,
        requests=n_todo,
        input_tokens=int(tokens_in),
        output_tokens=int(tokens_out),
        cost_usd=cost,
        seconds=n_todo / per_second if per_second > 0 else 0.0,
        model=model,
    )


def _done_by_all(ws: Workspace, dataset: str, stages: list[tuple[str, str]]) -> int:
    """How many of the dataset's images have an ok result for every one of these stages: a counter for one
    stage; for more, the first stage's results looked up in the others (it costs what there are of them)."""
    first, *others = stages
    if not others:
        return stage_count(ws, dataset, *first)
    joins = " ".join(
        f"""JOIN stage_results s{n} ON s{n}.image_hash = s.image_hash AND s{n}.stage = ? AND s{n}.settings_hash = ?
            AND s{n}.status = 'ok'"""
        for n in range(len(others))
    )
    return int(
        ws.catalog.scalar(
            f"""SELECT COUNT(*) FROM stage_results s
                CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = s.image_hash {joins}
                WHERE s.stage = ? AND s.settings_hash = ? AND s.status = 'ok'""",
            (dataset_id_of(ws.catalog, dataset), *[v for stage in others for v in stage], *first),
        )
    )


OBSERVED_SAMPLE = 2000  # earlier answers an estimate averages: enough for a mean, bounded at any size


def _observed_output_tokens(ws: Workspace, describe_hash: str) -> int | None:
    """Mean output tokens of this model's descriptions (answers that were really requested), over at most
    OBSERVED_SAMPLE of them read in content-hash order: a random sample."""
    value = ws.catalog.scalar(
        """SELECT AVG(json_extract(result, '$.output_tokens')) FROM (
               SELECT result FROM stage_results WHERE stage = ? AND settings_hash = ? AND status = 'ok' LIMIT ?)
           WHERE json_extract(result, '$.attempts') > 0""",
        (DESCRIBE_STAGE, describe_hash, OBSERVED_SAMPLE),
    )
    return int(value) if value else None


def _text_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # about four characters a token for English text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

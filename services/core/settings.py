"""Settings: one pydantic-settings class, env prefix ``WORKBENCH_``, optional ``config.yaml``.

Order of precedence (highest first): explicit arguments, environment variables, `.streamlit/secrets.toml`
(secrets only), `config.yaml`, defaults. The YAML file also accepts the seed projects' keys
(`gemini_api_key`, `caption_model`, `processing.image_max_size`, ...), so their config files work unchanged.
Secrets are `SecretStr`: they never appear in a repr, a log line or a page.
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from services.core.entity_units import DEFAULT_ENTITY_UNIT_MAP

ENV_PREFIX = "WORKBENCH_"


def _strict_url(value: str | None, setting: str) -> str | None:
    """An admin-set URL through the network policy's strict parser (no userinfo, backslash, control
    characters, bad port), so every component reading it sees the same host. Not subject to
    `download.allowed_networks`: only an administrator sets it, and a LAN address is a normal choice."""
    if not value:
        return None
    from services.core.network_policy import UrlRefused, parse_url

    try:
        parse_url(value)
    except UrlRefused as exc:
        raise ValueError(f"{setting}: {exc.message}") from None
    return value


class ProcessingSettings(BaseModel):
    """The seed projects' `processing:` block (Gemini request pacing and image size)."""

    image_max_size: int = 768
    max_retries: int = 3
    retry_backoff_seconds: float = 2.0
    per_request_sleep_seconds: float = 0.0


class DownloadSettings(BaseModel):
    """Limits for fetching images over HTTP and S3; defaults suit a laptop on a normal network."""

    workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    threads_per_worker: int = 32
    chunk_size: int = 64
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0
    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_redirects: int = 5
    per_host_limit: int = 16
    user_agent: str = "image-workbench/0.1 (+https://github.com/)"
    # A shared server must not fetch its own network: private, loopback, link-local (cloud metadata) and other
    # non-global addresses are refused after DNS resolution and on every redirect, unless listed here.
    block_private_networks: bool = True
    allowed_networks: list[str] = Field(default_factory=list)  # CIDRs, e.g. ["10.1.2.0/24"]
    placeholder_size: int = 100
    s3_prefix_template: str = "datalake_training/{KIND}/"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        from services.core.network_policy import parse_networks

        parse_networks(value)  # a typo fails at load, naming the entry, not at the first download
        return value


class ModelPrice(BaseModel):
    """US dollars per million tokens; images count as input tokens."""

    input_per_million: float
    output_per_million: float


def _default_prices() -> dict[str, ModelPrice]:
    # Google's published paid-tier list prices (standard context) when this table was written; check
    # https://ai.google.dev/gemini-api/docs/pricing and override in config.yaml under `gemini.prices`.
    return {
        "gemini-2.5-flash-lite": ModelPrice(input_per_million=0.10, output_per_million=0.40),
        "gemini-2.5-flash": ModelPrice(input_per_million=0.30, output_per_million=2.50),
        "gemini-2.5-pro": ModelPrice(input_per_million=1.25, output_per_million=10.00),
    }


class GeminiSettings(BaseModel):
    """Request budget and client behaviour for the Describe & Categorize stage (the model is `caption_model`)."""

    base_url: str | None = None  # a proxy or a test server; None means Google's endpoint
    api_version: str | None = None
    requests_per_minute: float = 60.0
    burst: int = 2
    concurrency: int = 8
    timeout_seconds: float = 60.0
    max_retry_delay_seconds: float = 120.0  # a server asking for a longer wait fails the item (retry later)
    temperature: float = 0.0
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)
    expected_output_tokens_describe: int = 450
    expected_output_tokens_categorize: int = 25
    expected_latency_seconds: float = 2.5

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return _strict_url(value, "gemini.base_url")


class ClipSettings(BaseModel):
    """The open_clip model used for embeddings and zero-shot categories."""

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    checkpoint: str | None = None  # a local .pt/.bin/.safetensors file; overrides `pretrained`
    device: str = "auto"
    batch_size: int = 32
    loader_workers: int | None = (
        None  # None: chosen for the device (see services.stages.embed.stage.auto_loader_workers)
    )
    pull_timeout_seconds: float = 900.0
    resident_models: int = 2  # CLIP models the worker keeps loaded (least recently used unloaded first)


class LabelSettings(BaseModel):
    """How labelled CSVs read their labels."""

    # seed 000's constants.py: the units each entity_name may have; entity_value is checked against it
    entity_unit_map: dict[str, list[str]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_ENTITY_UNIT_MAP))


class WorkerSettings(BaseModel):
    """The workspace's worker (`workbench worker`, started by `make run`): how many handed jobs it runs at once."""

    jobs_at_once: int = 4  # like page_jobs.max_running: a long download never holds a small job back
    model_jobs_at_once: int = 1  # of those, jobs that load a model (embed, classify, CLIP categories, OCR)
    model_memory_mb: int = Field(0, ge=0)  # weights the worker keeps loaded, CLIP and TrOCR together (0: no bound)


class OcrSettings(BaseModel):
    """OCR engines, the default rules, and the device interfaces (socket server, result push)."""

    engine: str = "auto"  # auto: trocr when its weights are here, else rapidocr, else tesseract
    trocr_model: str = "microsoft/trocr-base-printed"  # a Hub id (pulled) or a local folder
    device: str = "auto"
    max_new_tokens: int = 32
    batch_size: int = 16
    recipe: str | None = None  # a Preprocess recipe applied before detection
    rules: str = "none"  # an OCR rules preset (seed-003) or a saved rules name
    log_csv: str = "logs/ocr_log.csv"  # relative to the workspace
    socket_max_bytes: int = 20 * 2**20
    socket_timeout_seconds: float = 10.0
    push_url: str | None = None  # each result is POSTed here as JSON when set
    push_timeout_seconds: float = 5.0

    @field_validator("push_url")
    @classmethod
    def _check_push_url(cls, value: str | None) -> str | None:
        return _strict_url(value, "ocr.push_url")


class ApiSettings(BaseModel):
    """Bounds on one REST API request, so that no client can take the server's memory or CPU (issue 14).
    A decoded RGB image costs 3 bytes a pixel: 50 MP is 150 MB, which only `workers` requests hold at once."""

    max_image_pixels: int = 50_000_000  # per image; larger ones (decompression bombs) are refused from the header
    max_request_pixels: int = 500_000_000  # decoded in one request, all images together; the rest are refused
    max_image_bytes: int = 50 * 2**20  # one image file, alone or inside a zip
    max_images: int = 2000  # images in one uploaded zip
    workers: int = 2  # classify requests decoded and embedded at once (worker threads); the others wait


class SignInSettings(BaseModel):
    """The dashboard's sign-in throttle: failed attempts counted per user name and per client address across
    every session, process and restart of the server (kept in the workspace); a locked name or address is
    refused without hashing, with the same answer whether the user exists or not."""

    max_failures_per_user: int = 5  # within window_seconds, then the name is locked for lockout_seconds
    max_failures_per_address: int = 20  # the same for one client address, whatever names it tries
    window_seconds: float = 900.0
    lockout_seconds: float = 900.0
    # X-Forwarded-For is ignored unless this is the number of reverse proxies in front of the dashboard that
    # append to it (1 for one nginx); the client is then the address that many entries from the right.
    # Never set it without a proxy that you run: anyone could then pick their own address.
    trusted_proxy_hops: int = 0
    # Open dashboard sessions (websockets) per client address that have not signed in; one more is refused
    # before Streamlit accepts it (ui/session_limit.py, `make run` only). 0: no limit.
    max_anonymous_sessions_per_address: int = Field(20, ge=0)


class PageJobSettings(BaseModel):
    """Bounds on jobs started from the dashboard's pages (any signed-in user can start them); the CLI is never
    held back. A page job past `max_running` is queued and starts when one ends."""

    max_running: int = 4  # jobs started from pages running at once, server-wide
    max_workers: int | None = None  # worker processes a page may give one job; None: the machine's cores


class _FileSource(PydanticBaseSettingsSource):
    """A settings source read from one optional file; subclasses say how to read it."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        return self.read(self.path.read_text(encoding="utf-8"))

    def read(self, text: str) -> dict[str, Any]:
        return {}


class YamlSource(_FileSource):
    """Reads `config.yaml`; the seeds' layout maps onto ours field for field."""

    def read(self, text: str) -> dict[str, Any]:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a mapping at the top level, got {type(data).__name__}")
        return data


class SecretsTomlSource(_FileSource):
    """Reads secrets (only) from Streamlit's `.streamlit/secrets.toml`."""

    SECRET_KEYS = ("gemini_api_key", "api_token", "users")

    def read(self, text: str) -> dict[str, Any]:
        data = tomllib.loads(text)
        out = {k: data[k] for k in self.SECRET_KEYS if k in data}
        if "GEMINI_API_KEY" in data and "gemini_api_key" not in out:
            out["gemini_api_key"] = data["GEMINI_API_KEY"]
        return out


class Settings(BaseSettings):
    """Everything configurable. Nested values come from env as `WORKBENCH_DOWNLOAD__MAX_RETRIES=5`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    workspace: Path = Path("workspace")
    gemini_api_key: SecretStr | None = None
    api_token: SecretStr | None = None
    users: dict[str, SecretStr] = Field(default_factory=dict)  # sign-in: name -> PBKDF2 hash (services.core.auth)
    caption_model: str = "gemini-2.5-flash-lite"
    processing: ProcessingSettings = ProcessingSettings()
    download: DownloadSettings = DownloadSettings()
    gemini: GeminiSettings = GeminiSettings()
    clip: ClipSettings = ClipSettings()
    ocr: OcrSettings = OcrSettings()
    # Dask schedulers (dask://HOST:PORT) that page users may choose under "Run jobs on" when sign-in is
    # configured; a typed address would let any signed-in user make the server connect anywhere. The CLI
    # (someone with a shell) takes any scheduler.
    dask_schedulers: list[str] = Field(default_factory=list)
    # S3-compatible endpoints (https://host[:port]) whose requests from pages carry the server's AWS
    # credentials when sign-in is configured (with `download.s3_endpoint_url`): any other endpoint a user types
    # is reached without credentials (anonymous, public buckets only), so it never receives the key id or
    # session token. The CLI (someone with a shell) signs for any endpoint the network policy allows.
    s3_endpoints: list[str] = Field(default_factory=list)

    @field_validator("s3_endpoints")
    @classmethod
    def _check_s3_endpoints(cls, value: list[str]) -> list[str]:
        return [entry for entry in value if _strict_url(entry, "s3_endpoints")]

    job_stale_seconds: float = 15.0
    # Largest upload in MB: the API's request bodies, and the dashboard's uploads (`python -m services dashboard`
    # passes it to Streamlit as server.maxUploadSize; the upload gate in ui/upload_gate.py enforces it too).
    max_upload_mb: int = 512
    # Every CSV we write neutralises cells a spreadsheet would run as formulas (services/core/csv_safety.py);
    # false writes raw cells for machine consumers (the CLI's `--raw-csv` does it per command).
    csv_formula_guard: bool = True
    # Folders whose files dashboard users may name by path (services.core.server_paths). Unset: anywhere on a laptop
    # (no sign-in), nowhere once sign-in is configured. The app, secrets and workspace internals never.
    server_paths: list[Path] | None = None
    # Networks (CIDRs) whose clients may read the dashboard's /_stcore/metrics (a monitoring scraper on the
    # server itself, e.g. ["127.0.0.1/32"]); everyone else gets 404 from dashboard.py. None by default.
    metrics_networks: list[str] = Field(default_factory=list)
    api: ApiSettings = ApiSettings()  # REST API per-request bounds
    sign_in: SignInSettings = SignInSettings()  # dashboard sign-in throttle
    # Whether the CLIP picker's Pull button may download weights (up to GBs) into the server's Hugging Face
    # cache. Unset: yes on a laptop (no sign-in), no once sign-in is configured (`models pull` on the shell).
    allow_page_pulls: bool | None = None
    page_jobs: PageJobSettings = PageJobSettings()
    worker: WorkerSettings = WorkerSettings()
    labels: LabelSettings = LabelSettings()  # how many page jobs run at once, and their worker processes

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_path = Path(os.environ.get(f"{ENV_PREFIX}CONFIG", "config.yaml"))
        secrets_path = Path(os.environ.get(f"{ENV_PREFIX}SECRETS", ".streamlit/secrets.toml"))
        return (
            init_settings,
            env_settings,
            _GeminiEnvAlias(settings_cls),
            SecretsTomlSource(settings_cls, secrets_path),
            YamlSource(settings_cls, config_path),
        )


class _GeminiEnvAlias(PydanticBaseSettingsSource):
    """Accepts the SDK's own `GEMINI_API_KEY` / `GOOGLE_API_KEY` variables as well as ours."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
            if os.environ.get(name):
                return {"gemini_api_key": os.environ[name]}
        return {}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and files, with explicit overrides (e.g. `workspace=`) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

"""Third-party loggers quieted to WARNING in the CLI, the dashboard and the API.

RapidOCR, httpx (google-genai's transport), botocore and friends log every model load and request at INFO,
which floods a terminal and buries our own progress lines. Their warnings and errors still show. A filter is
used as well as the level because RapidOCR sets its logger's level again each time an engine is built.
"""

from __future__ import annotations

import logging

THIRD_PARTY_LOGGERS = (
    "RapidOCR",
    "httpx",
    "httpcore",
    "google_genai",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "PIL",
    "matplotlib",
    "numba",
    "huggingface_hub",
    "transformers",
    "filelock",
    "distributed",
)


class _WarningsAndAbove(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_third_party_loggers() -> None:
    """Idempotent: safe to call from every entry point, once per process or on every page run."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _WarningsAndAbove) for f in logger.filters):
            logger.addFilter(_WarningsAndAbove())

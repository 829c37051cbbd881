"""boto3 plumbing: clients with retries and a pool sized to the worker threads, one paginated listing,
and S3 errors turned into the catalog's failure classes.

Credentials come from the standard boto3 chain (env, profile, SSO, instance role); `endpoint_url` points at
any S3-compatible store. A credentials problem is one message for the whole run, never one per file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    TokenRetrievalError,
)

from services.http_fetch import FetchError
from services.settings import DownloadSettings

CREDENTIAL_CODES = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "AccessDenied",
    "UnrecognizedClientException",
    "AuthFailure",
}
CREDENTIALS_HINT = "check AWS_PROFILE / AWS_ACCESS_KEY_ID or run `aws sso login`, then resume the job"


class S3AccessError(Exception):
    """The bucket cannot be read at all (credentials, permissions, endpoint); stop before any download."""


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int


def make_client(cfg: DownloadSettings, endpoint_url: str | None = None, pool: int | None = None) -> Any:
    config = Config(
        retries={"max_attempts": cfg.max_retries + 1, "mode": "standard"},
        max_pool_connections=max(pool or cfg.threads_per_worker, 10),
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def list_prefix(client: Any, bucket: str, prefix: str) -> list[S3Object]:
    """Every object under the prefix, in one paginated listing."""
    out: list[S3Object] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(S3Object(o["Key"], int(o.get("Size", 0))) for o in page.get("Contents", []))
    except (NoCredentialsError, PartialCredentialsError, TokenRetrievalError) as exc:
        raise S3AccessError(f"no usable AWS credentials ({exc}); {CREDENTIALS_HINT}") from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in CREDENTIAL_CODES:
            raise S3AccessError(f"S3 refused the credentials for s3://{bucket}: {code}; {CREDENTIALS_HINT}") from exc
        if code == "NoSuchBucket":
            raise S3AccessError(f"bucket {bucket!r} does not exist at this endpoint") from exc
        raise S3AccessError(f"listing s3://{bucket}/{prefix} failed: {code or exc}") from exc
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise S3AccessError(f"cannot reach the S3 endpoint: {exc}") from exc
    return out


class S3Source:
    """Byte source for `fetch_store`: one client per worker process, shared by its threads."""

    def __init__(self, cfg: DownloadSettings, bucket: str, endpoint_url: str | None) -> None:
        self.cfg = cfg
        self.bucket = bucket
        self.client = make_client(cfg, endpoint_url)

    def fetch(self, locator: str) -> tuple[bytes, int]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=locator)
            length = int(obj.get("ContentLength") or 0)
            if length > self.cfg.max_bytes:
                obj["Body"].close()
                raise FetchError("too_large", f"object is {length} bytes, over the {self.cfg.max_bytes} limit")
            data = obj["Body"].read()
            attempts = int(obj.get("ResponseMetadata", {}).get("RetryAttempts", 0)) + 1
        except (NoCredentialsError, PartialCredentialsError, TokenRetrievalError) as exc:
            raise FetchError("credentials", f"no usable AWS credentials ({exc}); {CREDENTIALS_HINT}") from exc
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in CREDENTIAL_CODES:
                raise FetchError("credentials", f"S3 refused the credentials: {code}; {CREDENTIALS_HINT}") from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FetchError("missing", f"s3://{self.bucket}/{locator} no longer exists") from exc
            cls = "http_5xx" if status >= 500 else "http_4xx"
            raise FetchError(cls, f"S3 {code or status}: {err.get('Message', '')}".strip()) from exc
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise FetchError("timeout", f"S3 timed out: {exc}") from exc
        except EndpointConnectionError as exc:
            raise FetchError("connect", f"cannot reach the S3 endpoint: {exc}") from exc
        except BotoCoreError as exc:
            raise FetchError("connect", f"S3 transfer failed: {exc}") from exc
        if len(data) != length and length:
            raise FetchError("truncated", f"got {len(data)} of {length} bytes")
        return data, attempts

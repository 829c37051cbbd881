"""boto3 plumbing: clients with retries and a pool sized to the worker threads, one paginated listing,
and S3 errors turned into the catalog's failure classes.

Credentials come from the standard boto3 chain (env, profile, SSO, instance role); `endpoint_url` points at
any S3-compatible store. A credentials problem is one message for the whole run, never one per file.

Every request passes the network policy (services/core/network_policy.py) like a URL download: the endpoint is
checked up front (`check_endpoint`, a clear refusal naming `download.allowed_networks`), each request is
checked again before it is signed (botocore's `before-sign` event, so no signature or key id is made for a
refused host), and `before-send` sends it to the checked address itself (`PinnedS3Sender`), so a name that
re-resolves elsewhere between check and connect is never reached. The sender connects directly: an
HTTP(S)_PROXY setting is not used for S3 requests.

Signing sends the key id and the session token to whichever host the endpoint names, so on a server with
sign-in, pages sign only for AWS itself (no endpoint) and the endpoints an administrator lists
(`s3_endpoints`, `download.s3_endpoint_url`); any other endpoint is read anonymously (`signed=False`:
botocore's UNSIGNED, no credentials looked up or sent). `endpoint_is_signed` decides; the CLI signs for any.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore
import botocore.awsrequest
import botocore.httpsession
import botocore.session
import urllib3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    SSLError,
    TokenRetrievalError,
)

from services.core.errors import WorkbenchError
from services.core.network_policy import CheckedTarget, NetworkPolicy, Resolver, UrlRefused, parse_url
from services.core.settings import DownloadSettings, Settings
from services.io.http_fetch import FetchError

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
ANONYMOUS_HINT = (
    "requests to this endpoint carry no credentials (it is not one an administrator listed in s3_endpoints), "
    "so only a public bucket can be read: ask an administrator to list the endpoint"
)


def normalised_endpoint(url: str) -> str:
    """`scheme://host[:port]/path` as the network policy parses it (lower-case host, default port dropped), so
    a listed endpoint matches however it is typed; raises UrlRefused for a malformed one."""
    parsed = parse_url(url)
    return f"{parsed.scheme}://{parsed.host_header}{parsed.target.rstrip('/')}"


def listed_endpoints(settings: Settings) -> list[str]:
    """The endpoints an administrator lists (`s3_endpoints` and `download.s3_endpoint_url`), normalised."""
    out: list[str] = []
    for entry in [*settings.s3_endpoints, settings.download.s3_endpoint_url or ""]:
        try:
            normal = normalised_endpoint(entry) if entry.strip() else None
        except UrlRefused:  # s3_endpoints are checked when settings load; a bad s3_endpoint_url lists nothing
            normal = None
        if normal is not None and normal not in out:
            out.append(normal)
    return out


def endpoint_is_signed(settings: Settings, endpoint_url: str | None, restricted: bool) -> bool:
    """May requests to this endpoint carry the server's AWS credentials? Always for AWS itself (no endpoint)
    and on an open workbench (the person at the page is the OS user); on a server with sign-in
    (`restricted`), only for an endpoint an administrator lists."""
    if not endpoint_url or not endpoint_url.strip() or not restricted:
        return True
    try:
        return normalised_endpoint(endpoint_url) in listed_endpoints(settings)
    except UrlRefused:
        return False  # the network policy refuses it with the reason when a client is made


class S3AccessError(WorkbenchError):
    """The bucket cannot be read at all (credentials, permissions, endpoint); stop before any download."""

    error_class = "s3_access"
    http_status = 502


class S3EndpointRefused(S3AccessError):
    """The network policy refuses the endpoint; `error_class` is `invalid_url`, `blocked_url` or `dns`."""

    error_class = "blocked_url"

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def check_endpoint(cfg: DownloadSettings, endpoint_url: str | None, resolver: Resolver | None = None) -> None:
    """Refuse an endpoint the network policy refuses, before any client or request exists (None: AWS)."""
    if not endpoint_url:
        return
    try:
        NetworkPolicy.from_settings(cfg, resolver).check(endpoint_url)
    except UrlRefused as exc:
        raise S3EndpointRefused(exc.error_class, f"S3 endpoint refused: {exc.message}") from None


class PinnedS3Sender:
    """botocore event handlers: `check` (before-sign) runs the policy on each request's URL, `send`
    (before-send) performs the request on a keep-alive pool connected to the checked address, with the URL's
    host as Host header (what SigV4 signed) and TLS name. Errors become botocore's own exceptions, so its
    retry rules apply unchanged."""

    def __init__(self, policy: NetworkPolicy, pool_size: int, timeout: urllib3.Timeout, ca_certs: str) -> None:
        self.policy = policy
        self.pool = urllib3.PoolManager(
            num_pools=32, maxsize=pool_size, block=False, retries=False, timeout=timeout, ca_certs=ca_certs
        )
        self._last = threading.local()  # (url, target) checked before signing, reused when sending

    def _target(self, url: str) -> CheckedTarget:
        last = getattr(self._last, "checked", None)
        if last is not None and last[0] == url:
            result: CheckedTarget = last[1]
            return result
        target = self.policy.check(url)
        self._last.checked = (url, target)
        return target

    def check(self, request: Any, **_: Any) -> None:
        self._last.checked = None
        self._target(request.url)

    def send(self, request: Any, **_: Any) -> botocore.awsrequest.AWSResponse:
        target = self._target(request.url)
        self._last.checked = None
        url = target.url
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        headers["Host"] = url.host_header
        tls = {"server_hostname": url.host, "assert_hostname": url.host} if url.scheme == "https" else None
        chunked = str(request.headers.get("Transfer-Encoding", "")).lower() == "chunked"
        try:
            response = None
            for index, address in enumerate(target.addresses):
                pool = self.pool.connection_from_host(address, url.port, url.scheme, pool_kwargs=tls)
                try:
                    response = pool.urlopen(
                        request.method, url.target, body=request.body, headers=headers, retries=False,
                        redirect=False, assert_same_host=False, preload_content=False, decode_content=False,
                        chunked=chunked, enforce_content_length=False,
                    )  # fmt: skip
                    break
                except urllib3.exceptions.NewConnectionError:
                    if index + 1 == len(target.addresses):
                        raise
            assert response is not None
            http_response = botocore.awsrequest.AWSResponse(request.url, response.status, response.headers, response)
            if not request.stream_output:
                http_response.content  # noqa: B018 (read now, as botocore's own sender does)
            return http_response
        except urllib3.exceptions.SSLError as exc:
            raise SSLError(endpoint_url=request.url, error=exc) from exc
        except urllib3.exceptions.NewConnectionError as exc:
            raise EndpointConnectionError(endpoint_url=request.url, error=exc) from exc
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=request.url, error=exc) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=request.url, error=exc) from exc
        except urllib3.exceptions.ProtocolError as exc:
            raise ConnectionClosedError(error=exc, request=request, endpoint_url=request.url) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise HTTPClientError(error=exc) from exc


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int


def make_client(
    cfg: DownloadSettings,
    endpoint_url: str | None = None,
    pool: int | None = None,
    resolver: Resolver | None = None,
    signed: bool = True,
) -> Any:
    """An S3 client whose every request is checked before signing and sent to the checked address; raises
    S3EndpointRefused for an endpoint the network policy refuses. `signed=False`: requests carry no
    credentials at all (an endpoint no administrator listed, from a page on a server with sign-in)."""
    check_endpoint(cfg, endpoint_url, resolver)
    pool_size = max(pool or cfg.threads_per_worker, 10)
    config = Config(
        retries={"max_attempts": cfg.max_retries + 1, "mode": "standard"},
        max_pool_connections=pool_size,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        **({} if signed else {"signature_version": botocore.UNSIGNED}),
    )
    core = botocore.session.get_session()
    client = boto3.session.Session(botocore_session=core).client("s3", endpoint_url=endpoint_url or None, config=config)
    sender = PinnedS3Sender(
        NetworkPolicy.from_settings(cfg, resolver),
        pool_size,
        urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
        core.get_config_variable("ca_bundle") or botocore.httpsession.where(),
    )
    client.meta.events.register("before-sign.s3", sender.check)
    client.meta.events.register("before-send.s3", sender.send)
    return client


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
            hint = ANONYMOUS_HINT if _unsigned(client) else CREDENTIALS_HINT
            raise S3AccessError(f"S3 refused the credentials for s3://{bucket}: {code}; {hint}") from exc
        if code == "NoSuchBucket":
            raise S3AccessError(f"bucket {bucket!r} does not exist at this endpoint") from exc
        raise S3AccessError(f"listing s3://{bucket}/{prefix} failed: {code or exc}") from exc
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise S3AccessError(f"cannot reach the S3 endpoint: {exc}") from exc
    except UrlRefused as exc:
        raise S3EndpointRefused(exc.error_class, f"S3 request refused: {exc.message}") from None
    return out


def _unsigned(client: Any) -> bool:
    return getattr(client.meta.config, "signature_version", None) is botocore.UNSIGNED


class S3Source:
    """Byte source for `fetch_store`: one client per worker process, shared by its threads."""

    def __init__(self, cfg: DownloadSettings, bucket: str, endpoint_url: str | None, signed: bool = True) -> None:
        self.cfg = cfg
        self.bucket = bucket
        self.refused: FetchError | None = None
        try:
            self.client = make_client(cfg, endpoint_url, signed=signed)
        except S3EndpointRefused as exc:  # every item fails with the reason (the job stops on the first)
            self.client = None
            self.refused = FetchError(exc.error_class, str(exc))

    def fetch(self, locator: str) -> tuple[bytes, int]:
        if self.refused is not None:
            raise FetchError(self.refused.error_class, self.refused.message)
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
                hint = ANONYMOUS_HINT if _unsigned(self.client) else CREDENTIALS_HINT
                raise FetchError("credentials", f"S3 refused the credentials: {code}; {hint}") from exc
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
        except UrlRefused as exc:
            raise FetchError(exc.error_class, f"S3 request refused: {exc.message}") from None
        if len(data) != length and length:
            raise FetchError("truncated", f"got {len(data)} of {length} bytes")
        return data, attempts

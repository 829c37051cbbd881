"""The HTTP fetcher against the loopback fault server: every failure class, retries, Retry-After, limits."""

from __future__ import annotations

import time

import pytest

from services.core.settings import DownloadSettings, load_settings
from services.io.http_fetch import FetchError, HttpFetcher, check_url, parse_retry_after
from tests.support.image_server import ImageServer, make_jpeg


@pytest.fixture
def cfg() -> DownloadSettings:
    return load_settings().download


@pytest.fixture
def served(image_server: ImageServer) -> ImageServer:
    image_server.add("a.jpg", make_jpeg(120, 80, seed=1))
    return image_server


@pytest.mark.parametrize(
    ("path", "error_class"),
    [
        ("/status/404", "http_4xx"),
        ("/status/500", "http_5xx"),
        ("/slow/3/a.jpg", "timeout"),
        ("/truncated/a.jpg", "truncated"),
        ("/loop/A", "redirect_loop"),
        ("/huge", "too_large"),
        ("/huge-chunked", "too_large"),
    ],
)
def test_fault_classes(served: ImageServer, cfg: DownloadSettings, path: str, error_class: str) -> None:
    with pytest.raises(FetchError) as info:
        HttpFetcher(cfg).fetch(served.url(path))
    assert info.value.error_class == error_class, info.value.message


def test_invalid_and_unresolvable_urls(cfg: DownloadSettings) -> None:
    fetcher = HttpFetcher(cfg)
    for url, cls in [("", "invalid_url"), ("ftp://host/x.jpg", "invalid_url"), ("http:///x", "invalid_url")]:
        with pytest.raises(FetchError) as info:
            fetcher.fetch(url)
        assert info.value.error_class == cls
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetcher.fetch("http://no-such-host.invalid/x.jpg")
    assert info.value.error_class == "dns"
    assert "no-such-host.invalid" in info.value.message
    assert time.monotonic() - started < 10


def test_connection_refused_is_connect(cfg: DownloadSettings) -> None:
    from tests.conftest import free_port

    with pytest.raises(FetchError) as info:
        HttpFetcher(cfg).fetch(f"http://127.0.0.1:{free_port()}/x.jpg")
    assert info.value.error_class == "connect"
    assert info.value.attempts == cfg.max_retries + 1


def test_429_retry_after_is_honoured(served: ImageServer, cfg: DownloadSettings) -> None:
    started = time.monotonic()
    result = HttpFetcher(cfg).fetch(served.url("/r429/1/a.jpg"))
    assert time.monotonic() - started >= 0.95  # the server asked for 1 s
    assert result.attempts == 2
    assert result.data == served.images["a.jpg"][0]


def test_retry_after_over_the_cap_fails_at_once(served: ImageServer, cfg: DownloadSettings) -> None:
    capped = cfg.model_copy(update={"max_retry_after": 0.5})
    with pytest.raises(FetchError) as info:
        HttpFetcher(capped).fetch(served.url("/r429/5/a.jpg"))
    assert info.value.error_class == "http_4xx"
    assert "cap" in info.value.message
    assert info.value.attempts == 1


def test_transient_5xx_is_retried_then_succeeds(served: ImageServer, cfg: DownloadSettings) -> None:
    result = HttpFetcher(cfg).fetch(served.url("/r503/2/a.jpg"))
    assert result.attempts == 3


def test_redirect_is_followed_and_bounded(served: ImageServer, cfg: DownloadSettings) -> None:
    result = HttpFetcher(cfg).fetch(served.url("/redirect/a.jpg"))
    assert result.final_url.endswith("/img/a.jpg")
    no_redirects = cfg.model_copy(update={"max_redirects": 0})
    with pytest.raises(FetchError) as info:
        HttpFetcher(no_redirects).fetch(served.url("/redirect/a.jpg"))
    assert info.value.error_class == "redirect_loop"
    assert "more than 0 redirects" in info.value.message


def test_private_addresses_blocked_by_default(served: ImageServer, cfg: DownloadSettings) -> None:
    assert DownloadSettings().block_private_networks and DownloadSettings().allowed_networks == []
    shared = cfg.model_copy(update={"allowed_networks": []})  # the tests allow loopback; a server does not
    with pytest.raises(FetchError) as info:
        HttpFetcher(shared).fetch(served.url("/img/a.jpg"))
    assert info.value.error_class == "blocked_url" and "allowed_networks" in info.value.message
    assert served.completed() == {}  # refused before any request was sent
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x.jpg", "http://[::1]:80/x.jpg",
                "http://192.168.0.1/x.jpg", "http://localhost/x.jpg"):  # fmt: skip
        with pytest.raises(FetchError) as info:
            check_url(url, True)
        assert info.value.error_class == "blocked_url", url
    check_url("http://10.1.2.3/x.jpg", True, ("10.1.2.0/24",))  # an allowed network passes


def test_a_redirect_to_a_private_address_is_refused(served: ImageServer, cfg: DownloadSettings) -> None:
    only_this_server = cfg.model_copy(update={"allowed_networks": ["127.0.0.1/32"]})
    served.add_redirect("to-metadata", "http://169.254.169.254/latest/meta-data/")
    with pytest.raises(FetchError) as info:
        HttpFetcher(only_this_server).fetch(served.url("/goto/to-metadata"))
    assert info.value.error_class == "blocked_url" and "169.254.169.254" in info.value.message


def test_wrong_content_type_does_not_matter(served: ImageServer, cfg: DownloadSettings) -> None:
    result = HttpFetcher(cfg).fetch(served.url("/wrongtype/a.jpg"))
    assert result.content_type == "text/html"
    assert result.data == served.images["a.jpg"][0]


def test_per_host_limit_bounds_concurrency(served: ImageServer, cfg: DownloadSettings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    one_at_a_time = cfg.model_copy(update={"per_host_limit": 1})
    fetcher = HttpFetcher(one_at_a_time)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fetcher.fetch, [served.url("/slow/0.3/a.jpg")] * 4))
    assert time.monotonic() - started >= 1.1  # 4 x 0.3 s, serialised


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)

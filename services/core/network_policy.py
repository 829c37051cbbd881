"""The one network guard every outbound connection goes through: downloads and their redirects, S3 requests,
Dask scheduler addresses, and the admin-set push and Gemini URLs (parse only).

Server-side request forgery comes from three gaps, each closed here:
- **Parser differentials.** A URL is parsed once, strictly (`parse_url`), and the connection is made from
  that parse alone. Anything two parsers might read differently is refused: backslashes, userinfo (`@` in
  the authority), control characters and whitespace, percent-encoded or non-canonical numeric hosts.
- **DNS rebinding.** A name is resolved once per request (`NetworkPolicy.check`); every address it resolves
  to is classified, and the caller connects to the checked addresses only (`CheckedTarget.addresses`),
  sending the URL's host as the Host header and the TLS server name.
- **Address forms.** IPv6 addresses that carry an IPv4 address (IPv4-mapped and -compatible, NAT64 including
  the local-use 64:ff9b:1::/48, 6to4, Teredo) are judged by the IPv4 address inside as well as by their own.

Non-global addresses (loopback, private, link-local such as 169.254.169.254, shared, multicast, reserved)
are refused unless inside `download.allowed_networks`; `download.block_private_networks = false` (a
laptop) refuses no address (the parse and the pinned connection stay). Error messages never show a URL's
user name or password. The resolver is injectable (`socket.getaddrinfo` by default) so tests can
simulate rebinding.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import idna

from services.core.errors import WorkbenchError

if TYPE_CHECKING:
    from services.core.settings import DownloadSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
WEB_SCHEMES = ("http", "https")
ALLOW_SETTING = "download.allowed_networks"

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_JUDGED_BY_INNER = (_IPV4_MAPPED, _IPV4_TRANSLATED, _IPV4_COMPATIBLE, _NAT64)
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:/*)(?:[^/?#@]*@)+")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


class UrlRefused(WorkbenchError):
    """A URL or address the policy refuses; `error_class` is a download failure class
    (`invalid_url`, `blocked_url` or `dns`)."""

    error_class = "blocked_url"
    http_status = 400

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


@dataclass(frozen=True)
class ParsedUrl:
    """A URL as the guard read it; connections are made from these fields, never from the original text."""

    scheme: str
    host: str  # lower-case ASCII (IDNA), IPv6 without brackets
    port: int
    target: str  # path and query, as sent in the request line
    is_ip: bool

    @property
    def host_header(self) -> str:
        """The Host header (and what SigV4 signs): brackets for IPv6, the port unless it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.target}"


@dataclass(frozen=True)
class CheckedTarget:
    """Where a request may go: the parsed URL and the addresses that passed the policy, in resolver order.
    Connect to these addresses (first that answers), with `url.host_header` and TLS name `url.host`."""

    url: ParsedUrl
    addresses: tuple[str, ...]

    @property
    def server_hostname(self) -> str:
        return self.url.host


def redact(url: str) -> str:
    """The URL as messages show it: any user name and password replaced by `***`, at most 200 characters."""
    return _USERINFO.sub(r"\1***@", url)[:200]


def _refuse_bad_characters(text: str, what: str, allow_space: bool = False) -> None:
    if text.isascii() and text.isprintable() and "\\" not in text and (allow_space or " " not in text):
        return  # the common case, without a per-character loop
    for ch in text:
        if ch == " " and allow_space:
            continue
        if ch == "\\":
            raise UrlRefused("invalid_url", f"{what} contains a backslash, which URL parsers read differently")
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs"):
            raise UrlRefused("invalid_url", f"{what} contains whitespace or a control character ({ch!r})")


def _percent_encode_non_ascii(text: str) -> str:
    """Non-ASCII characters as UTF-8 percent escapes; ASCII (including existing escapes) unchanged."""
    if text.isascii():
        return text
    return "".join(ch if ch.isascii() else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in text)


def _parse_host(raw: str, shown: str) -> tuple[str, bool]:
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise UrlRefused("invalid_url", f"{shown}: unclosed '[' in the host")
        inner = raw[1:-1]
        if "%" in inner:
            raise UrlRefused("invalid_url", f"{shown}: IPv6 zone identifiers are not accepted")
        try:
            return str(ipaddress.IPv6Address(inner)), True
        except ValueError:
            raise UrlRefused("invalid_url", f"{shown}: {inner!r} is not an IPv6 address") from None
    if not raw:
        raise UrlRefused("invalid_url", f"{shown}: URL has no host")
    if "%" in raw:
        raise UrlRefused("invalid_url", f"{shown}: percent-encoded host names are not accepted")
    if any(ch in raw for ch in "[]"):
        raise UrlRefused("invalid_url", f"{shown}: stray bracket in the host")
    try:
        host = idna.encode(raw, uts46=True).decode("ascii") if not raw.isascii() else raw.lower()
    except idna.IDNAError as exc:
        raise UrlRefused("invalid_url", f"{shown}: host {raw!r} is not a valid name ({exc})") from None
    if not set(host) <= _HOST_CHARS:
        raise UrlRefused("invalid_url", f"{shown}: host {raw!r} has characters a host name cannot have")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if any(not label for label in labels):
        raise UrlRefused("invalid_url", f"{shown}: host {raw!r} has an empty label")
    last = labels[-1]
    # WHATWG (browsers, curl's parser) read a host ending in a number as an IPv4 address in any of the
    # inet_aton forms (127.1, 0x7f.1, 2130706433); accept only the canonical dotted quad.
    if last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])):
        try:
            return str(ipaddress.IPv4Address(host.rstrip("."))), True
        except ValueError:
            raise UrlRefused("invalid_url", f"{shown}: {raw!r} is not a canonical IPv4 address") from None
    return host, False


def parse_url(url: str, schemes: Sequence[str] = WEB_SCHEMES, *, require_port: bool = False) -> ParsedUrl:
    """The strict parse every outbound URL goes through; raises UrlRefused('invalid_url') naming the cause.
    Leading and trailing whitespace (a CSV cell's padding) is dropped; the fragment is never sent."""
    if not isinstance(url, str):
        raise UrlRefused("invalid_url", f"expected a URL string, got {type(url).__name__}")
    text = url.strip()
    shown = redact(text) or "(empty)"
    if not text:
        raise UrlRefused("invalid_url", "empty URL")
    # A plain space is read alike by every parser in a path or query (CSVs of unencoded links have them);
    # it is sent as %20. Anywhere else, and any other whitespace or control character, is refused.
    _refuse_bad_characters(text, shown, allow_space=True)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise UrlRefused("invalid_url", f"{shown}: cannot parse URL ({exc})") from None
    if " " in parts.scheme or " " in parts.netloc:
        raise UrlRefused("invalid_url", f"{shown}: a space in the scheme or host")
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        wanted = " or ".join(schemes)
        raise UrlRefused("invalid_url", f"{shown}: scheme {parts.scheme or '(none)'!r} is not {wanted}")
    if not text[len(parts.scheme) + 1 :].startswith("//"):
        raise UrlRefused("invalid_url", f"{shown}: expected {scheme}://HOST")
    netloc = parts.netloc
    if "@" in netloc:
        raise UrlRefused("invalid_url", f"{shown}: user names and passwords in URLs are not accepted")
    host_part, port_part = netloc, ""
    if netloc.startswith("["):
        close = netloc.find("]")
        if close != -1 and close + 1 < len(netloc):
            if netloc[close + 1] != ":":
                raise UrlRefused("invalid_url", f"{shown}: unexpected text after the IPv6 address")
            host_part, port_part = netloc[: close + 1], netloc[close + 2 :]
            if not port_part:
                raise UrlRefused("invalid_url", f"{shown}: empty port")
    elif ":" in netloc:
        host_part, _, port_part = netloc.partition(":")
        if not port_part:
            raise UrlRefused("invalid_url", f"{shown}: empty port")
    host, is_ip = _parse_host(host_part, shown)
    if port_part:
        if not (port_part.isascii() and port_part.isdigit()) or len(port_part) > 5:
            raise UrlRefused("invalid_url", f"{shown}: port {port_part!r} is not a number from 1 to 65535")
        port = int(port_part)
        if not 1 <= port <= 65535:
            raise UrlRefused("invalid_url", f"{shown}: port {port} is outside 1-65535")
    elif require_port or scheme not in DEFAULT_PORTS:
        raise UrlRefused("invalid_url", f"{shown}: a port is required ({scheme}://HOST:PORT)")
    else:
        port = DEFAULT_PORTS[scheme]
    target = _percent_encode_non_ascii(parts.path or "/").replace(" ", "%20")
    if not target.startswith("/"):
        target = "/" + target
    if parts.query:
        target += "?" + _percent_encode_non_ascii(parts.query).replace(" ", "%20")
    return ParsedUrl(scheme, host, port, target, is_ip)


def join_location(base: ParsedUrl, location: str) -> ParsedUrl:
    """A redirect's Location against the URL that sent it, through the same strict parser (a backslash or a
    control character in the raw header is refused before joining)."""
    _refuse_bad_characters(location.strip(), f"redirect Location {redact(location.strip())!r}")
    return parse_url(urljoin(base.url, location.strip()))


def embedded_ipv4(addr: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (where a packet to it really goes), else ()."""
    if isinstance(addr, ipaddress.IPv4Address):
        return ()
    raw = addr.packed
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    compatible = addr in _IPV4_COMPATIBLE and not (addr.is_loopback or addr.is_unspecified)  # not ::1 or ::
    if compatible or addr in _IPV4_TRANSLATED or addr in _NAT64:
        found.append(ipaddress.IPv4Address(raw[12:16]))
    if addr in _NAT64_LOCAL:
        # RFC 6052 layouts for /48, /56, /64 and /96 prefixes: (IPv4 bytes, bytes that must be zero). Every
        # layout the address fits is a candidate; one that fits none is judged by all of them.
        layouts = (
            (raw[6:8] + raw[9:11], raw[8:9] + raw[11:]),
            (raw[7:8] + raw[9:12], raw[8:9] + raw[12:]),
            (raw[9:13], raw[8:9] + raw[13:]),
            (raw[12:16], raw[8:12]),
        )
        fitting = [v4 for v4, zeros in layouts if not any(zeros)] or [v4 for v4, _ in layouts]
        found.extend(ipaddress.IPv4Address(v4) for v4 in fitting)
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    return tuple(dict.fromkeys(found))


def non_global_reason(addr: IPAddress) -> str | None:
    """Why this one address is not a public destination (None when it is), judged on its own."""
    checks = (
        (addr.is_unspecified, "unspecified"),
        (addr.is_loopback, "loopback"),
        (addr.is_link_local, "link-local"),
        (addr.is_multicast, "multicast"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED, "shared (carrier-grade NAT)"),
        (isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local, "site-local"),
        (addr in _NAT64_LOCAL, "local-use NAT64"),
        (addr.is_reserved, "reserved"),
        (addr.is_private, "private"),
        (not addr.is_global, "non-global"),
    )
    return next((reason for hit, reason in checks if hit), None)


def classify_address(addr: IPAddress) -> str | None:
    """Why an address is not public, counting the IPv4 addresses it embeds; None for a public address.
    An embedded non-public IPv4 refuses the address whatever the wrapper. IPv4-mapped, -translated and
    -compatible addresses and well-known NAT64 are exactly their IPv4 address (their own prefixes are
    "reserved"); every other wrapper must also be public itself (so Teredo and local-use NAT64 stay refused)."""
    inner = embedded_ipv4(addr)
    for v4 in inner:
        reason = non_global_reason(v4)
        if reason:
            return f"{reason} (IPv4 {v4} inside {addr})"
    if inner and any(addr in net for net in _JUDGED_BY_INNER):
        return None
    return non_global_reason(addr)


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for text in networks:
        try:
            out.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{ALLOW_SETTING}: {text!r} is not a network (use CIDR, e.g. 10.1.2.0/24)") from None
    return tuple(out)


@dataclass(frozen=True)
class NetworkPolicy:
    """What outbound connections may reach. One per fetcher or client; `check` is thread-safe."""

    block_private: bool = True
    allowed: tuple[IPNetwork, ...] = ()
    resolver: Resolver = socket.getaddrinfo

    @classmethod
    def from_settings(cls, cfg: DownloadSettings, resolver: Resolver | None = None) -> NetworkPolicy:
        """From `DownloadSettings` (its `block_private_networks` and `allowed_networks`)."""
        return cls(
            block_private=bool(cfg.block_private_networks),
            allowed=parse_networks(cfg.allowed_networks),
            resolver=resolver or socket.getaddrinfo,
        )

    def is_allowed(self, addr: IPAddress) -> bool:
        candidates = (addr, *embedded_ipv4(addr))
        return any(c.version == net.version and c in net for c in candidates for net in self.allowed)

    def refusal(self, addr: IPAddress) -> str | None:
        """Why a connection to `addr` is refused (None when it may go ahead)."""
        if not self.block_private or self.is_allowed(addr):
            return None
        return classify_address(addr)

    def resolve(self, url: ParsedUrl) -> tuple[str, ...]:
        """Every address the host resolves to (literal addresses as they are), deduplicated, in resolver order."""
        if url.is_ip:
            return (url.host,)
        try:
            infos = self.resolver(url.host, url.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise UrlRefused("dns", f"cannot resolve {url.host}: {exc}") from exc
        addresses = [str(info[4][0]).split("%", 1)[0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
        if not addresses:
            raise UrlRefused("dns", f"cannot resolve {url.host}: no IPv4 or IPv6 address")
        return tuple(dict.fromkeys(addresses))

    def check_parsed(self, url: ParsedUrl) -> CheckedTarget:
        """Resolve and classify every address; refuse the URL if any one of them is refused."""
        addresses = self.resolve(url)
        for text in addresses:
            addr = ipaddress.ip_address(text)
            reason = self.refusal(addr)
            if reason:
                via = "" if url.is_ip else f"{url.host} resolves to "
                raise UrlRefused(
                    "blocked_url",
                    f"{via}{addr} is a {reason} address; an administrator can allow it with {ALLOW_SETTING}",
                )
        return CheckedTarget(url, addresses)

    def check(self, url: str, schemes: Sequence[str] = WEB_SCHEMES) -> CheckedTarget:
        """Parse, resolve and classify: the target to connect to, or UrlRefused."""
        return self.check_parsed(parse_url(url, schemes))

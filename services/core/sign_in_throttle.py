"""The sign-in throttle: failed attempts counted per user name and per client address, shared by every
session, server process and restart (a diskcache in the workspace, SQLite underneath).

A per-session delay let four browser tabs guess 2.7 passwords a second, each costing the server 0.35
CPU-seconds of PBKDF2. Here, `max_failures_per_user` failures for one name (or `max_failures_per_address`
from one address, whatever names it tries) within `window_seconds` lock that name (or address) for
`lockout_seconds`. A locked attempt is refused before any hashing, with the same answer whether the user
exists or not; unknown names are counted like known ones.

The client address is the connection's peer. X-Forwarded-For is read only when `trusted_proxy_hops` says
how many proxies you run in front of the server (otherwise anyone could name their own address). IPv6
clients are counted per /64, the block one subscriber gets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache

from services.core.auth import check_credentials
from services.core.settings import Settings, SignInSettings

LOCAL = "127.0.0.1"


def throttle_folder(workspace: Path) -> Path:
    """Where a workspace keeps its sign-in counters (beside the workspace's own cache)."""
    return Path(workspace).expanduser().resolve() / "cache" / "sign-in"


class SignInThrottle:
    """Failure counters with lockouts, safe across threads and processes (diskcache transactions)."""

    def __init__(self, folder: Path, limits: SignInSettings, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.clock = clock
        # never evicted for size: entries expire by themselves once their window and lockout are over
        self.cache = diskcache.Cache(str(folder), eviction_policy="none", size_limit=2**30)

    def _keys(self, user: str, address: str) -> list[tuple[str, int]]:
        name = hashlib.sha256(user.strip().casefold().encode("utf-8")).hexdigest()[:32]
        return [
            (f"user:{name}", self.limits.max_failures_per_user),
            (f"address:{address_key(address)}", self.limits.max_failures_per_address),
        ]

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until this name and this address may both try again; 0 when neither is locked."""
        now = self.clock()
        waits = [float(self.cache.get(key, (0, now, 0.0))[2]) - now for key, _ in self._keys(user, address)]
        return max(0.0, *waits)

    def _count(self, key: str, limit: int, now: float) -> float:
        """Count one attempt under `key` (inside the caller's transaction); the `until` of a lockout this
        count started, else 0."""
        count, started, until = self.cache.get(key, (0, now, 0.0))
        if now - started > self.limits.window_seconds:
            count, started = 0, now
        count += 1
        started_lock = 0.0
        if count >= limit:
            until, count, started = now + self.limits.lockout_seconds, 0, now
            started_lock = until
        self.cache.set(key, (count, started, until), expire=self.limits.window_seconds + self.limits.lockout_seconds)
        return started_lock

    def failed(self, user: str, address: str) -> float:
        """Count one failure for the name and the address; returns the lockout it started (0 if none)."""
        with self.cache.transact():
            now = self.clock()  # read inside the transaction: a writer that waited for it sees the time it runs
            untils = [self._count(key, limit, now) for key, limit in self._keys(user, address)]
        return max([0.0, *(until - now for until in untils if until)])

    def reserve(self, user: str, address: str) -> Reservation:
        """Before a password is checked: refuse when the name or the address is locked, else count the attempt
        for both, in one transaction. Checking, hashing and then counting let simultaneous attempts (one per
        browser session) all pass the check before any was counted; reserved first, the limit holds however
        many arrive at once. A right password gives the counts back (`succeeded`)."""
        with self.cache.transact():
            now = self.clock()
            wait = max(
                0.0, *(float(self.cache.get(key, (0, now, 0.0))[2]) - now for key, _ in self._keys(user, address))
            )
            if wait > 0:
                return Reservation(wait, 0.0, 0.0)
            (name_key, name_limit), (address_key_, address_limit) = self._keys(user, address)
            name_lock = self._count(name_key, name_limit, now)
            address_lock = self._count(address_key_, address_limit, now)
        locked = max([0.0, *(until - now for until in (name_lock, address_lock) if until)])
        return Reservation(0.0, locked, address_lock)

    def succeeded(self, user: str, address: str, reservation: Reservation | None = None) -> None:
        """A right password clears the name's count. The address's count stays: one valid account must not
        reset the count of an address that is guessing other accounts' passwords; the attempt `reservation`
        counted for the address is given back (and a lockout it started lifted), as a success is no failure."""
        (name_key, _), (address_key_, address_limit) = self._keys(user, address)
        with self.cache.transact():
            self.cache.delete(name_key)
            if reservation is None:
                return
            now = self.clock()
            count, started, until = self.cache.get(address_key_, (0, now, 0.0))
            if reservation.address_lock and until == reservation.address_lock:
                count, until = address_limit - 1, 0.0  # this attempt locked the address: undo, as if never counted
            elif count > 0:
                count -= 1
            else:
                return
            expire = self.limits.window_seconds + self.limits.lockout_seconds
            self.cache.set(address_key_, (count, started, until), expire=expire)

    def close(self) -> None:
        self.cache.close()


def address_key(address: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64 network (one subscriber's block)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted_proxy_hops: int) -> str:
    """The client's address: the connection's peer (None on loopback, as Streamlit reports it), or, with
    `trusted_proxy_hops` proxies of yours in front, the X-Forwarded-For entry that many places from the
    right (the address your outermost proxy saw). A request that did not pass through them all, or a
    malformed entry, falls back to the peer."""
    own = _valid(peer) or LOCAL
    if trusted_proxy_hops <= 0:
        return own
    entries = [part.strip() for header in forwarded_for for part in header.split(",") if part.strip()]
    if len(entries) < trusted_proxy_hops:
        return own
    return _valid(entries[-trusted_proxy_hops]) or own


def _valid(address: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(address)) if address else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Reservation:
    wait: float  # > 0: refused, the name or the address is locked this long (nothing was counted)
    locked: float  # the lockout (seconds) this attempt started, should its password be wrong; else 0
    address_lock: float  # the `until` of the address lockout this attempt started, else 0


@dataclass(frozen=True)
class SignInOutcome:
    user: str | None  # the signed-in name; None when refused
    retry_after: float  # seconds until this name or address may try again (0: not locked)


def attempt_sign_in(
    settings: Settings, throttle: SignInThrottle, username: str, password: str, address: str
) -> SignInOutcome:
    """One sign-in attempt through the throttle: a locked name or address is refused without hashing, and the
    attempt is counted before the password is hashed (`reserve`), so simultaneous attempts cannot pass the
    limit; a right password gives the counts back."""
    name = username.strip()
    reservation = throttle.reserve(name, address)
    if reservation.wait > 0:
        return SignInOutcome(None, reservation.wait)
    if check_credentials(settings, name, password):
        throttle.succeeded(name, address, reservation)
        return SignInOutcome(name, 0.0)
    return SignInOutcome(None, max(reservation.locked, throttle.retry_after(name, address)))  # this or another's lock

"""A client-side request budget shared by every thread of a run: a token bucket plus a server-imposed pause.

Paid APIs count requests per minute; staying under the budget avoids most 429s, and when the server still
answers 429 with a retry delay every thread waits it out together (one thread hammering while the others
wait would only earn more 429s). The budget keeps accruing during the pause, up to `burst`, so a short
pause is made up afterwards instead of lowering the rate for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """`acquire()` blocks until a request may start: at most `per_minute` a minute, bursts of `burst`."""

    def __init__(
        self,
        per_minute: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("requests per minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, burst))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._updated = clock()
        self._paused_until = 0.0
        self.waited_seconds = 0.0

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if now < self._paused_until:
                    delay = self._paused_until - now
                elif self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                else:
                    delay = (1.0 - self._tokens) / self.rate
                self.waited_seconds += delay
            self._sleep(delay)

    def pause(self, seconds: float) -> None:
        """The server asked everyone to wait (429 with a retry delay): no request starts before then."""
        with self._lock:
            until = self._clock() + max(0.0, seconds)
            self._paused_until = max(self._paused_until, until)

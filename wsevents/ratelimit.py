"""Token buckets for rate limits (sans-I/O: the caller passes the clock).

[`RateLimit`][] declares a limit: ``rate`` calls per ``per`` seconds, up to ``burst`` at
once, counted per ``key`` (the connection, its user, its IP address, or a function of the
connection). A [`Limiter`][] holds the buckets of one declaration site: a route's own
limit counts that route alone, a group's counts every route of the group together, the
app's counts every routed message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .transports.base import RateLimitStore

__all__ = ["FLOOD_CLOSE_CODE", "FLOOD_REASON", "TOO_MANY_REQUESTS", "Limiter", "RateLimit"]

log = logging.getLogger("wsevents.ratelimit")

TOO_MANY_REQUESTS = "Too Many Requests"
"""The message of the 429 error reply of a rate limit."""

FLOOD_CLOSE_CODE = 4429
"""Close code of a connection that keeps flooding limited routes."""

FLOOD_REASON = "Rate limit exceeded"
"""Close reason that goes with [`FLOOD_CLOSE_CODE`][]."""

KeyName = Literal["connection", "user", "ip"]

# A full bucket is the same as no bucket: sweeping drops those once the table grows.
_MIN_SWEEP = 1024
# Seconds between two warnings of a failing cluster-wide limit.
_WARNING_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``rate`` calls per ``per`` seconds, at most ``burst`` in a row.

    Args:
        rate: tokens added per ``per`` seconds (> 0).
        per: the period of ``rate`` in seconds (> 0): ``RateLimit(5, per=1.0)`` is 5 a
            second, ``RateLimit(100, per=60.0)`` 100 a minute.
        burst: the bucket's size, the calls accepted at once after a quiet time (default:
            ``rate``, at least 1).
        key: what a bucket counts: ``"connection"`` (each connection its own bucket),
            ``"user"`` (every connection of a user together, see ``Connection.user``),
            ``"ip"`` (every connection from one peer address), or a function of the
            [`Connection`][wsevents.Connection] returning a hashable key.
        dry_run: count and log what would be rejected, but let every call through (to
            tune a limit in production).
        cluster: keep the buckets in the transport's backend, shared by every instance
            (only for the ``"user"`` and ``"ip"`` keys): one user's connections spread
            over instances count against one bucket. Needs a transport with a
            [`RateLimitStore`][wsevents.RateLimitStore]
            (``MemoryTransport``, ``RedisTransport``); without one the buckets are this
            instance's. When the backend fails, calls go through (fail open) and a
            warning is logged at most once a minute.

    Raises:
        ValueError: ``rate``, ``per`` or ``burst`` is not positive, ``key`` is unknown,
            or ``cluster`` with a key other than ``"user"`` or ``"ip"``.
    """

    rate: float
    per: float = 1.0
    burst: float | None = None
    key: KeyName | Callable[[Any], Hashable] = "connection"
    dry_run: bool = False
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.per <= 0 or (self.burst is not None and self.burst < 1):
            raise ValueError("a RateLimit needs rate > 0, per > 0 and burst >= 1")
        if not callable(self.key) and self.key not in ("connection", "user", "ip"):
            raise ValueError(
                f"a RateLimit key is 'connection', 'user', 'ip' or a function: {self.key!r}"
            )
        if self.cluster and self.key not in ("user", "ip"):
            raise ValueError(
                f"a cluster-wide RateLimit is keyed by 'user' or 'ip', not {self.key!r}"
            )

    @property
    def capacity(self) -> float:
        """The bucket's size: ``burst``, or ``rate`` (at least 1) when not given."""
        return float(self.burst) if self.burst is not None else max(1.0, float(self.rate))


class Limiter:
    """The buckets of one [`RateLimit`][] declaration (a route's, a group's or an app's).

    Args:
        limit: the declaration.
        name: names the declaration site in the backend (a cluster-wide limit's buckets
            are ``<name>|<key>``): the same on every instance, different per site.

    Attributes:
        limit: the declaration.
        name: the declaration site's name.
        rejected: calls rejected so far (in dry-run mode: that would have been rejected).
        store: where a cluster-wide limit keeps its buckets (the app sets it when it
            starts); None: this instance's buckets.
    """

    __slots__ = (
        "_buckets",
        "_capacity",
        "_next_log",
        "_next_warning",
        "_refill",
        "_sweep_at",
        "limit",
        "name",
        "rejected",
        "store",
    )

    def __init__(self, limit: RateLimit, name: str = "") -> None:
        self.limit = limit
        self.name = name
        self.rejected = 0
        self.store: RateLimitStore | None = None
        self._capacity = limit.capacity
        self._refill = limit.rate / limit.per  # tokens per second
        # key -> [tokens, time of the last update]
        self._buckets: dict[Hashable, list[float]] = {}
        self._sweep_at = _MIN_SWEEP
        self._next_log = 0.0
        self._next_warning = 0.0

    def __repr__(self) -> str:
        return f"Limiter({self.limit!r}, rejected={self.rejected})"

    def take(self, key: Hashable, now: float) -> float:
        """Take a token from ``key``'s bucket at time ``now`` (monotonic seconds).

        Returns:
            0.0 when the call may go ahead; otherwise the seconds until a token is free
            (always > 0). In dry-run mode always 0.0 (a would-be rejection is counted
            and logged, at most once a second).
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            self._buckets[key] = [self._capacity - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self._refill
        if tokens > self._capacity:
            tokens = self._capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        self.rejected += 1
        wait = (1.0 - tokens) / self._refill
        if self.limit.dry_run:
            if now >= self._next_log:
                self._next_log = now + 1.0
                log.info("rate limit (dry run) would reject key %r: %s", key, self.limit)
            return 0.0
        return wait

    async def take_shared(self, key: Hashable, now: float) -> float:
        """[`take`][] from the bucket in ``store`` (a cluster-wide limit), shared by every
        instance; with no store, from this instance's buckets.

        A failing store lets the call through (fail open) and logs a warning at most once
        a minute.
        """
        store = self.store
        if store is None:
            return self.take(key, now)
        try:
            wait = await store.take(f"{self.name}|{key}", self._capacity, self._refill)
        except Exception as exc:
            if now >= self._next_warning:
                self._next_warning = now + _WARNING_INTERVAL
                log.warning(
                    "cluster-wide rate limit %s: the backend failed, calls go through "
                    "unlimited meanwhile (logged once a minute): %r",
                    self.name,
                    exc,
                )
            return 0.0
        if not wait > 0:
            return 0.0
        self.rejected += 1
        if self.limit.dry_run:
            if now >= self._next_log:
                self._next_log = now + 1.0
                log.info("rate limit (dry run) would reject key %r: %s", key, self.limit)
            return 0.0
        return float(wait)

    def __len__(self) -> int:
        """Buckets held (full ones may be dropped at any time)."""
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        """Drop the buckets that have refilled (they are the same as new ones)."""
        capacity, refill = self._capacity, self._refill
        full = [
            key
            for key, (tokens, stamp) in self._buckets.items()
            if tokens + (now - stamp) * refill >= capacity
        ]
        for key in full:
            del self._buckets[key]
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._buckets))

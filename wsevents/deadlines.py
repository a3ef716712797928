"""Deadlines of connections: authentication timeouts and token expiries.

One heap and one timer for every connection of an app (never a task per connection):
[`DeadlineClock`][] keeps ``(deadline, connection id, kind)`` entries and, when the earliest
is due, closes the connection if the deadline still holds: 4408 ``"Authentication
timeout"`` for a connection not authenticated in time, 4401 ``"Token expired"`` for a
session not refreshed before its expiry. A refresh does not remove the old entry: the
entry is stale once the connection's expiry moved, and is dropped when it comes up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "AUTH_TIMEOUT_CLOSE_CODE",
    "AUTH_TIMEOUT_REASON",
    "TOKEN_EXPIRED_CLOSE_CODE",
    "TOKEN_EXPIRED_REASON",
    "DeadlineClock",
]

log = logging.getLogger("wsevents.deadlines")

AUTH_TIMEOUT_CLOSE_CODE = 4408
AUTH_TIMEOUT_REASON = "Authentication timeout"
TOKEN_EXPIRED_CLOSE_CODE = 4401
TOKEN_EXPIRED_REASON = "Token expired"

_AUTH, _EXPIRY = 0, 1


class DeadlineClock:
    """The deadlines of one app's connections, on one timer.

    Args:
        connections: the app's open connections by id (looked up when a deadline is
            due: an entry holds no reference to its connection).
    """

    __slots__ = ("_connections", "_heap", "_seq", "_timer", "_timer_at")

    def __init__(self, connections: Mapping[str, Connection]) -> None:
        self._connections = connections
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        """Entries held (stale ones included)."""
        return len(self._heap)

    def auth_deadline(self, conn: Connection, timeout: float) -> None:
        """Close ``conn`` with 4408 unless it is authenticated within ``timeout`` seconds."""
        self._push(time.monotonic() + timeout, conn.id, _AUTH)

    def expiry(self, conn: Connection, at: float) -> None:
        """Close ``conn`` with 4401 at ``at`` (monotonic) unless its expiry moved by then."""
        self._push(at, conn.id, _EXPIRY)

    def close(self) -> None:
        """Stop the timer and forget every deadline."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = float("inf")
        self._heap.clear()

    def _push(self, at: float, conn_id: str, kind: int) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), conn_id, kind))
        if at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        # The loop's clock is time.monotonic (both asyncio loops and uvloop).
        self._timer = loop.call_at(at - time.monotonic() + loop.time(), self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        heap = self._heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            at, _, conn_id, kind = heapq.heappop(heap)
            conn = self._connections.get(conn_id)
            if conn is None or conn.closed:
                continue
            if kind == _AUTH:
                if not conn.authenticated:
                    log.debug("closing %s: not authenticated in time", conn_id)
                    conn.close(AUTH_TIMEOUT_CLOSE_CODE, AUTH_TIMEOUT_REASON)
            elif conn.expires_at == at:
                log.debug("closing %s: its session expired", conn_id)
                conn.close(TOKEN_EXPIRED_CLOSE_CODE, TOKEN_EXPIRED_REASON)
        if heap:
            self._arm(heap[0][0])

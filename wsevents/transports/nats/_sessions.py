"""The session store on a JetStream key-value bucket: one JSON document per key, with its
expiry, changed by compare-and-set on its revision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import nats.js.errors as jse

from ...exceptions import TransportError
from ._jet import Jet
from ._names import encode_token

__all__ = ["NatsSessions"]

log = logging.getLogger("wsevents.transports.nats")

_BUCKET = "sessions"
_SWEEP_LEASE = "sweep.lease"  # a dot: no encoded key has one


def _live(doc: Any, now: float) -> Any:
    """``doc`` unless it expired (then None)."""
    if doc is None or (doc["e"] is not None and doc["e"] <= now):
        return None
    return doc


class NatsSessions:
    """A [`SessionStore`][wsevents.SessionStore] on the bucket ``<prefix>sessions``.

    Each key holds ``{"v": value, "e": expiry}`` (Unix time, or null for no expiry; the
    hosts' clocks must agree within the shortest TTL). An expired value counts as absent; it
    is deleted by the next change of its key, or by [`sweep`][], which one instance at a time
    (the holder of a lease in the bucket) runs every ``sweep_interval`` seconds.
    """

    def __init__(self, jet: Jet, *, sweep_interval: float = 60.0) -> None:
        self.jet = jet
        self.sweep_interval = sweep_interval
        self.swept = 0
        self._id = uuid.uuid4().hex

    async def sweep(self) -> int:
        """Delete every expired value (compare-and-set: a value written meanwhile stays);
        returns how many were deleted."""

        async def run() -> int:
            kv = await self.jet.bucket(_BUCKET)
            now = time.time()
            deleted = 0
            for key, doc, revision in await self.jet.documents(kv):
                if key == _SWEEP_LEASE or _live(doc, now) is not None:
                    continue
                try:
                    await kv.delete(key, last=revision)
                except jse.APIError as exc:
                    if exc.err_code not in (10071, 10164):
                        raise
                    continue  # written again meanwhile
                deleted += 1
            return deleted

        deleted = await self.jet.call("sweep of the expired session values", run)
        self.swept += deleted
        return deleted

    async def _lease(self) -> bool:
        """Take or keep the sweeping lease (True: this instance sweeps now)."""

        def change(doc: Any) -> tuple[Any, bool]:
            now = time.time()
            if doc is not None and doc["h"] != self._id and doc["u"] > now:
                return doc, False
            return {"h": self._id, "u": now + self.sweep_interval * 1.5}, True

        return await self.jet.modify(_BUCKET, _SWEEP_LEASE, change)

    async def sweep_forever(self) -> None:
        """Every ``sweep_interval`` seconds, sweep if this instance holds the lease."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            with contextlib.suppress(TransportError):
                if await self._lease():
                    deleted = await self.sweep()
                    if deleted:
                        log.debug("deleted %d expired session values", deleted)

    async def put(self, key: str, value: str, ttl: float | None, *, only_new: bool = False) -> bool:
        """Set ``key`` to ``value`` for ``ttl`` seconds (None: no expiry); with ``only_new``,
        only when ``key`` holds nothing. True when it was set."""

        def change(doc: Any) -> tuple[Any, bool]:
            now = time.time()
            if only_new and _live(doc, now) is not None:
                return doc, False
            return {"v": value, "e": None if ttl is None else now + ttl}, True

        return await self.jet.modify(_BUCKET, encode_token(key), change)

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""

        async def read() -> str | None:
            kv = await self.jet.bucket(_BUCKET)
            doc = _live((await self.jet.read(kv, encode_token(key)))[0], time.time())
            return None if doc is None else str(doc["v"])

        return await self.jet.call(f"read of {key}", read)

    async def take(self, key: str) -> str | None:
        """Get and delete ``key`` at once."""

        def change(doc: Any) -> tuple[Any, str | None]:
            live = _live(doc, time.time())
            return None, (None if live is None else str(live["v"]))

        return await self.jet.modify(_BUCKET, encode_token(key), change)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        await self.jet.modify(_BUCKET, encode_token(key), lambda doc: (None, None))

    async def incr(self, key: str) -> int:
        """Add 1 to the integer at ``key`` (0 when it holds nothing) and return it."""

        def change(doc: Any) -> tuple[Any, int]:
            live = _live(doc, time.time())
            value = (int(live["v"]) if live is not None else 0) + 1
            return {"v": str(value), "e": None if live is None else live["e"]}, value

        return await self.jet.modify(_BUCKET, encode_token(key), change)

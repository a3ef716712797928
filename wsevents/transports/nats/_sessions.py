"""The session store on a JetStream key-value bucket: one JSON document per key, with its
expiry, changed by compare-and-set on its revision."""

from __future__ import annotations

import time
from typing import Any

from ._jet import Jet
from ._names import encode_token

__all__ = ["NatsSessions"]

_BUCKET = "sessions"


def _live(doc: Any, now: float) -> Any:
    """``doc`` unless it expired (then None)."""
    if doc is None or (doc["e"] is not None and doc["e"] <= now):
        return None
    return doc


class NatsSessions:
    """A [`SessionStore`][wsevents.SessionStore] on the bucket ``<prefix>sessions``.

    Each key holds ``{"v": value, "e": expiry}`` (Unix time, or null for no expiry; the
    hosts' clocks must agree within the shortest TTL). An expired value counts as absent and
    is deleted by the next change of its key.
    """

    def __init__(self, jet: Jet) -> None:
        self.jet = jet

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

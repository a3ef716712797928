"""Cluster-wide rate limits on a JetStream key-value bucket: one token bucket per key,
taken from by compare-and-set on its revision."""

from __future__ import annotations

import time
from typing import Any

from ._jet import Jet
from ._names import encode_token

__all__ = ["NatsRateLimits"]

_BUCKET = "ratelimits"


class NatsRateLimits:
    """A [`RateLimitStore`][wsevents.RateLimitStore] on the bucket ``<prefix>ratelimits``.

    Each key holds ``{"t": tokens, "u": when}`` (Unix time: the hosts' clocks must agree
    within a refill period). A take that finds a token writes the bucket with one less
    (compare-and-set: of concurrent takes, no more succeed than the bucket holds); a refused
    take writes nothing (the refill is computed on reading). The bucket has a TTL of
    ``ttl`` seconds (a day by default): a key untouched that long counts as full, which is
    exact for every limit that refills within it.
    """

    def __init__(self, jet: Jet, *, ttl: float = 86400.0) -> None:
        self.jet = jet
        self.ttl = ttl

    async def take(self, key: str, capacity: float, refill: float) -> float:
        """Take one token from bucket ``key``: 0.0, or the seconds until one is free."""

        def change(doc: Any) -> tuple[Any, float]:
            now = time.time()
            if doc is None:
                tokens = capacity
            else:
                tokens = min(capacity, doc["t"] + max(0.0, now - doc["u"]) * refill)
            if tokens >= 1.0:
                return {"t": tokens - 1.0, "u": now}, 0.0
            return doc, (1.0 - tokens) / refill

        return await self.jet.modify(_BUCKET, encode_token(key), change, ttl=self.ttl)

"""The capacity store on a JetStream key-value bucket: one JSON document per capped room,
changed by compare-and-set on its revision."""

from __future__ import annotations

import time
from typing import Any

from ._jet import Jet
from ._names import encode_token

__all__ = ["NatsCapacity"]

_BUCKET = "capacity"


def _live(doc: Any, now: float) -> dict[str, Any]:
    """``doc`` without the places and leases of instances whose lease ran out."""
    if doc is None:
        return {"p": {}, "l": {}}
    leases = {i: t for i, t in doc["l"].items() if t > now}
    places = {m: i for m, i in doc["p"].items() if i in leases}
    return {"p": places, "l": leases}


def _stored(doc: Any, new: dict[str, Any]) -> Any:
    """What to write: None (delete) for an empty room, ``doc`` itself when nothing changed."""
    if not new["p"] and not new["l"]:
        return None
    if doc is not None and new == doc:
        return doc
    return new


class NatsCapacity:
    """A [`CapacityStore`][wsevents.CapacityStore] on the bucket ``<prefix>capacity``.

    ``<room>``: ``{"p": {member: instance}, "l": {instance: lease expiry}}``, the expiries
    in Unix time (the hosts' clocks must agree within a lease). Every change is one
    compare-and-set of the room's document, which drops the places of expired leases first.
    """

    def __init__(self, jet: Jet) -> None:
        self.jet = jet

    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        """Take a place in ``room`` for ``member`` unless ``limit`` places are taken."""

        def change(doc: Any) -> tuple[Any, bool]:
            now = time.time()
            new = _live(doc, now)
            ok = member in new["p"] or len(new["p"]) < limit
            if ok:
                new["p"].setdefault(member, instance_id)
                new["l"][instance_id] = now + lease
            return _stored(doc, new), ok

        return await self.jet.modify(_BUCKET, encode_token(room), change)

    async def release(self, room: str, member: str, instance_id: str) -> bool:
        """Free ``member``'s place in ``room``; False when it held none there."""

        def change(doc: Any) -> tuple[Any, bool]:
            new = _live(doc, time.time())
            if new["p"].get(member) != instance_id:
                return _stored(doc, new), False
            del new["p"][member]
            if not new["p"]:
                new["l"] = {}
            return _stored(doc, new), True

        return await self.jet.modify(_BUCKET, encode_token(room), change)

    async def count(self, room: str) -> int:
        """How many places are taken in ``room`` (live leases only)."""

        async def read() -> int:
            kv = await self.jet.bucket(_BUCKET)
            doc, _ = await self.jet.read(kv, encode_token(room))
            return len(_live(doc, time.time())["p"])

        return await self.jet.call(f"capacity of {room}", read)

    async def renew(self, room: str, instance_id: str, lease: float) -> bool:
        """Extend ``instance_id``'s lease in ``room``; False when it had no live lease."""

        def change(doc: Any) -> tuple[Any, bool]:
            now = time.time()
            new = _live(doc, now)
            if instance_id not in new["l"]:
                return _stored(doc, new), False
            new["l"][instance_id] = now + lease
            return _stored(doc, new), True

        return await self.jet.modify(_BUCKET, encode_token(room), change)

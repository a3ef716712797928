"""The presence store on a JetStream key-value bucket: one JSON document per room and one
per instance heartbeat, each changed by compare-and-set on its revision."""

from __future__ import annotations

import time
from typing import Any

from ..base import PresenceCount, PresenceMember, PresencePage
from ._jet import Jet
from ._names import decode_token, encode_token

__all__ = ["NatsPresence"]

_BUCKET = "presence"


class NatsPresence:
    """A [`PresenceStore`][wsevents.PresenceStore] on the bucket ``<prefix>presence``.

    * ``r.<room>``: ``{"c": {connection id: [user, instance]}, "u": {user: [connections,
      data]}}``; the store deletes it when the room empties.
    * ``i.<instance>``: ``{"e": heartbeat expiry}`` (Unix time, the hosts' clocks must
      agree within a heartbeat), with ``"r"`` (the reaper) and ``"t"`` (since when) while a
      reaper removes its entries.

    Each add, remove and update is one compare-and-set of the room's document, so the first
    and last connections of a user are decided once. A reap claims the instance by marking
    its heartbeat with compare-and-set (one reaper wins), removes its connections room by
    room, then deletes the heartbeat.
    """

    def __init__(self, jet: Jet) -> None:
        self.jet = jet

    async def add(
        self, room: str, connection_id: str, user: str, data: str | None, instance_id: str
    ) -> bool:
        """Add a connection; True when it is its user's first connection in ``room``."""

        def change(doc: Any) -> tuple[Any, bool]:
            doc = doc or {"c": {}, "u": {}}
            if connection_id in doc["c"]:
                return doc, False
            new = {"c": dict(doc["c"]), "u": dict(doc["u"])}
            new["c"][connection_id] = [user, instance_id]
            known = new["u"].get(user)
            if known is None:
                new["u"][user] = [1, data]
                return new, True
            new["u"][user] = [known[0] + 1, known[1]]
            return new, False

        return await self.jet.modify(_BUCKET, "r." + encode_token(room), change)

    async def remove(self, room: str, connection_id: str, instance_id: str) -> str | None:
        """Remove a connection; its user when it was their last one in ``room``."""
        return await self.jet.modify(
            _BUCKET, "r." + encode_token(room), lambda doc: _removed(doc, {connection_id})
        )

    async def update(self, room: str, user: str, data: str | None) -> bool:
        """Replace ``user``'s data in ``room``; False when the user is not there."""

        def change(doc: Any) -> tuple[Any, bool]:
            if doc is None or user not in doc["u"]:
                return doc, False
            new = {"c": doc["c"], "u": dict(doc["u"])}
            new["u"][user] = [doc["u"][user][0], data]
            return new, True

        return await self.jet.modify(_BUCKET, "r." + encode_token(room), change)

    async def _room(self, room: str) -> Any:
        async def read() -> Any:
            kv = await self.jet.bucket(_BUCKET)
            return (await self.jet.read(kv, "r." + encode_token(room)))[0]

        return await self.jet.call(f"presence of {room}", read)

    async def count(self, room: str) -> PresenceCount:
        """Connections and distinct users in ``room``."""
        doc = await self._room(room)
        if doc is None:
            return PresenceCount(0, 0)
        return PresenceCount(len(doc["c"]), len(doc["u"]))

    async def members(self, room: str, offset: int, limit: int) -> PresencePage:
        """Users of ``room`` ordered by user id (code point order), ``limit`` from ``offset``."""
        doc = await self._room(room)
        if doc is None:
            return PresencePage(0, ())
        users = doc["u"]
        page = sorted(users)[offset : offset + limit] if limit > 0 else []
        return PresencePage(
            len(users), tuple(PresenceMember(u, users[u][1], users[u][0]) for u in page)
        )

    async def heartbeat(self, instance_id: str, ttl: float) -> bool:
        """Mark ``instance_id`` alive for ``ttl`` seconds; True when the store did not know it."""
        expiry = time.time() + ttl
        return await self.jet.modify(
            _BUCKET,
            "i." + encode_token(instance_id),
            lambda doc: ({"e": expiry}, doc is None or "r" in doc),
        )

    async def expired_instances(self) -> list[str]:
        """Instances whose heartbeat expired and that nobody has reaped yet."""

        async def scan() -> list[str]:
            kv = await self.jet.bucket(_BUCKET)
            now = time.time()
            return [
                decode_token(key[2:])
                for key, doc, _ in await self.jet.documents(kv, "i.")
                if doc["e"] <= now and not _claimed(doc, now)
            ]

        return await self.jet.call("scan of the presence heartbeats", scan)

    async def reap(self, instance_id: str, reaper_id: str) -> list[tuple[str, str]] | None:
        """Remove every entry of ``instance_id`` and forget it; the ``(room, user)`` pairs
        whose last connection that was, or None when another reaper claimed it first.

        The reaper claims the instance by marking its heartbeat (compare-and-set), removes
        its connections room by room, then deletes the heartbeat. A claim whose reaper
        stalled for ``CLAIM_TIMEOUT`` seconds may be taken over.
        """
        key = "i." + encode_token(instance_id)

        def claim(doc: Any) -> tuple[Any, bool]:
            now = time.time()
            if doc is None:
                return doc, True  # unknown (never beat, or reaped): sweep what may be left
            if _claimed(doc, now):
                return doc, False
            return {"e": doc["e"], "r": reaper_id, "t": now}, True

        if not await self.jet.modify(_BUCKET, key, claim):
            return None

        async def rooms() -> list[str]:
            kv = await self.jet.bucket(_BUCKET)
            return [
                key
                for key, doc, _ in await self.jet.documents(kv, "r.")
                if any(inst == instance_id for _, inst in doc["c"].values())
            ]

        left: list[tuple[str, str]] = []
        for room_key in await self.jet.call("scan of the presence rooms", rooms):
            room = decode_token(room_key[2:])

            def change(doc: Any) -> tuple[Any, list[str]]:
                if doc is None:
                    return doc, []
                mine = {cid for cid, (_, inst) in doc["c"].items() if inst == instance_id}
                return _removed_all(doc, mine)

            for user in await self.jet.modify(_BUCKET, room_key, change):
                left.append((room, user))

        def forget(doc: Any) -> tuple[Any, None]:
            if doc is not None and doc.get("r") == reaper_id:
                return None, None
            return doc, None  # it beat again meanwhile: it is back

        await self.jet.modify(_BUCKET, key, forget)
        return left


CLAIM_TIMEOUT = 30.0
"""Seconds a reaper's claim on a dead instance holds before another reaper may take over."""


def _claimed(doc: Any, now: float) -> bool:
    return "r" in doc and doc["t"] > now - CLAIM_TIMEOUT


def _removed_all(doc: Any, connections: set[str]) -> tuple[Any, list[str]]:
    """``doc`` without ``connections``, and the users who left with them."""
    if doc is None or not connections & doc["c"].keys():
        return doc, []
    new = {"c": dict(doc["c"]), "u": dict(doc["u"])}
    gone = []
    for cid in connections:
        found = new["c"].pop(cid, None)
        if found is None:
            continue
        user = found[0]
        count, data = new["u"][user]
        if count > 1:
            new["u"][user] = [count - 1, data]
        else:
            del new["u"][user]
            gone.append(user)
    return (new if new["c"] else None), gone


def _removed(doc: Any, connections: set[str]) -> tuple[Any, str | None]:
    new, gone = _removed_all(doc, connections)
    return new, (gone[0] if gone else None)

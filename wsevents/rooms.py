"""Rooms: which local connections are in which room, and broadcasts across instances.

Delivery is local-first: local members get the push directly, once, from one encoded
frame; other instances get an *envelope* through the [`BroadcastTransport`][] on the
room's channel ``ws:room:<room>``. Every envelope carries the sender's instance id, and an
instance drops its own, so a transport that echoes to the publisher (Redis pub/sub) never
delivers twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from time import monotonic
from typing import Any

from .connection import Connection
from .protocol import Codec, JsonCodec, encode_push
from .transports.base import BroadcastTransport, maybe_await

__all__ = [
    "PUBLISH_WARNING_INTERVAL",
    "ROOM_CHANNEL_PREFIX",
    "DeliveryReport",
    "RoomManager",
    "decode_envelope",
    "encode_envelope",
    "push_frame_from_envelope",
]

log = logging.getLogger("wsevents.rooms")

ROOM_CHANNEL_PREFIX = "ws:room:"

PUBLISH_WARNING_INTERVAL = 60.0
"""While publishes keep failing, seconds between two warnings (the others log at debug)."""


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a broadcast did on this instance.

    Attributes:
        sent: local connections the push was written to.
        skipped: local connections left out on purpose (the excluded sender).
        dropped: local connections that were closed, closing, or closed as slow consumers.
        published: the envelope was handed to the transport for other instances.
        publish_error: why publishing failed, when it did (the push still reached local
            members).
    """

    sent: int = 0
    skipped: int = 0
    dropped: int = 0
    published: bool = False
    publish_error: Exception | None = None

    def merged(self, other: DeliveryReport) -> DeliveryReport:
        """Add up two reports (e.g. of several rooms)."""
        return DeliveryReport(
            self.sent + other.sent,
            self.skipped + other.skipped,
            self.dropped + other.dropped,
            self.published or other.published,
            self.publish_error or other.publish_error,
        )


def encode_envelope(origin: str, fields: dict[str, Any]) -> str:
    """Wrap a broadcast for the transport, stamped with the sender's instance id."""
    fields["origin"] = origin
    return JsonCodec.encode(fields).decode()


def decode_envelope(payload: str | bytes, own_origin: str) -> dict[str, Any] | None:
    """Unwrap an envelope; None for our own (self-redelivery) or a malformed one."""
    try:
        env = JsonCodec.decode(payload)
    except ValueError:
        log.warning("dropped a malformed envelope")
        return None
    if type(env) is not dict or type(env.get("origin")) is not str:
        log.warning("dropped an envelope without origin")
        return None
    if env["origin"] == own_origin:
        return None
    return env


def push_frame_from_envelope(
    env: dict[str, Any], encode: Callable[[dict[str, Any]], bytes]
) -> bytes | None:
    """Encode the push an envelope carries; None (logged) when it is not a valid push."""
    event, path, params = env.get("event"), env.get("path"), env.get("params")
    if type(event) is not str or type(path) is not str:
        log.warning("dropped an envelope without event/path")
        return None
    try:
        return encode_push(
            event, path, env.get("data"), params if isinstance(params, dict) else None, encode
        )
    except Exception:
        log.warning("dropped an envelope that cannot be encoded")
        return None


class RoomManager:
    """The room registry of one instance; usable on its own, without a WsApp.

    Args:
        transport: carries broadcasts to other instances (None = this process only).
        instance_id: this instance's origin id; random when not given.
        codec: how pushes are encoded for local members.
    """

    def __init__(
        self,
        transport: BroadcastTransport | None = None,
        *,
        instance_id: str | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.transport = transport
        self.instance_id = instance_id if instance_id is not None else uuid.uuid4().hex
        self._encode = (codec if codec is not None else JsonCodec()).encode
        self._members: dict[str, dict[str, Connection]] = {}
        self._subscribed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._publish_warned_at: float | None = None  # set while publishes fail
        self._publish_failures_unlogged = 0

    # -- membership -------------------------------------------------------------------

    async def join(self, conn: Connection, room: str) -> None:
        """Add ``conn`` to ``room``; with a transport, return once the instance is subscribed.

        A closed connection joins nothing: its rooms are being (or have been) left, and a
        handler still running after the disconnect must not bring it back.
        """
        if conn.closed:
            return
        members = self._members.get(room)
        if members is None:
            members = self._members[room] = {}
        members[conn.id] = conn
        conn._rooms[room] = None
        if self.transport is not None and room not in self._subscribed:
            await self._sync(room)

    async def leave(self, conn: Connection, room: str) -> None:
        """Remove ``conn`` from ``room``; an empty room disappears (and is unsubscribed)."""
        conn._rooms.pop(room, None)
        members = self._members.get(room)
        if members is None or members.pop(conn.id, None) is None:
            return
        if not members:
            del self._members[room]
            if self.transport is not None:
                await self._sync(room)

    async def leave_all(self, conn: Connection) -> tuple[str, ...]:
        """Remove ``conn`` from every room; returns the rooms it was in."""
        rooms = tuple(conn._rooms)
        for room in rooms:
            await self.leave(conn, room)
        return rooms

    def _leave_all_now(self, conn: Connection) -> tuple[str, ...]:
        """Remove ``conn`` from every room at once, without awaiting the transport.

        For synchronous cleanup (the testing contexts): a room left empty keeps its channel
        subscription, which a later join reuses and [`close`][] drops.
        """
        rooms = tuple(conn._rooms)
        conn._rooms.clear()
        for room in rooms:
            members = self._members.get(room)
            if members is not None and members.pop(conn.id, None) is not None and not members:
                del self._members[room]
        return rooms

    def connections(self, room: str) -> tuple[Connection, ...]:
        """The local members of ``room``."""
        members = self._members.get(room)
        return tuple(members.values()) if members else ()

    def size(self, room: str) -> int:
        """How many local connections are in ``room``."""
        members = self._members.get(room)
        return len(members) if members else 0

    def rooms(self) -> tuple[str, ...]:
        """Every room with at least one local member."""
        return tuple(self._members)

    @staticmethod
    def rooms_of(conn: Connection) -> tuple[str, ...]:
        """The rooms ``conn`` is in, in join order."""
        return tuple(conn._rooms)

    # -- broadcasting ------------------------------------------------------------------

    async def broadcast(
        self,
        room: str,
        event: str,
        data: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        exclude_id: str | None = None,
    ) -> DeliveryReport:
        """Push ``event`` on path ``room`` to every member of ``room`` on every instance.

        The push is encoded once; local members get it directly, then the envelope is
        published (when there is a transport). A failed publish is logged and reported,
        never raised.
        """
        frame = encode_push(event, room, data, params, self._encode)
        sent, skipped, dropped = self.deliver_local(room, frame, exclude_id)
        if self.transport is None:
            return DeliveryReport(sent, skipped, dropped)
        fields: dict[str, Any] = {"event": event, "path": room}
        if data is not None:
            fields["data"] = data
        if params:
            fields["params"] = dict(params)
        if exclude_id is not None:
            fields["excludeId"] = exclude_id
        error = await self.publish(ROOM_CHANNEL_PREFIX + room, fields)
        return DeliveryReport(sent, skipped, dropped, error is None, error)

    def deliver_local(
        self, room: str, frame: bytes, exclude_id: str | None = None
    ) -> tuple[int, int, int]:
        """Write one encoded frame to every local member; returns (sent, skipped, dropped)."""
        members = self._members.get(room)
        if not members:
            return 0, 0, 0
        sent = skipped = dropped = 0
        # Sends are synchronous, so membership cannot change during the loop.
        for cid, conn in members.items():
            if cid == exclude_id:
                skipped += 1
            elif conn.send_frame(frame):
                sent += 1
            else:
                dropped += 1
        return sent, skipped, dropped

    async def publish(self, channel: str, fields: dict[str, Any]) -> Exception | None:
        """Publish an envelope; returns the error instead of raising it."""
        if self.transport is None:
            return None
        try:
            payload = encode_envelope(self.instance_id, fields)
            await maybe_await(self.transport.publish(channel, payload))
        except Exception as exc:
            self._publish_failed(channel, exc)
            return exc
        if self._publish_warned_at is not None:
            log.info(
                "publishing works again (%d failure(s) after the last warning)",
                self._publish_failures_unlogged,
            )
            self._publish_warned_at = None
            self._publish_failures_unlogged = 0
        return None

    def _publish_failed(self, channel: str, exc: Exception) -> None:
        # A broken transport fails every publish: warn once per outage, then at most every
        # PUBLISH_WARNING_INTERVAL, so that the log stays readable under load.
        text = str(exc)
        cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        now = monotonic()
        warned_at = self._publish_warned_at
        if warned_at is not None and now - warned_at < PUBLISH_WARNING_INTERVAL:
            self._publish_failures_unlogged += 1
            log.debug("publish on %s failed: %s", channel, cause)
            return
        more = self._publish_failures_unlogged
        log.warning(
            "publish on %s failed: %s%s; while publishes fail, this is logged at most every %g s",
            channel,
            cause,
            f" ({more} more failed since the last warning)" if more else "",
            PUBLISH_WARNING_INTERVAL,
        )
        self._publish_warned_at = now
        self._publish_failures_unlogged = 0

    def _on_room_payload(self, room: str, payload: str) -> None:
        env = decode_envelope(payload, self.instance_id)
        if env is None:
            return
        frame = push_frame_from_envelope(env, self._encode)
        if frame is None:
            return
        exclude = env.get("excludeId")
        self.deliver_local(room, frame, exclude if isinstance(exclude, str) else None)

    # -- transport subscriptions -------------------------------------------------------

    async def _sync(self, room: str) -> None:
        """Make the channel subscription match membership, one change at a time per room.

        Serialising per room means a fast leave/join never leaves a live room unsubscribed
        nor an empty one subscribed, whatever order the awaits finish in.
        """
        transport = self.transport
        assert transport is not None
        lock = self._locks.get(room)
        if lock is None:
            lock = self._locks[room] = asyncio.Lock()
        self._lock_users[room] = self._lock_users.get(room, 0) + 1
        try:
            async with lock:
                want = room in self._members
                have = room in self._subscribed
                channel = ROOM_CHANNEL_PREFIX + room
                if want and not have:
                    try:
                        await maybe_await(
                            transport.subscribe(channel, partial(self._on_room_payload, room))
                        )
                    except Exception as exc:
                        # The transport keeps the registration and restores it later.
                        log.warning("subscribe to %s failed: %r", channel, exc)
                    # Marked only now, so a second joiner waits on the lock until it is live.
                    self._subscribed.add(room)
                elif have and not want:
                    self._subscribed.discard(room)
                    try:
                        await maybe_await(transport.unsubscribe(channel))
                    except Exception as exc:
                        log.warning("unsubscribe from %s failed: %r", channel, exc)
        finally:
            left = self._lock_users[room] - 1
            if left:
                self._lock_users[room] = left
            else:
                del self._lock_users[room]
                del self._locks[room]

    def subscribed_rooms(self) -> frozenset[str]:
        """Rooms whose channel this instance is subscribed to."""
        return frozenset(self._subscribed)

    async def close(self) -> None:
        """Unsubscribe every room channel (members stay as they are)."""
        if self.transport is None:
            return
        for room in list(self._subscribed):
            self._subscribed.discard(room)
            try:
                await maybe_await(self.transport.unsubscribe(ROOM_CHANNEL_PREFIX + room))
            except Exception as exc:
                log.warning("unsubscribe from room %s failed: %r", room, exc)

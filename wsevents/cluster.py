"""Everything cross-instance: channels, the envelope, publishing, inbound delivery, the
connection directory and the room channel subscriptions.

Delivery is local-first: local members get a push directly; other instances get an
[`Envelope`][] through the transport. Every envelope carries its sender's instance id
(``origin``) and an instance drops its own, so a transport that echoes to the publisher
(Redis pub/sub) never delivers twice.

Channels (byte for byte, old and new instances interoperate):

* ``ws:room:<room>``: a room broadcast, subscribed while the room has local members;
* ``ws:broadcast``: a server-wide broadcast;
* ``ws:instance:<instance id>``: one instance's inbox, for ``send_to`` across instances;
* ``ws:control``: instructions to every instance, e.g. close the connections of a user
  (``{"op": "disconnect_user", "user", "code", "reason", "origin"}``), or drop a connection
  whose session is resumed elsewhere (``{"op": "take_over", "connection", "origin"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any, Literal

from .protocol import JsonCodec, encode_push
from .transports.base import (
    BroadcastTransport,
    Capabilities,
    ConnectionDirectory,
    StateListener,
)

if TYPE_CHECKING:
    from .connection import Connection
    from .tracing import Tracing

__all__ = [
    "BROADCAST_CHANNEL",
    "CONTROL_CHANNEL",
    "INSTANCE_CHANNEL_PREFIX",
    "PUBLISH_WARNING_INTERVAL",
    "ROOM_CHANNEL_PREFIX",
    "Cluster",
    "DeliveryCounts",
    "Envelope",
    "EnvelopeKind",
    "decode_envelope",
    "instance_channel",
    "room_channel",
]

# Room and envelope warnings keep the logger they have always used ("wsevents.rooms");
# directory and transport lifecycle messages keep the app's ("wsevents").
log = logging.getLogger("wsevents.rooms")
app_log = logging.getLogger("wsevents")

ROOM_CHANNEL_PREFIX = "ws:room:"
"""Transport channel prefix of room broadcasts (``ws:room:<room>``)."""
BROADCAST_CHANNEL = "ws:broadcast"
"""Transport channel of server-wide broadcasts."""
CONTROL_CHANNEL = "ws:control"
"""Transport channel of instructions to every instance (``disconnect_user``)."""
INSTANCE_CHANNEL_PREFIX = "ws:instance:"
"""Transport channel prefix of each instance's inbox (``send_to`` across instances)."""

EnvelopeKind = Literal["room", "broadcast", "direct"]
"""What an envelope is for: a room broadcast, a server-wide one, or one connection."""

PUBLISH_WARNING_INTERVAL = 60.0
"""Seconds between two warnings while publishes keep failing (the rest go to debug)."""

# orjson, with a fallback for strings holding lone surrogates (see JsonCodec).
_dumps = JsonCodec.encode
_loads = JsonCodec.decode


class DeliveryCounts:
    """Pushes this instance wrote to its connections, and those it could not write.

    Counted once per broadcast (not per member), always: the exported metrics read them.

    Attributes:
        delivered: pushes written to a local connection.
        dropped_slow: pushes not written because the connection was closed as a slow
            consumer (its send buffer overflowed).
        dropped_closed: pushes not written because the connection was closed or closing.
    """

    __slots__ = ("delivered", "dropped_closed", "dropped_slow")

    def __init__(self) -> None:
        self.delivered = 0
        self.dropped_slow = 0
        self.dropped_closed = 0

    def dropped(self, conn: Connection) -> None:
        """One push to ``conn`` was not written."""
        if conn.slow_consumer:
            self.dropped_slow += 1
        else:
            self.dropped_closed += 1


def room_channel(room: str) -> str:
    """The channel of ``room``'s broadcasts."""
    return ROOM_CHANNEL_PREFIX + room


def instance_channel(instance_id: str) -> str:
    """The inbox channel of the instance ``instance_id``."""
    return INSTANCE_CHANNEL_PREFIX + instance_id


@dataclass(frozen=True, slots=True)
class Envelope:
    """One push on its way to other instances.

    Attributes:
        origin: the sending instance's id (an instance drops its own envelopes).
        kind: ``"room"``, ``"broadcast"`` or ``"direct"``.
        target: the room (``"room"``), the connection id (``"direct"``), or None.
        event: the push's event.
        path: the push's path.
        data: the push's data (None: no ``data`` key).
        params: the push's params (empty or None: no ``params`` key).
        exclude_id: a connection left out of a room broadcast.
        offset: the push's offset in a history room (None elsewhere).
        epoch: the history stream's epoch, with ``offset``.
        traceparent: the W3C trace context of the publish (tracing on, see
            [tracing](../tracing.md)); None: no ``traceparent`` key.
        tracestate: its W3C ``tracestate``, when there is one.
    """

    origin: str
    kind: EnvelopeKind
    target: str | None
    event: str
    path: str
    data: Any = None
    params: Mapping[str, str] | None = None
    exclude_id: str | None = None
    # -- history rooms (see history.py) --
    offset: int | None = None
    epoch: str | None = None
    # -- tracing (see tracing.py) --
    traceparent: str | None = None
    tracestate: str | None = None

    def encode(self) -> str:
        """The JSON payload: ``to``? ``event``, ``path``, ``data``?, ``params``?,
        ``excludeId``?, ``offset``? and ``epoch``? (history rooms), ``traceparent``? and
        ``tracestate``? (tracing), ``origin`` (the keys and their order are the wire
        format)."""
        fields: dict[str, Any] = (
            {"to": self.target, "event": self.event, "path": self.path}
            if self.kind == "direct"
            else {"event": self.event, "path": self.path}
        )
        if self.data is not None:
            fields["data"] = self.data
        if self.params:
            fields["params"] = dict(self.params)
        if self.exclude_id is not None:
            fields["excludeId"] = self.exclude_id
        if self.offset is not None:
            fields["offset"] = self.offset
            fields["epoch"] = self.epoch
        if self.traceparent is not None:
            fields["traceparent"] = self.traceparent
            if self.tracestate:
                fields["tracestate"] = self.tracestate
        fields["origin"] = self.origin
        return _dumps(fields).decode()

    def push_frame(self, encode: Callable[[dict[str, Any]], bytes]) -> bytes | None:
        """Encode the push for local connections; None (logged) when it cannot be encoded."""
        try:
            return encode_push(self.event, self.path, self.data, self.params, encode)
        except Exception:
            log.warning("dropped an envelope that cannot be encoded")
            return None


def _load(payload: str | bytes, own_origin: str) -> dict[str, Any] | None:
    """The envelope's fields; None (logged) when malformed, None (silently) when our own."""
    try:
        fields = _loads(payload)
    except ValueError:
        log.warning("dropped a malformed envelope")
        return None
    if type(fields) is not dict or type(fields.get("origin")) is not str:
        log.warning("dropped an envelope without origin")
        return None
    if fields["origin"] == own_origin:
        return None
    return fields


def _from_fields(fields: dict[str, Any], kind: EnvelopeKind, target: str | None) -> Envelope | None:
    event, path = fields.get("event"), fields.get("path")
    if type(event) is not str or type(path) is not str:
        log.warning("dropped an envelope without event/path")
        return None
    params, exclude = fields.get("params"), fields.get("excludeId")
    return Envelope(
        fields["origin"],
        kind,
        target,
        event,
        path,
        fields.get("data"),
        params if isinstance(params, dict) else None,
        exclude if isinstance(exclude, str) else None,
        *_stream_fields(fields),
        *_trace_fields(fields),
    )


def _stream_fields(fields: dict[str, Any]) -> tuple[int | None, str | None]:
    """The ``offset`` and ``epoch`` of a history push ((None, None) unless both are valid)."""
    offset, epoch = fields.get("offset"), fields.get("epoch")
    if type(offset) is int and type(epoch) is str:
        return offset, epoch
    return None, None


MAX_TRACEPARENT_LENGTH = 256
MAX_TRACESTATE_LENGTH = 1024


def _trace_fields(fields: dict[str, Any]) -> tuple[str | None, str | None]:
    """The ``traceparent`` and ``tracestate`` of an envelope (None when absent, not text
    or too long; tracing validates them further)."""
    parent = fields.get("traceparent")
    if type(parent) is not str or len(parent) > MAX_TRACEPARENT_LENGTH:
        return None, None
    state = fields.get("tracestate")
    return parent, state if type(state) is str and len(state) <= MAX_TRACESTATE_LENGTH else None


def decode_envelope(
    payload: str | bytes, own_origin: str, kind: EnvelopeKind, target: str | None = None
) -> Envelope | None:
    """Unwrap a payload received on a ``kind`` channel (``target``: the room, for a room).

    Returns None for our own envelope (self-redelivery) and, with a warning, for a
    malformed one. For ``"direct"``, the target is the envelope's ``to``.
    """
    fields = _load(payload, own_origin)
    if fields is None:
        return None
    if kind == "direct":
        to = fields.get("to")
        if not isinstance(to, str):
            return None
        target = to
    return _from_fields(fields, kind, target)


class Cluster:
    """The cross-instance side of one instance: its transport, what it publishes and what
    it receives.

    A [`RoomManager`][wsevents.RoomManager] makes one (``rooms.cluster``) and a
    [`WsApp`][wsevents.WsApp] shares its rooms' one.

    Args:
        transport: the backend between instances (None: this process only).
        instance_id: this instance's origin id.
        encode: how pushes are encoded for local connections.
    """

    def __init__(
        self,
        transport: BroadcastTransport | None,
        *,
        instance_id: str,
        encode: Callable[[dict[str, Any]], bytes],
    ) -> None:
        self.instance_id = instance_id
        self._encode = encode
        self.transport = transport
        self._capabilities: Capabilities | None = None
        self._local: Mapping[str, Connection] = {}
        self._has_members: Callable[[str], bool] = lambda room: False
        self._deliver_room: Callable[[str, bytes, str | None], object] = lambda *args: None
        self._deliver_stream: Callable[[Envelope], object] | None = None  # history rooms
        self._subscribed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._state_listener: StateListener | None = None
        self._serving = False
        self._publish_warned_at: float | None = None  # set while publishes fail
        self._publish_failures_unlogged = 0
        self.publishes = 0
        """Envelopes handed to the transport (failed ones included)."""
        self.publish_errors = 0
        """Publishes that failed."""
        self.deliveries = DeliveryCounts()
        """Pushes written to local connections, and the ones dropped."""
        self.tracing: Tracing | None = None
        """Spans for publishes and deliveries (set by ``WsApp.enable_tracing``)."""

    def set_transport(self, transport: BroadcastTransport | None) -> None:
        """Use ``transport`` (before anything is subscribed)."""
        self.transport = transport
        self._capabilities = None

    @property
    def capabilities(self) -> Capabilities:
        """What the transport declares beyond pub/sub (asked once, when first needed: a
        RoomManager on its own only ever publishes and subscribes)."""
        caps = self._capabilities
        if caps is None:
            transport = self.transport
            caps = transport.capabilities() if transport is not None else Capabilities()
            self._capabilities = caps
        return caps

    @property
    def directory(self) -> ConnectionDirectory | None:
        """The transport's connection directory, if it has one."""
        return self.capabilities.directory

    def bind_rooms(
        self,
        has_members: Callable[[str], bool],
        deliver: Callable[[str, bytes, str | None], object],
    ) -> None:
        """Where room channels come from: ``has_members(room)`` decides the subscription,
        ``deliver(room, frame, exclude_id)`` serves inbound room pushes locally."""
        self._has_members = has_members
        self._deliver_room = deliver

    def bind_history(self, deliver: Callable[[Envelope], object]) -> None:
        """Hand inbound room envelopes that carry an offset to ``deliver`` (history rooms:
        it orders them by offset before delivering)."""
        self._deliver_stream = deliver

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, envelope: Envelope, channel: str | None = None) -> Exception | None:
        """Publish ``envelope``; returns the error instead of raising it.

        The channel is the room's for a room envelope and ``ws:broadcast`` for a
        broadcast; a direct envelope names its instance's inbox in ``channel``.
        """
        transport = self.transport
        if transport is None:
            return None
        if channel is None:
            channel = (
                ROOM_CHANNEL_PREFIX + (envelope.target or "")
                if envelope.kind == "room"
                else BROADCAST_CHANNEL
            )
        tracing = self.tracing
        if tracing is not None:
            return await tracing.publish(partial(self._send, transport), channel, envelope)
        return await self._send(transport, channel, envelope.encode)

    async def publish_fields(self, channel: str, fields: Mapping[str, Any]) -> Exception | None:
        """Publish raw envelope ``fields`` on ``channel``, stamped with our origin
        (``fields`` is not changed); returns the error instead of raising it."""
        transport = self.transport
        if transport is None:
            return None
        origin = self.instance_id
        return await self._send(
            transport, channel, lambda: _dumps({**fields, "origin": origin}).decode()
        )

    async def _send(
        self, transport: BroadcastTransport, channel: str, payload: Callable[[], str]
    ) -> Exception | None:
        """Encode and publish; an error (encoding included) is returned, logged at most
        once per outage and interval."""
        self.publishes += 1
        try:
            await transport.publish(channel, payload())
        except Exception as exc:
            self.publish_errors += 1
            self._publish_failed(channel, exc)
            return exc
        if self._publish_warned_at is not None:
            self._publish_recovered()
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

    def _publish_recovered(self) -> None:
        log.info(
            "publishing works again (%d failure(s) after the last warning)",
            self._publish_failures_unlogged,
        )
        self._publish_warned_at = None
        self._publish_failures_unlogged = 0

    # -- the instance: broadcast channel, inbox, directory, state -------------------------

    async def start(
        self, connections: Mapping[str, Connection], on_state: StateListener | None
    ) -> None:
        """Start the transport and subscribe this instance's broadcast and inbox channels.

        ``connections`` are the local connections inbound pushes are delivered to;
        ``on_state`` hears of backend loss and recovery (when the transport reports it).
        """
        self._local = connections
        transport = self.transport
        if transport is None:
            return
        self._serving = True
        events = self.capabilities.state_events
        if events is not None and on_state is not None:
            events.add_state_listener(on_state)
            self._state_listener = on_state
        await transport.start()
        await transport.subscribe(BROADCAST_CHANNEL, self._on_broadcast_payload)
        await transport.subscribe(instance_channel(self.instance_id), self._on_inbox_payload)
        await transport.subscribe(CONTROL_CHANNEL, self._on_control_payload)

    async def close(self) -> None:
        """Unsubscribe every channel, stop hearing state changes, close the transport."""
        transport = self.transport
        if transport is None or not self._serving:
            return
        self._serving = False
        await self.close_rooms()
        for channel in (BROADCAST_CHANNEL, instance_channel(self.instance_id), CONTROL_CHANNEL):
            with contextlib.suppress(Exception):
                await transport.unsubscribe(channel)
        events, listener = self.capabilities.state_events, self._state_listener
        if events is not None and listener is not None:
            events.remove_state_listener(listener)
        self._state_listener = None
        try:
            await transport.close()
        except Exception as exc:
            app_log.warning("closing the transport failed: %r", exc)

    async def register(self, connection_id: str) -> None:
        """Record in the directory that ``connection_id`` lives here (failures logged)."""
        directory = self.capabilities.directory
        if directory is None:
            return
        try:
            await directory.register_connection(connection_id, self.instance_id)
        except Exception as exc:
            app_log.warning("directory register of %s failed: %r", connection_id, exc)

    async def unregister(self, connection_id: str) -> None:
        """Remove ``connection_id`` from the directory (failures logged)."""
        directory = self.capabilities.directory
        if directory is None:
            return
        try:
            await directory.unregister_connection(connection_id)
        except Exception as exc:
            app_log.warning("directory unregister of %s failed: %r", connection_id, exc)

    async def send_remote(
        self,
        connection_id: str,
        event: str,
        path: str,
        data: Any,
        params: Mapping[str, str] | None,
    ) -> bool:
        """Push to a connection on another instance, found through the directory.

        Returns:
            True when the directory places it on another instance (the envelope is then
            published to that instance's inbox); False otherwise.
        """
        directory = self.capabilities.directory
        if directory is None:
            return False
        try:
            instance = await directory.locate_connection(connection_id)
        except Exception as exc:
            app_log.warning("directory lookup of %s failed: %r", connection_id, exc)
            return False
        if instance is None or instance == self.instance_id:
            return False
        envelope = Envelope(self.instance_id, "direct", connection_id, event, path, data, params)
        await self.publish(envelope, instance_channel(instance))
        return True

    def _on_broadcast_payload(self, payload: str) -> None:
        env = decode_envelope(payload, self.instance_id, "broadcast")
        if env is None:
            return
        tracing = self.tracing
        if tracing is not None:
            tracing.deliver(self.instance_id, env, BROADCAST_CHANNEL, self._deliver_broadcast, env)
        else:
            self._deliver_broadcast(env)

    def _deliver_broadcast(self, env: Envelope) -> int | None:
        if env.offset is not None and self._deliver_stream is not None:
            self._deliver_stream(env)
            return None
        frame = env.push_frame(self._encode)
        if frame is None:
            return 0
        deliveries, sent = self.deliveries, 0
        for conn in self._local.values():
            if conn.send_frame(frame):
                sent += 1
            else:
                deliveries.dropped(conn)
        deliveries.delivered += sent
        return sent

    def _on_inbox_payload(self, payload: str) -> None:
        fields = _load(payload, self.instance_id)
        if fields is None:
            return
        to = fields.get("to")
        conn = self._local.get(to) if isinstance(to, str) else None
        if conn is None:
            return
        env = _from_fields(fields, "direct", to)
        if env is None:
            return
        tracing = self.tracing
        if tracing is not None:
            channel = instance_channel(self.instance_id)
            tracing.deliver(self.instance_id, env, channel, self._deliver_direct, conn, env)
        else:
            self._deliver_direct(conn, env)

    def _deliver_direct(self, conn: Connection, env: Envelope) -> int:
        frame = env.push_frame(self._encode)
        if frame is None:
            return 0
        if conn.send_frame(frame):
            self.deliveries.delivered += 1
            return 1
        self.deliveries.dropped(conn)
        return 0

    # -- control: instructions to every instance -----------------------------------------

    async def disconnect_user(self, user: str, code: int, reason: str) -> int:
        """Close every connection of ``user`` with ``code`` and ``reason``: here at once,
        on the other instances through ``ws:control`` (a failed publish is logged).

        Returns:
            The connections closed on this instance.
        """
        closed = self._close_user(user, code, reason)
        await self.publish_fields(
            CONTROL_CHANNEL,
            {"op": "disconnect_user", "user": user, "code": code, "reason": reason},
        )
        return closed

    def _close_user(self, user: str, code: int, reason: str) -> int:
        doomed = [conn for conn in self._local.values() if conn.user == user and not conn.closed]
        for conn in doomed:
            conn.close(code, reason)
        return len(doomed)

    async def take_over(self, connection_id: str) -> None:
        """Drop (without a closing handshake) the connection ``connection_id`` on whichever
        other instance holds it: its session is resumed here (a failed publish is logged)."""
        await self.publish_fields(CONTROL_CHANNEL, {"op": "take_over", "connection": connection_id})

    def _on_control_payload(self, payload: str) -> None:
        fields = _load(payload, self.instance_id)
        if fields is None:
            return
        op = fields.get("op")
        if op == "take_over":
            cid = fields.get("connection")
            conn = self._local.get(cid) if isinstance(cid, str) else None
            if conn is not None and not conn.closed:
                app_log.info("dropping %s: its session is resumed elsewhere", cid)
                conn.abort()
            return
        if op != "disconnect_user":
            log.debug("dropped a control envelope with an unknown op")
            return
        user, code, reason = fields.get("user"), fields.get("code"), fields.get("reason")
        if (
            type(user) is not str
            or type(code) is not int
            or not (code == 1000 or 3000 <= code <= 4999)
            or type(reason) is not str
        ):
            log.warning("dropped a malformed disconnect_user envelope")
            return
        self._close_user(user, code, reason)

    # -- room channels ------------------------------------------------------------------

    def is_subscribed(self, room: str) -> bool:
        """True while this instance listens to ``room``'s channel."""
        return room in self._subscribed

    def subscribed_rooms(self) -> frozenset[str]:
        """Rooms whose channel this instance is subscribed to."""
        return frozenset(self._subscribed)

    async def sync_room(self, room: str) -> None:
        """Make ``room``'s channel subscription match its membership, one change at a time.

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
                want = self._has_members(room)
                have = room in self._subscribed
                channel = ROOM_CHANNEL_PREFIX + room
                if want and not have:
                    try:
                        await transport.subscribe(channel, partial(self._on_room_payload, room))
                    except Exception as exc:
                        # The transport keeps the registration and restores it later.
                        log.warning("subscribe to %s failed: %r", channel, exc)
                    # Marked only now, so a second joiner waits on the lock until it is live.
                    self._subscribed.add(room)
                elif have and not want:
                    self._subscribed.discard(room)
                    try:
                        await transport.unsubscribe(channel)
                    except Exception as exc:
                        log.warning("unsubscribe from %s failed: %r", channel, exc)
        finally:
            left = self._lock_users[room] - 1
            if left:
                self._lock_users[room] = left
            else:
                del self._lock_users[room]
                del self._locks[room]

    async def close_rooms(self) -> None:
        """Unsubscribe every room channel."""
        transport = self.transport
        if transport is None:
            return
        for room in list(self._subscribed):
            self._subscribed.discard(room)
            try:
                await transport.unsubscribe(ROOM_CHANNEL_PREFIX + room)
            except Exception as exc:
                log.warning("unsubscribe from room %s failed: %r", room, exc)

    def _on_room_payload(self, room: str, payload: str) -> None:
        env = decode_envelope(payload, self.instance_id, "room", room)
        if env is None:
            return
        tracing = self.tracing
        if tracing is not None:
            tracing.deliver(
                self.instance_id,
                env,
                ROOM_CHANNEL_PREFIX + room,
                self._deliver_room_envelope,
                room,
                env,
            )
        else:
            self._deliver_room_envelope(room, env)

    def _deliver_room_envelope(self, room: str, env: Envelope) -> int | None:
        if env.offset is not None and self._deliver_stream is not None:
            self._deliver_stream(env)
            return None
        frame = env.push_frame(self._encode)
        if frame is None:
            return 0
        result = self._deliver_room(room, frame, env.exclude_id)
        # RoomManager.deliver_local answers (sent, skipped, dropped).
        return result[0] if type(result) is tuple and type(result[0]) is int else None

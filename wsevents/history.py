"""History rooms: every push gets an offset, recent pushes are kept, and a member that was
away can catch up.

A room whose name matches a tracked pattern ([`History.track`][]) is a history room. Its
broadcasts go through the backend's [`HistoryStore`][wsevents.HistoryStore], which assigns
each push its offset atomically (+1 per push per room, the same on every instance) and
keeps the last ``size`` pushes for ``ttl`` seconds. The push then travels the normal room
path (local members, then an envelope that carries the offset and the epoch) and each
instance delivers it to its members **in offset order, once**:

* pushes that arrive out of order (two instances publishing at once) wait in a small
  per-room buffer until the missing offsets arrive; after ``gap_wait`` seconds the missing
  ones are read from the store (or skipped when the store no longer has them);
* a push with an offset already delivered is dropped.

A join with ``since`` (a [`StreamPosition`][wsevents.StreamPosition] the member had)
registers the member first, so that live pushes are held back for it, then replays the
kept pushes after ``since``, then hands it the held-back pushes it has not had: no gap and
no duplicate at the seam. When the pushes cannot all be given (another epoch: the history
was lost; or trimmed by size or age) nothing is replayed and ``recovered`` is False.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._aio import TaskSet
from .cluster import Envelope
from .connection import Connection
from .exceptions import TransportError
from .protocol import JsonCodec, encode_stream_push
from .rooms import DeliveryReport, RoomManager
from .routing import Router
from .transports.base import HistoryEntry, HistoryStore, StreamPosition
from .transports.memory import MemoryHistoryStore

__all__ = ["History", "HistoryOptions", "StreamJoin"]

log = logging.getLogger("wsevents.history")

_dumps = JsonCodec.encode
_loads = JsonCodec.decode


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much of a history room is kept.

    Attributes:
        size: the most recent pushes kept (at least 1).
        ttl: seconds a push is kept.
    """

    size: int = 1000
    ttl: float = 600.0


@dataclass(frozen=True, slots=True)
class StreamJoin:
    """What joining a history room gave.

    Attributes:
        room: the room.
        offset: the offset of the last push the member has had (or, without ``since``,
            the room's position: the member gets every push after it).
        epoch: the stream's epoch.
        recovered: with ``since``: whether every missed push was replayed; None without.
    """

    room: str
    offset: int
    epoch: str
    recovered: bool | None = None

    def as_reply(self) -> dict[str, Any]:
        """``{"subscribed": true, "offset", "epoch", "recovered"?}``: the wire reply."""
        reply: dict[str, Any] = {"subscribed": True, "offset": self.offset, "epoch": self.epoch}
        if self.recovered is not None:
            reply["recovered"] = self.recovered
        return reply


_Held = tuple[int, bytes, "str | None"]  # offset, frame, excluded connection


@dataclass(eq=False, slots=True)
class _Stream:
    """This instance's view of one history room with local members."""

    epoch: str = ""
    next: int | None = None  # the next offset to deliver; None until the position is read
    pending: dict[int, tuple[bytes, str | None]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None
    gap_timer: asyncio.TimerHandle | None = None
    recovering: dict[str, list[_Held]] = field(default_factory=dict)  # cid: held back
    floors: dict[str, int] = field(default_factory=dict)  # cid: offsets it already has
    # Made by a push for members who joined without join_stream: they get that push and
    # everything after it, whatever the position read meanwhile says.
    made_by_push: bool = False


def _position(value: Any) -> StreamPosition:
    """A ``since`` as a StreamPosition (a mapping ``{"offset", "epoch"}`` or the value)."""
    if isinstance(value, StreamPosition):
        return value
    if isinstance(value, Mapping):
        offset, epoch = value.get("offset"), value.get("epoch")
        if type(offset) is int and offset >= 0 and type(epoch) is str:
            return StreamPosition(offset, epoch)
    raise ValueError('since must be {"offset": <int >= 0>, "epoch": <string>}')


class History:
    """The history rooms of one instance (``ws.history``).

    Args:
        rooms: the instance's room registry.
        gap_wait: seconds an out-of-order push waits for the missing offsets before they
            are read from the store.
    """

    def __init__(self, rooms: RoomManager, *, gap_wait: float = 0.2) -> None:
        if gap_wait < 0:
            raise ValueError("gap_wait must be >= 0")
        self.rooms = rooms
        self.gap_wait = float(gap_wait)
        self._patterns: Router[HistoryOptions] = Router(cache_size=1024)
        self._store: HistoryStore | None = None
        self._streams: dict[str, _Stream] = {}
        # (room, connection id): the offset after which every push reached the member live.
        self._joined_at: dict[tuple[str, str], int] = {}
        self._holds: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks = TaskSet()

    # -- configuration ------------------------------------------------------------------

    def track(self, pattern: str, *, size: int = 1000, ttl: float = 600.0) -> None:
        """Make the rooms whose name matches ``pattern`` (a route pattern such as
        ``"/feed/rooms/:room"``) history rooms, keeping their last ``size`` pushes for
        ``ttl`` seconds.

        Raises:
            ValueError: ``size`` < 1 or ``ttl`` <= 0.
            RoutingError: bad or duplicate pattern.
        """
        if size < 1 or ttl <= 0:
            raise ValueError("size must be >= 1 and ttl > 0")
        self._patterns.add("history", pattern, HistoryOptions(int(size), float(ttl)))
        if self.rooms.history_hooks is None:
            self.rooms.history_hooks = self
            self.rooms.cluster.bind_history(self._on_envelope)
            self.rooms.add_leave_hook(self._left)

    def options(self, room: str) -> HistoryOptions | None:
        """The history options of ``room`` (None: not a history room)."""
        found = self._patterns.match("history", room)
        return found.handler if found is not None else None

    def tracks(self, room: str) -> bool:
        """Whether ``room`` is a history room."""
        return self._patterns.match("history", room) is not None

    @property
    def store(self) -> HistoryStore:
        """The backend store (the transport's, or one of this process)."""
        if self._store is None:
            store = self.rooms.cluster.capabilities.history
            self._store = store if store is not None else MemoryHistoryStore()
        return self._store

    async def position(self, room: str) -> StreamPosition:
        """The room's current position in the store."""
        return await self.store.position(room)

    # -- publishing ---------------------------------------------------------------------

    async def broadcast(
        self,
        room: str,
        event: str,
        data: Any,
        params: Mapping[str, str] | None,
        exclude_id: str | None,
    ) -> DeliveryReport:
        """Broadcast in a history room (the RoomManager calls it): the store assigns the
        offset, local members get the push in offset order, other instances an envelope.

        Raises:
            TransportError: the store failed (nobody got the push).
        """
        options = self.options(room) or HistoryOptions()
        push: dict[str, Any] = {"event": event, "path": room}
        if params:
            push["params"] = dict(params)
        if data is not None:
            push["data"] = data
        if exclude_id is not None:
            push["exclude"] = exclude_id  # a replay leaves it out too
        payload = bytes(_dumps(push)).decode()
        try:
            pos = await self.store.append(room, payload, options.size, options.ttl)
        except Exception as exc:
            raise TransportError(f"history append to {room} failed") from exc
        frame = encode_stream_push(event, room, data, params, pos.offset, self.rooms.codec_encode)
        sent = self._deliver(room, pos.offset, pos.epoch, frame, exclude_id)
        cluster = self.rooms.cluster
        if cluster.transport is None:
            return DeliveryReport(sent, offset=pos.offset)
        error = await cluster.publish(
            Envelope(
                cluster.instance_id,
                "room",
                room,
                event,
                room,
                data,
                params,
                exclude_id,
                pos.offset,
                pos.epoch,
            )
        )
        return DeliveryReport(sent, 0, 0, error is None, error, pos.offset)

    def _on_envelope(self, env: Envelope) -> None:
        room, offset = env.target or "", env.offset
        if offset is None or env.epoch is None:
            return
        try:
            frame = encode_stream_push(
                env.event, env.path, env.data, env.params, offset, self.rooms.codec_encode
            )
        except Exception:
            log.warning("dropped a history envelope that cannot be encoded")
            return
        self._deliver(room, offset, env.epoch, frame, env.exclude_id)

    # -- ordered delivery ---------------------------------------------------------------

    def _stream(self, room: str) -> _Stream:
        """The room's stream state, created (and its position read) on first use."""
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _Stream()
            _ = self._tasks.spawn(self._init(room, stream))
        return stream

    async def _init(self, room: str, stream: _Stream) -> None:
        try:
            pos = await self.store.position(room)
        except Exception as exc:
            log.warning("history position of %s failed: %r", room, exc)
            stream.error = exc
            if self._streams.get(room) is stream:
                del self._streams[room]
        else:
            stream.epoch = pos.epoch
            stream.next = pos.offset + 1
            if stream.made_by_push and stream.pending:
                # The pushes that arrived while the position was read (the first one
                # included) were appended after the members joined: the position already
                # counts them.
                stream.next = min(stream.next, min(stream.pending))
            for offset in [o for o in stream.pending if o < stream.next]:
                del stream.pending[offset]
            self._drain(room, stream)
        finally:
            stream.ready.set()

    def _deliver(
        self, room: str, offset: int, epoch: str, frame: bytes, exclude_id: str | None
    ) -> int:
        """Take a push of ``room``; deliver it and what it unblocks in offset order."""
        stream = self._streams.get(room)
        if stream is None:
            if not self.rooms.size(room):
                return 0
            stream = self._stream(room)
            stream.made_by_push = True
        if stream.next is None:
            stream.pending[offset] = (frame, exclude_id)
            return 0
        if epoch != stream.epoch:
            # The history was lost and restarted: follow the new stream from here.
            log.info("history of %s restarted (epoch %s)", room, epoch)
            stream.epoch, stream.next = epoch, offset
            stream.pending.clear()
            stream.floors.clear()
        if offset == stream.next and not stream.pending:
            stream.next = offset + 1  # in order: no buffering
            return self._send(room, stream, offset, frame, exclude_id)
        if offset < stream.next:
            return 0  # already delivered
        stream.pending[offset] = (frame, exclude_id)
        return self._drain(room, stream)

    def _drain(self, room: str, stream: _Stream) -> int:
        pending, sent = stream.pending, 0
        nxt = stream.next
        assert nxt is not None
        while nxt in pending:
            frame, exclude_id = pending.pop(nxt)
            sent += self._send(room, stream, nxt, frame, exclude_id)
            nxt += 1
        stream.next = nxt
        if pending:
            if stream.gap_timer is None:
                loop = asyncio.get_running_loop()
                stream.gap_timer = loop.call_later(self.gap_wait, self._gap_expired, room, stream)
        elif stream.gap_timer is not None:
            stream.gap_timer.cancel()
            stream.gap_timer = None
        return sent

    def _send(
        self, room: str, stream: _Stream, offset: int, frame: bytes, exclude_id: str | None
    ) -> int:
        members = self.rooms.members_of(room)
        if not members:
            return 0
        recovering, floors, sent = stream.recovering, stream.floors, 0
        for cid, conn in members.items():
            if cid == exclude_id:
                continue
            if recovering and cid in recovering:
                recovering[cid].append((offset, frame, exclude_id))
                continue
            if floors and cid in floors:
                if offset <= floors[cid]:
                    continue
                del floors[cid]
            if conn.send_frame(frame):
                sent += 1
            else:
                self.rooms.cluster.deliveries.dropped(conn)
        self.rooms.cluster.deliveries.delivered += sent
        return sent

    def _gap_expired(self, room: str, stream: _Stream) -> None:
        stream.gap_timer = None
        if stream.pending:
            _ = self._tasks.spawn(self._fill_gap(room, stream))

    async def _fill_gap(self, room: str, stream: _Stream) -> None:
        """Read the missing offsets from the store; skip those it no longer has."""
        if stream.next is None or not stream.pending or self._streams.get(room) is not stream:
            return
        options = self.options(room) or HistoryOptions()
        entries: list[HistoryEntry] = []
        try:
            _, found = await self.store.since(room, stream.next - 1, stream.epoch, options.ttl)
        except Exception as exc:
            log.warning("history read of %s failed: %r", room, exc)
        else:
            if found is not None:
                entries = found
        nxt = stream.next
        if not stream.pending:
            return
        for entry in entries:
            if entry.offset >= nxt and entry.offset not in stream.pending:
                frame, exclude_id = self._replay_frame(entry.payload, entry.offset)
                if frame is not None:
                    stream.pending[entry.offset] = (frame, exclude_id)
        if nxt not in stream.pending:
            skipped_to = min(stream.pending)
            log.warning("history of %s: offsets %d to %d lost", room, nxt, skipped_to - 1)
            stream.next = skipped_to
        self._drain(room, stream)

    def _replay_frame(self, payload: str, offset: int) -> tuple[bytes | None, str | None]:
        """The frame of a kept push, as it was sent the first time, and the connection it
        left out (None: nobody)."""
        try:
            push = _loads(payload)
            frame = encode_stream_push(
                push["event"],
                push["path"],
                push.get("data"),
                push.get("params"),
                offset,
                self.rooms.codec_encode,
            )
        except Exception:
            log.warning("dropped a kept history entry that cannot be decoded")
            return None, None
        exclude_id = push.get("exclude")
        return frame, exclude_id if isinstance(exclude_id, str) else None

    # -- joining ------------------------------------------------------------------------

    async def join(
        self,
        conn: Connection,
        room: str,
        *,
        since: StreamPosition | Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        admitted: bool = False,
    ) -> StreamJoin:
        """Add ``conn`` to history room ``room``; with ``since``, first replay to it every
        kept push after ``since`` (see the module docs).

        A member joining again with ``since`` (e.g. after resuming its session, which
        re-joined its rooms) gets the pushes after ``since`` that it has not had: those
        before it (re-)joined; the ones delivered to it since are not sent twice.
        ``admitted=True`` skips the join policies.

        Raises:
            ValueError: ``room`` is not a history room, or ``since`` is malformed.
            TransportError: the store failed.
            WsError: a join policy refused the join.
        """
        options = self.options(room)
        if options is None:
            raise ValueError(f"{room} is not a history room")
        start = _position(since) if since is not None else None
        cid = conn.id
        if start is not None and conn.in_room(room) and not conn.closed:
            return await self._catch_up(conn, room, start, options)
        if start is not None:
            # Before the member is registered: from now on its live pushes are held back.
            self._stream(room).recovering[cid] = []
        stream: _Stream | None = None
        last = -1
        recovered: bool | None = None
        try:
            await self.rooms.join(conn, room, data=data, admitted=admitted)
            stream = self._stream(room)
            await stream.ready.wait()
            if stream.error is not None:
                raise TransportError(f"history of {room} unavailable") from stream.error
            nxt = stream.next
            assert nxt is not None
            if start is None:
                self._joined_at[(room, cid)] = nxt - 1
                return StreamJoin(room, nxt - 1, stream.epoch)
            try:
                _, entries = await self.store.since(room, start.offset, start.epoch, options.ttl)
            except Exception as exc:
                raise TransportError(f"history read of {room} failed") from exc
            recovered = entries is not None
            if entries is not None:
                last = start.offset
                for entry in entries:
                    frame, exclude_id = self._replay_frame(entry.payload, entry.offset)
                    if frame is not None and exclude_id != cid:
                        conn.send_frame(frame)
                    last = entry.offset
        finally:
            last = self._stop_holding(room, cid, stream, last)
        if conn.in_room(room):
            self._joined_at[(room, cid)] = last
        return StreamJoin(room, last, stream.epoch, recovered)

    async def _catch_up(
        self, conn: Connection, room: str, start: StreamPosition, options: HistoryOptions
    ) -> StreamJoin:
        """``join(since=...)`` of a member: replay what it missed before it (re-)joined."""
        cid = conn.id
        stream = self._stream(room)
        await stream.ready.wait()
        if stream.error is not None:
            raise TransportError(f"history of {room} unavailable") from stream.error
        timer = self._holds.pop((room, cid), None)
        held = timer is not None and cid in stream.recovering
        if timer is not None:
            timer.cancel()
        if not held:
            stream.recovering[cid] = []  # live pushes wait until the replay is sent
        last = -1
        recovered = False
        try:
            nxt = stream.next
            assert nxt is not None
            # Every push after joined_at has reached the member live (up to nxt - 1), or
            # waits in its held list when its session was just resumed (see hold()).
            joined_at = self._joined_at.get((room, cid), nxt - 1)
            try:
                _, entries = await self.store.since(room, start.offset, start.epoch, options.ttl)
            except Exception as exc:
                raise TransportError(f"history read of {room} failed") from exc
            last = joined_at if held else nxt - 1
            if entries is not None:
                recovered = True
                for entry in entries:
                    if entry.offset > joined_at:
                        break
                    frame, exclude_id = self._replay_frame(entry.payload, entry.offset)
                    if frame is not None and exclude_id != cid:
                        conn.send_frame(frame)
                last = max(last, start.offset)
            elif held:
                last = -1  # not recovered: every held push follows
        finally:
            last = self._stop_holding(room, cid, stream, last)
        self._joined_at[(room, cid)] = last
        return StreamJoin(room, last, stream.epoch, recovered)

    def _stop_holding(self, room: str, cid: str, stream: _Stream | None, last: int) -> int:
        """Hand a recovering member the pushes held back for it (after ``last``, which is
        -1 when nothing was replayed); returns the offset of the last push it has had."""
        state = self._streams.get(room)
        held = state.recovering.pop(cid, []) if state is not None else []
        if stream is not None and stream is not state:
            held += stream.recovering.pop(cid, [])
        if stream is None:
            return max(last, 0)
        conn = self.rooms.members_of(room).get(cid)
        if held and conn is not None:
            if last < 0:
                last = held[0][0] - 1  # nothing replayed: live from the first held push
            for offset, frame, exclude_id in held:
                if offset > last and exclude_id != cid:
                    conn.send_frame(frame)
                    last = offset
        if last < 0:
            last = (stream.next or 1) - 1
        if state is stream and stream.next is not None and last >= stream.next:
            stream.floors[cid] = last  # it has had pushes this instance has not delivered yet
        return last

    def hold(self, conn: Connection, room: str, seconds: float) -> None:
        """Hold back the live pushes of ``room`` for member ``conn`` until it joins again
        with ``since`` (which then replays what it missed first, and sends the held pushes
        after, in offset order), or for at most ``seconds``. A resumed session holds its
        history rooms so, for its client to resubscribe."""
        stream = self._streams.get(room)
        if stream is None or not conn.in_room(room) or conn.id in stream.recovering:
            return
        cid = conn.id
        stream.recovering[cid] = []
        loop = asyncio.get_running_loop()
        self._holds[(room, cid)] = loop.call_later(seconds, self._release, room, cid)

    def _release(self, room: str, cid: str) -> None:
        """The hold of ``cid`` ran out: send what was held back (no resubscribe came)."""
        self._holds.pop((room, cid), None)
        stream = self._streams.get(room)
        if stream is not None and cid in stream.recovering:
            last = self._stop_holding(room, cid, stream, -1)
            if (room, cid) in self._joined_at:
                self._joined_at[(room, cid)] = last

    def _left(self, conn: Connection, room: str) -> None:
        self._joined_at.pop((room, conn.id), None)
        timer = self._holds.pop((room, conn.id), None)
        stream = self._streams.get(room)
        if timer is not None:
            timer.cancel()
            if stream is not None:
                stream.recovering.pop(conn.id, None)
        if stream is None:
            return
        stream.floors.pop(conn.id, None)
        if not self.rooms.size(room) and not stream.recovering:
            del self._streams[room]
            if stream.gap_timer is not None:
                stream.gap_timer.cancel()

    async def close(self) -> None:
        """Stop the gap timers and wait for the reads in progress."""
        for timer in self._holds.values():
            timer.cancel()
        self._holds.clear()
        for stream in self._streams.values():
            if stream.gap_timer is not None:
                stream.gap_timer.cancel()
        self._streams.clear()
        await self._tasks.wait(5.0)

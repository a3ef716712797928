"""History on one JetStream stream: a subject per room, the offset and the epoch of each push
in its headers, offsets assigned by compare-and-set on the subject's last sequence."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats.js.errors as jse
from nats.js.api import StreamConfig

from ..base import HistoryEntry, StreamPosition
from ._jet import CAS_ATTEMPTS, Jet, wrong_last_sequence
from ._names import encode_token

__all__ = ["NatsHistory"]

_OFFSET = "Wsevents-Offset"
_EPOCH = "Wsevents-Epoch"
_SIZE = "Wsevents-Size"
_EXPECT = "Nats-Expected-Last-Subject-Sequence"
_KNOWN_ROOMS = 10_000  # rooms whose last message is remembered
_KNOWN_FOR = 2.0  # seconds it is trusted (a stream recreated meanwhile restarts sequences)


class _Last:
    """A room's last message: its stream sequence, offset, epoch and the size it was kept
    with (``seq`` 0: the room has no message)."""

    __slots__ = ("epoch", "offset", "seq", "size")

    def __init__(self, seq: int, offset: int, epoch: str, size: int) -> None:
        self.seq = seq
        self.offset = offset
        self.epoch = epoch
        self.size = size


class NatsHistory:
    """A [`HistoryStore`][wsevents.HistoryStore] on the stream ``<prefix>history``.

    The stream holds subjects ``<P>.h.<room>`` (one per history room), at most
    ``max_size`` messages per subject, none older than ``max_age`` seconds. Each message
    carries its offset, the room's epoch and the room's ``size`` in headers.

    ``append`` publishes the room's next message with JetStream's
    expected-last-subject-sequence check, after the last message it knows (the one it wrote
    last, or else the one it reads): of concurrent appends, one wins each offset, the others
    read again and take the next. A room without a message (new, trimmed by age, or
    lost with the stream) starts a new epoch: its first message is a marker of offset 0,
    written by [`position`][] or by the first ``append``, so every instance sees the same
    epoch. The epoch thus changes whenever the room's stream is lost (the stream deleted or
    recreated, the server's storage lost).

    ``size`` and ``ttl`` are applied on reading (a push older than ``ttl``, or more than
    ``size`` behind the last one, counts as trimmed); every ``size / 4`` pushes the
    subject is purged down to ``size`` messages.
    """

    def __init__(self, jet: Jet, *, max_age: float, max_size: int) -> None:
        self.jet = jet
        self.max_age = max_age
        self.max_size = max_size
        self._ready = False
        self._lock = asyncio.Lock()
        # subject: the last message this instance wrote, and when
        self._known: dict[str, tuple[float, _Last]] = {}

    def forget(self) -> None:
        """Forget what this instance knows of the stream (the connection was lost: the
        server may have lost the stream too)."""
        self._ready = False
        self._known.clear()

    @property
    def stream(self) -> str:
        """The stream's name."""
        return self.jet.name_prefix + "history"

    def subject(self, room: str) -> str:
        """The subject of ``room``'s pushes."""
        return f"{self.jet.subject_prefix}.h.{encode_token(room)}"

    async def _ensure(self) -> Any:
        js = self.jet.context()
        if self._ready:
            return js
        async with self._lock:
            if not self._ready:
                config = StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.jet.subject_prefix}.h.>"],
                    max_age=self.max_age,
                    max_msgs_per_subject=self.max_size + 1,  # the epoch marker
                )
                try:
                    await js.add_stream(config)
                except jse.BadRequestError:  # there already, maybe with other limits
                    await js.stream_info(self.stream)
                self._ready = True
        return js

    async def _last(self, js: Any, subject: str) -> _Last:
        try:
            msg = await js.get_last_msg(self.stream, subject)
        except jse.NotFoundError:
            return _Last(0, 0, "", 0)
        headers = msg.headers or {}
        return _Last(
            msg.seq,
            int(headers.get(_OFFSET, 0)),
            str(headers.get(_EPOCH, "")),
            int(headers.get(_SIZE, 0)),
        )

    async def _put(
        self, js: Any, subject: str, last: _Last, payload: str | None, size: int
    ) -> StreamPosition | None:
        """Publish the room's next message after ``last`` (a marker when ``payload`` is
        None); None when another writer was first."""
        epoch = last.epoch if last.seq else uuid.uuid4().hex
        offset = last.offset + 1 if payload is not None else last.offset
        headers = {
            _EXPECT: str(last.seq),
            _OFFSET: str(offset),
            _EPOCH: epoch,
            _SIZE: str(size),
        }
        try:
            data = b"" if payload is None else payload.encode("utf-8")
            ack = await js.publish(subject, data, headers=headers)
        except Exception as exc:
            self._known.pop(subject, None)  # read the room's last message again
            if wrong_last_sequence(exc):
                return None
            if isinstance(exc, jse.NoStreamResponseError) and self._ready:
                self._ready = False  # the stream is gone: make it again, then retry
                await self._ensure()
                return None
            raise
        if len(self._known) >= _KNOWN_ROOMS:
            self._known.clear()
        self._known[subject] = (time.monotonic(), _Last(ack.seq, offset, epoch, size))
        return StreamPosition(offset, epoch)

    async def append(self, room: str, payload: str, size: int, ttl: float) -> StreamPosition:
        """Keep ``payload`` as the room's next push."""
        subject = self.subject(room)

        async def run() -> StreamPosition:
            js = await self._ensure()
            for _ in range(CAS_ATTEMPTS):
                # The room's last message as this instance wrote it, if it did: when no other
                # instance wrote since, the publish succeeds without reading first.
                known = self._known.get(subject)
                if known is not None and known[0] > time.monotonic() - _KNOWN_FOR:
                    last = known[1]
                else:
                    last = await self._last(js, subject)
                position = await self._put(js, subject, last, payload, size)
                if position is None:
                    continue
                if position.offset > size and position.offset % max(1, size // 4) == 0:
                    await js.purge_stream(self.stream, subject=subject, keep=size)
                return position
            raise RuntimeError("too many concurrent appends")

        return await self.jet.call(f"history append to {room}", run)

    async def position(self, room: str) -> StreamPosition:
        """The room's current position (offset 0 and a new epoch for a new room)."""
        subject = self.subject(room)

        async def run() -> StreamPosition:
            js = await self._ensure()
            for _ in range(CAS_ATTEMPTS):
                last = await self._last(js, subject)
                if last.seq:
                    return StreamPosition(last.offset, last.epoch)
                marked = await self._put(js, subject, last, None, 0)
                if marked is not None:
                    return marked
            raise RuntimeError("too many concurrent writers")

        return await self.jet.call(f"history position of {room}", run)

    async def since(
        self, room: str, offset: int, epoch: str, ttl: float
    ) -> tuple[StreamPosition, list[HistoryEntry] | None]:
        """The room's position and every kept push after ``offset`` (None when they cannot
        all be given)."""
        subject = self.subject(room)

        async def run() -> tuple[StreamPosition, list[HistoryEntry] | None]:
            js = await self._ensure()
            last = await self._last(js, subject)
            if not last.seq:
                return await self.position(room), None
            position = StreamPosition(last.offset, last.epoch)
            if epoch != last.epoch or offset > last.offset or offset < 0:
                return position, None
            if offset == last.offset:
                return position, []
            if offset + 1 <= last.offset - last.size:
                return position, None  # trimmed by size
            cutoff = time.time() - ttl
            entries: list[HistoryEntry] = []
            # One ordered consumer over the room's subject: the kept messages stream in, in
            # sequence order, without a request each.
            sub = await js.subscribe(subject, stream=self.stream, ordered_consumer=True)
            try:
                while True:
                    msg = await sub.next_msg(timeout=self.jet.command_timeout)
                    seq = msg.metadata.sequence.stream
                    headers = msg.headers or {}
                    found = int(headers.get(_OFFSET, 0))
                    if found > offset and headers.get(_EPOCH) == last.epoch:
                        if not entries and found != offset + 1:
                            return position, None  # trimmed (by the stream's limits, or purged)
                        if msg.metadata.timestamp.timestamp() < cutoff:
                            return position, None  # trimmed by age
                        entries.append(HistoryEntry(found, msg.data.decode("utf-8")))
                    if seq >= last.seq:
                        break
            finally:
                await sub.unsubscribe()
            if not entries or entries[-1].offset != last.offset:
                return position, None
            return position, entries

        return await self.jet.call(f"history of {room}", run)

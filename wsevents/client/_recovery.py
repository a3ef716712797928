"""History rooms as the client sees them: positions, the reconnect seam, dedupe (sans-I/O).

A subscription whose reply carries ``offset`` (int) and ``epoch`` (str) is a history
room. The client keeps, per path, the offset of the last push it handed to the
application and the stream's epoch. After a reconnect it subscribes again with
``since`` = that position; from the moment the new socket exists until that reply, the
room's pushes carrying an offset are **held**: the replay and the live pushes of a
resumed connection may come in any order and may repeat what the application had. The
reply releases them sorted by offset, each offset once and only those after the
position (or, when the server says ``recovered`` is not true, every held push: they
belong to the position the server continues from).

Outside a recovery the server delivers a room's pushes in order, once: a push whose
offset is not above the last one means the stream restarted (the history was lost, a
new epoch began); it is handed over and the position follows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._listeners import Push

__all__ = ["Recovery", "reply_position", "with_since"]


@dataclass(slots=True)
class _Stream:
    offset: int = -1  # the last offset handed to the application; -1: none known
    epoch: str | None = None  # None until the subscribe reply came
    held: list[Push] | None = None  # pushes held back during a recovery


def reply_position(reply: Any) -> tuple[int, str] | None:
    """``(offset, epoch)`` of a subscribe reply, or None when it has no valid position."""
    if not isinstance(reply, Mapping):
        return None
    offset, epoch = reply.get("offset"), reply.get("epoch")
    if type(offset) is not int or offset < 0 or not isinstance(epoch, str) or not epoch:
        return None
    return offset, epoch


def with_since(data: Any, since: Mapping[str, Any]) -> dict[str, Any]:
    """The subscribe data ``data`` (None or a mapping) with ``since`` set."""
    merged = dict(data) if isinstance(data, Mapping) else {}
    merged["since"] = dict(since)
    return merged


class Recovery:
    """The positions of the history rooms the application subscribed to."""

    __slots__ = ("_streams",)

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}

    def positions(self) -> dict[str, tuple[int, str]]:
        """``path -> (offset, epoch)`` of every known position (a new dict)."""
        return {
            path: (s.offset, s.epoch)
            for path, s in self._streams.items()
            if s.epoch is not None and s.offset >= 0
        }

    def holding(self, path: str) -> bool:
        """True while the pushes of ``path`` are held back for a recovery."""
        stream = self._streams.get(path)
        return stream is not None and stream.held is not None

    # -- the application's subscribe -----------------------------------------------------

    def begin(self, path: str) -> bool:
        """A subscribe of ``path`` starts: follow its offsets from now on.

        Returns:
            True when the path was not followed yet (then [`forget`][] it if the subscribe
            fails).
        """
        if path in self._streams:
            return False
        self._streams[path] = _Stream()
        return True

    def subscribed(self, path: str, data: Any, reply: Any) -> None:
        """The reply to the application's subscribe: a history room is followed when the
        reply has a position and the data can carry ``since`` (None or a mapping)."""
        position = reply_position(reply)
        if position is None or not (data is None or isinstance(data, Mapping)):
            self._streams.pop(path, None)
            return
        stream = self._streams.setdefault(path, _Stream())
        offset, epoch = position
        if stream.epoch is not None and stream.epoch != epoch:
            stream.offset = offset
        else:
            stream.offset = max(stream.offset, offset)
        stream.epoch = epoch

    def forget(self, path: str) -> None:
        """Stop following ``path`` (unsubscribed, refused); held pushes are dropped."""
        self._streams.pop(path, None)

    def clear(self) -> None:
        """Forget every position."""
        self._streams.clear()

    # -- reconnecting -----------------------------------------------------------------------

    def hold(self) -> None:
        """A new socket: hold back the pushes of every room with a position until its
        recovery reply. Pushes already held (a recovery cut short) stay held."""
        for stream in self._streams.values():
            if stream.epoch is not None and stream.held is None:
                stream.held = []

    def since(self, path: str) -> dict[str, Any] | None:
        """``{"offset", "epoch"}`` to resubscribe ``path`` with, or None (no position)."""
        stream = self._streams.get(path)
        if stream is None or stream.epoch is None or stream.offset < 0:
            return None
        return {"offset": stream.offset, "epoch": stream.epoch}

    def recovered(self, path: str, reply: Any) -> tuple[list[Push], bool]:
        """The reply to the resubscribe of ``path`` with ``since``.

        Returns:
            The held pushes to hand over now (in offset order, each once) and whether
            the recovery failed (the reply's ``recovered`` is not true).
        """
        stream = self._streams.get(path)
        if stream is None:
            return [], False
        failed = not (isinstance(reply, Mapping) and reply.get("recovered") is True)
        held, stream.held = stream.held or [], None
        held.sort(key=_offset_of)
        # Recovered: only what comes after the position. Not recovered: the held pushes
        # belong to where the server continues from (another epoch, or after a gap).
        last = -1 if failed else stream.offset
        out: list[Push] = []
        for push in held:
            if _offset_of(push) > last:
                out.append(push)
                last = _offset_of(push)
        position = reply_position(reply)
        if position is None:
            del self._streams[path]  # no longer a history room
        else:
            offset, epoch = position
            stream.offset = max(last, offset)
            stream.epoch = epoch
        return out, failed

    def release(self, path: str) -> list[Push]:
        """The recovery of ``path`` ended without a reply (an error or a timeout): hand
        over the held pushes after the position, in offset order, each once."""
        stream = self._streams.get(path)
        if stream is None or stream.held is None:
            return []
        held, stream.held = stream.held, None
        held.sort(key=_offset_of)
        out: list[Push] = []
        for push in held:
            if _offset_of(push) > stream.offset:
                out.append(push)
                stream.offset = _offset_of(push)
        return out

    def release_all(self) -> list[Push]:
        """[`release`][] every room still holding."""
        out: list[Push] = []
        for path in [p for p, s in self._streams.items() if s.held is not None]:
            out.extend(self.release(path))
        return out

    # -- pushes -----------------------------------------------------------------------------

    def push(self, push: Push) -> list[Push]:
        """A push arrived: the pushes to hand to the application now (none while held)."""
        offset = push.offset
        if offset is None:
            return [push]
        stream = self._streams.get(push.path)
        if stream is None:
            return [push]
        if stream.held is not None:
            stream.held.append(push)
            return []
        if stream.epoch is None:
            stream.offset = max(stream.offset, offset)  # the first subscribe's reply is due
        else:
            stream.offset = offset  # in order; a lower offset: the stream restarted
        return [push]


def _offset_of(push: Push) -> int:
    offset = push.offset
    return offset if offset is not None else -1

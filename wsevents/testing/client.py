"""The in-process test client: a protocol-aware client over an aiohttp client WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse, WSMsgType

from ..exceptions import WsClientError

__all__ = ["ClientFactory", "WsTestClient"]

_MISSING: Any = object()


def _id_key(message_id: Any) -> bytes:
    """A hashable key for any JSON id (lists and objects too; 1 and "1" stay apart)."""
    return orjson.dumps(message_id, option=orjson.OPT_SORT_KEYS)


class WsTestClient:
    """A protocol-aware client over an aiohttp client WebSocket.

    Replies are matched to [`call`][] by id; everything else (pushes, replies nobody
    waits for) is queued for [`next_push`][] / [`next_message`][].
    """

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.CLOSE:
                    # aiohttp keeps the close code but not the reason: take it from the frame.
                    self.close_reason = msg.extra if isinstance(msg.extra, str) else None
                    break
                if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    frame = orjson.loads(msg.data)
                    is_reply = isinstance(frame, dict) and "event" not in frame
                    waiter = self._pending.pop(_id_key(frame.get("id")), None) if is_reply else None
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
                    else:
                        self._inbox.put_nowait(frame)
        finally:
            self.close_code = self.ws.close_code
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(WsClientError(503, "Connection lost"))
            self._pending.clear()
            if not self._closed.done():
                self._closed.set_result(self.close_code)

    async def send(
        self,
        event: str,
        path: str,
        data: Any = _MISSING,
        *,
        message_id: Any = _MISSING,
        idem: str | None = None,
    ) -> None:
        """Send one message (fire-and-forget unless ``message_id`` is given); ``idem``
        makes a call idempotent (see [recovery](../recovery.md))."""
        msg: dict[str, Any] = {"event": event, "path": path}
        if data is not _MISSING:
            msg["data"] = data
        if message_id is not _MISSING:
            msg["id"] = message_id
        if idem is not None:
            msg["idem"] = idem
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (text for ``str``, binary for ``bytes``)."""
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    async def call(
        self,
        event: str,
        path: str,
        data: Any = _MISSING,
        *,
        timeout: float = 5.0,
        idem: str | None = None,
    ) -> Any:
        """Send an RPC and return the reply's ``data`` (``idem``: an idempotent call).

        Raises:
            WsClientError: the server's error reply, 408 on timeout, 503 when the
                connection closes first.
        """
        message_id = next(self._ids)
        return await self.call_raw(
            event, path, data, message_id=message_id, timeout=timeout, idem=idem
        )

    async def call_raw(
        self,
        event: str,
        path: str,
        data: Any = _MISSING,
        *,
        message_id: Any,
        timeout: float = 5.0,
        idem: str | None = None,
    ) -> Any:
        """Like [`call`][] with an explicit id (e.g. ``None``, ``0`` or ``""``)."""
        reply = await self.request(
            event, path, data, message_id=message_id, timeout=timeout, idem=idem
        )
        if "error" in reply:
            err = reply["error"]
            details = err.get("details")
            if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
                details = None  # absent or malformed: the call fails all the same
            retry_after = err.get("retry_after")
            if not isinstance(retry_after, int | float) or isinstance(retry_after, bool):
                retry_after = None
            raise WsClientError(
                err.get("code", 500), err.get("message"), details=details, retry_after=retry_after
            )
        return reply.get("data")

    async def request(
        self,
        event: str,
        path: str,
        data: Any = _MISSING,
        *,
        message_id: Any,
        timeout: float = 5.0,
        idem: str | None = None,
    ) -> dict[str, Any]:
        """Send an RPC and return the whole reply object (``idem``: an idempotent call)."""
        if self.close_code is not None or self.ws.closed:
            raise WsClientError(503, "Not connected")
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[_id_key(message_id)] = waiter
        await self.send(event, path, data, message_id=message_id, idem=idem)
        try:
            reply: dict[str, Any] = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._pending.pop(_id_key(message_id), None)
            raise WsClientError(408, "Request timeout") from None
        return reply

    async def next_message(self, timeout: float = 5.0) -> Any:
        """The next frame that no [`call`][] claimed (push or stray reply)."""
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no message within {timeout} s") from None

    async def next_push(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next push ``{"event", "path", ...}``; fails on a stray reply."""
        frame = await self.next_message(timeout)
        assert isinstance(frame, dict) and "event" in frame, f"expected a push, got {frame!r}"
        return frame

    def pending_messages(self) -> list[Any]:
        """Frames received and not yet taken, without waiting."""
        out = []
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the socket; returns the close code."""
        return await asyncio.wait_for(asyncio.shield(self._closed), timeout)

    async def close(self) -> None:
        """Close the socket and stop reading."""
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 2.0)
        # The reader stops at CLOSING, before aiohttp knows the code of a close we started.
        self.close_code = self.ws.close_code


ClientFactory = Callable[..., Awaitable[WsTestClient]]
"""What the ``ws_client`` fixture yields: ``await ws_client(ws_app, path="/ws", ...)``."""

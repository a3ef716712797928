"""A TCP relay for tests whose connections can be cut like a network failure."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Relays ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>``, byte for byte.

    [`drop`][] aborts every relayed connection on both sides: the client and the server
    see the TCP connection reset, without a WebSocket close frame (as when a train
    enters a tunnel). While ``refuse`` is True, new connections are reset at once.
    ``upstream`` may be changed: later connections go to the new port (another
    instance). [`stall`][] keeps what the server sends from reaching the client (a reply
    lost on the way) until the next [`drop`][].
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.refuse = False
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stall(self) -> None:
        """Hold back what the servers send to the clients (the clients still send)."""
        self._flowing.clear()

    def drop(self) -> int:
        """Reset every relayed connection; returns how many there were. Ends a stall."""
        self._flowing.set()
        pairs = list(self._pairs)
        self._pairs.clear()
        for client, server in pairs:
            _abort(client)
            _abort(server)
        return len(pairs)

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            _abort(writer)
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst, gate in ((reader, up_writer, None), (up_reader, writer, self._flowing)):
            task = asyncio.get_running_loop().create_task(_pipe(src, dst, gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while chunk := await src.read(65536):
            if gate is not None and not gate.is_set():
                continue  # stalled: lost on the way
            dst.write(chunk)
            await dst.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if dst.can_write_eof():
            dst.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
    else:
        with contextlib.suppress(Exception):
            transport.abort()

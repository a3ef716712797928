"""Helpers of the NATS functional tests: the shared server, throwaway servers, cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)


def unique(stem: str = "wsevents-test") -> str:
    """A prefix nobody else uses on the shared NATS."""
    return f"{stem}-{uuid.uuid4().hex[:10]}:"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def reachable(url: str = NATS_URL) -> bool:
    import nats

    try:
        nc = await nats.connect(
            url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False
        )
    except Exception:
        return False
    await nc.close()
    return True


async def drop_prefix(prefix: str, url: str = NATS_URL) -> None:
    """Delete every stream and bucket made under ``prefix``."""
    import nats

    from wsevents.transports.nats._names import stream_safe

    name = stream_safe(prefix)
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
    try:
        js = nc.jetstream()
        for stream in await js.streams_info():
            stream_name = stream.config.name or ""
            if stream_name.startswith(name) or stream_name.startswith("KV_" + name):
                await js.delete_stream(stream_name)
    finally:
        await nc.close()


async def stream_names(prefix: str, url: str = NATS_URL) -> list[str]:
    import nats

    from wsevents.transports.nats._names import stream_safe

    name = stream_safe(prefix)
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
    try:
        js = nc.jetstream()
        return [
            s.config.name or ""
            for s in await js.streams_info()
            if (s.config.name or "").startswith((name, "KV_" + name))
        ]
    finally:
        await nc.close()


class ThrowawayNats:
    """A private ``nats-server -js`` on a free port, stopped and started at will (its store
    directory survives a restart)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self.store = tempfile.mkdtemp(prefix="wsevents-nats-")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert NATS_SERVER is not None
        self.process = await asyncio.create_subprocess_exec(
            NATS_SERVER,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--store_dir",
            self.store,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            if await reachable(self.url):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"nats-server on {self.port} did not start")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            await process.wait()

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.store, ignore_errors=True)

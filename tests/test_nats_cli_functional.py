"""The command line on NATS: ``--nats-url``, two reference-app processes across one NATS."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

pytest.importorskip("nats", reason="the NATS engine needs nats-py: pip install 'wsevents[nats]'")

from examples.multi_instance.demo import cross
from wsevents.testing import WsTestClient, assert_delivered_once

from .nats_support import NATS_URL, free_port, reachable

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsevents", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


class Instance:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> int:
        """SIGTERM by PID; returns the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def start_instance(nats_url: str) -> Instance:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsevents",
        "run",
        "examples.reference_app:app",
        "--port",
        str(port),
        "--nats-url",
        nats_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    instance = Instance(proc, port)
    deadline = time.monotonic() + 20
    while True:  # ready when the port accepts connections
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None or time.monotonic() > deadline:
                await instance.stop()
                raise AssertionError(f"instance on {port} did not start") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return instance


@pytest.fixture
async def two_instances() -> AsyncIterator[tuple[Instance, Instance]]:
    if not await reachable():
        pytest.skip(f"no NATS at {NATS_URL}")
    a = await start_instance(NATS_URL)
    try:
        b = await start_instance(NATS_URL)
    except BaseException:
        await a.stop()
        raise
    try:
        yield a, b
    finally:
        assert await a.stop() == 0
        assert await b.stop() == 0


async def test_demo_sees_room_announcement_and_direct_push_cross_instances(
    two_instances: tuple[Instance, Instance],
) -> None:
    a, b = two_instances
    lines = await cross(a.url, b.url)
    assert lines[0].endswith(": hello from instance A")
    assert lines[1] == "announcement: to every connection"
    assert lines[2] == "direct (sent=True): just for Bob"


async def test_two_processes_deliver_every_push_exactly_once(
    two_instances: tuple[Instance, Instance],
) -> None:
    a, b = two_instances
    room = f"/chat/rooms/nats-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        on_a = [WsTestClient(await session.ws_connect(a.url)) for _ in range(2)]
        on_b = [WsTestClient(await session.ws_connect(b.url)) for _ in range(2)]
        sender, *others = [*on_a, *on_b]
        for client in (*on_a, *on_b):
            assert await client.call("subscribe", room) == {"subscribed": True}
        assert await sender.call("message", room, {"n": 1}) == {"sent": True}
        push = {"event": "message", "path": room, "params": {"room": room.rsplit("/", 1)[1]}}
        await assert_delivered_once(others, {**push, "data": {"n": 1}}, excluded=[sender])

        target_id = (await on_b[1].call("rpc", "/whoami"))["id"]
        payload = {"to": target_id, "payload": "psst"}
        assert await on_a[0].call("rpc", "/direct", payload) == {"sent": True}
        direct = {"event": "notification", "path": "/private", "data": "psst"}
        await assert_delivered_once([on_b[1]], direct, excluded=[on_a[1], on_b[0]])
        unknown = {"to": str(uuid.uuid4()), "payload": "lost"}
        assert await on_a[0].call("rpc", "/direct", unknown) == {"sent": False}
        for client in (*on_a, *on_b):
            await client.close()


def test_redis_and_nats_urls_are_mutually_exclusive() -> None:
    result = run_cli(
        "run",
        "examples.reference_app:app",
        "--redis-url",
        "redis://127.0.0.1:6379/0",
        "--nats-url",
        NATS_URL,
    )
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_a_bad_nats_url_is_one_line_error_without_the_password() -> None:
    result = run_cli(
        "run", "examples.reference_app:app", "--port", "0", "--nats-url", f"http://u:{SECRET}@h:1"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: bad --nats-url http://u:***@h:1: not a NATS URL"


def test_nats_fail_fast_exits_2_naming_the_redacted_url() -> None:
    port = free_port()
    result = run_cli(
        "run",
        "examples.reference_app:app",
        "--port",
        "0",
        "--nats-url",
        f"nats://u:{SECRET}@127.0.0.1:{port}",
        "--nats-fail-fast",
        "--nats-connect-timeout",
        "0.5",
    )
    assert result.returncode == 2
    assert f"nats://u:***@127.0.0.1:{port} did not answer" in result.stderr
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr

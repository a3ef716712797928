"""``python -m wsevents run``: a real process on a real port, driven by an aiohttp client."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
REPLY_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli(target: str, *args: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wsevents",
        "run",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]


class Server:
    """A ``python -m wsevents run`` child process and where it listens."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_ready(self) -> None:
        """Poll the port until it accepts a connection; fail if the process dies first."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), timeout=1.0
                )
            except OSError:  # refused, or TimeoutError (an OSError too)
                await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
                continue
            writer.close()
            await writer.wait_closed()
            return
        pytest.fail(f"server not listening after {READY_TIMEOUT}s:\n{self.output()}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(target: str, *args: str) -> Server:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cli(target, *args, port=port), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        server = Server(proc, port, log)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def rpc(
    ws: aiohttp.ClientWebSocketResponse, path: str, data: Any, message_id: int = 1
) -> Any:
    await ws.send_str(json.dumps({"event": "rpc", "path": path, "data": data, "id": message_id}))
    msg = await asyncio.wait_for(ws.receive(), REPLY_TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_run_serves_the_reference_app(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("examples.reference_app:app")
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        assert await rpc(ws, "/echo", {"hello": ["wörld", 1]}) == {
            "id": 1,
            "data": {"hello": ["wörld", 1]},
        }
        assert await rpc(ws, "/users/42", None, 2) == {"id": 2, "data": {"id": "42"}}


async def test_path_option_moves_the_endpoint(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("examples.reference_app:app", "--path", "/other")
    await server.wait_ready()
    async with session.ws_connect(server.url("/other")) as ws:
        assert await rpc(ws, "/echo", "here") == {"id": 1, "data": "here"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(server.url("/ws"))
    assert info.value.status == 404


async def test_sync_factory_returning_a_ws_app_is_served(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("tests.cli_targets:make_ws_app")
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        assert await rpc(ws, "/echo", 7) == {"id": 1, "data": {"tag": "sync factory", "data": 7}}


async def test_async_factory_returning_an_aiohttp_app_is_served_at_its_own_routes(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("tests.cli_targets:make_aiohttp_app", "--path", "/ignored")
    await server.wait_ready()
    async with session.ws_connect(server.url("/custom")) as ws:
        assert await rpc(ws, "/echo", [1]) == {
            "id": 1,
            "data": {"tag": "async factory", "data": [1]},
        }
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(server.url("/ignored"))
    assert info.value.status == 404


async def test_async_factory_runs_on_the_loop_that_serves(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    # Clients, pools and tasks an async factory creates are bound to its loop.
    server = start_server("tests.cli_targets:make_loop_aware_app")
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        assert await rpc(ws, "/same-loop", None) == {"id": 1, "data": True}


async def test_sigterm_closes_clients_with_1001_and_exits_zero(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("examples.reference_app:app")
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        assert await rpc(ws, "/echo", "before") == {"id": 1, "data": "before"}
        server.proc.send_signal(signal.SIGTERM)
        msg = await asyncio.wait_for(ws.receive(), REPLY_TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert (msg.data, msg.extra) == (1001, "Server shutting down")
    returncode = await asyncio.to_thread(server.proc.wait, 30)
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.reference_app", "target must look like MODULE:ATTR"),
        ("examples.reference_app:", "target must look like MODULE:ATTR"),
        (":app", "target must look like MODULE:ATTR"),
        ("no_such_module_for_wsevents:app", "cannot import module 'no_such_module_for_wsevents'"),
        ("tests.no_such_module:app", "cannot import module 'tests.no_such_module'"),
        ("examples.reference_app:missing", "has no attribute 'missing'"),
        ("examples.reference_app:app.missing", "has no attribute 'app.missing'"),
        ("tests.cli_targets:not_an_app", "is a int, not a WsApp"),
        ("tests.cli_targets:make_nothing", "is a NoneType, not a WsApp"),
        ("tests.cli_targets:make_text", "is a str, not a WsApp"),
    ],
)
def test_bad_target_exits_2_with_a_one_line_error(target: str, message: str) -> None:
    result = subprocess.run(
        cli(target, port=free_port()), cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert result.stdout == ""


async def test_loop_uvloop_serves_on_uvloop(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    pytest.importorskip("uvloop")
    server = start_server("tests.cli_targets:loop_reporter", "--loop", "uvloop")
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        reply = await rpc(ws, "/loop", None)
    assert reply["data"].startswith("uvloop"), reply


def test_unknown_loop_is_a_usage_error() -> None:
    result = subprocess.run(
        cli("examples.reference_app:app", "--loop", "trio", port=free_port()),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr

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

import wsevents

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

    def start(target: str, *args: str, env: dict[str, str] | None = None) -> Server:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cli(target, *args, port=port),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
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


# -- usage errors: one line on stderr, exit status 2 ------------------------------------------


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsevents", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a run that exited with 2, with no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def test_port_in_use_is_one_line_error_and_never_says_serving() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_cli("run", "examples.reference_app:app", "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "in use" in line
    assert "--port" in line  # the hint: choose another port


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_port_out_of_range_is_one_line_error(port: str) -> None:
    line = one_line_error(run_cli("run", "examples.reference_app:app", "--port", port))
    assert "--port" in line
    assert "0 to 65535" in line


def test_path_without_leading_slash_is_one_line_error_with_a_hint() -> None:
    line = one_line_error(
        run_cli("run", "examples.reference_app:app", "--path", "ws", "--port", "0")
    )
    assert "--path" in line
    assert "/ws" in line  # the hint


def test_unknown_option_is_one_line_error() -> None:
    line = one_line_error(run_cli("run", "examples.reference_app:app", "--nope"))
    assert "--nope" in line


def test_callable_that_is_not_a_factory_is_one_line_error() -> None:
    line = one_line_error(run_cli("run", "json:loads", "--port", "0"))
    assert "json:loads" in line
    assert "without arguments" in line


@pytest.mark.parametrize(
    "target",
    ["examples/reference_app.py", "./examples/reference_app.py", "examples/reference_app.py:app"],
)
def test_file_path_target_is_one_line_error_with_a_module_path_hint(target: str) -> None:
    line = one_line_error(run_cli("run", target, "--port", "0"))
    assert "use a module path such as examples.reference_app:app" in line


def test_version_prints_the_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wsevents {wsevents.__version__}"


def test_run_help_shows_every_option_with_its_default() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for fragment in (
        "--host HOST",
        "(default: 127.0.0.1)",
        "(default: 8080)",
        "(default: /ws)",
        "(default: info)",
        "(default: asyncio)",
        "--allow-origin ORIGIN",
        "--trusted-proxy ADDRESS",
        "--redis-url URL",
        "--redis-fail-fast",
        "--nats-url URL",
        "--nats-fail-fast",
        "(default: 5.0)",
        "--metrics",
        "--admin-token TOKEN",
        "(default: plain)",
    ):
        assert fragment in text, fragment


def spawn_piping_stderr(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wsevents", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_serving_is_logged_only_once_the_socket_listens(
    session: aiohttp.ClientSession,
) -> None:
    # --port 0: the port is only known from the "serving" line, which must come after the bind.
    proc = spawn_piping_stderr("run", "examples.reference_app:app", "--port", "0")
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), READY_TIMEOUT)
        assert "serving examples.reference_app:app on ws://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        # No retry: the first connection attempt after the line must succeed.
        async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert await rpc(ws, "/echo", "first try") == {"id": 1, "data": "first try"}
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


# -- --trusted-proxy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), "127.0.0.1"),  # not trusted: the header is ignored
        (("--trusted-proxy", "10.0.0.0/8"), "127.0.0.1"),
        (("--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1"), "203.0.113.7"),
    ],
)
async def test_trusted_proxy_gives_the_forwarded_client_ip(
    start_server: Callable[..., Server],
    session: aiohttp.ClientSession,
    flags: tuple[str, ...],
    expected: str,
) -> None:
    server = start_server("tests.cli_targets:make_ws_app", *flags)
    await server.wait_ready()
    headers = {"X-Forwarded-For": "203.0.113.7, 10.1.2.3"}
    async with session.ws_connect(server.url("/ws"), headers=headers) as ws:
        assert await rpc(ws, "/ip", None) == {"id": 1, "data": expected}


def test_trusted_proxy_that_is_no_address_is_one_line_error() -> None:
    line = one_line_error(
        run_cli("run", "examples.reference_app:app", "--trusted-proxy", "proxy.local")
    )
    assert "'proxy.local' is not an IP address or network" in line


def test_trusted_proxy_with_an_aiohttp_app_without_ws_app_is_one_line_error() -> None:
    line = one_line_error(
        run_cli("run", "tests.cli_targets:make_plain_aiohttp_app", "--trusted-proxy", "::1")
    )
    assert "--trusted-proxy needs a WsApp" in line


# -- --allow-origin -------------------------------------------------------------------------

FOREIGN = "https://app.example.com"


async def test_foreign_origin_is_refused_without_allow_origin(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("examples.reference_app:app")
    await server.wait_ready()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(server.url("/ws"), origin=FOREIGN)
    assert info.value.status == 403
    async with session.ws_connect(server.url("/ws")) as ws:  # no Origin: not a browser
        assert await rpc(ws, "/echo", 1) == {"id": 1, "data": 1}


@pytest.mark.parametrize(
    ("target", "path", "allowed"),
    [
        ("examples.reference_app:app", "/ws", [FOREIGN]),
        ("examples.reference_app:app", "/ws", ["*"]),
        ("tests.cli_targets:make_ws_app", "/ws", ["https://other.example", FOREIGN + "/"]),
        ("tests.cli_targets:make_aiohttp_app", "/custom", [FOREIGN.upper()]),
    ],
)
async def test_allow_origin_lets_that_origin_connect(
    start_server: Callable[..., Server],
    session: aiohttp.ClientSession,
    target: str,
    path: str,
    allowed: list[str],
) -> None:
    flags = [arg for origin in allowed for arg in ("--allow-origin", origin)]
    server = start_server(target, *flags)
    await server.wait_ready()
    async with session.ws_connect(server.url(path), origin=FOREIGN) as ws:
        reply = await rpc(ws, "/echo", "from a browser")
    assert reply["id"] == 1 and "error" not in reply
    if "*" not in allowed:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(server.url(path), origin="https://evil.example")
        assert info.value.status == 403


def test_allow_origin_without_a_scheme_is_one_line_error() -> None:
    line = one_line_error(
        run_cli("run", "examples.reference_app:app", "--allow-origin", "app.example.com")
    )
    assert "https://app.example.com" in line  # the hint


def test_allow_origin_with_an_aiohttp_app_without_ws_app_is_one_line_error() -> None:
    line = one_line_error(
        run_cli("run", "tests.cli_targets:make_plain_aiohttp_app", "--allow-origin", "*")
    )
    assert "--allow-origin needs a WsApp" in line


# -- --redis-url failures -------------------------------------------------------------------

SECRET = "s3cret-pw"


def test_malformed_redis_url_is_one_line_error_naming_the_redacted_url() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:notaport/0"
    line = one_line_error(
        run_cli("run", "examples.reference_app:app", "--port", "0", "--redis-url", url)
    )
    assert "bad --redis-url redis://:***@127.0.0.1:notaport/0" in line
    assert "notaport" in line.split("/0", 1)[1]  # the cause
    assert SECRET not in line


def test_redis_fail_fast_exits_2_naming_the_redacted_url_and_the_cause() -> None:
    port = free_port()  # nothing listens there
    result = run_cli(
        "run",
        "examples.reference_app:app",
        "--port",
        "0",
        "--redis-url",
        f"redis://:{SECRET}@127.0.0.1:{port}/0",
        "--redis-fail-fast",
        "--redis-connect-timeout",
        "0.5",
    )
    line = one_line_error(result)
    assert f"redis://:***@127.0.0.1:{port}/0" in line
    assert "did not answer within 0.5 s" in line
    assert f"connecting to 127.0.0.1:{port}" in line  # the cause
    assert SECRET not in line


async def test_unreachable_redis_warnings_name_url_and_cause_once(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    redis_port = free_port()  # nothing listens there
    url = f"redis://:{SECRET}@127.0.0.1:{redis_port}/0"
    server = start_server(
        "examples.reference_app:app", "--redis-url", url, "--redis-connect-timeout", "0.5"
    )
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        for i in range(1, 6):
            # The announcement reaches this client too, before the reply.
            assert await rpc(ws, "/announce", i, i) == {
                "event": "announcement",
                "path": "/announce",
                "data": i,
            }
            reply = json.loads((await asyncio.wait_for(ws.receive(), REPLY_TIMEOUT)).data)
            assert reply == {"id": i, "data": {"sent": True}}
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, 30) == 0
    output = server.output()
    assert SECRET not in output
    redacted = f"redis://:***@127.0.0.1:{redis_port}/0"
    cause = f"connecting to 127.0.0.1:{redis_port}"
    warnings = [line for line in output.splitlines() if " WARNING " in line]
    unreachable = [line for line in warnings if "unreachable" in line]
    assert unreachable, output
    assert all(redacted in line and cause in line for line in unreachable), unreachable
    publishes = [line for line in warnings if "publish on ws:broadcast failed" in line]
    assert len(publishes) == 1, output  # one per outage, not one per publish
    assert redacted in publishes[0] and cause in publishes[0], publishes[0]


# -- --metrics, --admin-token, --log-format, the health probes ------------------------------


async def test_metrics_admin_snapshot_and_probes_on_the_same_port(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server = start_server("examples.reference_app:app", "--metrics", "--admin-token", "tok3n")
    await server.wait_ready()
    base = f"http://127.0.0.1:{server.port}"
    async with session.ws_connect(server.url("/ws")) as ws:
        for n in range(3):
            assert (await rpc(ws, "/echo", n, n))["data"] == n
        assert (await rpc(ws, "/users/7", None, 9))["data"] == {"id": "7"}
        async with session.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        async with session.get(f"{base}/admin/snapshot") as resp:
            assert resp.status == 401
        headers = {"Authorization": "Bearer tok3n"}
        async with session.get(f"{base}/admin/snapshot", headers=headers) as resp:
            assert resp.status == 200
            snapshot = await resp.json()
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["wsevents_messages_received_total", (("event", "rpc"), ("route", "/echo"))] == 3
    key = (("code", "200"), ("event", "rpc"), ("route", "/users/:id"))
    assert samples["wsevents_replies_total", key] == 1
    assert samples["wsevents_connections", ()] == 1
    assert snapshot["connections"] == 1 and snapshot["transport"]["up"] is True


async def test_without_the_flags_there_is_no_metrics_nor_snapshot(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("examples.reference_app:app")
    await server.wait_ready()
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/metrics", "/admin/snapshot"):
        async with session.get(f"{base}{path}") as resp:
            assert resp.status == 404, path
    async with session.get(f"{base}/readyz") as resp:
        assert resp.status == 200


async def test_admin_token_from_the_environment(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    import os

    env = {**os.environ, "WSEVENTS_ADMIN_TOKEN": "from-env"}
    server = start_server("examples.reference_app:app", env=env)
    await server.wait_ready()
    url = f"http://127.0.0.1:{server.port}/admin/snapshot"
    async with session.get(url, headers={"Authorization": "Bearer from-env"}) as resp:
        assert resp.status == 200


async def test_json_logs_carry_the_connection_lifecycle(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server(
        "examples.reference_app:app", "--log-format", "json", "--log-level", "debug"
    )
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        conn_id = (await rpc(ws, "/whoami", None))["data"]["id"]
    for _ in range(200):  # the server logs the close after the client has left
        if '"event": "close"' in server.output():
            break
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any("serving examples.reference_app:app" in line["msg"] for line in lines)
    mine = [line for line in lines if line.get("conn") == conn_id]
    assert [line["event"] for line in mine] == ["open", "close"]
    assert mine[1]["code"] == 1000 and mine[1]["level"] == "debug"


async def test_text_logs_are_key_value(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    server = start_server("examples.reference_app:app", "--log-format", "text")
    await server.wait_ready()
    line = next(line for line in server.output().splitlines() if "serving" in line)
    assert line.startswith("time=") and " level=info logger=wsevents msg=" in line


def test_metrics_with_an_aiohttp_app_without_ws_app_is_one_line_error() -> None:
    line = one_line_error(run_cli("run", "tests.cli_targets:make_plain_aiohttp_app", "--metrics"))
    assert "--metrics needs a WsApp" in line


def test_bad_log_format_is_a_usage_error() -> None:
    result = run_cli("run", "examples.reference_app:app", "--log-format", "xml")
    assert result.returncode == 2 and "--log-format" in result.stderr


async def test_metrics_of_several_processes_add_up_in_multiprocess_mode(
    start_server: Callable[..., Server], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    import os

    from prometheus_client.parser import text_string_to_metric_families

    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    first = start_server("examples.reference_app:app", "--metrics", env=env)
    second = start_server("examples.reference_app:app", "--metrics", env=env)
    await first.wait_ready()
    await second.wait_ready()

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with session.get(f"http://127.0.0.1:{first.port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    echo = ("wsevents_messages_received_total", (("event", "rpc"), ("route", "/echo")))
    ok = ("wsevents_replies_total", (("code", "200"), ("event", "rpc"), ("route", "/echo")))
    count = (
        "wsevents_handler_duration_seconds_count",
        (("event", "rpc"), ("route", "/echo")),
    )
    async with (
        session.ws_connect(first.url("/ws")) as a,
        session.ws_connect(second.url("/ws")) as b,
    ):
        for n in range(3):
            assert (await rpc(a, "/echo", n, n))["data"] == n
        for n in range(2):
            assert (await rpc(b, "/echo", n, n))["data"] == n
        samples = await scrape()
        connections = ("wsevents_connections", ())
        up = ("wsevents_transport_up", ())
        for _ in range(100):  # each process writes its values every second, one by one
            if samples.get(echo) == samples.get(ok) == samples.get(count) == 5 and (
                samples.get(connections) == 2 and samples.get(up) == 1
            ):
                break
            await asyncio.sleep(0.1)
            samples = await scrape()
        assert samples[echo] == 5
        assert samples[ok] == 5 and samples[count] == 5
        assert samples["wsevents_connections", ()] == 2
        assert samples["wsevents_transport_up", ()] == 1


async def test_metrics_port_serves_them_on_a_port_of_their_own(
    start_server: Callable[..., Server], session: aiohttp.ClientSession
) -> None:
    metrics_port = free_port()
    server = start_server("examples.reference_app:app", "--metrics-port", str(metrics_port))
    await server.wait_ready()
    async with session.ws_connect(server.url("/ws")) as ws:
        assert (await rpc(ws, "/echo", 1))["data"] == 1
        async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert 'wsevents_replies_total{code="200",event="rpc",route="/echo"} 1.0' in text
    assert "process_cpu_seconds_total" in text  # prometheus_client's default registry
    async with session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
        assert resp.status == 404  # not on the WebSocket's port without --metrics


def test_metrics_port_in_use_is_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = one_line_error(
            run_cli("run", "examples.reference_app:app", "--port", "0", "--metrics-port", port)
        )
    assert "--metrics-port: cannot listen on 127.0.0.1:" in line

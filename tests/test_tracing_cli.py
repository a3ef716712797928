"""``python -m wsevents run ... --tracing``: spans from the OTEL_* environment, and one-line
errors when what it names is missing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(variables)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsevents", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def spawn(port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "wsevents", "run", "examples.reference_app:app"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port), "--tracing"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def test_tracing_exports_a_span_per_message_to_the_console(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = cli_env(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="chat-test")
    proc = spawn(port, log, env)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):  # the server may take a while to start on a busy machine
                try:
                    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws")
                    break
                except aiohttp.ClientError:
                    assert proc.poll() is None, log.read_text()
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the server did not start")
            await ws.send_str('{"event":"rpc","path":"/users/5","id":1}')
            reply = await asyncio.wait_for(ws.receive(), 10)
            assert json.loads(reply.data) == {"id": 1, "data": {"id": "5"}}
            await ws.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = log.read_text()
    assert '"name": "ws rpc /users/:id"' in output, output
    assert '"service.name": "chat-test"' in output
    assert '"wsevents.route": "/users/:id"' in output


def test_the_otlp_default_without_its_exporter_is_a_one_line_error() -> None:
    pytest.importorskip("opentelemetry.sdk")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed")
    result = run_cli("examples.reference_app:app", "--port", "0", "--tracing", env=cli_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --tracing: OTEL_TRACES_EXPORTER=otlp (http/protobuf) needs "
        "opentelemetry-exporter-otlp-proto-http: pip install "
        "opentelemetry-exporter-otlp-proto-http, or set OTEL_TRACES_EXPORTER=console or none"
    ]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER names 'zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            "OTLP protocol 'carrier-pigeon' is not supported",
        ),
    ],
)
def test_a_bad_exporter_setting_is_a_one_line_error(
    variables: dict[str, str], message: str
) -> None:
    result = run_cli(
        "examples.reference_app:app", "--port", "0", "--tracing", env=cli_env(**variables)
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr

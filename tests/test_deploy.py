"""examples/deploy/: the Dockerfile's command serves its app, nginx (when installed) proxies
a WebSocket to wsevents over TLS with the shipped config, Caddy and systemd accept their
files, and --reuse-port lets two processes share a port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from wsevents import WsApp, use_ws_message
from wsevents.__main__ import _parser, load_target

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(600):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nothing listens on {port}")


async def echo(url: str, ssl_context: ssl.SSLContext | bool = True) -> object:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, ssl=ssl_context) as ws:
        await ws.send_str('{"event":"rpc","path":"/echo","id":1,"data":{"hi":[1,2]}}')
        reply = await asyncio.wait_for(ws.receive(), 10)
        return json.loads(reply.data)


# -- the Dockerfile -------------------------------------------------------------------------


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_env() -> dict[str, str]:
    found = re.search(r"^ENV (.+?)(?=^\S)", dockerfile(), re.M | re.S)
    assert found is not None
    words = shlex.split(found.group(1).replace("\\\n", " "))
    return dict(word.split("=", 1) for word in words)


def dockerfile_cmd() -> list[str]:
    found = re.search(r"^CMD (\[.*\])$", dockerfile(), re.M)
    assert found is not None
    cmd: list[str] = json.loads(found.group(1))
    return cmd


def test_the_dockerfile_copies_what_exists_and_its_app_loads() -> None:
    for line in dockerfile().splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source
    env = dockerfile_env()
    assert isinstance(load_target(env["APP"]), WsApp)
    assert env["PORT"] == "8080"


@pytest.mark.parametrize("redis_url", [None, "redis://redis:6379/0"])
def test_the_dockerfile_command_passes_redis_url_only_when_set(redis_url: str | None) -> None:
    shell, flag, script = dockerfile_cmd()
    assert (shell, flag) == ("sh", "-c") and script.startswith("exec python -m wsevents run ")
    env = {"PATH": os.environ["PATH"], **dockerfile_env()}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    printed = subprocess.run(
        ["sh", "-c", script.replace("exec python", "exec printf '%s\\n'", 1)],
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
        check=True,
    ).stdout.splitlines()
    args = printed[3:]  # after "-m wsevents run"
    assert printed[:3] == ["-m", "wsevents", "run"]
    expected = ["examples.reference_app:app", "--host", "0.0.0.0", "--port", "8080"]
    expected += ["--loop", "uvloop"]
    if redis_url is not None:
        expected += ["--redis-url", redis_url]
    assert args == expected
    assert _parser().parse_args(["run", *args]).redis_url == redis_url


async def test_the_dockerfile_command_serves_and_stops_on_sigterm() -> None:
    pytest.importorskip("uvloop")
    _, _, script = dockerfile_cmd()
    port = free_port()
    env = {**os.environ, **dockerfile_env(), "PORT": str(port)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"  # "python" is this interpreter
    env.pop("REDIS_URL", None)
    # 0.0.0.0 in the image; 127.0.0.1 here, as every test server.
    script = script.replace("--host 0.0.0.0", "--host 127.0.0.1")
    proc = spawn(["sh", "-c", script], cwd=ROOT, env=env)
    try:
        await wait_port(port, proc)
        assert await echo(f"ws://127.0.0.1:{port}/ws") == {"id": 1, "data": {"hi": [1, 2]}}
        proc.send_signal(signal.SIGTERM)  # exec: python itself gets it
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- nginx ----------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=chat.example.com", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def nginx_site(tmp: Path, upstreams: list[int], http_port: int, https_port: int) -> Path:
    """The shipped config with this test's ports and certificate."""
    cert, key = self_signed(tmp)
    text = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    text = re.sub(r"(    server 127\.0\.0\.1:\d+[^\n]*\n)+", servers, text)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = text.replace("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(cert))
    text = text.replace("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(key))
    site = tmp / "wsevents.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    temps = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        f"daemon off;\nuser root;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\n"
        f"events {{}}\nhttp {{\n    access_log off;\n{temps}    include {site};\n}}\n"
    )
    return main


@pytest.fixture
def nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None or shutil.which("openssl") is None:
        pytest.skip("nginx (or openssl) is not installed")
    return found


@pytest.fixture
async def two_apps() -> AsyncIterator[tuple[list[int], list[int]]]:
    """Two servers: their ports, and how many connections each got."""
    ports: list[int] = []
    opened = [0, 0]
    apps = []
    for number in range(2):
        ws = WsApp(heartbeat=0)
        ws.add_message_handler("rpc", "/echo", lambda: use_ws_message().data)

        def count(number: int = number) -> None:
            opened[number] += 1

        ws.on_connect(count)
        ports.append((await ws.listen(port=0))[1])
        apps.append(ws)
    yield ports, opened
    for ws in apps:
        await ws.close()


def test_the_nginx_config_parses(nginx: str, tmp_path: Path) -> None:
    main = nginx_site(tmp_path, [free_port(), free_port()], free_port(), free_port())
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


async def test_nginx_proxies_websockets_to_every_upstream_over_tls(
    nginx: str, tmp_path: Path, two_apps: tuple[list[int], list[int]]
) -> None:
    ports, opened = two_apps
    http_port, https_port = free_port(), free_port()
    main = nginx_site(tmp_path, ports, http_port, https_port)
    proc = spawn([nginx, "-p", str(tmp_path), "-c", str(main)])
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        await wait_port(https_port, proc)
        # least_conn over two upstreams (ties go round-robin): handshakes reach both.
        for _ in range(4):
            reply = await echo(f"wss://127.0.0.1:{https_port}/ws", insecure)
            assert reply == {"id": 1, "data": {"hi": [1, 2]}}
        assert sum(opened) == 4 and min(opened) >= 1, opened
        async with aiohttp.ClientSession() as session:
            plain = await session.get(f"http://127.0.0.1:{http_port}/ws", allow_redirects=False)
            assert plain.status == 301
            assert plain.headers["Location"].startswith("https://")
            hidden = await session.get(f"https://127.0.0.1:{https_port}/readyz", ssl=insecure)
            assert hidden.status == 404
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)


# -- Caddy and systemd ----------------------------------------------------------------------


def test_the_caddyfile_is_valid() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed")
    result = subprocess.run(
        [caddy, "adapt", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    route = json.dumps(config["apps"]["http"]["servers"])
    assert '"uri": "/readyz"' in route and "127.0.0.1:8081" in route


@pytest.fixture
def unit(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "wsevents@.service").read_text()
    assert "/srv/chat/.venv/bin/python -m wsevents run " in text
    path = tmp_path / "wsevents@8081.service"
    path.write_text(text.replace("/srv/chat/.venv/bin/python", sys.executable))
    yield path


def test_the_systemd_unit_verifies_cleanly(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"{unit.name}:" not in result.stderr, result.stderr  # no ignored lines
    exec_start = next(
        line.split("=", 1)[1]
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    args = shlex.split(exec_start.replace("%i", "8081"))
    assert args[1:4] == ["-m", "wsevents", "run"]
    parsed = _parser().parse_args(args[3:])
    assert (parsed.port, parsed.loop, parsed.redis_url) == (
        8081,
        "uvloop",
        "redis://127.0.0.1:6379/0",
    )


# -- --reuse-port ---------------------------------------------------------------------------


def serve_cmd(port: int, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "wsevents", "run", "examples.reference_app:app"]
    return [*cmd, "--host", "127.0.0.1", "--port", str(port), *extra]


def serve(port: int, *extra: str) -> subprocess.Popen[bytes]:
    return spawn(serve_cmd(port, *extra), cwd=ROOT)


def spawn(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` quietly, in a process group of its own."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def test_reuse_port_lets_two_processes_serve_one_port() -> None:
    port = free_port()
    first = serve(port, "--reuse-port")
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_port(port, first)
        second = serve(port, "--reuse-port")
        for _ in range(100):  # the second one binds too, and keeps running
            await asyncio.sleep(0.1)
            assert second.poll() is None
            if await asyncio.to_thread(_listens_twice, port):
                break
        else:
            pytest.fail("the second process never listened")
        assert await echo(f"ws://127.0.0.1:{port}/ws") == {"id": 1, "data": {"hi": [1, 2]}}
        # Without the option, the port is taken: a one-line error, status 2.
        taken = await asyncio.to_thread(
            subprocess.run, serve_cmd(port), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert taken.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)


def _listens_twice(port: int) -> bool:
    """Whether two sockets listen on 127.0.0.1:port (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == wanted and line.split()[3] == "0A") >= 2

#!/usr/bin/env python3
"""Many connections on one server process: memory, idle CPU, broadcast spread, accept rate
and shutdown, for wsevents (``benchmarks/c100k_app.py``: the routes the peers serve) or a
peer, measured the same way.

    python benchmarks/c100k.py                               # 100 000 connections, wsevents
    python benchmarks/c100k.py --connections 10000 --idle 40 --server wooks --bench-dir ../bench
    python benchmarks/c100k.py --connections 2000 --idle 5   # quick

One server process (pinned to --server-cpu), default options, heartbeat on. The load comes
from --workers processes of this script (pinned to --client-cpu), each holding its share of
the connections through a minimal asyncio WebSocket client (a protocol object per
connection, no per-connection task), bound to source addresses 127.0.0.2, 127.0.0.3, ... so
that one loopback address's ~28 000 ephemeral ports are not the limit. Phases, each bounded
in time:

1. **accept**: every connection opens (``/ws``) and subscribes to one of --rooms rooms
   (``subscribe /chat/rooms/r<n>``), --concurrency handshakes in flight per worker.
   Reports the accept rate (handshakes/s) and every error.
2. **idle** for --idle seconds (default 40, more than one 30 s heartbeat): server RSS per
   connection (RSS after the accept phase minus RSS before, divided by connections), the
   server's CPU share over the idle window, and connections dropped meanwhile.
3. **broadcast**: every connection also subscribes to ``/chat/rooms/all``; a publisher (not
   a member) sends ``message-all`` to it --broadcasts times; per broadcast the spread from
   the first to the last delivery (CLOCK_MONOTONIC, shared by the processes) and the time
   from the publish to the last delivery.
4. **shutdown**: SIGTERM to the server; the time until its process exits and until the last
   connection saw its close, and how many closes carried 1001.

The file-descriptor limit is raised to the hard limit in every process. When the hard limit
is below what the run needs (one descriptor per connection in the server), the run says so
and stops, unless --cap-to-limit lowers --connections to fit. Results go to stdout as a
table and to --json; --chart draws them with matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Server-side descriptors that are not connections (listening socket, epoll, pipes, ...).
FD_MARGIN = 200
# Connections per worker: the worker needs one descriptor for each.
PER_WORKER = 15_000


# -- the server ------------------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise this process's descriptor limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(a: argparse.Namespace, port: int) -> list[str]:
    if a.server == "wsevents":
        python = str(ROOT / ".venv" / "bin" / "python")
        if not Path(python).exists():
            python = sys.executable
        return [
            python,
            "-m",
            "wsevents",
            "run",
            a.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    if a.server == "wooks":
        script = a.bench_dir.resolve() / "servers" / "wooks_server.js"
        return ["node", str(script), "--port", str(port)]
    return [part.replace("{port}", str(port)) for part in a.server.split()]


def start_server(a: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    pin = ["taskset", "-c", a.server_cpu] if a.pin and shutil.which("taskset") else []
    cwd = a.bench_dir.resolve() / "servers" if a.server == "wooks" else ROOT
    proc = subprocess.Popen(
        [*pin, *server_command(a, port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=raise_nofile,
        env={**os.environ, "PORT": str(port)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the server did not listen within 30 s")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


# -- the load: a minimal WebSocket client ------------------------------------------------------


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (mask key 0: the payload goes as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


class Client(asyncio.Protocol):
    """One connection: the handshake, then frames; pings answered, pushes timestamped."""

    __slots__ = (
        "_request",
        "buf",
        "close_code",
        "closed_at",
        "done",
        "pending",
        "stats",
        "transport",
        "up",
    )

    def __init__(self, request: bytes, stats: WorkerStats) -> None:
        self.stats = stats
        self.buf = b""
        self.up = False
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        self.pending = 0
        self.closed_at = 0.0
        self.close_code = 0
        self._request = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.up:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail("handshake refused: " + buf[:40].decode("latin-1"))
                return
            self.up = True
            buf = buf[end + 4 :]
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if n - start < length:
                break
            payload = buf[start : start + length]
            pos = start + length
            self._frame(b0 & 0x0F, payload)
        self.buf = buf[pos:]

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 1:
            if payload.startswith(b'{"id"'):
                self.pending -= 1
                if self.pending == 0 and self.stats.waiting is not None:
                    self.stats.replied()
            else:
                self.stats.pushes.append(time.monotonic())
        elif opcode == 9 and self.transport is not None:
            self.stats.pings += 1
            self.transport.write(frame(payload, 0xA))
        elif opcode == 8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.closed_at = time.monotonic()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame(payload[:2], 0x8))  # the closing handshake's reply

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.pending += 1
            self.transport.write(frame(payload))

    def _fail(self, reason: str) -> None:
        self.stats.errors.append(reason)
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_at == 0.0:
            self.closed_at = time.monotonic()
        self.stats.lost += 1
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed during the handshake"))


@dataclass
class WorkerStats:
    """What one worker saw."""

    errors: list[str] = field(default_factory=list)
    pushes: list[float] = field(default_factory=list)
    pings: int = 0
    lost: int = 0
    waiting: asyncio.Future[None] | None = None
    outstanding: int = 0

    def replied(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0 and self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)


async def open_all(
    port: int, count: int, first: int, rooms: int, sources: list[str], concurrency: int
) -> tuple[list[Client], WorkerStats, float, float]:
    """Open ``count`` connections (numbered from ``first``) and subscribe each to its room."""
    loop = asyncio.get_running_loop()
    stats = WorkerStats()
    clients: list[Client] = []
    gate = asyncio.Semaphore(concurrency)
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()

    async def one(n: int) -> None:
        async with gate:
            source = sources[n % len(sources)]
            try:
                _, client = await loop.create_connection(
                    lambda: Client(request, stats), "127.0.0.1", port, local_addr=(source, 0)
                )
                assert client.done is not None
                await asyncio.wait_for(client.done, 30)
            except (OSError, ConnectionError, TimeoutError) as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            client.done = None
            clients.append(client)
            room = f"/chat/rooms/r{n % rooms}"
            client.send(b'{"event":"subscribe","path":"' + room.encode() + b'","id":1}')

    started = time.monotonic()
    await asyncio.gather(*(one(first + i) for i in range(count)))
    opened = time.monotonic()
    await wait_replies(clients, stats, 60)
    return clients, stats, started, opened


async def wait_replies(clients: list[Client], stats: WorkerStats, timeout: float) -> None:
    """Wait until no client has a request without its reply (bounded)."""
    stats.outstanding = sum(1 for c in clients if c.pending > 0)
    if stats.outstanding == 0:
        return
    stats.waiting = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait_for(stats.waiting, timeout)
    except TimeoutError:
        stats.errors.append(f"{stats.outstanding} replies missing after {timeout:g} s")
    finally:
        stats.waiting = None


def worker(pipe: Any, port: int, count: int, first: int, a: dict[str, Any]) -> None:
    """A load process: opens its connections, then answers the coordinator's commands."""
    raise_nofile()
    if a["pin"] and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in str(a["client_cpu"]).split(",")})

    async def main() -> None:
        clients, stats, started, opened = await open_all(
            port, count, first, a["rooms"], a["sources"], a["concurrency"]
        )
        pipe.send(
            {
                "opened": len(clients),
                "started": started,
                "opened_at": opened,
                "errors": stats.errors[:20],
                "error_count": len(stats.errors),
            }
        )
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "status":
                alive = sum(1 for c in clients if c.closed_at == 0.0)
                pipe.send({"alive": alive, "pings": stats.pings, "lost": stats.lost})
            elif command == "join_all":
                stats.errors.clear()
                for n, c in enumerate(clients):
                    c.send(b'{"event":"subscribe","path":"/chat/rooms/all","id":2}')
                    if n % 1000 == 999:
                        await asyncio.sleep(0.01)  # let the server read as we write
                await wait_replies(clients, stats, 120)
                pipe.send({"errors": stats.errors[:20]})
            elif command == "pushes":
                pipe.send({"pushes": stats.pushes})
                stats.pushes = []
            elif command == "closes":
                codes: dict[int, int] = {}
                last = 0.0
                for c in clients:
                    codes[c.close_code] = codes.get(c.close_code, 0) + 1
                    last = max(last, c.closed_at)
                pipe.send(
                    {"codes": codes, "last": last, "alive": sum(not c.closed_at for c in clients)}
                )
            elif command == "stop":
                for c in clients:
                    if c.transport is not None:
                        c.transport.abort()
                pipe.send({})
                return

    asyncio.run(main())


# -- the coordinator -----------------------------------------------------------------------------


class Workers:
    def __init__(self, a: argparse.Namespace, port: int) -> None:
        self.procs: list[mp.Process] = []
        self.pipes: list[Any] = []
        n = a.connections
        per = math.ceil(n / a.workers)
        # Source addresses: ~28 000 ephemeral ports each; a few spare.
        sources = [f"127.0.0.{i}" for i in range(2, 2 + max(2, math.ceil(n / 20_000) + 1))]
        options = {
            "rooms": a.rooms,
            "sources": sources,
            "concurrency": a.concurrency,
            "pin": a.pin,
            "client_cpu": a.client_cpu,
        }
        ctx = mp.get_context("fork")
        first = 0
        for _ in range(a.workers):
            count = min(per, n - first)
            if count <= 0:
                break
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(theirs, port, count, first, options))
            proc.start()
            self.procs.append(proc)
            self.pipes.append(mine)
            first += count

    def ask(self, command: str | None, timeout: float = 300) -> list[dict[str, Any]]:
        if command is not None:
            for pipe in self.pipes:
                pipe.send(command)
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"a worker did not answer {command!r} within {timeout} s")
            out.append(pipe.recv())
        return out

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


async def publish(port: int, times: int) -> list[float]:
    """``message-all`` to ``/chat/rooms/all`` ``times`` times, one at a time; the send times."""
    import aiohttp

    sent = []
    url = f"http://127.0.0.1:{port}/ws"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, max_msg_size=0) as ws,
    ):
        for n in range(times):
            sent.append(time.monotonic())
            data = {"n": n, "text": "x" * 100}
            await ws.send_str(
                json.dumps(
                    {"event": "message-all", "path": "/chat/rooms/all", "data": data, "id": n}
                )
            )
            async with asyncio.timeout(60):
                while True:
                    msg = await ws.receive()
                    if json.loads(msg.data).get("id") == n:
                        break
            await asyncio.sleep(3.0)  # let the last member get it
    return sent


def run(a: argparse.Namespace) -> dict[str, Any]:
    limit = raise_nofile()
    needed = a.connections + FD_MARGIN
    result: dict[str, Any] = {"server": a.server, "nofile_hard_limit": limit}
    if needed > limit:
        fits = limit - FD_MARGIN
        if not a.cap_to_limit:
            raise SystemExit(
                f"c100k.py: {a.connections} connections need {needed} descriptors in the server "
                f"process, but its hard limit (RLIMIT_NOFILE) is {limit}; raise it "
                f"(ulimit -Hn, LimitNOFILE=) or pass --cap-to-limit to run {fits}"
            )
        result["capped_from"] = a.connections
        a.connections = fits
    a.workers = max(a.workers or 0, math.ceil(a.connections / min(PER_WORKER, limit - 100)))
    result["connections"] = a.connections
    proc, port = start_server(a)
    workers: Workers | None = None
    try:
        time.sleep(1.0)
        rss0 = rss_bytes(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        result["rss_start_mb"] = rss0 / 2**20
        workers = Workers(a, port)
        opened = workers.ask(None, timeout=a.accept_timeout)
        total = sum(o["opened"] for o in opened)
        started = min(o["started"] for o in opened)
        done = max(o["opened_at"] for o in opened)
        result["accept"] = {
            "opened": total,
            "seconds": done - started,
            "per_s": total / (done - started) if done > started else 0.0,
            "server_cpu_ms_per_conn": (cpu_seconds(proc.pid) - cpu0) * 1000 / max(total, 1),
            "errors": sum(o["error_count"] for o in opened),
            "error_samples": [e for o in opened for e in o["errors"]][:5],
        }
        time.sleep(2.0)
        rss1 = rss_bytes(proc.pid)
        idle_cpu0 = cpu_seconds(proc.pid)
        idle_start = time.monotonic()
        time.sleep(a.idle)
        idle_cpu = cpu_seconds(proc.pid) - idle_cpu0
        idle_wall = time.monotonic() - idle_start
        status = workers.ask("status")
        rss2 = rss_bytes(proc.pid)
        result["idle"] = {
            "seconds": idle_wall,
            "rss_mb": rss2 / 2**20,
            "kb_per_conn": (rss2 - rss0) / 1024 / max(total, 1),
            "kb_per_conn_after_accept": (rss1 - rss0) / 1024 / max(total, 1),
            "cpu_percent": idle_cpu / idle_wall * 100,
            "alive": sum(s["alive"] for s in status),
            "pings_seen": sum(s["pings"] for s in status),
        }
        joined = workers.ask("join_all", timeout=300)
        result["join_all_errors"] = [e for j in joined for e in j["errors"]][:5]
        sent = asyncio.run(publish(port, a.broadcasts))
        pushes = [p for w in workers.ask("pushes") for p in w["pushes"]]
        spreads = []
        for n, at in enumerate(sent):
            end = sent[n + 1] if n + 1 < len(sent) else float("inf")
            mine = [p for p in pushes if at <= p < end]
            if mine:
                spreads.append(
                    {
                        "delivered": len(mine),
                        "spread_s": max(mine) - min(mine),
                        "publish_to_last_s": max(mine) - at,
                    }
                )
        result["broadcast"] = spreads
        status = workers.ask("status")
        result["alive_before_shutdown"] = sum(s["alive"] for s in status)
        term = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
            exited = time.monotonic() - term
        except subprocess.TimeoutExpired:
            exited = float("nan")
        time.sleep(1.0)
        closes = workers.ask("closes")
        codes: dict[str, int] = {}
        for c in closes:
            for code, count in c["codes"].items():
                codes[str(code)] = codes.get(str(code), 0) + count
        last = max((c["last"] for c in closes), default=term)
        result["shutdown"] = {
            "process_exit_s": exited,
            "last_close_s": last - term,
            "close_codes": codes,
            "still_open": sum(c["alive"] for c in closes),
        }
        return result
    finally:
        if workers is not None:
            workers.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| server | connections | accept/s | accept errors | KB/conn | idle CPU % "
        "| alive after idle | broadcast spread s (median) | publish→last s (median) "
        "| shutdown s | 1001 closes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        b = r.get("broadcast") or []
        spread = statistics.median(x["spread_s"] for x in b) if b else float("nan")
        last = statistics.median(x["publish_to_last_s"] for x in b) if b else float("nan")
        s = r["shutdown"]
        lines.append(
            f"| {r['server']} | {r['connections']} | {r['accept']['per_s']:.0f} "
            f"| {r['accept']['errors']} | {r['idle']['kb_per_conn']:.1f} "
            f"| {r['idle']['cpu_percent']:.1f} | {r['idle']['alive']} | {spread:.3f} | {last:.3f} "
            f"| {s['process_exit_s']:.2f} | {s['close_codes'].get('1001', 0)} |"
        )
    return "\n".join(lines)


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["server"] for r in results]
    panels = [
        ("KB per idle connection", [r["idle"]["kb_per_conn"] for r in results]),
        ("accepts per second", [r["accept"]["per_s"] for r in results]),
        (
            "broadcast spread, s",
            [
                statistics.median(x["spread_s"] for x in r["broadcast"]) if r["broadcast"] else 0
                for r in results
            ],
        ),
        ("shutdown, s", [r["shutdown"]["process_exit_s"] for r in results]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(names, values, color=["#3b7dd8", "#999999", "#d8843b"][: len(names)])
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{results[0]['connections']} connections, one server process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--connections", type=int, default=100_000)
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--idle", type=float, default=40.0, help="seconds idle (default 40)")
    p.add_argument("--broadcasts", type=int, default=3)
    p.add_argument(
        "--server",
        default="wsevents",
        help="wsevents (default), wooks (the peer in --bench-dir), or a command with {port}",
    )
    p.add_argument(
        "--app", default="benchmarks.c100k_app:app", help="wsevents: the app (the peer's routes)"
    )
    p.add_argument(
        "--bench-dir",
        type=Path,
        default=Path(os.environ.get("WSEVENTS_BENCH_DIR") or ROOT.parent / "shared" / "bench"),
    )
    p.add_argument("--workers", type=int, default=0, help="load processes (default: by count)")
    p.add_argument("--concurrency", type=int, default=256, help="handshakes in flight per worker")
    p.add_argument("--accept-timeout", type=float, default=600.0)
    p.add_argument("--cap-to-limit", action="store_true", help="fit the descriptor limit")
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--chart", type=Path, help="draw the results here (PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    servers = (
        a.server.split(",") if a.server in ("wsevents,wooks", "wooks,wsevents") else [a.server]
    )
    results = []
    for server in servers:
        a.server = server
        results.append(run(argparse.Namespace(**vars(a))))
        print(json.dumps(results[-1], indent=1), flush=True)
    print()
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    if a.chart:
        chart(results, a.chart)
    ok = all(r["accept"]["errors"] == 0 and r["idle"]["alive"] == r["connections"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

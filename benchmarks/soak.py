#!/usr/bin/env python3
"""Soak: two instances on Redis, hundreds of churning users, a Redis and an instance restart.

Starts its own ``redis-server`` on a free port (never the one on 6379) and two instances
of the reference app (``python -m wsevents run examples.reference_app:app --redis-url
...``) on free 127.0.0.1 ports. ``--vus`` virtual users (this process) then churn for
``--minutes``: each connects to a random instance, subscribes to one of ``--rooms`` rooms,
sends ``message-all`` broadcasts (each carrying a unique message id) and ``rpc /echo``
calls, and after a few seconds leaves, either gracefully (``unsubscribe``, close) or
abruptly (the TCP connection dropped without a close frame), then starts again.

A third into the run Redis is restarted (stopped by its PID, started again on the same
port, empty); two thirds in, one instance is restarted (SIGTERM, then started again on
its port). After each, a probe measures the recovery: the time until a broadcast made
on one instance reaches a member on the other again.

The checker knows which sessions were members of a room when each broadcast was made
(joined before it was sent, still there ``--grace`` seconds after its reply) and reports
deliveries, lost ones (also those outside the disruption windows, which should be none),
duplicates (a session that got a message id twice: should be none), RSS and open file
descriptors of both instances over time, and the recovery times. It writes a JSON report
(``--out``) and, when matplotlib is installed, a chart next to it. Run from the project
root:

    python benchmarks/soak.py                      # 10 minutes, 200 users
    python benchmarks/soak.py --minutes 0.5 --vus 50   # a quick check (~1 min)

Every wait is bounded; the instances and the Redis server are stopped (SIGTERM, then
SIGKILL, by PID) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
APP = "examples.reference_app:app"
PROBE_ROOM = "/chat/rooms/__probe"
PROBE_EVERY = 0.1
"""Seconds between two probe broadcasts of one recovery attempt."""
SETTLE = 3.0
"""Seconds between the last user leaving and the last sample."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0, help="length of the churn")
    p.add_argument("--vus", type=int, default=200, help="virtual users")
    p.add_argument("--rooms", type=int, default=20, help="rooms the users spread over")
    p.add_argument("--session", type=float, nargs=2, default=(3.0, 15.0), metavar=("MIN", "MAX"))
    p.add_argument("--think", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"))
    p.add_argument("--abrupt", type=float, default=0.3, help="share of abrupt disconnects")
    p.add_argument("--grace", type=float, default=3.0, help="seconds a delivery may take")
    p.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--recovery-timeout", type=float, default=60.0, help="give up on a probe")
    p.add_argument("--python", default=PYTHON, help="the interpreter that runs the instances")
    p.add_argument("--redis-server", default=shutil.which("redis-server"), help="its binary")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON report (default benchmarks/results/soak-<date-time>.json)",
    )
    return p


# -- processes -----------------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM ``proc`` (its own process group), SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _spawn(cmd: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` from the project root in a process group of its own, its output
    appended to ``log`` (None: discarded)."""
    if log is None:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _connections_to(port: int, inodes: set[str]) -> int:
    """How many of the sockets ``inodes`` are TCP connections to 127.0.0.1:``port``."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0
    remote = f"0100007F:{port:04X}"
    return sum(1 for line in lines if line.split()[2] == remote and line.split()[9] in inodes)


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on {port} exited with {proc.returncode}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class RedisServer:
    """Our own ``redis-server`` (no persistence) on a port of its own."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = _spawn(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
            ],
            None,
        )
        await _wait_port(self.port, self.proc, 20.0)

    def stop(self) -> None:
        _stop_process(self.proc)


class Instance:
    """One ``python -m wsevents run`` of the reference app on Redis."""

    def __init__(self, name: str, python: str, redis_url: str, log: Path) -> None:
        self.name = name
        self.python = python
        self.redis_url = redis_url
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        cmd = [self.python, "-m", "wsevents", "run", APP, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--redis-url", self.redis_url, "--log-level", "warning"]
        self.proc = _spawn(cmd, self.log)
        await _wait_port(self.port, self.proc, 30.0)

    def stop(self) -> None:
        _stop_process(self.proc)

    def sample(self, redis_port: int) -> dict[str, Any] | None:
        """RSS (KiB), open file descriptors and, of these, the TCP connections to Redis
        (a pool that grows is not a leak); None when it is not running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            links = []
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    links.append(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
        except OSError:
            return None
        rss = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")),
            0,
        )
        inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
        return {
            "pid": proc.pid,
            "rss_kib": rss,
            "fds": len(links),
            "redis_conns": _connections_to(redis_port, inodes),
        }


# -- the checker ---------------------------------------------------------------------------


@dataclass
class Session:
    """One connection of one virtual user, in one room."""

    sid: int
    room: str
    instance: str
    joined: float | None = None  # the subscribe reply arrived
    left: float | None = None  # leaving started, or the connection was lost
    got: dict[str, int] = field(default_factory=dict)  # message id -> deliveries
    close: str = ""  # "graceful", "abrupt", "server", "lost", "end"


@dataclass
class Sent:
    """One broadcast: its message id, room, sender and times."""

    mid: str
    room: str
    sender: int
    sent: float
    replied: float | None = None


def analyse(
    sessions: list[Session], sent: list[Sent], windows: list[tuple[float, float]], grace: float
) -> dict[str, Any]:
    """Deliveries against expectations.

    A session is expected to receive a broadcast of its room when it had joined before
    the broadcast was sent and was still there ``grace`` seconds after its reply. A
    broadcast without a reply expects nothing. Lost deliveries of broadcasts sent inside
    a disruption window (start, end) are counted apart.
    """
    by_room: dict[str, list[Session]] = {}
    for s in sessions:
        by_room.setdefault(s.room, []).append(s)
    expected = delivered = lost = lost_outside = unexpected = 0
    expected_mids: dict[int, set[str]] = {}
    for b in sent:
        if b.replied is None:
            continue
        during = any(start <= b.sent <= end for start, end in windows)
        for s in by_room.get(b.room, ()):
            if s.joined is None or s.joined >= b.sent:
                continue
            if s.left is not None and s.left <= b.replied + grace:
                continue
            expected += 1
            expected_mids.setdefault(s.sid, set()).add(b.mid)
            if b.mid in s.got:
                delivered += 1
            else:
                lost += 1
                if not during:
                    lost_outside += 1
    duplicated = 0
    total = 0
    for s in sessions:
        mine = expected_mids.get(s.sid, set())
        for mid, count in s.got.items():
            total += count
            duplicated += count - 1
            if mid not in mine:
                unexpected += 1
    return {
        "broadcasts": len(sent),
        "broadcasts_replied": sum(1 for b in sent if b.replied is not None),
        "deliveries_received": total,
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "lost_outside_disruptions": lost_outside,
        "duplicated": duplicated,
        "unexpected_but_allowed": unexpected,
    }


# -- the load ------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.redis = RedisServer(args.redis_server, free_port())
        self.instances = [
            Instance(name, args.python, self.redis.url, workdir / f"instance-{name}.log")
            for name in ("a", "b")
        ]
        self.t0 = time.monotonic()
        self.sessions: list[Session] = []
        self.sent: list[Sent] = []
        self.windows: list[tuple[float, float]] = []
        self.disruptions: list[dict[str, Any]] = []
        self.samples: dict[str, list[dict[str, Any]]] = {i.name: [] for i in self.instances}
        self.counts: dict[str, int] = {
            "connects": 0,
            "connect_failures": 0,
            "session_errors": 0,
            "subscribe_failures": 0,
            "echo_ok": 0,
            "echo_failed": 0,
            "echo_wrong": 0,
            "broadcast_failed": 0,
        }
        self._sids = 0
        self._mids = 0
        self.stopping = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- one virtual user --

    async def user(self, vu: int) -> None:
        while not self.stopping.is_set():
            instance = self.rng.choice(self.instances)
            try:
                await self.session(vu, instance)
            except _ConnectFailed:  # e.g. its instance is restarting: back off, go on
                self.counts["connect_failures"] += 1
                await self._sleep(self.rng.uniform(0.2, 1.0))
            except Exception:  # a session that broke for another reason
                self.counts["session_errors"] += 1
                await self._sleep(self.rng.uniform(0.2, 1.0))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def session(self, vu: int, instance: Instance) -> None:
        args = self.args
        room = f"/chat/rooms/r{self.rng.randrange(args.rooms)}"
        async with aiohttp.ClientSession() as http:
            try:
                async with asyncio.timeout(10):
                    ws = await http.ws_connect(
                        instance.url, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                    )
            except Exception as exc:
                raise _ConnectFailed from exc
            self.counts["connects"] += 1
            self._sids += 1
            sess = Session(self._sids, room, instance.name)
            self.sessions.append(sess)
            client = _Client(ws, sess, self)
            reader = asyncio.get_running_loop().create_task(client.read())
            try:
                try:
                    await client.call("subscribe", room, None)
                except Exception:
                    self.counts["subscribe_failures"] += 1
                    raise
                sess.joined = self.now()
                lifetime = self.rng.uniform(*args.session)
                end = time.monotonic() + lifetime
                while time.monotonic() < end and not self.stopping.is_set():
                    await self._sleep(self.rng.uniform(*args.think))
                    if client.closed or self.stopping.is_set():
                        break
                    await self.action(client, room)
                if client.closed:
                    return
                if self.stopping.is_set():
                    sess.left, sess.close = self.now(), "end"
                    await ws.close()
                elif self.rng.random() < args.abrupt:
                    sess.left, sess.close = self.now(), "abrupt"
                    # The session's connector closes the TCP connection: no close frame.
                    await http.close()
                else:
                    sess.left, sess.close = self.now(), "graceful"
                    with contextlib.suppress(Exception):
                        await client.call("unsubscribe", room, None)
                    await ws.close()
            finally:
                if sess.left is None:
                    sess.left = self.now()
                    sess.close = sess.close or "lost"
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    async def action(self, client: _Client, room: str) -> None:
        if self.rng.random() < 0.6:
            self._mids += 1
            mid = f"m{self._mids}"
            record = Sent(mid, room, client.session.sid, self.now())
            self.sent.append(record)
            try:
                await client.call("message-all", room, {"mid": mid})
                record.replied = self.now()
            except Exception:
                self.counts["broadcast_failed"] += 1
        else:
            payload = {"n": self.rng.randrange(1 << 30)}
            try:
                reply = await client.call("rpc", "/echo", payload)
            except Exception:
                self.counts["echo_failed"] += 1
            else:
                self.counts["echo_ok" if reply == payload else "echo_wrong"] += 1

    # -- probes, samples, disruptions --

    async def cross_instance_ok(self, deadline: float) -> float | None:
        """Seconds until a broadcast on instance a reaches a member on b (None: never).

        Each attempt subscribes a sender on a and a receiver on b, then broadcasts a new
        probe every ``PROBE_EVERY`` seconds until one arrives (a broadcast published while
        the transport was still down reaches no one): the figure is exact to about that.
        """
        start = time.monotonic()
        attempt = 0
        a, b = self.instances
        while time.monotonic() < deadline:
            attempt += 1
            try:
                async with asyncio.timeout(3.0), aiohttp.ClientSession() as http:
                    sender = await http.ws_connect(a.url)
                    receiver = await http.ws_connect(b.url)
                    for ws in (sender, receiver):
                        await ws.send_json({"event": "subscribe", "path": PROBE_ROOM, "id": 1})
                        await _reply(ws, 1)
                    sent = 0
                    while True:
                        sent += 1
                        await sender.send_json(
                            {
                                "event": "message-all",
                                "path": PROBE_ROOM,
                                "id": 1 + sent,
                                "data": {"probe": f"{attempt}-{sent}"},
                            }
                        )
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(PROBE_EVERY):
                                while True:
                                    msg = await receiver.receive_json()
                                    data = msg.get("data") if isinstance(msg, dict) else None
                                    if isinstance(data, dict) and str(
                                        data.get("probe", "")
                                    ).startswith(f"{attempt}-"):
                                        return time.monotonic() - start
            except Exception:
                pass
            await asyncio.sleep(0.1)
        return None

    async def sampler(self) -> None:
        while not self.stopping.is_set():
            t = round(self.now(), 2)
            for instance in self.instances:
                found = instance.sample(self.redis.port)
                if found is not None:
                    self.samples[instance.name].append({"t": t, **found})
            await self._sleep(self.args.sample_interval)

    async def restart_redis(self) -> None:
        start = self.now()
        await asyncio.to_thread(self.redis.stop)
        stopped = self.now()
        await self.redis.start()
        up = self.now()
        deadline = time.monotonic() + self.args.recovery_timeout
        recovered = await self.cross_instance_ok(deadline)
        end = self.now()
        self.windows.append((start - self.args.grace, end + self.args.grace))
        self.disruptions.append(
            {
                "kind": "redis_restart",
                "at_s": round(start, 2),
                "down_s": round(up - start, 3),
                "stop_s": round(stopped - start, 3),
                "recovery_after_up_s": None if recovered is None else round(end - up, 3),
                "recovery_s": None if recovered is None else round(end - start, 3),
            }
        )

    async def restart_instance(self, instance: Instance) -> None:
        start = self.now()
        await asyncio.to_thread(instance.stop)
        stopped = self.now()
        await instance.start()
        up = self.now()
        deadline = time.monotonic() + self.args.recovery_timeout
        recovered = await self.cross_instance_ok(deadline)
        end = self.now()
        self.windows.append((start - self.args.grace, end + self.args.grace))
        self.disruptions.append(
            {
                "kind": "instance_restart",
                "instance": instance.name,
                "at_s": round(start, 2),
                "stop_s": round(stopped - start, 3),
                "down_s": round(up - start, 3),
                "recovery_after_up_s": None if recovered is None else round(end - up, 3),
                "recovery_s": None if recovered is None else round(end - start, 3),
            }
        )

    # -- the run --

    async def run(self) -> dict[str, Any]:
        args = self.args
        duration = args.minutes * 60.0
        await self.redis.start()
        for instance in self.instances:
            await instance.start()
        baseline = await self.cross_instance_ok(time.monotonic() + args.recovery_timeout)
        if baseline is None:
            raise RuntimeError("the two instances never delivered to each other")
        self.t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        sampler = loop.create_task(self.sampler())
        users = [loop.create_task(self.user(vu)) for vu in range(args.vus)]
        try:
            await asyncio.sleep(duration / 3)
            await self.restart_redis()
            await asyncio.sleep(max(0.0, duration * 2 / 3 - self.now()))
            await self.restart_instance(self.instances[1])
            await asyncio.sleep(max(0.0, duration - self.now()))
        finally:
            # Stop sending; leave every delivery time to arrive, then close everything.
            end_sending = self.now()
            self.stopping.set()
            async with asyncio.timeout(args.grace + 30):
                await asyncio.gather(*users, return_exceptions=True)
            await asyncio.sleep(0.1)
            sampler.cancel()
            with contextlib.suppress(BaseException):
                await sampler
        # Every user is gone: the last sample, once the servers closed their side, shows
        # what is left (file descriptors back near the start, or a leak).
        await asyncio.sleep(SETTLE)
        for instance in self.instances:
            found = instance.sample(self.redis.port)
            if found is not None:
                self.samples[instance.name].append({"t": round(self.now(), 2), **found})
        return self.report(end_sending)

    def report(self, end_sending: float) -> dict[str, Any]:
        closes: dict[str, int] = {}
        for s in self.sessions:
            closes[s.close] = closes.get(s.close, 0) + 1
        memory = {}
        for name, series in self.samples.items():
            if series:
                memory[name] = {
                    "rss_kib_start": series[0]["rss_kib"],
                    "rss_kib_end": series[-1]["rss_kib"],
                    "rss_kib_max": max(p["rss_kib"] for p in series),
                    "fds_start": series[0]["fds"],
                    "fds_end": series[-1]["fds"],
                    "fds_max": max(p["fds"] for p in series),
                    "redis_conns_end": series[-1]["redis_conns"],
                    "redis_conns_max": max(p["redis_conns"] for p in series),
                    "pids": sorted({p["pid"] for p in series}),
                }
        a = self.args
        return {
            "config": {
                "minutes": a.minutes,
                "vus": a.vus,
                "rooms": a.rooms,
                "session_s": list(a.session),
                "think_s": list(a.think),
                "abrupt_share": a.abrupt,
                "grace_s": a.grace,
                "seed": a.seed,
            },
            "elapsed_s": round(end_sending, 2),
            "deliveries": analyse(self.sessions, self.sent, self.windows, a.grace),
            "sessions": {"total": len(self.sessions), "by_end": closes},
            "counts": self.counts,
            "disruptions": self.disruptions,
            "memory": memory,
            "samples": self.samples,
        }


class _ConnectFailed(Exception):
    """The WebSocket handshake failed (refused, timed out)."""


class _Client:
    """One session's socket: replies to calls, and the broadcasts it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: Session, soak: Soak) -> None:
        self.ws = ws
        self.session = session
        self.soak = soak
        self.ids = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False

    async def read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if "id" in frame:
                    waiter = self.pending.pop(frame["id"], None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
                elif frame.get("event") == "message":
                    data = frame.get("data")
                    mid = data.get("mid") if isinstance(data, dict) else None
                    if isinstance(mid, str):
                        got = self.session.got
                        got[mid] = got.get(mid, 0) + 1
        finally:
            self.closed = True
            s = self.session
            if s.left is None:
                s.left = self.soak.now()
                code = self.ws.close_code
                s.close = "server" if code is not None and code != 1006 else "lost"
            for waiter in self.pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("closed"))

    async def call(self, event: str, path: str, data: Any, timeout: float = 10.0) -> Any:
        self.ids += 1
        waiter = asyncio.get_running_loop().create_future()
        self.pending[self.ids] = waiter
        await self.ws.send_json({"event": event, "path": path, "id": self.ids, "data": data})
        frame = await asyncio.wait_for(waiter, timeout)
        if "error" in frame:
            raise RuntimeError(frame["error"])
        return frame.get("data")


async def _reply(ws: aiohttp.ClientWebSocketResponse, message_id: int) -> Any:
    while True:
        frame = await ws.receive_json()
        if isinstance(frame, dict) and frame.get("id") == message_id:
            return frame


def chart(report: dict[str, Any], path: Path) -> bool:
    """RSS and open fds of both instances over time (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (rss, fds) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for number, (name, series) in enumerate(report["samples"].items()):
        color = f"C{number}"
        # One line per process: a restarted instance is a new process.
        for pid in sorted({p["pid"] for p in series}):
            points = [p for p in series if p["pid"] == pid]
            t = [p["t"] for p in points]
            label = f"instance {name}" if pid == series[0]["pid"] else None
            rss.plot(t, [p["rss_kib"] / 1024 for p in points], color=color, label=label)
            fds.plot(t, [p["fds"] for p in points], color=color, label=label)
            fds.plot(
                t,
                [p["redis_conns"] for p in points],
                color=color,
                linestyle=":",
                label=f"{name}: to Redis" if label else None,
            )
    for d in report["disruptions"]:
        for ax in (rss, fds):
            ax.axvline(d["at_s"], color="grey", linestyle="--", linewidth=0.8)
    rss.set_ylabel("RSS MiB")
    fds.set_ylabel("open fds")
    fds.set_xlabel("seconds")
    rss.legend()
    fds.legend()
    rss.set_title("soak: RSS and file descriptors (dashed: restarts)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def summary(report: dict[str, Any]) -> str:
    d = report["deliveries"]
    lines = [
        f"deliveries: expected {d['expected']}, delivered {d['delivered']}, lost {d['lost']} "
        f"({d['lost_outside_disruptions']} outside disruptions), duplicated {d['duplicated']}",
        f"broadcasts: {d['broadcasts']} ({d['broadcasts_replied']} replied); "
        f"sessions: {report['sessions']['total']} {report['sessions']['by_end']}",
        f"counts: {report['counts']}",
    ]
    for item in report["disruptions"]:
        lines.append(
            f"{item['kind']} at {item['at_s']} s: down {item['down_s']} s, "
            f"recovered after {item['recovery_s']} s"
        )
    for name, m in report["memory"].items():
        lines.append(
            f"instance {name}: RSS {m['rss_kib_start']} -> {m['rss_kib_end']} KiB "
            f"(max {m['rss_kib_max']}), fds {m['fds_start']} -> {m['fds_end']} "
            f"(max {m['fds_max']}; to Redis at the end {m['redis_conns_end']}), pids {m['pids']}"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    soak = Soak(args, out.parent)
    # The whole run is bounded: churn, two recoveries, the final grace, start and stop.
    budget = args.minutes * 60 + 2 * args.recovery_timeout + args.grace + 180
    try:
        async with asyncio.timeout(budget):
            return await soak.run()
    finally:
        for instance in soak.instances:
            await asyncio.to_thread(instance.stop)
        soak.redis.stop()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.redis_server:
        print("soak.py: redis-server is not installed (give --redis-server)", file=sys.stderr)
        return 2
    if args.minutes <= 0 or args.vus <= 0 or args.rooms <= 0:
        print("soak.py: --minutes, --vus and --rooms must be > 0", file=sys.stderr)
        return 2
    out = args.out or HERE / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(_main(args, out))
    out.write_text(json.dumps(report, indent=2))
    drawn = chart(report, out.with_suffix(".png"))
    print(summary(report))
    print(f"report -> {out}" + (f", chart -> {out.with_suffix('.png')}" if drawn else ""))
    d = report["deliveries"]
    return 0 if d["lost_outside_disruptions"] == 0 and d["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

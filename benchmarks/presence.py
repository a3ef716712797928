#!/usr/bin/env python3
"""What presence costs: join+leave rate across two instances, and fan-out CPU with it.

Two parts, run one after the other from the project root, on a quiet machine:

* ``churn``: two instances of the reference app started with ``python -m wsevents run
  examples.reference_app:app --redis-url URL`` on free 127.0.0.1 ports (pinned to
  --server-cpu); ``--clients`` WebSocket clients (this process, pinned to --client-cpu),
  spread over both instances and ``--rooms`` rooms, each its own user, each calling
  ``join`` then ``leave`` on ``/presence/rooms/<room>`` in a loop, one call at a time.
  Key figure: join+leave cycles per second (each join a first connection, each leave a
  last one: a presence change decided in Redis and pushed to the room). Also the CPU of
  the instances and of the Redis server per 1000 cycles, and whether every room counts
  0 on both instances afterwards.
* ``fanout``: the harness' scenario ``s2_1000`` (1000 subscribers of ``/chat/rooms/:room``,
  one publisher, ``bench.py`` from --bench-dir) on two servers, reps interleaved: the
  reference app as it is (no presence on chat rooms) and ``benchmarks/presence_app.py``
  (the same with presence "list" on ``/chat/rooms/:room``). Key figure: server CPU s per
  100k deliveries, presence on / off; the target is at most 1.05.

    python benchmarks/presence.py                    # 10 s of churn, 3 reps of 2 + 8 s fan-out
    python benchmarks/presence.py --churn-duration 2 --reps 1 --warmup 1 --duration 2  # quick

Every wait is bounded; the servers are stopped (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _servers import (  # noqa: E402
    add_harness_paths,
    fanout_cpu_table,
    harness_command,
    load_records,
    run_harness,
    start_reference_app,
    stop,
    wsevents_run,
)
from multi_instance import cpu_seconds, redis_pid  # noqa: E402

FANOUT_SERVERS = {
    "presence-off": "examples.reference_app:app",
    "presence-on": "benchmarks.presence_app:app",
}
TARGET = 1.05


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default="churn,fanout", help="churn, fanout or both (default)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--clients", type=int, default=50, help="churn: clients (default 50)")
    p.add_argument("--rooms", type=int, default=10, help="churn: rooms (default 10)")
    p.add_argument(
        "--churn-warmup", type=float, default=1.0, help="churn: seconds before measuring"
    )
    p.add_argument("--churn-duration", type=float, default=10.0, help="churn: seconds measured")
    p.add_argument("--reps", type=int, default=3, help="fanout: interleaved reps per server")
    p.add_argument("--warmup", type=float, default=2.0, help="fanout: seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="fanout: seconds measured")
    p.add_argument("--timeout", type=float, default=90.0, help="fanout: kill a load run after")
    add_harness_paths(p)
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    return p


# -- churn: join+leave across two instances on Redis ----------------------------------------


@dataclass
class Churn:
    """What the churn part measured."""

    clients: int
    seconds: float
    cycles: int
    errors: int
    server_cpu_s: float
    redis_cpu_s: float | None
    rooms_empty: bool

    @property
    def per_s(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    def per_1k(self, cpu: float | None) -> float | None:
        return cpu / self.cycles * 1000 if cpu is not None and self.cycles else None


class _Client:
    """One WebSocket client calling one RPC at a time (pushes in between are skipped)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, event: str, path: str, data: Any = None) -> Any:
        self.next_id += 1
        msg_id = self.next_id
        await self.ws.send_str(
            json.dumps({"event": event, "path": path, "data": data, "id": msg_id})
        )
        while True:
            frame = await self.ws.receive()
            if frame.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"{event} {path}: the connection ended ({frame.type!r})")
            reply = json.loads(frame.data)
            if reply.get("id") != msg_id:
                continue  # a presence push
            if reply.get("error") is not None:
                raise RuntimeError(f"{event} {path}: {reply['error']}")
            return reply.get("data")


async def churn(
    urls: list[str], a: argparse.Namespace, cpu_pids: list[int], rpid: int | None
) -> Churn:
    run = uuid.uuid4().hex[:8]
    rooms = [f"/presence/rooms/bench-{run}-{n}" for n in range(a.rooms)]
    measuring = False
    stopping = asyncio.Event()
    cycles = errors = 0

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal cycles, errors
        url = f"{urls[n % len(urls)]}?user=bench-{run}-{n}"
        room = rooms[n % len(rooms)]
        async with session.ws_connect(url, max_msg_size=0) as ws:
            client = _Client(ws)
            while not stopping.is_set():
                try:
                    await client.call("join", room, {"name": f"User {n}"})
                    await client.call("leave", room)
                except RuntimeError:
                    errors += 1
                    continue
                if measuring:
                    cycles += 1

    budget = a.churn_warmup + a.churn_duration + 30
    async with aiohttp.ClientSession() as session, asyncio.timeout(budget):
        tasks = [asyncio.create_task(one(session, n)) for n in range(a.clients)]
        try:
            await asyncio.sleep(a.churn_warmup)
            cpu0 = sum(cpu_seconds(pid) for pid in cpu_pids)
            redis0 = cpu_seconds(rpid) if rpid else None
            started = time.monotonic()
            measuring = True
            await asyncio.sleep(a.churn_duration)
            measuring = False
            seconds = time.monotonic() - started
            cpu = sum(cpu_seconds(pid) for pid in cpu_pids) - cpu0
            redis_cpu = cpu_seconds(rpid) - redis0 if rpid and redis0 is not None else None
            stopping.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Every client left: each room must count nobody, on each instance.
        empty = True
        for url in urls:
            async with session.ws_connect(url) as ws:
                checker = _Client(ws)
                for room in rooms:
                    count = await checker.call("rpc", "/presence/count", {"room": room})
                    empty = empty and count == {"connections": 0, "users": 0}
    return Churn(a.clients, seconds, cycles, errors, cpu, redis_cpu, empty)


def run_churn(a: argparse.Namespace) -> Churn:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for _ in range(2):
            proc, port = start_reference_app(
                cpu=a.server_cpu if a.pin else None, extra=["--redis-url", a.redis_url]
            )
            procs.append(proc)
            ports.append(port)
        if a.pin:
            os.sched_setaffinity(0, {int(c) for c in a.client_cpu.split(",")})
        urls = [f"http://127.0.0.1:{port}/ws" for port in ports]
        return asyncio.run(churn(urls, a, [p.pid for p in procs], redis_pid(a.redis_url)))
    finally:
        if a.pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        for proc in procs:
            stop(proc)


def churn_table(result: Churn) -> str:
    def fmt(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    return "\n".join(
        [
            "| clients | seconds | join+leave/s | errors | instances CPU s/1k | Redis CPU s/1k "
            "| rooms empty after |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {result.clients} | {result.seconds:.1f} | {result.per_s:.0f} | {result.errors} "
            f"| {fmt(result.per_1k(result.server_cpu_s))} "
            f"| {fmt(result.per_1k(result.redis_cpu_s))} "
            f"| {'yes' if result.rooms_empty else 'NO'} |",
        ]
    )


# -- fanout: s2_1000 with presence off and on --------------------------------------------------


def fanout_table(records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """The fan-out table of the run, with the ratio to presence-off (see
    ``_servers.fanout_cpu_table``)."""
    return fanout_cpu_table(records, list(FANOUT_SERVERS), "presence-off")


def run_fanout(a: argparse.Namespace) -> list[dict[str, Any]] | None:
    bench = a.bench_dir.resolve() / "bench.py"
    cmd = harness_command(
        bench,
        a,
        {name: wsevents_run(target) for name, target in FANOUT_SERVERS.items()},
        scenario="s2_1000",
        label="presence",
        cpus=True,
    )
    run_dir, returncode = run_harness(cmd)
    if run_dir is None:
        print(f"presence.py: bench.py exited with {returncode}", file=sys.stderr)
        return None
    records = load_records(run_dir, "s2_1000")
    return records


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    parts = {p.strip() for p in a.parts.split(",") if p.strip()}
    unknown = parts - {"churn", "fanout"}
    if unknown or not parts:
        print(f"presence.py: --parts takes churn and/or fanout, got {a.parts!r}", file=sys.stderr)
        return 2
    if "fanout" in parts and not (a.bench_dir / "bench.py").exists():
        print(f"presence.py: no harness at {a.bench_dir}; give --bench-dir", file=sys.stderr)
        return 2
    ok = True
    if "churn" in parts:
        print(
            f"presence.py: churn, {a.clients} clients on 2 instances on {a.redis_url}", flush=True
        )
        result = run_churn(a)
        print("\nJoin+leave with presence, 2 instances on Redis\n")
        print(churn_table(result))
        ok = ok and result.cycles > 0 and result.errors == 0 and result.rooms_empty
    if "fanout" in parts:
        print("\npresence.py: fan-out s2_1000, presence off and on", flush=True)
        records = run_fanout(a)
        if records is None:
            return 1
        text, medians = fanout_table(records)
        print("\nServer CPU per 100k deliveries, s2_1000 (median over reps; lower is better)\n")
        print(text)
        if "presence-off" in medians and "presence-on" in medians:
            ratio = medians["presence-on"] / medians["presence-off"]
            verdict = "within" if ratio <= TARGET else "OVER"
            print(f"\npresence-on/presence-off = {ratio:.3f} ({verdict} the {TARGET:.2f} target)")
        ok = ok and len(medians) == len(FANOUT_SERVERS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

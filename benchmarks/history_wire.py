#!/usr/bin/env python3
"""History rooms over real sockets: fan-out CPU per delivery, and the time to replay.

Two parts, run one after the other from the project root, on a quiet machine:

* ``fanout``: the harness' scenario ``s2_1000`` (1000 subscribers of ``/chat/rooms/:room``,
  one publisher, ``bench.py`` from --bench-dir) on two servers, reps interleaved: the
  reference app as it is (plain chat rooms) and ``benchmarks/history_app.py`` (the same
  with history on ``/chat/rooms/:room``: every push gets an offset, is kept and goes out in
  offset order). Key figure: server CPU s per 100k deliveries, history on / off; the target
  is at most 1.15.
* ``replay``: ``benchmarks/history_app.py`` alone (pinned to --server-cpu); a member of
  ``/replay/rooms/<room>`` notes its stream position and leaves, a publisher sends
  ``--missed`` pushes (default 10 000), then a new connection subscribes with ``since``:
  the time from its subscribe frame to its reply, with every missed push received before
  the reply and their offsets checked (consecutive, in order). Key figure: seconds to
  replay, median of --replay-reps.

    python benchmarks/history_wire.py                 # 3 reps of 2 + 8 s fan-out, 3 replays
    python benchmarks/history_wire.py --reps 1 --warmup 1 --duration 2 --missed 500  # quick

Every wait is bounded; the servers are stopped (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
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
from multi_instance import cpu_seconds  # noqa: E402

FANOUT_SERVERS = {
    "history-off": "examples.reference_app:app",
    "history-on": "benchmarks.history_app:app",
}
REPLAY_APP = "benchmarks.history_app:app"
TARGET = 1.15


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default="fanout,replay", help="fanout, replay or both (default)")
    p.add_argument("--reps", type=int, default=3, help="fanout: interleaved reps per server")
    p.add_argument("--warmup", type=float, default=2.0, help="fanout: seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="fanout: seconds measured")
    p.add_argument("--timeout", type=float, default=90.0, help="fanout: kill a load run after")
    p.add_argument("--missed", type=int, default=10_000, help="replay: pushes missed (<= 10000)")
    p.add_argument("--replay-reps", type=int, default=3, help="replay: repetitions")
    add_harness_paths(p)
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    return p


# -- fanout: the harness' S2 on plain and history chat rooms ---------------------------------


def fanout_table(records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """The fan-out table of the run, with the ratio to history-off (see
    ``_servers.fanout_cpu_table``)."""
    return fanout_cpu_table(records, list(FANOUT_SERVERS), "history-off")


def run_fanout(a: argparse.Namespace) -> list[dict[str, Any]] | None:
    cmd = harness_command(
        a.bench_dir.resolve() / "bench.py",
        a,
        {name: wsevents_run(target) for name, target in FANOUT_SERVERS.items()},
        scenario="s2_1000",
        label="history",
        cpus=True,
    )
    run_dir, returncode = run_harness(cmd)
    if run_dir is None:
        print(f"history_wire.py: bench.py exited with {returncode}", file=sys.stderr)
        return None
    return load_records(run_dir, "s2_1000")


# -- replay: a subscribe with since after --missed pushes ------------------------------------


class _Socket:
    """One WebSocket: calls with ids; pushes are counted and kept in order by the caller."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def send(self, event: str, path: str, data: Any = None) -> int:
        self.next_id += 1
        frame = {"event": event, "path": path, "data": data, "id": self.next_id}
        await self.ws.send_str(json.dumps(frame))
        return self.next_id

    async def frame(self) -> dict[str, Any]:
        msg = await self.ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"the connection ended ({msg.type!r})")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def call(self, event: str, path: str, data: Any = None) -> Any:
        msg_id = await self.send(event, path, data)
        while True:
            frame = await self.frame()
            if frame.get("id") == msg_id:
                if frame.get("error") is not None:
                    raise RuntimeError(f"{event} {path}: {frame['error']}")
                return frame.get("data")


async def replay_once(url: str, missed: int, server_pid: int) -> dict[str, Any]:
    room = f"/replay/rooms/bench-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            position = await _Socket(ws).call("subscribe", room)
        since = {"offset": position["offset"], "epoch": position["epoch"]}
        async with session.ws_connect(url, max_msg_size=0) as ws:
            publisher = _Socket(ws)
            window = 200
            for start in range(0, missed, window):
                ids = {
                    await publisher.send("publish", room, {"n": n, "text": "x" * 100})
                    for n in range(start, min(start + window, missed))
                }
                while ids:
                    frame = await publisher.frame()
                    ids.discard(frame.get("id"))  # type: ignore[arg-type]
        async with session.ws_connect(url, max_msg_size=0) as ws:
            member = _Socket(ws)
            offsets: list[int] = []
            messages = 0
            cpu0 = cpu_seconds(server_pid)
            started = time.perf_counter()
            msg_id = await member.send("subscribe", room, {"since": since})
            while True:
                frame = await member.frame()
                if frame.get("id") == msg_id:
                    reply = frame.get("data") or {}
                    break
                if "offset" in frame:  # the missed messages (and the app's "system" push)
                    offsets.append(frame["offset"])
                    messages += frame.get("event") == "message"
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(server_pid) - cpu0
    # The reference app pushes "system" to the room when the first member disconnects.
    expected = list(range(since["offset"] + 1, since["offset"] + len(offsets) + 1))
    return {
        "seconds": seconds,
        "server_cpu_s": cpu,
        "replayed": messages,
        "in_order": offsets == expected and messages == missed,
        "recovered": reply.get("recovered"),
    }


def run_replay(a: argparse.Namespace) -> list[dict[str, Any]]:
    proc, port = start_reference_app(cpu=a.server_cpu if a.pin else None, target=REPLAY_APP)
    try:
        url = f"http://127.0.0.1:{port}/ws"
        runs = []
        for _ in range(a.replay_reps):
            runs.append(asyncio.run(asyncio.wait_for(replay_once(url, a.missed, proc.pid), 300)))
        return runs
    finally:
        stop(proc)


def replay_table(runs: list[dict[str, Any]], missed: int) -> str:
    lines = [
        "| rep | missed | replayed | in order | recovered | seconds | pushes/s | srv CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, run in enumerate(runs, 1):
        rate = run["replayed"] / run["seconds"] if run["seconds"] else 0.0
        lines.append(
            f"| {n} | {missed} | {run['replayed']} | {run['in_order']} | {run['recovered']} "
            f"| {run['seconds']:.3f} | {rate:.0f} | {run['server_cpu_s']:.3f} |"
        )
    if runs:
        lines.append(f"\nmedian replay time: {statistics.median(r['seconds'] for r in runs):.3f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    parts = set(a.parts.split(","))
    status = 0
    if "fanout" in parts:
        records = run_fanout(a)
        if records is None:
            status = 1
        else:
            text, medians = fanout_table(records)
            print("\n## S2 fan-out, 1000 subscribers: history room against plain room\n")
            print(text)
            if "history-off" in medians and "history-on" in medians:
                ratio = medians["history-on"] / medians["history-off"]
                verdict = "met" if ratio <= TARGET else "missed"
                print(f"\nhistory-on / history-off = {ratio:.3f} (target <= {TARGET}: {verdict})")
            else:
                status = 1
    if "replay" in parts:
        runs = run_replay(a)
        print(f"\n## Replay of {a.missed} missed pushes (subscribe with since)\n")
        print(replay_table(runs, a.missed))
        if not all(r["in_order"] and r["recovered"] is True for r in runs):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

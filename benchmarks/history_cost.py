"""History rooms: what an offset costs per delivery, and how long a replay takes.

In one process and one run, on the S2 fan-out shape (``--members`` subscribers in one
room, default 1000):

* CPU seconds per delivery of a broadcast in a plain room and in a history room (memory
  store), and their ratio (target: at most 1.15);
* the time to replay ``--missed`` pushes (default 10 000) to a member joining with
  ``since``.

Members are real [`Connection`][wsevents.Connection] objects over a recording socket, so
the numbers are those of wsevents' own path (encoding, ordering, the send buffer), without
the kernel's socket cost: the ratio is an upper bound of what a real socket run shows.

    python benchmarks/history_cost.py [--members 1000] [--pushes 2000] [--missed 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from wsevents import Connection, RoomManager
from wsevents.history import History
from wsevents.testing.contexts import RecordingSocket


class _CountingSocket(RecordingSocket):
    """Counts frames instead of keeping them (bounded memory on long runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def write(self, payload: bytes, binary: bool) -> bool:
        self.count += 1
        return True


async def _fanout(rooms: RoomManager, room: str, pushes: int) -> float:
    """CPU seconds per delivery of ``pushes`` broadcasts to ``room``."""
    members = rooms.size(room)
    start = time.process_time()
    for i in range(pushes):
        await rooms.broadcast(room, "message", {"n": i, "text": "hello"})
    return (time.process_time() - start) / (pushes * members)


async def main(members: int, pushes: int, missed: int) -> dict[str, Any]:
    rooms = RoomManager()
    history = History(rooms)
    history.track("/feed/:room", size=max(missed, 1000), ttl=600.0)
    plain, stream = "/plain/bench", "/feed/bench"
    for i in range(members):
        await rooms.join(Connection(_CountingSocket(), id=f"p{i}"), plain)
        await history.join(Connection(_CountingSocket(), id=f"h{i}"), stream)
    await _fanout(rooms, plain, 50)  # warm-up
    await _fanout(rooms, stream, 50)
    plain_cost = await _fanout(rooms, plain, pushes)
    history_cost = await _fanout(rooms, stream, pushes)

    replay_room = "/feed/replay"
    start = await history.position(replay_room)
    for i in range(missed):
        await rooms.broadcast(replay_room, "message", {"n": i})
    late = Connection(_CountingSocket(), id="late")
    t0 = time.perf_counter()
    joined = await history.join(late, replay_room, since=start)
    replay = time.perf_counter() - t0
    assert joined.recovered and joined.offset == start.offset + missed
    return {
        "members": members,
        "pushes": pushes,
        "plain_cpu_per_delivery_us": plain_cost * 1e6,
        "history_cpu_per_delivery_us": history_cost * 1e6,
        "ratio": history_cost / plain_cost,
        "replayed": missed,
        "replay_seconds": replay,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--pushes", type=int, default=2000)
    ap.add_argument("--missed", type=int, default=10_000)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.members, a.pushes, a.missed)), indent=2))

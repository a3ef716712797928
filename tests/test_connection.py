"""Connection owns its state: in-flight handlers, liveness and rooms (over a recording socket)."""

from __future__ import annotations

import asyncio

from wsevents import Connection
from wsevents.testing import RecordingSocket


async def test_wait_capacity_pauses_until_a_handler_task_ends() -> None:
    conn = Connection(RecordingSocket())
    assert conn.begin_task() == 1 and conn.begin_task() == 2
    loop = asyncio.get_running_loop()
    waiter = loop.create_task(conn.wait_capacity(2))
    seen: list[bool] = []

    async def end_one() -> None:
        # Tasks start in creation order: the waiter has reached its pause by now.
        seen.append(conn.reading_paused and not waiter.done())
        conn.end_task()

    await asyncio.wait_for(asyncio.gather(waiter, loop.create_task(end_one())), 5)
    assert seen == [True]
    assert not conn.reading_paused and conn.in_flight == 1
    await conn.wait_capacity(2)  # below the limit: returns at once


def test_ping_marks_the_connection_unanswered_until_a_frame_is_seen() -> None:
    sock = RecordingSocket()
    conn = Connection(sock)
    assert conn.is_alive
    conn.ping()
    assert sock.pings == 1 and not conn.is_alive
    conn.mark_seen()
    assert conn.is_alive
    conn.abort()
    assert sock.aborted and conn.closed


def test_rooms_are_kept_in_join_order() -> None:
    conn = Connection(RecordingSocket())
    for room in ("/b", "/a", "/c"):
        conn.add_room(room)
    conn.remove_room("/a")
    conn.remove_room("/missing")
    assert conn.rooms == ("/b", "/c")

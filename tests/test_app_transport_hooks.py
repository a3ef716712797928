"""WsApp's transport wiring: on_transport_down / on_transport_up hooks and set_transport()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from wsevents import Capabilities, MemoryBus, MemoryTransport, WsApp, use_ws_server


class ReportingTransport(MemoryTransport):
    """A MemoryTransport that reports a backend state, like RedisTransport."""

    def __init__(self, bus: MemoryBus | None = None) -> None:
        super().__init__(bus)
        self.listeners: list[Callable[[bool], Any]] = []

    def add_state_listener(self, listener: Callable[[bool], Any]) -> None:
        self.listeners.append(listener)

    def remove_state_listener(self, listener: Callable[[bool], Any]) -> None:
        self.listeners.remove(listener)

    def capabilities(self) -> Capabilities:
        return Capabilities(directory=self, state_events=self)

    def report(self, up: bool) -> None:
        for listener in list(self.listeners):
            listener(up)


async def test_down_and_up_hooks_run_in_order_with_the_app_reachable() -> None:
    transport = ReportingTransport()
    ws = WsApp(heartbeat=0, transport=transport)
    seen: list[str] = []
    up_done = asyncio.Event()

    @ws.on_transport_down
    def down() -> None:
        seen.append(f"down:{use_ws_server() is ws.server}")

    @ws.on_transport_up
    async def up() -> None:
        await asyncio.sleep(0)
        seen.append(f"up:{use_ws_server() is ws.server}")
        up_done.set()

    await ws.start()
    transport.report(False)
    assert seen == ["down:True"]  # a sync hook runs at once
    transport.report(True)
    await asyncio.wait_for(up_done.wait(), 5)
    assert seen == ["down:True", "up:True"]
    await ws.close()


async def test_failing_hook_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = ReportingTransport()
    ws = WsApp(heartbeat=0, transport=transport)
    ran: list[str] = []
    done = asyncio.Event()

    @ws.on_transport_down
    def broken() -> None:
        raise RuntimeError("sync hook bug")

    @ws.on_transport_down
    async def broken_async() -> None:
        raise RuntimeError("async hook bug")

    @ws.on_transport_down
    async def fine() -> None:
        ran.append("fine")
        done.set()

    await ws.start()
    transport.report(False)
    await asyncio.wait_for(done.wait(), 5)
    assert ran == ["fine"]
    failures = [r for r in caplog.records if r.getMessage() == "transport state hook failed"]
    assert len(failures) == 2
    await ws.close()


async def test_hooks_of_the_other_state_do_not_run() -> None:
    transport = ReportingTransport()
    ws = WsApp(heartbeat=0, transport=transport)
    ran: list[str] = []
    ws.on_transport_up(lambda: ran.append("up"))
    await ws.start()
    transport.report(False)
    assert ran == []
    await ws.close()


async def test_close_removes_the_state_listener() -> None:
    transport = ReportingTransport()
    ws = WsApp(heartbeat=0, transport=transport)
    await ws.start()
    assert len(transport.listeners) == 1
    await ws.close()
    assert transport.listeners == []


async def test_set_transport_before_start_wires_rooms_and_directory() -> None:
    bus = MemoryBus()
    ws = WsApp(heartbeat=0)
    transport = MemoryTransport(bus)
    ws.set_transport(transport)
    assert ws.transport is transport
    assert ws.rooms.transport is transport
    await ws.start()
    # Subscribed to the broadcast channel and its inbox through the new transport.
    assert bus.subscriber_count("ws:broadcast") == 1
    assert bus.subscriber_count(f"ws:instance:{ws.instance_id}") == 1
    # The directory is used: an id known to the bus on another instance is reachable.
    bus.directory["elsewhere"] = "other-instance"
    assert await ws.send_to("elsewhere", "e", "/p") is True
    await ws.close()


async def test_set_transport_to_none_makes_a_single_instance() -> None:
    ws = WsApp(heartbeat=0, transport=MemoryTransport())
    ws.set_transport(None)
    assert ws.transport is None and ws.rooms.transport is None
    assert await ws.send_to("nobody", "e", "/p") is False


async def test_set_transport_after_start_raises() -> None:
    ws = WsApp(heartbeat=0)
    await ws.start()
    with pytest.raises(RuntimeError):
        ws.set_transport(MemoryTransport())
    await ws.close()

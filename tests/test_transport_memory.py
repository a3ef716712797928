"""MemoryTransport passes the conformance suite; broken transports make the suite fail."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from wsevents import BaseTransport, BroadcastTransport, MemoryBus, MemoryTransport
from wsevents.testing import check_transport
from wsevents.transports.base import PayloadHandler

FAST: dict[str, Any] = {"timeout": 0.5, "quiet": 0.05}


class CountingTransport(MemoryTransport):
    """A MemoryTransport that counts how often it was closed."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1
        await super().close()


class SyncBus:
    """The medium of SyncTransport: handlers per channel, in subscription order."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[int, PayloadHandler]] = {}


class SyncTransport(BaseTransport):
    """A correct transport that delivers without any await and keeps BaseTransport's no-op
    close()."""

    def __init__(self, bus: SyncBus) -> None:
        self.bus = bus
        self.loop = asyncio.get_running_loop()
        self.tail: dict[str, asyncio.Future[None]] = {}

    async def publish(self, channel: str, payload: str) -> None:
        for key, handler in list(self.bus.channels.get(channel, {}).items()):
            self.loop.call_soon(self._deliver, channel, key, handler, payload)

    def _deliver(self, channel: str, key: int, handler: PayloadHandler, payload: str) -> None:
        if self.bus.channels.get(channel, {}).get(key) is not handler:
            return  # unsubscribed (or replaced) meanwhile
        result = handler(payload)
        if result is not None:
            # Run async handlers one after the other, keeping per-channel order.
            previous = self.tail.get(channel)
            self.tail[channel] = asyncio.ensure_future(self._after(previous, result))

    @staticmethod
    async def _after(previous: Awaitable[None] | None, result: Awaitable[None]) -> None:
        if previous is not None:
            await previous
        await result

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        self.bus.channels.setdefault(channel, {})[id(self)] = handler

    async def unsubscribe(self, channel: str) -> None:
        handlers = self.bus.channels.get(channel, {})
        handlers.pop(id(self), None)
        if not handlers:
            self.bus.channels.pop(channel, None)


# -- the suite passes ---------------------------------------------------------------------


async def test_memory_transport_passes_the_conformance_suite() -> None:
    bus = MemoryBus()
    made: list[CountingTransport] = []

    def factory() -> CountingTransport:
        made.append(CountingTransport(bus))
        return made[-1]

    await check_transport(factory)
    assert len(made) >= 14  # several per check
    assert all(t.closed == 1 for t in made), "check_transport closes what it opens"
    assert bus.channels == {}, "nothing is left subscribed on the bus"


async def test_suite_accepts_an_async_factory_and_a_custom_prefix() -> None:
    bus = MemoryBus()
    seen: set[str] = set()

    class Recording(MemoryTransport):
        async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
            seen.add(channel)
            await super().subscribe(channel, handler)

    async def factory() -> MemoryTransport:
        await asyncio.sleep(0)
        return Recording(bus)

    await check_transport(factory, channel_prefix="custom:")
    assert seen and all(channel.startswith("custom:") for channel in seen)


async def test_transport_with_a_no_op_close_passes_and_is_cleaned_up() -> None:
    bus = SyncBus()
    await check_transport(lambda: SyncTransport(bus))
    assert bus.channels == {}, "with a no-op close(), what is still subscribed is unsubscribed"


class SyncMethodsTransport(MemoryTransport):
    """publish() is a plain method: the contract wants every method async."""

    def publish(self, channel: str, payload: str) -> None:  # type: ignore[override]
        for sub in self.bus.channels.get(channel, ()):
            sub.queue.put_nowait(payload)


async def test_transport_with_a_sync_method_fails_clearly() -> None:
    with pytest.raises(AssertionError, match=r"publish\(\) is not async"):
        await check_transport(lambda: SyncMethodsTransport(MemoryBus()), **FAST)


# -- broken transports make it fail -------------------------------------------------------


class SilentTransport(MemoryTransport):
    """Never delivers anything."""

    async def publish(self, channel: str, payload: str) -> None:
        self.bus.published += 1


class SwappingTransport(MemoryTransport):
    """Delivers every pair of payloads of a channel in reverse order."""

    async def publish(self, channel: str, payload: str) -> None:
        held = self.bus.__dict__.setdefault("held", {})
        first = held.pop(channel, None)
        if first is None:
            held[channel] = payload
            return
        for batch in (payload, first):
            await super().publish(channel, batch)


class NoEchoTransport(MemoryTransport):
    """Does not deliver to the publisher's own subscription."""

    async def publish(self, channel: str, payload: str) -> None:
        own = self._subs.get(channel)
        for sub in self.bus.channels.get(channel, ()):
            if sub is not own:
                sub.queue.put_nowait(payload)


class StickyTransport(MemoryTransport):
    """unsubscribe() does nothing."""

    async def unsubscribe(self, channel: str) -> None:
        return None


class LateSubscribeTransport(MemoryTransport):
    """subscribe() returns before the subscription is live."""

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        asyncio.get_running_loop().call_later(
            0.05, lambda: asyncio.ensure_future(MemoryTransport.subscribe(self, channel, handler))
        )


class GlobTransport(MemoryTransport):
    """Treats channel names as glob patterns (like a PSUBSCRIBE-based transport)."""

    async def publish(self, channel: str, payload: str) -> None:
        for name, subs in self.bus.channels.items():
            if fnmatch.fnmatchcase(channel, name):
                for sub in subs:
                    sub.queue.put_nowait(payload)


class StaleHandlerTransport(MemoryTransport):
    """Subscribing again keeps the handler of the first subscription."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.first: dict[str, PayloadHandler] = {}

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        await super().subscribe(channel, self.first.setdefault(channel, handler))


class BytesTransport(MemoryTransport):
    """Hands handlers bytes instead of str."""

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        def wrapped(payload: str) -> Awaitable[None] | None:
            return handler(payload.encode())  # type: ignore[arg-type]

        await super().subscribe(channel, wrapped)


class HangingSubscribeTransport(MemoryTransport):
    """subscribe() never returns."""

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        await asyncio.Event().wait()


class FailingPublishTransport(MemoryTransport):
    """publish() raises."""

    async def publish(self, channel: str, payload: str) -> None:
        raise ConnectionError("backend down")


class DoubleEchoTransport(MemoryTransport):
    """Echoes each payload to the publisher's own subscriber twice, the second copy only
    when the next payload on that channel is published (so no wait for a count sees it)."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.held: dict[str, str] = {}

    async def publish(self, channel: str, payload: str) -> None:
        own = self._subs.get(channel)
        held = self.held.pop(channel, None)
        for sub in self.bus.channels.get(channel, ()):
            if sub is own and held is not None:
                sub.queue.put_nowait(held)
            sub.queue.put_nowait(payload)
        if own is not None:
            self.held[channel] = payload


class DuplicatingTransport(MemoryTransport):
    """Delivers every payload twice."""

    async def publish(self, channel: str, payload: str) -> None:
        await super().publish(channel, payload)
        await super().publish(channel, payload)


BROKEN: list[tuple[type[MemoryTransport], str]] = [
    (SilentTransport, r"\[delivery\].*received 0 of 2"),
    (SwappingTransport, r"\[delivery\].*out of order"),
    (NoEchoTransport, r"\[echo\].*a \(the publisher\) received 0 of 1"),
    (StickyTransport, r"\[unsubscribe\].*unsubscribe\(\) stops delivery"),
    (LateSubscribeTransport, r"received 0 of"),
    (GlobTransport, r"\[isolation\].*not published there"),
    (StaleHandlerTransport, r"\[churn\].*earlier subscribe\(\)"),
    (BytesTransport, r"\[delivery\].*non-str payload"),
    (HangingSubscribeTransport, r"\[delivery\].*subscribe\(.*\) did not return within 0.5 s"),
    (FailingPublishTransport, r"\[delivery\].*publish\(.*\) raised ConnectionError"),
    (DuplicatingTransport, r"\[delivery\].*duplicates"),
    (DoubleEchoTransport, r"\[echo\].*a \(the publisher\) on .* received duplicates"),
]


@pytest.mark.parametrize(("cls", "message"), BROKEN, ids=[cls.__name__ for cls, _ in BROKEN])
async def test_broken_transport_fails_the_suite(cls: type[MemoryTransport], message: str) -> None:
    bus = MemoryBus()
    made: list[MemoryTransport] = []

    def factory() -> MemoryTransport:
        made.append(cls(bus))
        return made[-1]

    with pytest.raises(AssertionError, match=message):
        await check_transport(factory, **FAST)
    assert made, "the factory was used"
    assert not any(t.channels for t in made if not isinstance(t, StickyTransport)), (
        "transports are closed even when a check fails"
    )


async def test_reordering_only_on_long_runs_fails_the_order_check() -> None:
    bus = MemoryBus()

    class LateSwap(MemoryTransport):
        """Correct for a few payloads, swaps payload 150 and 151 of a channel."""

        async def publish(self, channel: str, payload: str) -> None:
            counts = self.bus.__dict__.setdefault("counts", {})
            n = counts[channel] = counts.get(channel, 0) + 1
            held = self.bus.__dict__.setdefault("held", {})
            if n == 150:
                held[channel] = payload
                return
            await super().publish(channel, payload)
            if n == 151:
                await super().publish(channel, held.pop(channel))

    with pytest.raises(AssertionError, match=r"\[order\].*out of order from position 149"):
        await check_transport(lambda: LateSwap(bus), **FAST)


async def test_factory_returning_a_non_transport_fails_clearly() -> None:
    with pytest.raises(AssertionError, match="has no publish"):
        await check_transport(lambda: object(), **FAST)  # type: ignore[arg-type, return-value]


async def test_factory_that_raises_fails_clearly() -> None:
    def factory() -> BroadcastTransport:
        raise OSError("no server")

    with pytest.raises(AssertionError, match=r"the factory raised OSError"):
        await check_transport(factory, **FAST)


# -- MemoryTransport specifics -------------------------------------------------------------


async def test_memory_bus_counts_subscribers_per_channel() -> None:
    bus = MemoryBus()
    a, b = MemoryTransport(bus), MemoryTransport(bus)
    await a.subscribe("ch", lambda p: None)
    await b.subscribe("ch", lambda p: None)
    await a.subscribe("other", lambda p: None)
    assert (bus.subscriber_count("ch"), bus.subscriber_count("other")) == (2, 1)
    assert a.channels == {"ch", "other"}
    await a.unsubscribe("ch")
    assert bus.subscriber_count("ch") == 1
    await a.close()
    await b.close()
    assert bus.channels == {} and bus.subscriber_count("ch") == 0


async def test_memory_subscriber_that_raises_is_logged_and_keeps_receiving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus()
    transport = MemoryTransport(bus)
    got: list[str] = []
    done = asyncio.Event()

    def handler(payload: str) -> None:
        if payload == "bad":
            raise ValueError("handler bug")
        got.append(payload)
        done.set()

    await transport.subscribe("ch", handler)
    with caplog.at_level(logging.ERROR, logger="wsevents.transports.memory"):
        await transport.publish("ch", "bad")
        await transport.publish("ch", "good")
        await asyncio.wait_for(done.wait(), 5)
    assert got == ["good"]
    assert "subscriber of ch failed" in caplog.text
    await transport.close()


async def test_memory_subscribe_again_replaces_the_handler_without_a_second_subscription() -> None:
    bus = MemoryBus()
    transport = MemoryTransport(bus)
    first: list[str] = []
    second: list[str] = []
    done = asyncio.Event()
    await transport.subscribe("ch", first.append)

    def replacement(payload: str) -> None:
        second.append(payload)
        done.set()

    await transport.subscribe("ch", replacement)
    assert bus.subscriber_count("ch") == 1
    await transport.publish("ch", "x")
    await asyncio.wait_for(done.wait(), 5)
    assert (first, second) == ([], ["x"])
    await transport.close()


async def test_memory_directory_registers_locates_and_forgets() -> None:
    bus = MemoryBus()
    a, b = MemoryTransport(bus), MemoryTransport(bus)
    await a.register_connection("c1", "instance-a")
    assert await b.locate_connection("c1") == "instance-a"
    await b.unregister_connection("c1")
    assert await a.locate_connection("c1") is None
    await b.unregister_connection("c1")  # forgetting twice is harmless

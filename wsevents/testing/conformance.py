"""The conformance suites of broadcast transports, presence stores, capacity stores,
session stores and rate-limit stores.

[`check_transport`][wsevents.testing.conformance.check_transport],
[`check_presence_store`][wsevents.testing.conformance.check_presence_store],
[`check_capacity_store`][wsevents.testing.conformance.check_capacity_store],
[`check_session_store`][wsevents.testing.conformance.check_session_store] and
[`check_rate_limit_store`][wsevents.testing.conformance.check_rate_limit_store] are plain
asyncio: they need no pytest, and report a failure as an ``AssertionError``.

Absence is proven by order, never by waiting: the contract orders the payloads of one
channel from one publisher at each subscriber. So after the payloads a check expects, the
same publisher publishes a **barrier** payload on the same channel; once a subscriber has
the barrier, anything that channel would still bring it (a duplicate, a payload published
after ``unsubscribe()``, a stray from another channel delivered through this subscription)
would have come before, and what it received is final. Each check says which barrier
proves what.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from ..transports.base import (
        BroadcastTransport,
        CapacityStore,
        HistoryStore,
        PresenceStore,
        RateLimitStore,
        SessionStore,
    )

__all__ = [
    "CapacityStoreFactory",
    "HistoryStoreFactory",
    "PresenceStoreFactory",
    "RateLimitStoreFactory",
    "SessionStoreFactory",
    "TransportFactory",
    "check_capacity_store",
    "check_history_store",
    "check_presence_store",
    "check_rate_limit_store",
    "check_session_store",
    "check_transport",
]


TransportFactory = Callable[[], "BroadcastTransport | Awaitable[BroadcastTransport]"]
"""Makes one more transport on the shared medium (see [`check_transport`][])."""

PresenceStoreFactory = Callable[[], "PresenceStore | Awaitable[PresenceStore]"]
"""Makes one more presence store on the shared medium, as one more instance would see it
(see [`check_presence_store`][])."""


CapacityStoreFactory = Callable[[], "CapacityStore | Awaitable[CapacityStore]"]
"""Makes one more capacity store on the shared medium, as one more instance would see it
(see [`check_capacity_store`][])."""


class _Inbox:
    """What one subscriber received, per channel, and a way to wait for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: dict[str, list[str]] = {}
        self.generations: dict[str, list[int]] = {}
        self.not_str: list[Any] = []
        self._changed = asyncio.Event()

    def handler(self, channel: str, *, generation: int = 0, is_async: bool = False) -> Any:
        def record(payload: Any) -> None:
            if not isinstance(payload, str):
                self.not_str.append(payload)
                payload = repr(payload)
            self.received.setdefault(channel, []).append(payload)
            self.generations.setdefault(channel, []).append(generation)
            self._changed.set()

        if not is_async:
            return record

        async def handle(payload: Any) -> None:
            await asyncio.sleep(0)  # really suspend: the transport must await the handler
            record(payload)

        return handle

    def on(self, channel: str) -> list[str]:
        return self.received.get(channel, [])


class _Closing(Protocol):
    async def close(self) -> None: ...


_Run = TypeVar("_Run", bound=_Closing)


async def _run_checks(
    checks: tuple[tuple[str, Callable[[_Run], Awaitable[None]]], ...],
    make_run: Callable[[str], _Run],
) -> None:
    """Run each check on a run of its own, closed after it; when a check fails, its
    failure is what is raised (a failing close is then left out)."""
    for name, check in checks:
        run = make_run(name)
        try:
            await check(run)
        except BaseException:
            with contextlib.suppress(Exception):
                await run.close()
            raise
        await run.close()


class _TransportRun:
    """One check of [`check_transport`][]: its transports, channels and failures."""

    def __init__(self, factory: TransportFactory, prefix: str, check: str, timeout: float) -> None:
        self.factory = factory
        self.prefix = prefix
        self.check = check
        self.timeout = timeout
        self.opened: list[tuple[str, Any, set[str]]] = []
        self._barriers = itertools.count(1)

    def fail(self, text: str) -> AssertionError:
        return AssertionError(f"check_transport [{self.check}]: {text}")

    def channel(self, name: str) -> str:
        return f"{self.prefix}{self.check}:{name}"

    async def call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Call an async transport method, bounded by the timeout."""
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await fn(*args)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise self.fail(f"{what} did not return within {self.timeout} s") from None
            raise self.fail(f"{what} raised {exc!r}") from exc

    async def open(self, name: str) -> _Probe:
        transport = await _from_factory(self.factory, self.timeout, self.fail)
        for method in ("publish", "subscribe", "unsubscribe", "start", "close"):
            fn = getattr(transport, method, None)
            if not callable(fn):
                raise self.fail(f"the factory returned {transport!r}, which has no {method}()")
            if not inspect.iscoroutinefunction(fn):
                raise self.fail(f"{name}: {method}() is not async (the contract is async)")
        probe = _Probe(self, name, transport)
        self.opened.append((name, transport, probe.channels))
        await self.call(f"{name}.start()", transport.start)
        return probe

    async def close(self) -> None:
        """Unsubscribe what each transport opened still has, then close it."""
        errors: list[str] = []
        for name, transport, channels in self.opened:
            try:
                for channel in sorted(channels):
                    await self.call(
                        f"{name}.unsubscribe({channel!r})", transport.unsubscribe, channel
                    )
                await self.call(f"{name}.close()", transport.close)
            except AssertionError as exc:
                errors.append(str(exc))
        self.opened.clear()
        if errors:
            raise AssertionError("; ".join(errors))

    async def wait(self, inbox: _Inbox, channel: str, count: int, what: str) -> None:
        """Wait until ``inbox`` holds ``count`` payloads on ``channel``."""
        try:
            async with asyncio.timeout(self.timeout):
                while len(inbox.on(channel)) < count:
                    inbox._changed.clear()
                    await inbox._changed.wait()
        except TimeoutError:
            got = inbox.on(channel)
            raise self.fail(
                f"{what}: subscriber {inbox.name} received {len(got)} of {count} payloads on "
                f"{channel!r} within {self.timeout} s (first received: {got[:5]!r})"
            ) from None

    async def received(self, inbox: _Inbox, channel: str, expected: list[str], what: str) -> None:
        """Wait for as many payloads as ``expected`` holds; what came so far must match it."""
        await self.wait(inbox, channel, len(expected), what)
        self.expect(inbox, channel, expected, what, so_far=True)

    async def barrier(self, publisher: _Probe, watches: list[_Watch], what: str) -> None:
        """Publish a barrier on each watched channel and wait for it; then each watched
        subscriber received exactly ``expected`` and the barrier, in that order.

        ``publisher`` must be the one that published the payloads the watches expect: the
        contract orders one publisher's payloads on a channel, so anything more that the
        channel brings before the barrier shows up here (see the module's docstring).
        """
        barriers: dict[str, str] = {}
        for watch in watches:
            if watch.channel not in barriers:
                barriers[watch.channel] = f"~barrier-{next(self._barriers)}~"
                await publisher.publish(watch.channel, barriers[watch.channel])
        for inbox, channel, expected, foreign in watches:
            final = [*expected, barriers[channel]]
            try:
                async with asyncio.timeout(self.timeout):
                    while barriers[channel] not in inbox.on(channel):
                        inbox._changed.clear()
                        await inbox._changed.wait()
            except TimeoutError:
                self.expect(inbox, channel, final, what, so_far=True, foreign=foreign)
                raise self.fail(
                    f"{what}: subscriber {inbox.name} did not receive the barrier published "
                    f"after the checked payloads on {channel!r} within {self.timeout} s "
                    f"(received: {inbox.on(channel)[:5]!r})"
                ) from None
            self.expect(inbox, channel, final, what, foreign=foreign)

    def expect(
        self,
        inbox: _Inbox,
        channel: str,
        expected: list[str],
        what: str,
        *,
        so_far: bool = False,
        foreign: str = "not published there",
    ) -> None:
        """``inbox`` received exactly ``expected`` on ``channel``, in that order.

        With ``so_far``, what arrived until now must be the start of ``expected``.
        """
        if inbox.not_str:
            raise self.fail(
                f"{what}: subscriber {inbox.name} was called with a non-str payload "
                f"{inbox.not_str[0]!r} (handlers receive the published str)"
            )
        got = inbox.on(channel)
        if got == (expected[: len(got)] if so_far else expected):
            return
        missing = [] if so_far else [p for p in expected if p not in got]
        strays = [p for p in got if p not in expected]
        dupes = sorted({p for p in got if got.count(p) > 1})
        if missing:
            detail = f"lost {len(missing)} payload(s), e.g. {missing[:3]!r}"
        elif strays:
            detail = f"received {len(strays)} payload(s) {foreign}, e.g. {strays[:3]!r}"
        elif dupes:
            detail = f"received duplicates, e.g. {dupes[:3]!r}"
        else:
            first = next(i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e)
            detail = f"out of order from position {first}: {got[first : first + 3]!r}"
        raise self.fail(
            f"{what}: subscriber {inbox.name} on {channel!r} {detail} "
            f"({len(got)} received, {len(expected)} expected)"
        )


class _Watch(NamedTuple):
    """A subscriber's channel that a barrier closes, and what it must hold before it."""

    inbox: _Inbox
    channel: str
    expected: list[str]
    foreign: str = "not published there"  # how to name a payload it should not have


class _Probe:
    """One transport under test, with bounded calls and a record of its subscriptions."""

    def __init__(self, run: _TransportRun, name: str, transport: Any) -> None:
        self.run = run
        self.name = name
        self.transport = transport
        self.channels: set[str] = set()

    async def publish(self, channel: str, payload: str) -> None:
        await self.run.call(
            f"{self.name}.publish({channel!r})", self.transport.publish, channel, payload
        )

    async def subscribe(self, channel: str, handler: Any) -> None:
        await self.run.call(
            f"{self.name}.subscribe({channel!r})", self.transport.subscribe, channel, handler
        )
        self.channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.run.call(
            f"{self.name}.unsubscribe({channel!r})", self.transport.unsubscribe, channel
        )
        self.channels.discard(channel)


async def _check_delivery(run: _TransportRun) -> None:
    a, b, c = await run.open("a"), await run.open("b"), await run.open("c")
    channel = run.channel("room")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel, is_async=True))
    payloads = ["one", "two"]
    for payload in payloads:
        await c.publish(channel, payload)
    what = "a publish reaches every subscriber of the channel"
    for inbox in (inbox_a, inbox_b):
        await run.received(inbox, channel, payloads, what)
    # c's barrier comes after any duplicate of c's payloads on this channel.
    await run.barrier(
        c, [_Watch(inbox_a, channel, payloads), _Watch(inbox_b, channel, payloads)], what
    )


async def _check_echo(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    channel = run.channel("room")
    inbox_a, inbox_b = _Inbox("a (the publisher)"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel))
    await a.publish(channel, "echo")
    what = "the publisher's own subscriber receives its publish (echo, like Redis pub/sub)"
    await run.received(inbox_b, channel, ["echo"], what)
    await run.received(inbox_a, channel, ["echo"], what)
    # a's barrier comes after a second echo, to a's own subscriber as to b.
    watches = [_Watch(inbox_a, channel, ["echo"]), _Watch(inbox_b, channel, ["echo"])]
    await run.barrier(a, watches, what)


async def _check_subscribe_is_live(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    rounds = 20
    for i in range(rounds):
        remote, own = run.channel(f"remote-{i}"), run.channel(f"own-{i}")
        await b.subscribe(remote, inbox_b.handler(remote))
        await a.publish(remote, f"remote-{i}")
        await a.subscribe(own, inbox_a.handler(own))
        await a.publish(own, f"own-{i}")
    what = "a publish right after subscribe() returned is delivered"
    watches: list[_Watch] = []
    for i in range(rounds):
        remote, own = run.channel(f"remote-{i}"), run.channel(f"own-{i}")
        await run.received(inbox_b, remote, [f"remote-{i}"], what)
        await run.received(inbox_a, own, [f"own-{i}"], what)
        watches += [_Watch(inbox_b, remote, [f"remote-{i}"]), _Watch(inbox_a, own, [f"own-{i}"])]
    # a published everything: its barrier on each channel comes after any duplicate.
    await run.barrier(a, watches, what)


async def _check_unsubscribe(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    channel, other = run.channel("room"), run.channel("other")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel))
    await b.subscribe(other, inbox_b.handler(other))
    await a.publish(channel, "before")
    await run.received(inbox_b, channel, ["before"], "delivery before unsubscribe")
    await b.unsubscribe(channel)
    await a.publish(channel, "after-1")
    await a.publish(channel, "after-2")
    await a.publish(other, "other")
    stayed = ["before", "after-1", "after-2"]
    await run.received(inbox_a, channel, stayed, "a subscriber that stayed keeps receiving")
    await run.received(inbox_b, other, ["other"], "unsubscribing one channel keeps the others")
    # Unsubscribed, b cannot see a barrier on the channel: it subscribes again, and a
    # publishes "again", then the barrier. A payload of a's published after unsubscribe()
    # that still reached b comes, on this channel, before them; a transport that replays
    # payloads published before subscribe() shows them here too.
    await b.subscribe(channel, inbox_b.handler(channel, generation=1))
    await a.publish(channel, "again")
    what = "unsubscribe() stops delivery, and subscribing again delivers new payloads only"
    await run.barrier(
        a,
        [
            _Watch(inbox_b, channel, ["before", "again"], "published while it was unsubscribed"),
            _Watch(inbox_a, channel, [*stayed, "again"]),
            _Watch(inbox_b, other, ["other"]),
        ],
        what,
    )


async def _check_order(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    channel = run.channel("room")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel))
    payloads = [f"{i:03d}" for i in range(200)]
    for payload in payloads:
        await a.publish(channel, payload)
    what = "payloads on one channel arrive in publish order"
    for inbox in (inbox_b, inbox_a):
        await run.received(inbox, channel, payloads, what)
    # a's barrier comes after a late duplicate of any of a's payloads.
    await run.barrier(
        a, [_Watch(inbox_b, channel, payloads), _Watch(inbox_a, channel, payloads)], what
    )


# Room names are free text: glob characters and prefixes of each other must stay apart.
_ISOLATION_NAMES = (
    "plain",
    "plain:sub",
    "glob*",
    "glob?",
    "br[ac]ket",
    "/chat/general",
    "/chat/general/",
    "with space",
    "uni-ĉambro",
    "team:a:b",
)
_STRAY_NAMES = ("plain:", "glob-stray", "globZ", "braket", "/chat", "team:a")
# Strays nobody subscribes to (the others have a witness subscriber).
_UNHEARD_NAMES = ("nobody", "glob-nobody")


async def _check_isolation(run: _TransportRun) -> None:
    a, b, c = await run.open("a"), await run.open("b"), await run.open("c")
    inbox = _Inbox("b")
    witness = _Inbox("c (a witness on the stray channels)")
    channels = [run.channel(name) for name in _ISOLATION_NAMES]
    channels += [run.channel(f"many-{i}") for i in range(20)]
    strays = [run.channel(name) for name in _STRAY_NAMES]
    unheard = [run.channel(name) for name in _UNHEARD_NAMES]
    for channel in channels:
        await b.subscribe(channel, inbox.handler(channel))
    for stray in strays:
        await c.subscribe(stray, witness.handler(stray))
    per_channel = 5
    for k in range(per_channel):
        for i, channel in enumerate(channels):
            await a.publish(channel, f"{i}:{k}")
        for stray in strays + unheard:
            await a.publish(stray, f"stray:{k}")
    what = "payloads never cross channels"
    expected = {
        channel: [f"{i}:{k}" for k in range(per_channel)] for i, channel in enumerate(channels)
    }
    stray_payloads = [f"stray:{k}" for k in range(per_channel)]
    for channel in channels:
        await run.received(inbox, channel, expected[channel], what)
    for stray in strays:
        await run.received(witness, stray, stray_payloads, "a publish reaches its channel")
    # b is subscribed to no stray channel, so no barrier there can reach it. A stray that
    # leaks to b comes through the subscription of one of b's channels (a transport that
    # reads names as patterns or prefixes, or hands unheard payloads to someone), where
    # a's barrier, published after every stray, closes the stream. The witness c,
    # subscribed to most stray channels, gets a barrier there too: the medium has passed
    # those strays on before the check counts.
    watches = [_Watch(inbox, channel, expected[channel]) for channel in channels]
    watches += [_Watch(witness, stray, stray_payloads) for stray in strays]
    await run.barrier(a, watches, what)
    leaked = {ch: got for ch, got in inbox.received.items() if ch not in channels}
    if leaked:
        raise run.fail(f"{what}: unsubscribed channels were delivered: {leaked!r}")


async def _check_churn(run: _TransportRun) -> None:
    a, b, c = await run.open("a"), await run.open("b"), await run.open("c")
    probes = {"a": a, "b": b}
    rng = random.Random(20240601)  # fixed: a failure reproduces
    channels = [run.channel(f"churn-{i}") for i in range(24)]
    inboxes = {"a": _Inbox("a"), "b": _Inbox("b")}
    final: dict[tuple[str, str], int | None] = {}
    generations = itertools.count(1)

    async def churn(probe: _Probe, channel: str, ops: int, pauses: list[int]) -> None:
        for k in range(ops):
            if k % 2 == 0:
                generation = next(generations)
                handler = inboxes[probe.name].handler(channel, generation=generation)
                await probe.subscribe(channel, handler)
                final[probe.name, channel] = generation
            else:
                await probe.unsubscribe(channel)
                final[probe.name, channel] = None
            for _ in range(pauses[k]):
                await asyncio.sleep(0)  # interleave with the other channels' calls

    jobs = []
    for probe in (a, b):
        for channel in channels:
            ops = rng.randint(1, 6)
            jobs.append(churn(probe, channel, ops, [rng.randrange(3) for _ in range(ops)]))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    for channel in channels:
        await c.publish(channel, "final")
    what = "after concurrent subscribe/unsubscribe churn, exactly the last state holds"
    for (name, channel), generation in final.items():
        if generation is not None:
            await run.received(inboxes[name], channel, ["final"], what)
        else:
            run.expect(inboxes[name], channel, [], what, so_far=True)
    # A probe that ended unsubscribed cannot see a barrier on that channel: it subscribes
    # again (a new handler), then c publishes the barriers. A "final" that still reached
    # it through a subscription the churn left alive comes, on that channel, before the
    # barrier; a duplicate "final" to a subscribed probe does too.
    latest: dict[tuple[str, str], int] = {}
    watches: list[_Watch] = []
    for (name, channel), generation in sorted(final.items()):
        if generation is None:
            latest[name, channel] = next(generations)
            handler = inboxes[name].handler(channel, generation=latest[name, channel])
            await probes[name].subscribe(channel, handler)
            watches.append(
                _Watch(inboxes[name], channel, [], "published while it was unsubscribed")
            )
        else:
            latest[name, channel] = generation
            watches.append(_Watch(inboxes[name], channel, ["final"]))
    await run.barrier(c, watches, what)
    for (name, channel), generation in sorted(latest.items()):
        delivered_to = inboxes[name].generations[channel]
        if any(g != generation for g in delivered_to):
            raise run.fail(
                f"{what}: {name} on {channel!r} delivered to the handler of an earlier "
                f"subscribe() (generation {delivered_to}, latest {generation})"
            )


_TRANSPORT_CHECKS: tuple[tuple[str, Callable[[_TransportRun], Awaitable[None]]], ...] = (
    ("delivery", _check_delivery),
    ("echo", _check_echo),
    ("subscribe-is-live", _check_subscribe_is_live),
    ("unsubscribe", _check_unsubscribe),
    ("order", _check_order),
    ("isolation", _check_isolation),
    ("churn", _check_churn),
)


async def check_transport(
    factory: TransportFactory,
    *,
    channel_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
    quiet: float = 0.2,
) -> None:
    """The conformance suite every [`BroadcastTransport`][wsevents.BroadcastTransport] must pass.

    ``factory`` is called several times per check (sync or async); every transport it
    returns must be on the **same medium** (one [`MemoryBus`][wsevents.MemoryBus], one Redis
    server...), since the checks publish on one and expect delivery on another. Its
    ``publish``, ``subscribe``, ``unsubscribe``, ``start`` and ``close`` must be ``async``
    (as [`BroadcastTransport`][wsevents.BroadcastTransport] says); ``start()`` is called
    after creation and ``close()`` at the end of each check.

    It checks, on fresh channels under ``channel_prefix`` plus a random run id: delivery
    to every subscriber of a channel (sync and async handlers); echo to the publisher's own
    subscriber (like Redis pub/sub); that a publish right after ``subscribe()`` returned is
    delivered; that ``unsubscribe()`` stops delivery on that channel only; per-channel
    order of 200 payloads; isolation of many channels (also names with glob characters and
    names that prefix each other); and that concurrent subscribe/unsubscribe churn leaves
    exactly the last state, each subscription delivering once to its latest handler.

    No check sleeps: a duplicate or a payload that must not arrive is caught by order,
    before a barrier payload published after it on the same channel. Every wait is bounded
    by ``timeout`` seconds. ``quiet`` is accepted for compatibility and unused (it was a
    window given to late deliveries before counting).

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_transport(lambda: MemoryTransport(bus))``
    """
    prefix = f"{channel_prefix}{uuid.uuid4().hex[:12]}:"
    await _run_checks(_TRANSPORT_CHECKS, lambda name: _TransportRun(factory, prefix, name, timeout))


# -- presence stores ------------------------------------------------------------------------


class _PresenceRun:
    """One check of [`check_presence_store`][]: its stores, rooms, instances and failures."""

    def __init__(self, factory: Callable[[], Any], prefix: str, check: str, timeout: float) -> None:
        self.factory = factory
        self.prefix = prefix
        self.check = check
        self.timeout = timeout
        self.instances: set[str] = set()
        self._store: Any = None

    def fail(self, text: str) -> AssertionError:
        return AssertionError(f"check_presence_store [{self.check}]: {text}")

    def room(self, name: str) -> str:
        return f"{self.prefix}{self.check}:{name}"

    def instance(self, name: str) -> str:
        instance_id = f"{self.prefix}{self.check}:{name}"
        self.instances.add(instance_id)
        return instance_id

    async def store(self) -> Any:
        """One more store from the factory (what one more instance would have)."""
        store = await _from_factory(self.factory, self.timeout, self.fail)
        for method in _PRESENCE_METHODS:
            fn = getattr(store, method, None)
            if not callable(fn):
                raise self.fail(f"the factory returned {store!r}, which has no {method}()")
            if not inspect.iscoroutinefunction(fn):
                raise self.fail(f"{method}() is not async (the PresenceStore protocol is async)")
        if self._store is None:
            self._store = store
        return store

    async def call(self, store: Any, method: str, *args: Any) -> Any:
        """``store.<method>(*args)``, bounded by the timeout; errors name the call."""
        what = f"{method}({', '.join(repr(a) for a in args)})"
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await getattr(store, method)(*args)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise self.fail(f"{what} did not return within {self.timeout} s") from None
            raise self.fail(f"{what} raised {exc!r}") from exc

    def expect(self, got: Any, expected: Any, what: str) -> None:
        if got != expected:
            raise self.fail(f"{what}: got {got!r}, expected {expected!r}")

    async def counted(self, store: Any, room: str, connections: int, users: int) -> None:
        found = await self.call(store, "count", room)
        got = (getattr(found, "connections", None), getattr(found, "users", None))
        self.expect(got, (connections, users), f"count({room!r}) as (connections, users)")

    async def page(self, store: Any, room: str, offset: int, limit: int) -> tuple[int, list[Any]]:
        """``members(...)`` as ``(total, [(user, data, connections), ...])``."""
        found = await self.call(store, "members", room, offset, limit)
        members = [(m.user, m.data, m.connections) for m in found.members]
        return found.total, members

    async def expired(self, store: Any, instance_id: str, what: str) -> None:
        """Wait until ``instance_id`` is in ``expired_instances()``, within the timeout.

        Expiry is a matter of time (the store's clock, which may not be this process's):
        poll it every 20 ms.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while instance_id not in await self.call(store, "expired_instances"):
            if loop.time() > deadline:
                raise self.fail(f"{what} was not in expired_instances() within {self.timeout} s")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Remove whatever the check's instances still have in the store."""
        if self._store is None:
            return
        for instance_id in sorted(self.instances):
            await self.call(self._store, "reap", instance_id, instance_id)


_PRESENCE_METHODS = (
    "add",
    "remove",
    "update",
    "count",
    "members",
    "heartbeat",
    "expired_instances",
    "reap",
)


async def _check_first_and_last(run: _PresenceRun) -> None:
    store = await run.store()
    room, i1 = run.room("lobby"), run.instance("i1")
    run.expect(await run.call(store, "add", room, "c1", "ada", None, i1), True, "first add")
    run.expect(
        await run.call(store, "add", room, "c2", "ada", None, i1),
        False,
        "add of the user's second connection (neither first nor last)",
    )
    run.expect(
        await run.call(store, "add", room, "c1", "ada", None, i1),
        False,
        "add of a connection already there",
    )
    await run.counted(store, room, 2, 1)
    run.expect(await run.call(store, "add", room, "c3", "bob", None, i1), True, "another user")
    run.expect(
        await run.call(store, "remove", room, "c2", i1),
        None,
        "remove of one of two connections of a user",
    )
    run.expect(await run.call(store, "remove", room, "c1", i1), "ada", "remove of the last one")
    run.expect(await run.call(store, "remove", room, "c1", i1), None, "remove of a removed one")
    run.expect(await run.call(store, "remove", room, "nobody", i1), None, "unknown connection")
    run.expect(await run.call(store, "remove", run.room("empty"), "c3", i1), None, "unknown room")
    run.expect(await run.call(store, "add", room, "c1", "ada", None, i1), True, "a join again")
    other = run.room("other")
    run.expect(
        await run.call(store, "add", other, "c1", "ada", None, i1),
        True,
        "the same connection in another room (rooms are independent)",
    )
    await run.counted(store, room, 2, 2)
    await run.counted(store, other, 1, 1)


async def _check_counts_and_pages(run: _PresenceRun) -> None:
    store = await run.store()
    room, i1 = run.room("pages"), run.instance("i1")
    await run.counted(store, room, 0, 0)
    run.expect(await run.page(store, room, 0, 10), (0, []), "members of an empty room")
    # Code point order: upper case before lower case, then beyond ASCII.
    users = ["zoe", "Zed", "ada", "é", "bob", "名", "Ada", "ä"]
    cid = itertools.count(1)
    for user in users:
        await run.call(store, "add", room, f"c{next(cid)}", user, None, i1)
    await run.call(store, "add", room, f"c{next(cid)}", "bob", None, i1)
    await run.call(store, "add", room, f"c{next(cid)}", "bob", None, i1)
    await run.counted(store, room, len(users) + 2, len(users))
    ordered = sorted(users)
    expected = [(u, None, 3 if u == "bob" else 1) for u in ordered]
    run.expect(await run.page(store, room, 0, 100), (len(users), expected), "the whole list")
    pages = []
    for offset in range(0, len(users), 3):
        total, page = await run.page(store, room, offset, 3)
        run.expect(total, len(users), f"the total of the page at offset {offset}")
        pages.extend(page)
    run.expect(pages, expected, "pages of 3 put together")
    run.expect(await run.page(store, room, 2, 0), (len(users), []), "limit 0")
    run.expect(await run.page(store, room, 50, 10), (len(users), []), "an offset past the end")


async def _check_data(run: _PresenceRun) -> None:
    store = await run.store()
    room, i1 = run.room("data"), run.instance("i1")
    first, second = '{"name":"Ada"}', '{"name":"Second tab"}'
    await run.call(store, "add", room, "c1", "ada", first, i1)
    await run.call(store, "add", room, "c2", "ada", second, i1)
    await run.call(store, "add", room, "c3", "bob", None, i1)
    run.expect(
        await run.page(store, room, 0, 10),
        (2, [("ada", first, 2), ("bob", None, 1)]),
        "data of the first connection (a second one's does not replace it; None stays None)",
    )
    run.expect(await run.call(store, "update", room, "bob", first), True, "update of a member")
    run.expect(await run.call(store, "update", room, "ada", None), True, "update to None")
    run.expect(
        await run.call(store, "update", room, "nobody", first), False, "update of a non-member"
    )
    run.expect(
        await run.call(store, "update", run.room("empty"), "ada", first),
        False,
        "update in an unknown room",
    )
    run.expect(
        await run.page(store, room, 0, 10),
        (2, [("ada", None, 2), ("bob", first, 1)]),
        "data after the updates",
    )
    await run.call(store, "remove", room, "c1", i1)
    await run.call(store, "remove", room, "c2", i1)
    run.expect(await run.call(store, "update", room, "ada", first), False, "update after a leave")
    await run.call(store, "add", room, "c4", "ada", second, i1)
    run.expect(
        await run.page(store, room, 0, 1),
        (2, [("ada", second, 1)]),
        "data after a leave and a new join (the old data is gone)",
    )


async def _check_races(run: _PresenceRun) -> None:
    stores = [await run.store() for _ in range(4)]
    room = run.room("race")
    instances = [run.instance(f"i{n}") for n in range(len(stores))]
    for round_ in range(10):
        user = f"user{round_}"
        added = await asyncio.gather(
            *(
                run.call(s, "add", room, f"{user}-c{n}", user, None, instances[n])
                for n, s in enumerate(stores)
            )
        )
        run.expect(
            (added.count(True), added.count(False)),
            (1, len(stores) - 1),
            f"concurrent adds of {user}: (first, not first)",
        )
        removed = await asyncio.gather(
            *(
                run.call(s, "remove", room, f"{user}-c{n}", instances[n])
                for n, s in enumerate(stores)
            )
        )
        run.expect(
            ([r for r in removed if r is not None], removed.count(None)),
            ([user], len(stores) - 1),
            f"concurrent removes of {user} (one last)",
        )
    await run.counted(stores[0], room, 0, 0)


async def _check_heartbeat(run: _PresenceRun) -> None:
    store = await run.store()
    alive, brief = run.instance("alive"), run.instance("brief")
    run.expect(await run.call(store, "heartbeat", alive, 60.0), True, "a new instance's heartbeat")
    run.expect(await run.call(store, "heartbeat", alive, 60.0), False, "a known instance's")
    run.expect(await run.call(store, "heartbeat", brief, 0.05), True, "a short heartbeat")
    await run.expired(store, brief, "an instance whose 0.05 s heartbeat ran out")
    expired = await run.call(store, "expired_instances")
    if alive in expired:
        raise run.fail(f"expired_instances() lists {alive!r}, alive for 60 s")
    run.expect(
        await run.call(store, "heartbeat", brief, 60.0),
        False,
        "the heartbeat of an expired instance that was not reaped (it is still known)",
    )
    expired = await run.call(store, "expired_instances")
    if brief in expired:
        raise run.fail("expired_instances() still lists an instance that beat again")


async def _check_reap(run: _PresenceRun) -> None:
    stores = [await run.store() for _ in range(4)]
    store = stores[0]
    dead, survivor = run.instance("dead"), run.instance("survivor")
    reapers = [run.instance(f"reaper{n}") for n in range(len(stores))]
    lobby, hall = run.room("lobby"), run.room("hall")
    await run.call(store, "heartbeat", dead, 0.05)
    await run.call(store, "heartbeat", survivor, 60.0)
    await run.call(store, "add", lobby, "d1", "ada", '{"name":"Ada"}', dead)
    await run.call(store, "add", lobby, "d2", "ada", None, dead)
    await run.call(store, "add", lobby, "d3", "bob", None, dead)
    await run.call(store, "add", lobby, "s1", "bob", None, survivor)
    await run.call(store, "add", hall, "d1", "ada", None, dead)
    await run.call(store, "add", hall, "s2", "cy", None, survivor)
    await run.expired(store, dead, "the dead instance (a 0.05 s heartbeat)")
    results = await asyncio.gather(
        *(run.call(s, "reap", dead, reapers[n]) for n, s in enumerate(stores))
    )
    winners = [r for r in results if r]
    if len(winners) != 1:
        raise run.fail(
            f"{len(stores)} concurrent reaps of one dead instance: {len(winners)} got leaves "
            f"(exactly one reaper must; the others get None or []): {results!r}"
        )
    if any(r not in (None, []) and not isinstance(r, list) for r in results):
        raise run.fail(f"reap() must return a list or None: {results!r}")
    run.expect(
        sorted(winners[0]),
        sorted([(lobby, "ada"), (hall, "ada")]),
        "the (room, user) pairs of the reap (users with a connection elsewhere stay)",
    )
    await run.counted(store, lobby, 1, 1)
    await run.counted(store, hall, 1, 1)
    run.expect(await run.page(store, lobby, 0, 10), (1, [("bob", None, 1)]), "lobby after it")
    if dead in await run.call(store, "expired_instances"):
        raise run.fail("expired_instances() still lists a reaped instance")
    run.expect(await run.call(store, "reap", dead, reapers[0]), [], "reaping it again")
    run.expect(
        await run.call(store, "heartbeat", dead, 60.0),
        True,
        "the heartbeat of a reaped instance (unknown again: it must add its entries again)",
    )
    # A clean shutdown: the instance reaps itself, alive.
    run.expect(
        sorted(await run.call(store, "reap", survivor, survivor)),
        sorted([(lobby, "bob"), (hall, "cy")]),
        "an instance reaping itself at shutdown",
    )
    await run.counted(store, lobby, 0, 0)
    await run.counted(store, hall, 0, 0)
    if survivor in await run.call(store, "expired_instances"):
        raise run.fail("expired_instances() lists an instance that reaped itself")
    run.expect(await run.call(store, "heartbeat", survivor, 60.0), True, "its heartbeat after")


async def _check_clean_removal(run: _PresenceRun) -> None:
    stores = [await run.store() for _ in range(2)]
    room, i1, i2 = run.room("clean"), run.instance("i1"), run.instance("i2")
    await run.call(stores[0], "add", room, "a", "ada", '{"name":"Ada"}', i1)
    await run.call(stores[1], "add", room, "b", "ada", None, i2)
    await run.call(stores[1], "add", room, "c", "bob", None, i2)
    await run.counted(stores[1], room, 3, 2)
    run.expect(await run.call(stores[1], "remove", room, "a", i1), None, "remove of ada's first")
    run.expect(await run.call(stores[0], "remove", room, "b", i2), "ada", "her last, elsewhere")
    run.expect(await run.call(stores[0], "remove", room, "c", i2), "bob", "bob's last")
    for n, s in enumerate(stores):
        await run.counted(s, room, 0, 0)
        run.expect(await run.page(s, room, 0, 10), (0, []), f"members on store {n} when empty")
    run.expect(
        await run.call(stores[1], "add", room, "d", "ada", None, i2),
        True,
        "a join into the emptied room (nothing of the old entries is left)",
    )
    run.expect(await run.page(stores[0], room, 0, 10), (1, [("ada", None, 1)]), "its members")


_PRESENCE_CHECKS: tuple[tuple[str, Callable[[_PresenceRun], Awaitable[None]]], ...] = (
    ("first-last", _check_first_and_last),
    ("pages", _check_counts_and_pages),
    ("data", _check_data),
    ("races", _check_races),
    ("heartbeat", _check_heartbeat),
    ("reap", _check_reap),
    ("clean-removal", _check_clean_removal),
)


async def check_presence_store(
    factory: PresenceStoreFactory,
    *,
    room_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
) -> None:
    """The conformance suite every [`PresenceStore`][wsevents.PresenceStore] must pass.

    ``factory`` is called one or more times per check (sync or async); every store it
    returns must share one medium (the same object, or one per instance on the same Redis
    and key prefix), as the instances of a cluster do. Every method must be ``async``.

    On fresh rooms and instance ids under ``room_prefix`` plus a random run id, it checks:
    that an add is first only for a user's first connection and a remove last only for
    their last one (a second connection is neither; adding a present connection and
    removing an absent one change nothing); counts, and pages ordered by user id in code
    point order, with totals, ``limit`` 0 and offsets past the end; that the member data is
    the first connection's until an update; that of concurrent adds (and removes) of one
    user through several stores exactly one is first (last); heartbeats (True for an
    unknown instance) and their expiry; that of concurrent reaps of a dead instance through
    several stores exactly one gets its ``(room, user)`` pairs, users with a connection on
    another instance staying, after which the instance is unknown; an instance reaping
    itself; and that an emptied room is empty everywhere. At the end of each check, every
    instance it used reaps itself, so that nothing it added is left.

    Every call is bounded by ``timeout`` seconds; only the expiry checks wait, for a
    heartbeat of 0.05 s to run out.

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_presence_store(lambda: bus.presence)``
    """
    prefix = f"{room_prefix}{uuid.uuid4().hex[:12]}:"
    await _run_checks(_PRESENCE_CHECKS, lambda name: _PresenceRun(factory, prefix, name, timeout))


# -- capacity stores ------------------------------------------------------------------------

_LONG = 60.0  # seconds: a lease that does not run out during a check


class _CapacityRun(_PresenceRun):
    """One check of [`check_capacity_store`][]: its stores, rooms, places and failures."""

    methods = ("try_acquire", "release", "count", "renew")

    def __init__(self, factory: Callable[[], Any], prefix: str, check: str, timeout: float) -> None:
        super().__init__(factory, prefix, check, timeout)
        self.places: set[tuple[str, str, str]] = set()  # room, member, instance

    def fail(self, text: str) -> AssertionError:
        return AssertionError(f"check_capacity_store [{self.check}]: {text}")

    async def store(self) -> Any:
        store = await _from_factory(self.factory, self.timeout, self.fail)
        for method in self.methods:
            fn = getattr(store, method, None)
            if not callable(fn):
                raise self.fail(f"the factory returned {store!r}, which has no {method}()")
            if not inspect.iscoroutinefunction(fn):
                raise self.fail(f"{method}() is not async (the CapacityStore protocol is async)")
        if self._store is None:
            self._store = store
        return store

    async def acquire(
        self,
        store: Any,
        room: str,
        member: str,
        limit: int,
        instance_id: str,
        lease: float = _LONG,
    ) -> bool:
        self.places.add((room, member, instance_id))
        taken = await self.call(store, "try_acquire", room, member, limit, instance_id, lease)
        if not isinstance(taken, bool):
            raise self.fail(f"try_acquire() must return a bool, got {taken!r}")
        return taken

    async def taken(self, store: Any, room: str, places: int, what: str = "") -> None:
        found = await self.call(store, "count", room)
        self.expect(found, places, f"count({room!r}){' ' + what if what else ''}")

    async def close(self) -> None:
        """Free whatever the check's places still hold."""
        if self._store is None:
            return
        for room, member, instance_id in sorted(self.places):
            await self.call(self._store, "release", room, member, instance_id)


async def _check_limit(run: _CapacityRun) -> None:
    store = await run.store()
    room, i1, i2 = run.room("capped"), run.instance("i1"), run.instance("i2")
    await run.taken(store, room, 0, "of a new room")
    for n in range(3):
        run.expect(await run.acquire(store, room, f"m{n}", 3, i1), True, f"place {n + 1} of 3")
    run.expect(await run.acquire(store, room, "m3", 3, i2), False, "a 4th place of 3")
    await run.taken(store, room, 3, "of a full room")
    run.expect(
        await run.acquire(store, room, "m1", 3, i1),
        True,
        "acquiring again for a member that holds a place (it keeps it, no second one)",
    )
    await run.taken(store, room, 3, "after a member acquired again")
    run.expect(await run.call(store, "release", room, "m1", i2), False, "release by another")
    run.expect(await run.call(store, "release", room, "nobody", i1), False, "unknown member")
    run.expect(await run.call(store, "release", run.room("empty"), "m1", i1), False, "unknown room")
    run.expect(await run.call(store, "release", room, "m1", i1), True, "release of a place")
    run.expect(await run.call(store, "release", room, "m1", i1), False, "release it again")
    await run.taken(store, room, 2, "after a release")
    run.expect(await run.acquire(store, room, "m3", 3, i2), True, "the freed place")
    run.expect(await run.acquire(store, room, "m4", 3, i2), False, "one more")
    other = run.room("other")
    run.expect(
        await run.acquire(store, other, "m4", 1, i2),
        True,
        "a place in another room (rooms are independent)",
    )
    run.expect(await run.acquire(store, other, "m0", 1, i1), False, "a 2nd place of 1")
    run.expect(
        await run.acquire(store, room, "m5", 5, i1),
        True,
        "a place under a higher limit (the limit is the caller's)",
    )
    await run.taken(store, room, 4)
    await run.taken(store, other, 1)


async def _check_capacity_races(run: _CapacityRun) -> None:
    stores = [await run.store() for _ in range(4)]
    instances = [run.instance(f"i{n}") for n in range(len(stores))]
    for round_, limit in enumerate((1, 2, 3, 1, 2, 3)):
        room = run.room(f"race{round_}")
        contenders = 3 * len(stores)
        taken = await asyncio.gather(
            *(
                run.acquire(stores[n % len(stores)], room, f"m{n}", limit, instances[n % 4])
                for n in range(contenders)
            )
        )
        run.expect(
            (taken.count(True), taken.count(False)),
            (limit, contenders - limit),
            f"{contenders} concurrent acquisitions of {limit} place(s): (taken, refused)",
        )
        await run.taken(stores[0], room, limit, "after the race")
        winners = [n for n, ok in enumerate(taken) if ok]
        released = await asyncio.gather(
            *(
                run.call(stores[n % len(stores)], "release", room, f"m{n}", instances[n % 4])
                for n in winners
            )
        )
        run.expect(released, [True] * limit, "the winners' releases")
        await run.taken(stores[1], room, 0, "after the winners left")


async def _check_lease(run: _CapacityRun) -> None:
    stores = [await run.store() for _ in range(2)]
    room = run.room("lease")
    dead, alive = run.instance("dead"), run.instance("alive")
    run.expect(await run.acquire(stores[0], room, "d1", 3, dead, 0.05), True, "a short lease")
    run.expect(await run.acquire(stores[0], room, "d2", 3, dead, 0.05), True, "its 2nd place")
    run.expect(await run.acquire(stores[1], room, "a1", 3, alive), True, "a long lease")
    run.expect(await run.acquire(stores[1], room, "a2", 3, alive), False, "a 4th place of 3")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + run.timeout
    while await run.call(stores[1], "count", room) != 1:
        if loop.time() > deadline:
            raise run.fail(
                f"the places of an instance whose 0.05 s lease ran out were not free within "
                f"{run.timeout} s"
            )
        await asyncio.sleep(0.02)
    run.expect(
        await run.call(stores[0], "renew", room, dead, _LONG),
        False,
        "renew() of a lease that ran out",
    )
    await run.taken(stores[0], room, 1, "after renewing a lost lease (nothing comes back)")
    run.expect(
        await run.call(stores[1], "renew", room, alive, _LONG), True, "renew() of a live one"
    )
    run.expect(
        await run.call(stores[0], "release", room, "d1", dead), False, "release of a lost place"
    )
    run.expect(await run.acquire(stores[0], room, "d1", 3, dead, 0.2), True, "taken again")
    run.expect(
        await run.call(stores[0], "renew", room, dead, _LONG), True, "renew() of the new lease"
    )
    await asyncio.sleep(0.3)  # past the 0.2 s of the acquisition: the renewal holds it
    await run.taken(stores[1], room, 2, "after a renewed lease outlived its acquisition")
    run.expect(
        await run.call(stores[0], "renew", run.room("nowhere"), alive, _LONG),
        False,
        "renew() in a room the instance holds nothing in",
    )


async def _check_capacity_clean(run: _CapacityRun) -> None:
    stores = [await run.store() for _ in range(2)]
    room, i1, i2 = run.room("clean"), run.instance("i1"), run.instance("i2")
    await run.acquire(stores[0], room, "a", 2, i1)
    await run.acquire(stores[1], room, "b", 2, i2)
    run.expect(await run.call(stores[1], "release", room, "a", i1), True, "release elsewhere")
    run.expect(await run.call(stores[0], "release", room, "b", i2), True, "the other one")
    for n, s in enumerate(stores):
        await run.taken(s, room, 0, f"on store {n} when empty")
    run.expect(
        await run.call(stores[0], "renew", room, i1, _LONG), False, "renew() in the emptied room"
    )
    run.expect(await run.acquire(stores[1], room, "c", 1, i2), True, "a place in it again")
    await run.taken(stores[0], room, 1)


_CAPACITY_CHECKS: tuple[tuple[str, Callable[[_CapacityRun], Awaitable[None]]], ...] = (
    ("limit", _check_limit),
    ("races", _check_capacity_races),
    ("lease", _check_lease),
    ("clean", _check_capacity_clean),
)


async def check_capacity_store(
    factory: CapacityStoreFactory,
    *,
    room_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
) -> None:
    """The conformance suite every [`CapacityStore`][wsevents.CapacityStore] must pass.

    ``factory`` is called one or more times per check (sync or async); every store it
    returns must share one medium (the same object, or one per instance on the same Redis
    and key prefix), as the instances of a cluster do. Every method must be ``async``.

    On fresh rooms and instance ids under ``room_prefix`` plus a random run id, it checks:
    that a room takes ``limit`` places and refuses the next, that a member acquiring again
    keeps its one place, that only the holding instance frees a place (unknown members and
    rooms: False) and that a freed place can be taken; that rooms are independent; that of
    concurrent acquisitions through several stores exactly ``limit`` succeed; that the
    places of an instance whose lease ran out are free, [`renew`][wsevents.CapacityStore.renew]
    then answering False, while a renewed lease outlives its acquisition; and that an
    emptied room is empty everywhere. At the end of each check, every place it took is
    released.

    Every call is bounded by ``timeout`` seconds; the lease check waits for a lease of
    0.05 s to run out and past one of 0.2 s.

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_capacity_store(lambda: bus.capacity)``
    """
    prefix = f"{room_prefix}{uuid.uuid4().hex[:12]}:"
    await _run_checks(_CAPACITY_CHECKS, lambda name: _CapacityRun(factory, prefix, name, timeout))


async def _from_factory(
    factory: Callable[[], Any], timeout: float, fail: Callable[[str], AssertionError]
) -> Any:
    """What ``factory`` makes (awaited when it returns an awaitable), within ``timeout``;
    a failure or a timeout is an ``AssertionError`` from ``fail``."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            made = factory()
            if inspect.isawaitable(made):
                made = await made
    except Exception as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            raise fail(f"the factory did not return within {timeout} s") from None
        raise fail(f"the factory raised {exc!r}") from exc
    return made


# -- session stores -------------------------------------------------------------------------

SessionStoreFactory = Callable[[], "SessionStore | Awaitable[SessionStore]"]
"""Makes one more session store on the shared medium, as one more instance would see it
(see [`check_session_store`][])."""

_SESSION_METHODS = ("put", "get", "take", "delete", "incr")


class _SessionRun:
    """One check of [`check_session_store`][]: its stores, keys and failures."""

    def __init__(self, factory: SessionStoreFactory, prefix: str, check: str, timeout: float):
        self.factory = factory
        self.prefix = prefix
        self.check = check
        self.timeout = timeout
        self.keys: set[str] = set()
        self._store: Any = None

    def fail(self, text: str) -> AssertionError:
        return AssertionError(f"check_session_store [{self.check}]: {text}")

    def key(self, name: str) -> str:
        key = f"{self.prefix}{self.check}:{name}"
        self.keys.add(key)
        return key

    async def store(self) -> Any:
        store = await _from_factory(self.factory, self.timeout, self.fail)
        for method in _SESSION_METHODS:
            fn = getattr(store, method, None)
            if not callable(fn):
                raise self.fail(f"the factory returned {store!r}, which has no {method}()")
            if not inspect.iscoroutinefunction(fn):
                raise self.fail(f"{method}() is not async (the SessionStore protocol is async)")
        if self._store is None:
            self._store = store
        return store

    async def call(self, store: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        what = f"{method}({', '.join(repr(a) for a in args)})"
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await getattr(store, method)(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise self.fail(f"{what} did not return within {self.timeout} s") from None
            raise self.fail(f"{what} raised {exc!r}") from exc

    def expect(self, got: Any, expected: Any, what: str) -> None:
        if got != expected:
            raise self.fail(f"{what}: got {got!r}, expected {expected!r}")

    async def close(self) -> None:
        if self._store is not None:
            for key in self.keys:
                await self.call(self._store, "delete", key)


async def _check_values(run: _SessionRun) -> None:
    a, b = await run.store(), await run.store()
    key = run.key("value")
    run.expect(await run.call(a, "get", key), None, "get of a key never set")
    run.expect(await run.call(a, "put", key, "one", 30.0), True, "put")
    run.expect(await run.call(b, "get", key), "one", "get through another store")
    run.expect(await run.call(b, "put", key, "two", None), True, "put over a value")
    run.expect(await run.call(a, "get", key), "two", "get after an overwrite")
    text = 'é{"x": [1, "\\u0000"]}' * 50
    run.expect(await run.call(a, "put", key, text, 30.0), True, "put of a long text")
    run.expect(await run.call(b, "get", key), text, "the text comes back unchanged")
    await run.call(b, "delete", key)
    run.expect(await run.call(a, "get", key), None, "get after delete")
    await run.call(a, "delete", key)  # deleting nothing is fine


async def _check_only_new(run: _SessionRun) -> None:
    a, b = await run.store(), await run.store()
    key = run.key("nx")
    run.expect(await run.call(a, "put", key, "first", 30.0, only_new=True), True, "first put")
    run.expect(await run.call(b, "put", key, "second", 30.0, only_new=True), False, "second")
    run.expect(await run.call(b, "get", key), "first", "the first value stays")
    race = run.key("nx-race")
    stores = [await run.store() for _ in range(5)]
    won = await asyncio.gather(
        *(run.call(s, "put", race, f"v{i}", 30.0, only_new=True) for i, s in enumerate(stores))
    )
    run.expect(won.count(True), 1, f"concurrent puts with only_new that won ({won})")
    winner = f"v{won.index(True)}"
    run.expect(await run.call(a, "get", race), winner, "the winner's value")


async def _check_take(run: _SessionRun) -> None:
    a = await run.store()
    key = run.key("take")
    run.expect(await run.call(a, "take", key), None, "take of nothing")
    await run.call(a, "put", key, "token", 30.0)
    stores = [await run.store() for _ in range(5)]
    got = await asyncio.gather(*(run.call(s, "take", key) for s in stores))
    run.expect(sorted(got, key=str), [None, None, None, None, "token"], "concurrent takes")
    run.expect(await run.call(a, "get", key), None, "get after take")


async def _check_expiry(run: _SessionRun) -> None:
    a, b = await run.store(), await run.store()
    key, nx = run.key("ttl"), run.key("ttl-nx")
    await run.call(a, "put", key, "short", 0.05)
    await run.call(a, "put", nx, "short", 0.05, only_new=True)
    await asyncio.sleep(0.3)
    run.expect(await run.call(b, "get", key), None, "get after the ttl")
    run.expect(await run.call(b, "take", key), None, "take after the ttl")
    run.expect(
        await run.call(b, "put", nx, "again", 30.0, only_new=True), True, "only_new after the ttl"
    )


async def _check_incr(run: _SessionRun) -> None:
    a, b = await run.store(), await run.store()
    key = run.key("counter")
    run.expect(await run.call(a, "incr", key), 1, "incr of nothing")
    run.expect(await run.call(b, "incr", key), 2, "incr through another store")
    stores = [await run.store() for _ in range(5)]
    got = await asyncio.gather(*(run.call(s, "incr", key) for s in stores for _ in range(4)))
    run.expect(sorted(got), list(range(3, 23)), "concurrent incrs (each value once)")
    run.expect(await run.call(a, "get", key), "22", "get of a counter")


_SESSION_CHECKS: tuple[tuple[str, Callable[[_SessionRun], Awaitable[None]]], ...] = (
    ("values", _check_values),
    ("only-new", _check_only_new),
    ("take", _check_take),
    ("expiry", _check_expiry),
    ("incr", _check_incr),
)


async def check_session_store(
    factory: SessionStoreFactory,
    *,
    key_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
) -> None:
    """The conformance suite every [`SessionStore`][wsevents.SessionStore] must pass.

    ``factory`` is called one or more times per check (sync or async); every store it
    returns must share one medium, as the instances of a cluster do. Every method must be
    ``async``.

    On fresh keys under ``key_prefix`` plus a random run id, it checks: that a value put
    through one store is read through another, unchanged (long and non-ASCII text too),
    replaced by a later put, and gone after ``delete``; that of concurrent puts with
    ``only_new`` exactly one wins and its value stays; that of concurrent ``take`` calls
    exactly one gets the value, which is then gone; that values expire after their ttl
    (0.05 s), also for ``only_new``; and that ``incr`` counts from 1 and gives each value
    once under concurrency. Every key a check used is deleted at its end.

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_session_store(lambda: bus.sessions)``
    """
    prefix = f"{key_prefix}{uuid.uuid4().hex[:12]}:"
    await _run_checks(_SESSION_CHECKS, lambda name: _SessionRun(factory, prefix, name, timeout))


# -- history stores -------------------------------------------------------------------------

HistoryStoreFactory = Callable[[], "HistoryStore | Awaitable[HistoryStore]"]
"""Makes one more history store on the shared medium, as one more instance would see it
(see [`check_history_store`][])."""

_HISTORY_METHODS = ("append", "position", "since")
_KEEP = 60.0  # seconds: a ttl that does not run out during a check


class _HistoryRun(_SessionRun):
    """One check of [`check_history_store`][]: its stores, rooms and failures."""

    def fail(self, text: str) -> AssertionError:
        return AssertionError(f"check_history_store [{self.check}]: {text}")

    async def store(self) -> Any:
        store = await _from_factory(self.factory, self.timeout, self.fail)
        for method in _HISTORY_METHODS:
            fn = getattr(store, method, None)
            if not callable(fn):
                raise self.fail(f"the factory returned {store!r}, which has no {method}()")
            if not inspect.iscoroutinefunction(fn):
                raise self.fail(f"{method}() is not async (the HistoryStore protocol is async)")
        return store

    async def since(self, store: Any, room: str, offset: int, epoch: str, ttl: float) -> Any:
        position, entries = await self.call(store, "since", room, offset, epoch, ttl)
        if entries is None:
            return position, None
        return position, [(entry.offset, entry.payload) for entry in entries]

    async def close(self) -> None:
        """History stores have no delete: each check uses rooms of its own."""


async def _check_offsets(run: _HistoryRun) -> None:
    a, b = await run.store(), await run.store()
    room = run.key("offsets")
    start = await run.call(a, "position", room)
    run.expect(start.offset, 0, "the offset of a new room")
    if not isinstance(start.epoch, str) or not start.epoch:
        raise run.fail(f"position() of a new room gave the epoch {start.epoch!r}")
    run.expect(await run.call(b, "position", room), start, "the same room through another store")
    text = 'é{"n": [1, "\\u0000"]}' * 20
    got = [
        await run.call(s, "append", room, f"{text}{i}", 100, _KEEP) for i, s in enumerate((a, b, a))
    ]
    run.expect([p.offset for p in got], [1, 2, 3], "offsets of three appends")
    run.expect({p.epoch for p in got}, {start.epoch}, "the epoch of the appends")
    run.expect(await run.call(b, "position", room), got[-1], "position after the appends")
    other = run.key("other")
    run.expect((await run.call(a, "append", other, "x", 100, _KEEP)).offset, 1, "another room")


async def _check_since(run: _HistoryRun) -> None:
    a, b = await run.store(), await run.store()
    room = run.key("since")
    epoch = (await run.call(a, "position", room)).epoch
    for i in range(1, 6):
        await run.call(a, "append", room, f"p{i}", 100, _KEEP)
    end = await run.call(b, "position", room)
    everything = [(i, f"p{i}") for i in range(1, 6)]
    run.expect(await run.since(b, room, 0, epoch, _KEEP), (end, everything), "since 0")
    run.expect(await run.since(b, room, 3, epoch, _KEEP), (end, everything[3:]), "since 3")
    run.expect(await run.since(b, room, 5, epoch, _KEEP), (end, []), "since the last offset")
    run.expect(await run.since(b, room, 6, epoch, _KEEP), (end, None), "since an offset ahead")
    run.expect(await run.since(b, room, 2, "not-" + epoch, _KEEP), (end, None), "another epoch")


async def _check_history_races(run: _HistoryRun) -> None:
    stores = [await run.store() for _ in range(5)]
    room = run.key("race")
    epoch = (await run.call(stores[0], "position", room)).epoch
    got = await asyncio.gather(
        *(
            run.call(s, "append", room, f"s{i}-{n}", 100, _KEEP)
            for i, s in enumerate(stores)
            for n in range(10)
        )
    )
    run.expect(sorted(p.offset for p in got), list(range(1, 51)), "offsets of 50 racing appends")
    position, entries = await run.since(stores[1], room, 0, epoch, _KEEP)
    if entries is None:
        raise run.fail("since 0 after racing appends gave None")
    run.expect([offset for offset, _ in entries], list(range(1, 51)), "kept in offset order")
    by_offset = {
        p.offset: f"s{i}-{n}"
        for (i, n), p in zip(((i, n) for i in range(5) for n in range(10)), got, strict=True)
    }
    run.expect(dict(entries), by_offset, "each push at the offset its append returned")
    run.expect(position.offset, 50, "position after racing appends")


async def _check_trim(run: _HistoryRun) -> None:
    a = await run.store()
    room = run.key("size")
    epoch = (await run.call(a, "position", room)).epoch
    for i in range(1, 6):
        await run.call(a, "append", room, f"p{i}", 3, _KEEP)
    run.expect((await run.since(a, room, 1, epoch, _KEEP))[1], None, "since a trimmed offset")
    run.expect(
        (await run.since(a, room, 2, epoch, _KEEP))[1],
        [(3, "p3"), (4, "p4"), (5, "p5")],
        "the last 3 of a room of size 3",
    )
    aged = run.key("age")
    epoch = (await run.call(a, "position", aged)).epoch
    await run.call(a, "append", aged, "old", 100, 0.05)
    await asyncio.sleep(0.3)
    run.expect((await run.since(a, aged, 0, epoch, 0.05))[1], None, "since a push older than ttl")
    await run.call(a, "append", aged, "new", 100, 0.05)
    run.expect((await run.since(a, aged, 1, epoch, 0.05))[1], [(2, "new")], "since a fresh push")


_HISTORY_CHECKS: tuple[tuple[str, Callable[[_HistoryRun], Awaitable[None]]], ...] = (
    ("offsets", _check_offsets),
    ("since", _check_since),
    ("races", _check_history_races),
    ("trim", _check_trim),
)


async def check_history_store(
    factory: HistoryStoreFactory,
    *,
    room_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
) -> None:
    """The conformance suite every [`HistoryStore`][wsevents.HistoryStore] must pass.

    ``factory`` is called one or more times per check (sync or async); every store it
    returns must share one medium, as the instances of a cluster do. Every method must be
    ``async``.

    On fresh rooms under ``room_prefix`` plus a random run id, it checks: that a new room
    is at offset 0 with a non-empty epoch, the same through every store, and that appends
    through several stores get offsets 1, 2, 3 in that epoch; that ``since`` gives every
    kept push after an offset, in order and unchanged (long and non-ASCII text too), an
    empty list at the last offset and None for an offset ahead or another epoch; that of
    50 racing appends through 5 stores each gets its own offset, 1 to 50, with its push
    kept at that offset; and that pushes trimmed by size, or older than the ttl (0.05 s),
    make ``since`` give None while later ones are still given. History stores have no
    delete: the rooms are left behind (a Redis store's keys expire).

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_history_store(lambda: bus.history)``
    """
    prefix = f"{room_prefix}{uuid.uuid4().hex[:12]}:"
    for name, check in _HISTORY_CHECKS:
        run = _HistoryRun(cast("SessionStoreFactory", factory), prefix, name, timeout)
        await check(run)


# -- rate-limit stores ----------------------------------------------------------------------

RateLimitStoreFactory = Callable[[], "RateLimitStore | Awaitable[RateLimitStore]"]
"""Makes one more rate-limit store on the shared medium, as one more instance would see it
(see [`check_rate_limit_store`][])."""


class _RateLimitRun:
    """One check's stores and keys; every failure names the check."""

    def __init__(self, factory: RateLimitStoreFactory, prefix: str, name: str, timeout: float):
        self.factory = factory
        self.prefix = prefix
        self.name = name
        self.timeout = timeout

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"rate-limit store conformance [{self.name}]: {message}")

    async def store(self) -> RateLimitStore:
        made: RateLimitStore = await _from_factory(self.factory, self.timeout, self.fail)
        return made

    def key(self, name: str) -> str:
        return f"{self.prefix}{self.name}:{name}"

    async def take(self, store: RateLimitStore, key: str, capacity: float, refill: float) -> float:
        try:
            async with asyncio.timeout(self.timeout):
                wait: Any = await store.take(key, capacity, refill)
        except TimeoutError:
            raise self.fail(f"take({key!r}) did not return within {self.timeout} s") from None
        except Exception as exc:
            raise self.fail(f"take({key!r}) raised {exc!r}") from exc
        if not isinstance(wait, int | float) or wait < 0:
            raise self.fail(f"take({key!r}) returned {wait!r}, not a number >= 0")
        return float(wait)


async def _check_bucket(run: _RateLimitRun) -> None:
    # A missing bucket is full: ``capacity`` takes, then a wait of about 1 / refill; a
    # refused take consumes nothing; other keys are untouched.
    store = await run.store()
    key = run.key("a")
    waits = [await run.take(store, key, 3.0, 1.0) for _ in range(3)]
    if waits != [0.0, 0.0, 0.0]:
        raise run.fail(f"a fresh bucket of 3 refused a take: {waits}")
    first = await run.take(store, key, 3.0, 1.0)
    if not 0.5 < first <= 1.0:
        raise run.fail(f"an empty bucket refilling 1/s gave a wait of {first}, not ~1 s")
    second = await run.take(store, key, 3.0, 1.0)
    if not 0.0 < second <= first:
        raise run.fail(f"a refused take consumed a token: waits {first} then {second}")
    if await run.take(store, run.key("b"), 3.0, 1.0) != 0.0:
        raise run.fail("an empty bucket refused a take of another key")


async def _check_refill(run: _RateLimitRun) -> None:
    # Tokens come back at ``refill`` a second, never beyond ``capacity``.
    store = await run.store()
    key = run.key("fast")
    if await run.take(store, key, 1.0, 20.0) != 0.0:
        raise run.fail("a fresh bucket refused a take")
    wait = await run.take(store, key, 1.0, 20.0)
    if not 0.0 < wait <= 0.05:
        raise run.fail(f"an empty bucket refilling 20/s gave a wait of {wait}, not <= 0.05 s")
    await asyncio.sleep(wait + 0.05)
    if await run.take(store, key, 1.0, 20.0) != 0.0:
        raise run.fail(f"no token {wait + 0.05:.3f} s after a wait of {wait}")
    key = run.key("capped")
    for _ in range(2):
        await run.take(store, key, 2.0, 100.0)
    await asyncio.sleep(0.1)  # 10 tokens' worth at 100/s: the bucket holds 2
    waits = [await run.take(store, key, 2.0, 50.0) for _ in range(3)]
    if waits[:2] != [0.0, 0.0] or not waits[2] > 0.0:
        raise run.fail(f"a bucket of 2 refilled past its capacity: takes gave {waits}")


async def _check_shared(run: _RateLimitRun) -> None:
    # One bucket for every store of the medium, and takes are atomic across them: of 30
    # concurrent takes on a bucket of 5 through 3 stores, exactly 5 succeed.
    stores = [await run.store() for _ in range(3)]
    key = run.key("shared")
    if await run.take(stores[0], key, 1.0, 1.0) != 0.0:
        raise run.fail("a fresh bucket refused a take")
    if not await run.take(stores[1], key, 1.0, 1.0) > 0.0:
        raise run.fail("a bucket emptied through one store gave a token through another")
    key = run.key("race")
    waits = await asyncio.gather(*(run.take(stores[i % 3], key, 5.0, 0.5) for i in range(30)))
    taken = sum(1 for wait in waits if wait == 0.0)
    if taken != 5:
        raise run.fail(f"{taken} of 30 concurrent takes on a bucket of 5 succeeded, not 5")


_RATE_LIMIT_CHECKS: tuple[tuple[str, Callable[[_RateLimitRun], Awaitable[None]]], ...] = (
    ("bucket", _check_bucket),
    ("refill", _check_refill),
    ("shared", _check_shared),
)


async def check_rate_limit_store(
    factory: RateLimitStoreFactory,
    *,
    key_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
) -> None:
    """The conformance suite every [`RateLimitStore`][wsevents.RateLimitStore] must pass.

    ``factory`` is called one or more times per check (sync or async); every store it
    returns must share one medium (the same object, or one per instance on the same Redis
    and key prefix), as the instances of a cluster do.

    On fresh keys under ``key_prefix`` plus a random run id, it checks: that a missing
    bucket is full (``capacity`` takes succeed), that the next take returns the wait until
    a token is free (about ``1 / refill``), that a refused take consumes nothing and that
    keys are independent; that tokens come back at ``refill`` a second and never beyond
    ``capacity``; that every store sees one bucket, and that of 30 concurrent takes on a
    bucket of 5 through 3 stores exactly 5 succeed. The buckets it uses refill within a
    few seconds (a store that expires full buckets is left empty).

    Every call is bounded by ``timeout`` seconds; the refill checks sleep about 0.2 s.

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_rate_limit_store(lambda: bus.rate_limits)``
    """
    prefix = f"{key_prefix}{uuid.uuid4().hex[:12]}:"
    for name, check in _RATE_LIMIT_CHECKS:
        await check(_RateLimitRun(factory, prefix, name, timeout))

"""RedisTransport against a real Redis: conformance, prefixing, failures, reconnection."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from wsevents import ConnectionDirectory, TransportError
from wsevents.testing import check_transport
from wsevents.transports.redis import RedisTransport, redact_url

from .redis_support import (
    REDIS_URL,
    Events,
    ThrowawayRedis,
    clients_named,
    free_port,
    pubsub_clients_named,
    unique,
    wait_until,
)

# The fixtures admin, prefix and throwaway_redis.
pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., RedisTransport]]:
    """``make(url=REDIS_URL, **options)``: a transport closed at the end of the test."""
    made: list[RedisTransport] = []

    def build(url: str = REDIS_URL, **options: Any) -> RedisTransport:
        transport = RedisTransport.from_url(url, **options)
        made.append(transport)
        return transport

    yield build
    for transport in made:
        await transport.close()


class Inbox:
    """A subscriber handler recording payloads, with a way to wait for a count."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, payload: str) -> None:
        self.payloads.append(payload)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.payloads) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.payloads


# -- conformance and basics -----------------------------------------------------------------


async def test_redis_transport_passes_the_conformance_suite(prefix: str) -> None:
    await check_transport(lambda: RedisTransport.from_url(REDIS_URL, prefix=prefix))


def test_import_wsevents_does_not_import_redis_until_the_transport_is_asked_for() -> None:
    script = """
import sys
import wsevents, wsevents.transports
assert "redis" not in sys.modules, "import wsevents loaded redis"
from wsevents.transports import RedisTransport
assert "redis" in sys.modules
from wsevents.transports.redis import RedisTransport as Direct
assert RedisTransport is Direct
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_unknown_attribute_of_transports_package_raises_attribute_error() -> None:
    import wsevents.transports

    with pytest.raises(AttributeError):
        _ = wsevents.transports.NoSuchTransport


def test_from_url_rejects_an_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        RedisTransport.from_url("http://127.0.0.1:6379")


@pytest.mark.parametrize(
    "options",
    [
        {"ping_interval": 0},
        {"ping_timeout": -1},
        {"command_timeout": 0},
        {"reconnect_delay": 0},
        {"reconnect_delay": 2.0, "reconnect_max_delay": 1.0},
        {"directory_ttl": 0},
    ],
)
def test_bad_options_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RedisTransport.from_url(REDIS_URL, **options)


async def test_every_channel_name_carries_the_prefix(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    inbox = Inbox()
    await transport.subscribe("ws:room:lobby", inbox)
    channels = {c.decode() for c in await admin.pubsub_channels(prefix + "*")}
    assert prefix + "ws:room:lobby" in channels
    assert all(c.startswith(prefix) for c in channels)
    # A publish on the bare name is not seen; the prefixed one published after it is.
    await admin.publish("ws:room:lobby", "bare")
    await admin.publish(prefix + "ws:room:lobby", "prefixed")
    assert await inbox.wait_for(1) == ["prefixed"]
    assert transport.channels == frozenset({"ws:room:lobby"})


async def test_one_pubsub_connection_serves_every_channel(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    name = unique("wsevents-one")
    transport = make(prefix=prefix, client_name=name)
    for room in ("a", "b", "c"):
        await transport.subscribe(f"ws:room:{room}", Inbox())
    pubsub = await pubsub_clients_named(admin, name)
    assert len(pubsub) == 1
    # probe + 3 rooms on that one connection
    assert int(pubsub[0]["sub"]) == 4


async def test_publish_right_after_subscribe_from_another_client_is_received(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    await transport.start()
    for i in range(20):
        inbox = Inbox()
        await transport.subscribe(f"fresh:{i}", inbox)
        assert await admin.publish(f"{prefix}fresh:{i}", f"p{i}") == 1
        assert await inbox.wait_for(1) == [f"p{i}"]


async def test_unsubscribe_removes_the_channel_from_redis(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    await transport.subscribe("gone", Inbox())
    await transport.unsubscribe("gone")
    await transport.unsubscribe("gone")  # twice is harmless
    await wait_until(
        lambda: _numsub(admin, prefix + "gone", 0), what="Redis still lists the subscription"
    )
    assert transport.channels == frozenset()


async def _numsub(admin: aioredis.Redis, channel: str, expected: int) -> bool:
    counts = dict(await admin.pubsub_numsub(channel))
    return int(counts.get(channel.encode(), 0)) == expected


async def test_slow_async_handler_does_not_block_another_channel(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    release = asyncio.Event()
    slow_got: list[str] = []

    async def slow(payload: str) -> None:
        await release.wait()
        slow_got.append(payload)

    fast = Inbox()
    await transport.subscribe("slow", slow)
    await transport.subscribe("fast", fast)
    await admin.publish(prefix + "slow", "s1")
    await admin.publish(prefix + "slow", "s2")
    await admin.publish(prefix + "fast", "f1")
    # The fast channel is served while the slow handler is still stuck on s1.
    assert await fast.wait_for(1) == ["f1"]
    assert slow_got == []
    release.set()
    await wait_until(lambda: slow_got == ["s1", "s2"], what="slow handler order")


async def test_failing_handler_is_logged_and_later_payloads_still_arrive(
    make: Callable[..., RedisTransport],
    admin: aioredis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = make(prefix=prefix)
    inbox = Inbox()

    def handler(payload: str) -> None:
        if payload == "boom":
            raise RuntimeError("handler bug")
        inbox(payload)

    async def async_handler(payload: str) -> None:
        handler(payload)

    await transport.subscribe("sync", handler)
    await transport.subscribe("async", async_handler)
    for channel in ("sync", "async"):
        await admin.publish(prefix + channel, "boom")
        await admin.publish(prefix + channel, "after")
    assert sorted(await inbox.wait_for(2)) == ["after", "after"]
    assert sum("subscriber of" in r.getMessage() for r in caplog.records) == 2


async def test_non_utf8_payload_is_dropped_and_the_next_one_delivered(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    inbox = Inbox()
    await transport.subscribe("bin", inbox)
    await admin.publish(prefix + "bin", b"\xff\xfe")
    await admin.publish(prefix + "bin", "ok")
    assert await inbox.wait_for(1) == ["ok"]


async def test_subscribing_again_replaces_the_handler(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    first, second = Inbox(), Inbox()
    await transport.subscribe("swap", first)
    await transport.subscribe("swap", second)
    await admin.publish(prefix + "swap", "x")
    assert await second.wait_for(1) == ["x"]
    assert first.payloads == []


async def test_health_is_true_when_a_probe_round_trips(
    make: Callable[..., RedisTransport], prefix: str
) -> None:
    transport = make(prefix=prefix)
    assert await transport.health() is False  # not started
    await transport.start()
    assert transport.connected
    assert await transport.health() is True


async def test_a_client_passed_in_stays_open_after_close(prefix: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    transport = RedisTransport(client, prefix=prefix)
    await transport.subscribe("x", Inbox())
    await transport.close()
    assert await client.ping() is True
    await client.aclose()


@pytest.mark.parametrize("bound", [3, None])
async def test_a_burst_of_commands_keeps_at_most_max_connections_to_redis(
    make: Callable[..., RedisTransport], prefix: str, admin: aioredis.Redis, bound: int | None
) -> None:
    name = unique("pool")
    transport = make(prefix=prefix, max_connections=bound, client_name=name)
    await transport.start()
    ids = [unique("conn") for _ in range(40)]
    await asyncio.gather(*(transport.register_connection(i, "instance-a") for i in ids))
    found = await asyncio.gather(*(transport.locate_connection(i) for i in ids))
    assert found == ["instance-a"] * 40  # every command ran, those that waited too
    pooled = [c for c in await clients_named(admin, name) if "P" not in str(c.get("flags"))]
    if bound is None:
        assert len(pooled) > 3  # redis-py's own pool grows with the burst
    else:
        assert 1 <= len(pooled) <= bound
    await asyncio.gather(*(transport.unregister_connection(i) for i in ids))


def test_max_connections_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        RedisTransport.from_url(REDIS_URL, max_connections=0)


async def test_client_options_of_redis_py_keep_its_pool_and_max_connections_sets_the_bound(
    make: Callable[..., RedisTransport],
) -> None:
    single = make(single_connection_client=True)
    assert not isinstance(single.client.connection_pool, aioredis.BlockingConnectionPool)
    pool = make(max_connections=5).client.connection_pool
    assert isinstance(pool, aioredis.BlockingConnectionPool) and pool.max_connections == 5
    default = make().client.connection_pool
    assert isinstance(default, aioredis.BlockingConnectionPool)
    assert default.max_connections == 64


# -- failures -------------------------------------------------------------------------------


async def test_publish_to_an_unreachable_redis_raises_transport_error_and_counts(
    make: Callable[..., RedisTransport],
) -> None:
    events = Events()
    transport = make(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.3, command_timeout=1.0)
    transport.add_state_listener(events)
    started = time.monotonic()
    await transport.start()  # returns although Redis is not there
    assert await events.wait_for(1) == [False]
    inbox = Inbox()
    await transport.subscribe("kept", inbox)  # does not raise: kept for later
    assert transport.channels == frozenset({"kept"})
    with pytest.raises(TransportError) as first:
        await transport.publish("x", "1")
    assert first.value.__cause__ is not None
    # Known down and already failed: the next one fails at once.
    before = time.monotonic()
    with pytest.raises(TransportError):
        await transport.publish("x", "2")
    assert time.monotonic() - before < 0.5
    assert transport.publish_failures == 2
    assert transport.published == 0
    with pytest.raises(TransportError):
        await transport.locate_connection("anyone")
    assert await transport.health() is False
    assert time.monotonic() - started < 10


SECRET = "s3cret-pw"


async def test_unreachable_redis_is_reported_with_the_redacted_url_and_the_cause(
    make: Callable[..., RedisTransport], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url, redacted = f"redis://:{SECRET}@127.0.0.1:{port}/0", f"redis://:***@127.0.0.1:{port}/0"
    cause = f"connecting to 127.0.0.1:{port}"
    transport = make(url, connect_timeout=0.3, command_timeout=1.0)
    assert transport.url == redacted
    with caplog.at_level(logging.WARNING, logger="wsevents.transports.redis"):
        await transport.start()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # unreachable; did not answer in time
    assert all(redacted in w and cause in w for w in warnings), warnings
    with pytest.raises(TransportError) as first:
        await transport.publish("x", "1")
    assert redacted in str(first.value) and cause in str(first.value)
    with pytest.raises(TransportError) as skipped:
        await transport.publish("x", "2")  # fails at once, still naming URL and cause
    assert redacted in str(skipped.value) and cause in str(skipped.value)
    assert SECRET not in caplog.text + str(first.value) + str(skipped.value)


async def test_fail_fast_start_raises_naming_the_redacted_url_and_the_cause(
    make: Callable[..., RedisTransport], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    transport = make(f"redis://:{SECRET}@127.0.0.1:{port}/0", connect_timeout=0.3, fail_fast=True)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="wsevents.transports.redis"),
        pytest.raises(TransportError) as info,
    ):
        await transport.start()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(
        f"Redis at redis://:***@127.0.0.1:{port}/0 did not answer within 0.3 s"
    )
    assert f"connecting to 127.0.0.1:{port}" in message
    assert SECRET not in message
    assert caplog.records == []  # the error says it all; no warning before it
    assert transport.connected is False


async def test_fail_fast_start_returns_when_redis_answers(
    make: Callable[..., RedisTransport], prefix: str
) -> None:
    transport = make(prefix=prefix, fail_fast=True)
    await transport.start()
    assert transport.connected


def test_url_of_a_client_passed_in_names_no_credentials() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=6390, db=3, password=SECRET)
    assert RedisTransport(client).url == "redis://127.0.0.1:6390/3"
    unix = aioredis.Redis(unix_socket_path="/run/redis.sock", password=SECRET)
    assert RedisTransport(unix).url == "unix:///run/redis.sock"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("redis://user@h/0", "redis://user@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://h/0?db=1&password=pw", "redis://h/0?db=1&password=***"),
        ("redis://:p/w@h:1/0", "redis://:***@h:1/0"),
        ("redis://:pw@[::1/0", "redis://:***@[::1/0"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


async def test_closed_transport_refuses_to_publish(
    make: Callable[..., RedisTransport], prefix: str
) -> None:
    transport = make(prefix=prefix)
    await transport.start()
    await transport.close()
    with pytest.raises(TransportError):
        await transport.publish("x", "late")
    with pytest.raises(TransportError):
        await transport.locate_connection("c")
    await transport.register_connection("c", "i")  # no-op, no reconnection
    await transport.unregister_connection("c")
    assert transport.publish_failures == 1


async def test_async_state_listener_failure_is_logged(
    make: Callable[..., RedisTransport], caplog: pytest.LogCaptureFixture
) -> None:
    called = asyncio.Event()

    async def broken(up: bool) -> None:
        called.set()
        raise RuntimeError("listener bug")

    def also_broken(up: bool) -> None:
        raise RuntimeError("sync listener bug")

    transport = make(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    transport.add_state_listener(broken)
    transport.add_state_listener(also_broken)
    transport.remove_state_listener(lambda up: None)  # unknown: ignored
    await transport.start()
    await asyncio.wait_for(called.wait(), 5)
    await wait_until(
        lambda: sum("listener failed" in r.getMessage() for r in caplog.records) == 2,
        what="both listener failures logged",
    )


# -- the directory --------------------------------------------------------------------------


async def test_directory_locates_a_connection_until_it_is_unregistered(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    a, b = make(prefix=prefix), make(prefix=prefix)
    await a.start()
    await a.register_connection("c1", "instance-a")
    assert await b.locate_connection("c1") == "instance-a"
    ttl = await admin.pttl(prefix + "conn:c1")
    assert 0 < ttl <= 30_000
    await a.unregister_connection("c1")
    assert await b.locate_connection("c1") is None
    assert await b.locate_connection("never-seen") is None


async def test_capabilities_hand_over_a_directory_and_state_events_of_their_own(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    name = unique("wsevents-caps")
    a = make(prefix=prefix, client_name=name, reconnect_max_delay=0.5)
    b = make(prefix=prefix)
    await a.start()
    caps = a.capabilities()
    directory, state_events = caps.directory, caps.state_events
    assert directory is not None and directory is not a
    assert isinstance(directory, ConnectionDirectory)
    # One directory, whichever way it is reached: b sees what a's capability wrote.
    await directory.register_connection("c1", "instance-a")
    assert await b.locate_connection("c1") == "instance-a"
    await a.unregister_connection("c1")
    assert await directory.locate_connection("c1") is None
    assert state_events is not None and state_events is not a
    events = Events()
    state_events.add_state_listener(events)
    (pubsub,) = await pubsub_clients_named(admin, name)
    await admin.client_kill_filter(_id=pubsub["id"])
    assert await events.wait_for(2) == [False, True]
    state_events.remove_state_listener(events)
    (pubsub,) = await pubsub_clients_named(admin, name)
    await admin.client_kill_filter(_id=pubsub["id"])
    # The listener is gone: the next outage reaches only the transport's counters.
    await wait_until(lambda: a.reconnects == 2, what="the second reconnection")
    assert events.seen == [False, True]


async def test_directory_entry_of_a_crashed_instance_expires(
    make: Callable[..., RedisTransport], prefix: str
) -> None:
    live, crashed = make(prefix=prefix, directory_ttl=0.6), make(prefix=prefix)
    await live.start()
    await crashed.start()
    await live.register_connection("alive", "live")
    # A crash: the process stops refreshing and never unregisters.
    crashed_ttl = make(prefix=prefix, directory_ttl=0.6)
    await crashed_ttl.start()
    await crashed_ttl.register_connection("dead", "crashed")
    assert crashed_ttl._refresh_task is not None
    crashed_ttl._refresh_task.cancel()
    assert await crashed.locate_connection("dead") == "crashed"

    async def dead_gone() -> bool:
        return await crashed.locate_connection("dead") is None

    await wait_until(dead_gone, timeout=5, what="the crashed entry expires")
    # The live instance kept refreshing its own (several TTLs have passed).
    assert await crashed.locate_connection("alive") == "live"


async def test_directory_entries_lost_by_redis_are_written_again(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix, directory_ttl=0.6)
    await transport.start()
    await transport.register_connection("c1", "me")
    await admin.delete(prefix + "conn:c1")  # as a Redis restarted without persistence

    async def back() -> bool:
        return await admin.get(prefix + "conn:c1") == b"me"

    await wait_until(back, timeout=5, what="the refresh rewrites the lost entry")


async def test_close_deletes_this_instance_directory_entries(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    transport = make(prefix=prefix)
    await transport.start()
    for i in range(3):
        await transport.register_connection(f"c{i}", "me")
    assert len([k async for k in admin.scan_iter(match=prefix + "conn:*")]) == 3
    await transport.close()
    assert [k async for k in admin.scan_iter(match=prefix + "conn:*")] == []


# -- reconnection ---------------------------------------------------------------------------


async def test_killed_pubsub_connection_is_restored_without_leaking(
    make: Callable[..., RedisTransport], admin: aioredis.Redis, prefix: str
) -> None:
    name = unique("wsevents-kill")
    events = Events()
    transport = make(prefix=prefix, client_name=name, reconnect_max_delay=0.5)
    transport.add_state_listener(events)
    inbox = Inbox()
    await transport.subscribe("room", inbox)
    await transport.publish("warmup", "x")  # one pooled connection for publishing
    baseline = len(await clients_named(admin, name))
    for round_ in range(3):
        (pubsub,) = await pubsub_clients_named(admin, name)
        await admin.client_kill_filter(_id=pubsub["id"])
        assert await events.wait_for(2 * round_ + 2) == [False, True] * (round_ + 1)
        await transport.publish("room", f"after-kill-{round_}")
        assert (await inbox.wait_for(round_ + 1))[-1] == f"after-kill-{round_}"
    assert transport.reconnects == 3
    assert len(await pubsub_clients_named(admin, name)) == 1
    assert len(await clients_named(admin, name)) == baseline


async def test_redis_restart_restores_subscriptions_and_directory(
    make: Callable[..., RedisTransport], throwaway_redis: ThrowawayRedis
) -> None:
    events = Events()
    name = unique("wsevents-restart")
    transport = make(
        throwaway_redis.url,
        client_name=name,
        reconnect_delay=0.05,
        reconnect_max_delay=0.5,
        connect_timeout=1.0,
        command_timeout=1.0,
        directory_ttl=30,
    )
    transport.add_state_listener(events)
    inbox = Inbox()
    await transport.subscribe("room", inbox)
    await transport.register_connection("c1", "me")
    await throwaway_redis.stop()
    assert await events.wait_for(1) == [False]
    with pytest.raises(TransportError):
        await transport.publish("room", "lost")
    await transport.register_connection("c2", "me")  # while down: kept locally
    await throwaway_redis.start()
    assert await events.wait_for(2) == [False, True]
    assert await transport.health() is True
    await transport.publish("room", "back")
    assert await inbox.wait_for(1) == ["back"]

    async def directory_restored() -> bool:
        return [await transport.locate_connection(c) for c in ("c1", "c2")] == ["me", "me"]

    await wait_until(directory_restored, what="directory rewritten into the new Redis")
    private = aioredis.from_url(throwaway_redis.url)
    try:
        assert len(await pubsub_clients_named(private, name)) == 1
        assert len(await clients_named(private, name)) <= 3
    finally:
        await private.aclose()


async def test_unresponsive_pubsub_connection_is_noticed_by_ping(
    make: Callable[..., RedisTransport], throwaway_redis: ThrowawayRedis
) -> None:
    events = Events()
    transport = make(
        throwaway_redis.url,
        ping_interval=0.1,
        ping_timeout=0.3,
        connect_timeout=0.5,
        reconnect_delay=0.05,
        reconnect_max_delay=0.3,
    )
    transport.add_state_listener(events)
    inbox = Inbox()
    await transport.subscribe("room", inbox)
    private = aioredis.from_url(throwaway_redis.url)
    try:
        # The server keeps the socket open but answers nothing for 1.5 s.
        await private.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        assert await events.wait_for(2, timeout=10) == [False, True]
        await private.publish("wsevents:room", "after-pause")
        assert await inbox.wait_for(1) == ["after-pause"]
    finally:
        await private.aclose()


async def test_close_returns_although_the_client_can_lose_cancellations(prefix: str) -> None:
    # With a socket timeout, redis-py sends through asyncio.wait_for, which on Python 3.11
    # may swallow a cancellation: close() must stop its tasks anyway.
    client = aioredis.from_url(REDIS_URL, socket_timeout=5)
    try:
        for _ in range(5):
            transport = RedisTransport(client, prefix=prefix, directory_ttl=0.05)
            await transport.start()
            for i in range(50):
                await transport.register_connection(f"c{i}", "me")  # a busy refresh loop
            await transport.subscribe("x", Inbox())
            async with asyncio.timeout(10):
                await transport.close()
            assert transport._reader_task is None and transport._tasks == set()
    finally:
        await client.aclose()


# -- bursts on one channel over a slow link --------------------------------------------------


class _LatencyProxy:
    """A TCP proxy to the test Redis that holds every chunk sent to Redis for ``delay`` s:
    a link with a long round trip, for real."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            try:
                while chunk := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (
            asyncio.ensure_future(pump(reader, up_writer, self.delay)),
            asyncio.ensure_future(pump(up_reader, writer, 0.0)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_burst_on_one_channel_over_a_slow_link_is_sent_in_batches_in_order(
    make: Callable[..., RedisTransport], prefix: str
) -> None:
    # 200 publishes on one channel at once over a link with a 50 ms round trip, each with a
    # 1 s budget: one round trip per publish would need 10 s; batches need a few.
    proxy = _LatencyProxy(delay=0.05)
    await proxy.start()
    try:
        db = REDIS_URL.rsplit("/", 1)[1] if REDIS_URL.count("/") > 2 else "0"
        slow = make(f"redis://127.0.0.1:{proxy.port}/{db}", prefix=prefix, command_timeout=1.0)
        listener = make(prefix=prefix)
        inbox = Inbox()
        await listener.subscribe("burst", inbox)
        await slow.start()
        await listener.start()
        payloads = [f"m{i}" for i in range(200)]
        results = await asyncio.gather(
            *(slow.publish("burst", p) for p in payloads), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        assert await inbox.wait_for(200) == payloads
    finally:
        await proxy.close()

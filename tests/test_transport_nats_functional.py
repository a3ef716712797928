"""NatsTransport against a real NATS with JetStream: the conformance suites, names, outages."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("nats", reason="the NATS engine needs nats-py: pip install 'wsevents[nats]'")
from hypothesis import given
from hypothesis import strategies as st

from wsevents.exceptions import TransportError
from wsevents.testing import (
    check_capacity_store,
    check_presence_store,
    check_rate_limit_store,
    check_session_store,
    check_transport,
)
from wsevents.transports.nats import (
    NatsTransport,
    _presence,
    decode_token,
    encode_token,
    redact_url,
)

from .nats_support import NATS_URL, ThrowawayNats, free_port
from .redis_support import wait_until

pytest_plugins = ["tests.nats_fixtures"]


@pytest.fixture
async def transports(nats_prefix: str) -> AsyncIterator[Any]:
    made: list[NatsTransport] = []

    async def make(**options: Any) -> NatsTransport:
        options.setdefault("prefix", nats_prefix)
        transport = NatsTransport.from_url(options.pop("url", NATS_URL), **options)
        await transport.start()
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


async def test_the_transport_passes_the_conformance_suite(transports: Any) -> None:
    await check_transport(transports)


async def test_the_presence_store_passes_the_conformance_suite(transports: Any) -> None:
    async def store() -> Any:
        return (await transports()).capabilities().presence

    await check_presence_store(store)


async def test_the_capacity_store_passes_the_conformance_suite(transports: Any) -> None:
    async def store() -> Any:
        return (await transports()).capabilities().capacity

    await check_capacity_store(store)


async def test_the_session_store_passes_the_conformance_suite(transports: Any) -> None:
    async def store() -> Any:
        return (await transports()).capabilities().sessions

    await check_session_store(store)


async def test_the_rate_limit_store_passes_the_conformance_suite(transports: Any) -> None:
    async def store() -> Any:
        return (await transports()).capabilities().rate_limits

    await check_rate_limit_store(store)


# -- names -----------------------------------------------------------------------------------

ODD_ROOMS = [
    "/rooms/lobby",
    "a.b.c",
    "*",
    ">",
    "with space",
    "ünïcødé/日本語",
    "",
    "_",
    "_2E",
    "tab\there",
]


@given(st.text())
def test_room_names_encode_to_one_safe_token_and_back(name: str) -> None:
    token = encode_token(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert decode_token(token) == name


def test_distinct_names_never_share_a_token() -> None:
    tokens = {encode_token(name) for name in ODD_ROOMS}
    assert len(tokens) == len(ODD_ROOMS)


@pytest.mark.parametrize("token", ["", "a.b", "_2", "_zz", "a b", "_2e"])
def test_decoding_a_token_that_no_name_makes_fails(token: str) -> None:
    with pytest.raises(ValueError, match="not an encoded name"):
        decode_token(token)


def test_bad_urls_and_options_are_refused_without_io() -> None:
    with pytest.raises(ValueError, match="not a NATS URL"):
        NatsTransport.from_url("redis://u:secret@127.0.0.1:6379")
    with pytest.raises(ValueError, match="not a NATS URL") as caught:
        NatsTransport.from_url("http://u:secret@127.0.0.1:6379")
    assert "secret" not in str(caught.value)
    with pytest.raises(ValueError):
        NatsTransport.from_url(NATS_URL, command_timeout=0)
    with pytest.raises(ValueError):
        NatsTransport.from_url("")


def test_urls_are_redacted() -> None:
    assert redact_url("nats://bob:pw@h:4222,nats://t0ken@h2:4223") == (
        "nats://bob:***@h:4222,nats://***@h2:4223"
    )


async def test_rooms_with_subject_characters_stay_apart(transports: Any) -> None:
    a, b = await transports(), await transports()
    got: dict[str, list[str]] = {room: [] for room in ODD_ROOMS}
    for room in ODD_ROOMS:
        await b.subscribe(f"ws:room:{room}", got[room].append)
    for room in ODD_ROOMS:
        await a.publish(f"ws:room:{room}", f"to {room}")
    await wait_until(lambda: all(got.values()), what="every room's push")
    # Each room's barrier arrives after anything stray published on that subject.
    for room in ODD_ROOMS:
        await a.publish(f"ws:room:{room}", "barrier")
    await wait_until(lambda: all(v[-1] == "barrier" for v in got.values()), what="barriers")
    assert got == {room: [f"to {room}", "barrier"] for room in ODD_ROOMS}


# -- directory -------------------------------------------------------------------------------


async def test_the_directory_is_shared_and_forgets_closed_connections(transports: Any) -> None:
    a, b = await transports(), await transports()
    await a.register_connection("c/1.*", "instance-a")
    assert await b.locate_connection("c/1.*") == "instance-a"
    assert await b.locate_connection("nobody") is None
    await a.unregister_connection("c/1.*")
    assert await b.locate_connection("c/1.*") is None
    await a.register_connection("c2", "instance-a")
    await a.close()  # a closing transport deletes its entries
    assert await b.locate_connection("c2") is None


async def test_directory_entries_of_a_dead_instance_expire(transports: Any) -> None:
    a = await transports(directory_ttl=1.0)
    b = await transports(directory_ttl=1.0)
    await a.register_connection("kept", "instance-a")
    await asyncio.sleep(1.5)  # refreshed every third of the TTL while a lives
    assert await b.locate_connection("kept") == "instance-a"
    a._directory.closed = True  # stops refreshing, as a crashed instance would
    await a._directory.stop()
    await a.register_connection("x", "y")  # ignored once closed
    await b._jet.bucket("directory")
    kv = await b._jet.bucket("directory")
    await kv.put(encode_token("orphan"), b'"dead"')
    await wait_until(
        lambda: _gone(b, "orphan"), timeout=5.0, what="the orphan entry to expire with the TTL"
    )


async def _gone(transport: NatsTransport, cid: str) -> bool:
    return await transport.locate_connection(cid) is None


# -- history ---------------------------------------------------------------------------------


async def test_history_offsets_are_atomic_across_instances(transports: Any) -> None:
    stores = [(await transports()).capabilities().history for _ in range(3)]
    room = "/feed/rooms/a.b *"
    start = await stores[0].position(room)
    assert start.offset == 0
    assert (await stores[1].position(room)) == start  # every instance sees the same epoch
    positions = await asyncio.gather(
        *(stores[n % 3].append(room, f"p{n}", 100, 60.0) for n in range(30))
    )
    assert sorted(p.offset for p in positions) == list(range(1, 31))
    assert {p.epoch for p in positions} == {start.epoch}
    position, entries = await stores[2].since(room, 0, start.epoch, 60.0)
    assert position.offset == 30
    assert entries is not None
    assert [e.offset for e in entries] == list(range(1, 31))
    by_offset = {p.offset: f"p{n}" for n, p in enumerate(positions)}
    assert [e.payload for e in entries] == [by_offset[o] for o in range(1, 31)]
    _, tail = await stores[1].since(room, 28, start.epoch, 60.0)
    assert [e.offset for e in tail or []] == [29, 30]
    assert (await stores[1].since(room, 30, start.epoch, 60.0))[1] == []


async def test_history_refuses_what_it_cannot_give(transports: Any) -> None:
    store = (await transports()).capabilities().history
    room = "sized"
    for n in range(10):
        position = await store.append(room, f"p{n}", 4, 60.0)
    epoch = position.epoch
    assert (await store.since(room, 6, epoch, 60.0))[1] is not None  # 7..10: the last 4
    assert [e.offset for e in (await store.since(room, 6, epoch, 60.0))[1] or []] == [7, 8, 9, 10]
    assert (await store.since(room, 5, epoch, 60.0))[1] is None  # 6 was trimmed by size
    assert (await store.since(room, 11, epoch, 60.0))[1] is None  # ahead of the stream
    assert (await store.since(room, -1, epoch, 60.0))[1] is None
    assert (await store.since(room, 8, "another-epoch", 60.0))[1] is None
    await asyncio.sleep(0.3)
    await store.append(room, "fresh", 4, 60.0)
    assert (await store.since(room, 9, epoch, 0.2))[1] is None  # 10 is older than 0.2 s
    assert [e.payload for e in (await store.since(room, 10, epoch, 0.2))[1] or []] == ["fresh"]


async def test_the_epoch_changes_when_the_stream_is_lost(transports: Any) -> None:
    transport = await transports()
    store = transport.capabilities().history
    first = await store.append("lost", "one", 10, 60.0)
    await transport._js.delete_stream(store.stream)
    again = await store.append("lost", "two", 10, 60.0)  # the stream is made again
    assert again.offset == 1
    assert again.epoch != first.epoch
    position, entries = await store.since("lost", 1, first.epoch, 60.0)
    assert position == again
    assert entries is None


# -- outages ---------------------------------------------------------------------------------


async def test_a_restart_is_reported_and_the_subscriptions_come_back(
    transports: Any, throwaway_nats: ThrowawayNats
) -> None:
    a = await transports(url=throwaway_nats.url, reconnect_delay=0.1)
    b = await transports(url=throwaway_nats.url, reconnect_delay=0.1)
    states: list[bool] = []
    a.add_state_listener(states.append)
    got: list[str] = []
    await a.subscribe("ws:room:/r", got.append)
    assert await a.health()
    await b.publish("ws:room:/r", "before")
    await wait_until(lambda: got == ["before"], what="the push before the restart")

    await throwaway_nats.stop()
    await wait_until(lambda: states == [False], what="the loss to be reported")
    assert not a.connected
    assert not await a.health()
    with pytest.raises(TransportError, match="unavailable"):
        await b.publish("ws:room:/r", "lost")
    with pytest.raises(TransportError):
        await b.locate_connection("anyone")
    await a.subscribe("ws:room:/later", got.append)  # kept, made on reconnect

    await throwaway_nats.start()
    await wait_until(lambda: states == [False, True], timeout=10.0, what="the recovery")
    await wait_until(lambda: b.connected, timeout=10.0, what="b's recovery")
    assert a.reconnects == 1
    assert await a.health()
    await b.publish("ws:room:/r", "after")
    await b.publish("ws:room:/later", "later")
    await wait_until(lambda: len(got) >= 3, what="the pushes after the restart")
    await b.publish("ws:room:/r", "barrier")
    await wait_until(lambda: got[-1] == "barrier", what="the barrier")
    assert got == ["before", "after", "later", "barrier"]  # nothing lost is replayed


async def test_start_without_a_server(transports: Any) -> None:
    port = free_port()
    with pytest.raises(TransportError, match="did not answer") as caught:
        await transports(
            url=f"nats://user:secret@127.0.0.1:{port}", connect_timeout=0.5, fail_fast=True
        )
    assert "secret" not in str(caught.value)
    lenient = await transports(url=f"nats://127.0.0.1:{port}", connect_timeout=0.5)
    assert not lenient.connected
    states: list[bool] = []
    lenient.add_state_listener(states.append)
    await lenient.subscribe("ws:broadcast", lambda payload: None)  # kept for later
    with pytest.raises(TransportError):
        await lenient.publish("ws:broadcast", "x")
    assert lenient.publish_failures == 1
    assert lenient.channels == frozenset({"ws:broadcast"})


# -- presence: reapers -------------------------------------------------------------------------


async def test_a_stalled_reapers_claim_is_taken_over(
    transports: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    presence = (await transports()).capabilities().presence
    await presence.heartbeat("dead", 0.05)
    assert await presence.add("/room", "c1", "ada", None, "dead") is True
    await asyncio.sleep(0.1)
    assert "dead" in await presence.expired_instances()
    # A reaper claimed it and stalled (it died before removing anything).
    key = "i." + encode_token("dead")
    await presence.jet.modify(
        "presence", key, lambda doc: ({**doc, "r": "stalled", "t": time.time()}, None)
    )
    assert "dead" not in await presence.expired_instances()
    assert await presence.reap("dead", "other") is None
    assert (await presence.count("/room")).connections == 1
    monkeypatch.setattr(_presence, "CLAIM_TIMEOUT", 0.05)
    await asyncio.sleep(0.1)
    assert "dead" in await presence.expired_instances()
    assert await presence.reap("dead", "other") == [("/room", "ada")]
    assert (await presence.count("/room")).connections == 0
    assert await presence.heartbeat("dead", 60.0) is True  # reaped: unknown again
    assert await presence.reap("dead", "dead") == []


# -- sessions: expired values are swept ----------------------------------------------------------


async def test_expired_session_values_are_swept_by_one_instance(transports: Any) -> None:
    a = await transports(sessions_sweep_interval=0.2)
    b = await transports(sessions_sweep_interval=0.2)
    store = a.capabilities().sessions
    for n in range(5):
        assert await store.put(f"idem:c:{n}", "reply", 0.05)
    assert await store.put("session:kept", "state", 60.0)
    assert await store.incr("counter:kept") == 1
    kv = await a._jet.bucket("sessions")

    async def expired_gone() -> bool:
        keys = {key for key, _, _ in await a._jet.documents(kv)}
        return not any(key.startswith(encode_token("idem:c:")) for key in keys)

    await wait_until(
        lambda: a._sessions.swept + b._sessions.swept >= 5, what="five values to be swept"
    )
    assert await expired_gone()
    assert a._sessions.swept + b._sessions.swept == 5  # each once
    assert await store.get("session:kept") == "state"
    assert await b.capabilities().sessions.incr("counter:kept") == 2
    # Sweeping again finds nothing; a value written with a revision the sweep did not read
    # is never deleted by it.
    assert await a._sessions.sweep() == 0


async def test_a_closed_transport_starts_again(transports: Any) -> None:
    transport = await transports()
    got: list[str] = []
    await transport.subscribe("ws:broadcast", got.append)
    await transport.close()
    assert not transport.connected
    with pytest.raises(TransportError, match="closed"):
        await transport.publish("ws:broadcast", "x")
    with pytest.raises(TransportError, match="closed"):
        await transport.locate_connection("c")
    await transport.start()
    assert transport.connected
    assert await transport.health()
    await transport.subscribe("ws:broadcast", got.append)
    await transport.publish("ws:broadcast", "again")
    await wait_until(lambda: got == ["again"], what="delivery after a restart of the transport")


async def test_concurrent_subscriptions_of_one_channel_deliver_once(transports: Any) -> None:
    a, b = await transports(), await transports()
    first: list[str] = []
    second: list[str] = []
    await asyncio.gather(
        b.subscribe("ws:room:/same", first.append), b.subscribe("ws:room:/same", second.append)
    )
    await a.publish("ws:room:/same", "one")
    await a.publish("ws:room:/same", "barrier")
    await wait_until(lambda: "barrier" in first + second, what="the barrier")
    assert sorted(first + second) == ["barrier", "one"]  # once, to the latest handler


async def test_subscribe_returns_once_the_server_has_it_even_while_nats_py_drains(
    transports: Any,
) -> None:
    """nats-py's flush() writes its PING ahead of a SUB still queued for its flusher (busy
    draining an earlier write): subscribe() must hand the queue over first, or the PONG comes
    back before the server has the subscription and a publish right after is missed."""
    a, b = await transports(), await transports()
    nc = b._nc
    assert nc is not None
    socket = nc._transport
    drain = socket.drain

    async def slow_drain() -> None:
        await asyncio.sleep(0.02)
        await drain()

    socket.drain = slow_drain
    got: dict[str, list[str]] = {}
    channels = [f"drain:{i}:{time.monotonic_ns()}" for i in range(15)]
    for channel in channels:
        await b.publish("drain:noise", "x")  # the flusher is busy draining this one
        await b.subscribe(
            channel, lambda payload, channel=channel: got.setdefault(channel, []).append(payload)
        )
        await a.publish(channel, "right after")
    await wait_until(lambda: len(got) == len(channels), timeout=5.0, what="every publish")
    assert all(got[channel] == ["right after"] for channel in channels)

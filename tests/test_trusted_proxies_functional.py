"""trusted_proxies: the client IP from X-Forwarded-For behind a trusted proxy only, for
Connection.ip, the "ip" rate-limit key and the handshake limit."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import aiohttp
import pytest

from wsevents import RateLimit, WsApp, WsClientError, use_ws_connection
from wsevents.server import client_ip

LOCAL = [ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # An untrusted peer: whatever it says is ignored.
        ("198.51.100.9", ["203.0.113.7"], "198.51.100.9"),
        # A trusted peer without the header is the client.
        ("127.0.0.1", [], "127.0.0.1"),
        # The right-most hop that is not a trusted proxy.
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["1.1.1.1, 203.0.113.7, 10.0.0.5"], "203.0.113.7"),
        ("127.0.0.1", ["1.1.1.1, 203.0.113.7", "10.0.0.5"], "203.0.113.7"),  # two headers
        # Every hop trusted: the left-most.
        ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], "10.0.0.1"),
        # Garbage stops the walk at the hop before it.
        ("127.0.0.1", ["203.0.113.7, unknown"], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.7, nonsense, 10.0.0.3"], "10.0.0.3"),
        ("127.0.0.1", [""], "127.0.0.1"),
        # Ports and IPv6.
        ("127.0.0.1", ["203.0.113.7:5555"], "203.0.113.7"),
        ("127.0.0.1", ["[2001:db9::1]:443"], "2001:db9::1"),
        ("2001:db8::1", ["2001:db9::1, 2001:db8::2"], "2001:db9::1"),
        ("::ffff:10.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # an IPv4-mapped peer
        # No peer (a Unix socket) or a peer that is not an address.
        (None, ["203.0.113.7"], None),
        ("unix", ["203.0.113.7"], "unix"),
    ],
)
def test_client_ip(peer: str | None, headers: list[str], expected: str | None) -> None:
    assert client_ip(peer, headers, LOCAL) == expected


def test_no_trusted_proxy_means_the_peer() -> None:
    assert client_ip("127.0.0.1", ["203.0.113.7"], []) == "127.0.0.1"


def test_bad_trusted_proxies_are_refused() -> None:
    for bad in ("proxy.local", "10.0.0.0/33", ""):
        with pytest.raises(ValueError, match="trusted proxy"):
            WsApp(trusted_proxies=[bad])
    ws = WsApp(trusted_proxies=["127.0.0.1", " 10.1.2.3/8 ", "::1"])
    assert [str(n) for n in ws.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]


def build(**options: Any) -> WsApp:
    ws = WsApp(heartbeat=0, **options)

    @ws.on_message("rpc", "/ip")
    def ip() -> str | None:
        return use_ws_connection().ip

    @ws.on_message("rpc", "/limited", rate_limit=RateLimit(1, per=60, key="ip"))
    def limited() -> str:
        return "ok"

    return ws


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_connection_ip_and_the_ip_key_behind_a_trusted_proxy(ws_client) -> None:
    ws = build(trusted_proxies=["127.0.0.1"])
    a1 = await ws_client(ws, headers=xff("203.0.113.1"))
    a2 = await ws_client(ws, headers=xff("203.0.113.1"))
    b = await ws_client(ws, headers=xff("203.0.113.2"))
    direct = await ws_client(ws)
    assert await a1.call("rpc", "/ip") == "203.0.113.1"
    assert await b.call("rpc", "/ip") == "203.0.113.2"
    assert await direct.call("rpc", "/ip") == "127.0.0.1"
    # One bucket per forwarded address: a1 and a2 share one, b and the proxy have theirs.
    assert await a1.call("rpc", "/limited") == "ok"
    with pytest.raises(WsClientError) as info:
        await a2.call("rpc", "/limited")
    assert info.value.code == 429
    assert await b.call("rpc", "/limited") == "ok"
    assert await direct.call("rpc", "/limited") == "ok"


@pytest.mark.parametrize("trusted", [(), ("10.0.0.0/8",)])
async def test_an_untrusted_peer_cannot_spoof_its_address(ws_client, trusted) -> None:
    ws = build(trusted_proxies=trusted)
    first = await ws_client(ws, headers=xff("203.0.113.1"))
    second = await ws_client(ws, headers=xff("203.0.113.2"))
    assert await first.call("rpc", "/ip") == "127.0.0.1"
    assert await first.call("rpc", "/limited") == "ok"
    # Another X-Forwarded-For does not buy another bucket.
    with pytest.raises(WsClientError) as info:
        await second.call("rpc", "/limited")
    assert info.value.code == 429


async def handshake(server: Any, headers: dict[str, str]) -> int:
    try:
        ws = await server.ws_connect("/ws", headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_the_handshake_limit_counts_the_forwarded_address(aiohttp_client) -> None:
    from aiohttp import web

    from wsevents.server import attach

    trusting = build(trusted_proxies=["127.0.0.0/8"], handshake_rate=RateLimit(2, per=60))
    server = await aiohttp_client(attach(trusting, web.Application()))
    assert [await handshake(server, xff("203.0.113.1")) for _ in range(3)] == [101, 101, 429]
    assert await handshake(server, xff("203.0.113.2")) == 101
    assert await handshake(server, {}) == 101  # the proxy's own address

    # Not trusted: every handshake counts against the peer, whatever the header says.
    plain = build(handshake_rate=RateLimit(2, per=60))
    server = await aiohttp_client(attach(plain, web.Application()))
    statuses = [await handshake(server, xff(f"203.0.113.{i}")) for i in range(3)]
    assert statuses == [101, 101, 429]

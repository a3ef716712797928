"""Several instances on one bus: the cluster harness and the exactly-once assertion."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from ..app import WsApp
from ..cluster import ROOM_CHANNEL_PREFIX
from ..server import attach
from ..transports.base import BroadcastTransport
from ..transports.memory import MemoryBus, MemoryTransport
from .client import WsTestClient

__all__ = [
    "ClusterFactory",
    "WsCluster",
    "assert_delivered_once",
    "serve_cluster",
    "serve_memory_cluster",
]


class WsCluster:
    """Several [`WsApp`][wsevents.WsApp] instances on one [`MemoryBus`][wsevents.MemoryBus],
    or on one backend of any transport.

    Each instance is served on its own test server; clients connect to a chosen instance.
    Made by [`serve_memory_cluster`][], the ``ws_cluster`` fixture, or [`serve_cluster`][]
    (with a transport factory: Redis, NATS...).

    Attributes:
        bus: the shared bus (``bus.subscriber_count(channel)``, ``bus.directory``); None for
            a cluster made by [`serve_cluster`][].
        apps: the instances, in order.
        servers: their pytest-aiohttp test clients, in the same order.
        path: the WebSocket path every instance is mounted on.
    """

    def __init__(
        self, bus: MemoryBus | None, apps: list[WsApp], servers: list[Any], path: str
    ) -> None:
        self.bus = bus
        self.apps = apps
        self.servers = servers
        self.path = path
        self.clients: list[WsTestClient] = []
        self._instance_of: dict[int, int] = {}

    async def connect(
        self,
        instance: int = 0,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> WsTestClient:
        """Open one client on instance number ``instance``, with ``headers`` and the query
        string ``query`` on its upgrade request."""
        ws = await self.servers[instance].ws_connect(self.path, headers=headers, params=query)
        client = WsTestClient(ws)
        self.clients.append(client)
        self._instance_of[id(client)] = instance
        return client

    async def connect_spread(
        self,
        count: int,
        *,
        first: int = 0,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> list[WsTestClient]:
        """Open ``count`` clients round-robin over the instances, starting at ``first``;
        ``headers`` and ``query`` go to every upgrade request, as with [`connect`][]."""
        n = len(self.apps)
        return [
            await self.connect((first + i) % n, headers=headers, query=query) for i in range(count)
        ]

    def instance_of(self, client: WsTestClient) -> int:
        """The number of the instance ``client`` is connected to."""
        return self._instance_of[id(client)]

    def room_subscribers(self, room: str) -> int:
        """How many instances are subscribed to ``room``'s channel on the bus.

        Raises:
            RuntimeError: the cluster is not on a MemoryBus.
        """
        if self.bus is None:
            raise RuntimeError("room_subscribers() needs a cluster on a MemoryBus")
        return self.bus.subscriber_count(ROOM_CHANNEL_PREFIX + room)

    async def close(self) -> None:
        """Close every client (the servers close with the ``aiohttp_client`` fixture)."""
        for client in self.clients:
            await client.close()
        self.clients.clear()


async def serve_memory_cluster(
    aiohttp_client: Any,
    build: Callable[[MemoryTransport], WsApp],
    *,
    instances: int = 3,
    path: str = "/ws",
) -> WsCluster:
    """Start ``instances`` WsApps on one new MemoryBus, each served by ``aiohttp_client``.

    ``build(transport)`` makes one instance and must pass ``transport`` to it (e.g.
    ``lambda t: make_app(transport=t)``); it is called once per instance, so handlers are
    registered on each.

    Raises:
        ValueError: ``build`` returned a WsApp that does not use the given transport.
    """
    bus = MemoryBus()
    apps: list[WsApp] = []
    servers: list[Any] = []
    for _ in range(instances):
        transport = MemoryTransport(bus)
        app = build(transport)
        if app.transport is not transport:
            raise ValueError("build(transport) must create the WsApp with that transport")
        servers.append(await aiohttp_client(attach(app, web.Application(), path)))
        apps.append(app)
    return WsCluster(bus, apps, servers, path)


async def serve_cluster(
    aiohttp_client: Any,
    build: Callable[[Any], WsApp],
    transport: Callable[[], BroadcastTransport | Awaitable[BroadcastTransport]],
    *,
    instances: int = 3,
    path: str = "/ws",
) -> WsCluster:
    """Start ``instances`` WsApps, each with a new transport from ``transport()`` (sync or
    async; every one on the same backend), each served by ``aiohttp_client``.

    ``build(transport)`` makes one instance with that transport, as for
    [`serve_memory_cluster`][]. The transports start and close with their apps (with the
    ``aiohttp_client`` fixture's servers).

    Example:
        ``await serve_cluster(aiohttp_client, make_app, lambda: NatsTransport.from_url(url))``

    Raises:
        ValueError: ``build`` returned a WsApp that does not use the given transport.
    """
    apps: list[WsApp] = []
    servers: list[Any] = []
    for _ in range(instances):
        made = transport()
        instance_transport = await made if inspect.isawaitable(made) else made
        app = build(instance_transport)
        if app.transport is not instance_transport:
            raise ValueError("build(transport) must create the WsApp with that transport")
        servers.append(await aiohttp_client(attach(app, web.Application(), path)))
        apps.append(app)
    return WsCluster(None, apps, servers, path)


ClusterFactory = Callable[..., Awaitable[WsCluster]]
"""What the ``ws_cluster`` fixture yields: ``await ws_cluster(build, instances=3, path="/ws")``."""


async def assert_delivered_once(
    clients: Iterable[WsTestClient],
    expected: Any,
    *,
    excluded: Iterable[WsTestClient] = (),
    quiet: float = 0.2,
    timeout: float = 5.0,
) -> None:
    """Each of ``clients`` received the frame ``expected`` exactly once; ``excluded`` never.

    Waits (up to ``timeout`` seconds) until every client got a frame equal to
    ``expected``, then lets a ``quiet`` window pass so that late duplicates, or a late
    delivery to an excluded client, can arrive. Other frames are put back in the client's
    inbox, in order, for the test to read.

    Raises:
        AssertionError: a client did not get ``expected`` in time, got it more than once,
            or an excluded client got it.
    """
    members = list(clients)
    outsiders = list(excluded)
    seen: dict[int, list[Any]] = {id(c): [] for c in members + outsiders}
    try:
        async with asyncio.timeout(timeout):
            for client in members:
                frames = seen[id(client)]
                while expected not in frames:
                    frames.append(await client._inbox.get())
    except TimeoutError:
        missing = [i for i, c in enumerate(members) if expected not in seen[id(c)]]
        raise AssertionError(
            f"clients {missing} of {len(members)} did not receive {expected!r} within {timeout} s"
        ) from None
    await asyncio.sleep(quiet)
    problems: list[str] = []
    for role, group in (("member", members), ("excluded", outsiders)):
        for i, client in enumerate(group):
            frames = seen[id(client)]
            frames += client.pending_messages()
            count = sum(1 for frame in frames if frame == expected)
            if count != (1 if role == "member" else 0):
                problems.append(f"{role} {i} received it {count} times")
            for frame in frames:  # give the other frames back, in order
                if frame != expected:
                    client._inbox.put_nowait(frame)
    if problems:
        raise AssertionError(f"{expected!r}: " + ", ".join(problems))

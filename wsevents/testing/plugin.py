"""The pytest plugin (entry point ``wsevents``): the ``ws_client`` and ``ws_cluster`` fixtures.

The only module of ``wsevents.testing`` that imports pytest. Both fixtures serve apps with
pytest-aiohttp's ``aiohttp_client``.

pytest imports this module when it starts, before ``pytest --cov`` starts measuring, so it
imports the rest of wsevents only inside the fixtures: the test client, the cluster
harness and the aiohttp adapter (``wsevents.server``) are then measured from their first
line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..app import WsApp
    from ..transports.memory import MemoryTransport
    from .client import ClientFactory, WsTestClient
    from .cluster import ClusterFactory, WsCluster

__all__ = ["ws_client", "ws_cluster"]


@pytest.fixture
async def ws_client(aiohttp_client: Any) -> AsyncIterator[ClientFactory]:
    """Factory fixture: ``await ws_client(ws_app, path="/ws", headers=None, query=None)``.

    Each WsApp is served once (on a test server from ``aiohttp_client``); every call opens
    one more [`WsTestClient`][wsevents.testing.client.WsTestClient] to it. Everything is
    closed at the end of the test.
    """
    from aiohttp import web

    from ..server import attach
    from .client import WsTestClient

    servers: dict[int, Any] = {}
    clients: list[WsTestClient] = []

    async def connect(
        ws_app: WsApp,
        path: str = "/ws",
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> WsTestClient:
        server = servers.get(id(ws_app))
        if server is None:
            server = servers[id(ws_app)] = await aiohttp_client(
                attach(ws_app, web.Application(), path)
            )
        ws = await server.ws_connect(path, headers=headers, params=query)
        client = WsTestClient(ws)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture
async def ws_cluster(aiohttp_client: Any) -> AsyncIterator[ClusterFactory]:
    """Factory fixture: ``cluster = await ws_cluster(build, instances=3, path="/ws")``.

    See [`serve_memory_cluster`][wsevents.testing.cluster.serve_memory_cluster]; the
    clients of every cluster are closed at the end.
    """
    from .cluster import serve_memory_cluster

    clusters: list[WsCluster] = []

    async def make(
        build: Callable[[MemoryTransport], WsApp], *, instances: int = 3, path: str = "/ws"
    ) -> WsCluster:
        cluster = await serve_memory_cluster(aiohttp_client, build, instances=instances, path=path)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.close()

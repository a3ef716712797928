"""Fixtures of the NATS functional tests (loaded with ``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .nats_support import (
    NATS_SERVER,
    NATS_URL,
    ThrowawayNats,
    drop_prefix,
    free_port,
    reachable,
    unique,
)


@pytest.fixture
async def nats_prefix() -> AsyncIterator[str]:
    """A fresh prefix on the shared NATS (skips without one); its streams and buckets are
    deleted after the test."""
    if not await reachable():
        pytest.skip(f"no NATS at {NATS_URL}")
    value = unique()
    yield value
    await drop_prefix(value)


@pytest.fixture
async def throwaway_nats() -> AsyncIterator[ThrowawayNats]:
    """A private nats-server with JetStream (skips when nats-server is not installed)."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed")
    server = ThrowawayNats(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.close()

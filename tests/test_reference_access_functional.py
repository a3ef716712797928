"""The reference app's access and flow control routes over real sockets."""

from __future__ import annotations

import asyncio

from examples.reference_app import app
from wsevents import WsClientError


async def test_limited_echo_allows_a_burst_of_5_then_429_with_retry_after(ws_client) -> None:
    client, other = await ws_client(app), await ws_client(app)
    # Ten calls at once: the burst of 5 passes, the rest find an empty bucket (a token
    # comes back every 0.2 s, so at most one more can pass unless the machine stalls).
    outcomes = await asyncio.gather(
        *(client.call("rpc", "/limited/echo", i) for i in range(10)), return_exceptions=True
    )
    assert outcomes[:5] == [0, 1, 2, 3, 4]
    errors = [o for o in outcomes if isinstance(o, WsClientError)]
    assert len(errors) >= 3
    for error in errors:
        assert (error.code, error.message) == (429, "Too Many Requests")
        assert error.retry_after is not None
        assert 0 < error.retry_after <= 0.201
    assert all(o == i for i, o in enumerate(outcomes) if not isinstance(o, WsClientError))
    # Another connection has a bucket of its own.
    assert await other.call("rpc", "/limited/echo", "x") == "x"
    await client.close()
    await other.close()

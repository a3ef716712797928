"""What a rate limit costs per message: the CPU of a route's compiled endpoint with and
without a limit, in process (no sockets, no event loop).

The endpoint is what the dispatcher runs for a routed message once it has parsed and
matched it; a route without a limit runs its handler as registered, so the difference
between the two figures is the whole per-message cost of the limit (a clock read, a dict
lookup, a few float operations). The target is at most +1 µs per message. Run from the
project root:

    python benchmarks/ratelimit_cost.py               # 5 reps of 200k calls (~3 s)
    python benchmarks/ratelimit_cost.py --calls 20000 --reps 3   # a quick check

The wire-level figures (``rpc /limited/echo`` against ``/echo`` under the S1 load, and the
flood test) use the shared harness, like ``benchmarks/contracts.py``.
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from wsevents import RateLimit, WsApp
from wsevents._context import MessageScope, message_var
from wsevents.connection import Connection
from wsevents.protocol import ClientMessage
from wsevents.testing.contexts import RecordingSocket


def echo() -> Any:
    return None


def measure(calls: int, reps: int) -> dict[str, float]:
    """Best nanoseconds per call of each endpoint, over ``reps`` runs of ``calls``."""
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/plain", echo)
    # A bucket that never runs dry: every call pays the full check and goes through.
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1e12))
    ws.add_message_handler("rpc", "/limited-user", echo, rate_limit=RateLimit(1e12, key="user"))
    endpoints = {pattern: endpoint for _, pattern, endpoint in ws.router.routes()}
    conn = Connection(RecordingSocket())
    message = ClientMessage("rpc", "/plain", None, 1, True, "")
    token = message_var.set(MessageScope(message, {}, conn, ws, endpoints["/plain"].route))
    try:
        return {
            pattern: min(timeit.repeat(endpoint.fn, number=calls, repeat=reps)) / calls * 1e9
            for pattern, endpoint in endpoints.items()
        }
    finally:
        message_var.reset(token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    figures = measure(max(1, args.calls), max(1, args.reps))
    base = figures["/plain"]
    print(f"{'route':<14} {'ns/call':>8} {'+ns':>6}")
    for pattern, ns in figures.items():
        print(f"{pattern:<14} {ns:8.0f} {ns - base:6.0f}")


if __name__ == "__main__":
    main()

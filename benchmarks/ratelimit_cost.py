"""What a rate limit costs per message: the CPU of a route's compiled endpoint with and
without a limit, in process (no sockets, no event loop), or (``--wire``) the server's CPU
per RPC over real sockets.

In process, the endpoint is what the dispatcher runs for a routed message once it has
parsed and matched it; a route without a limit runs its handler as registered, so the
difference between the two figures is the whole per-message cost of the limit (a clock
read, a dict lookup, a few float operations). The target is at most +1 µs per message.

``--wire`` measures the same thing end to end: the harness' scenario ``s1`` (50
connections x 10 ``rpc /echo`` in flight) against three servers started fresh per rep,
reps interleaved (``benchmarks/ratelimit_app.py``): ``echo`` (no limit), ``limited`` (a
per-connection limit that never runs dry) and ``limited-user`` (the same keyed by user).
Each is measured the same way, server CPU seconds over replies, printed as µs per
message with the difference to ``echo``. Run from the project root, on a quiet machine:

    python benchmarks/ratelimit_cost.py               # 5 reps of 200k calls (~3 s)
    python benchmarks/ratelimit_cost.py --calls 20000 --reps 3   # a quick check
    python benchmarks/ratelimit_cost.py --wire        # 3 reps of 2 + 8 s per server (~2 min)
    python benchmarks/ratelimit_cost.py --wire --reps 1 --warmup 1 --duration 2   # quick

The harness (``bench.py``, ``loadgen.js``) is ``../shared/bench`` unless ``--bench-dir`` or
``$WSEVENTS_BENCH_DIR`` says otherwise. The flood test is ``benchmarks/ratelimit_flood.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any

from wsevents import RateLimit, WsApp
from wsevents._context import MessageScope, message_var
from wsevents.connection import Connection
from wsevents.protocol import ClientMessage
from wsevents.testing.contexts import RecordingSocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _servers import add_harness_paths, harness_records, s1_samples, wsevents_run  # noqa: E402  (benchmarks/ is not a package)

WIRE_SERVERS = {
    "echo": "benchmarks.ratelimit_app:plain_app",
    "limited": "benchmarks.ratelimit_app:limited_app",
    "limited-user": "benchmarks.ratelimit_app:limited_user_app",
}
TARGET_US = 1.0
"""The target: a limited route costs at most this many µs of CPU more per message."""


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


def wire_table(records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """A Markdown table of the median server CPU µs per message and replies/s per server,
    with the difference to ``echo``; also the medians (µs per message) by server."""
    cpu, rate = s1_samples(records, scale=10.0)  # s per 100k replies -> µs per reply
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = medians.get("echo")
    lines = [
        "| server | reps | srv CPU µs/msg | + µs/msg vs echo | replies/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in WIRE_SERVERS:
        if name not in medians:
            lines.append(f"| {name} | 0 | failed | | |")
            continue
        delta = f"{medians[name] - base:+.2f}" if base is not None else "n/a"
        replies = f"{statistics.median(rate[name]):.0f}" if rate.get(name) else "n/a"
        lines.append(f"| {name} | {len(cpu[name])} | {medians[name]:.2f} | {delta} | {replies} |")
    return "\n".join(lines), medians


def wire(a: argparse.Namespace) -> int:
    records = harness_records(
        "ratelimit_cost.py",
        a,
        {name: wsevents_run(target) for name, target in WIRE_SERVERS.items()},
        label="ratelimit-wire",
    )
    if isinstance(records, int):
        return records
    text, medians = wire_table(records)
    print("\nServer CPU per RPC over the wire (median over reps; lower is better)\n")
    print(text)
    if "echo" in medians and "limited" in medians:
        delta = medians["limited"] - medians["echo"]
        verdict = "within" if delta <= TARGET_US else "OVER"
        print(f"\nlimited - echo = {delta:+.2f} µs/msg ({verdict} the +{TARGET_US:.1f} µs target)")
    return 0 if len(medians) == len(WIRE_SERVERS) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wire", action="store_true", help="measure over real sockets (harness s1)")
    p.add_argument("--calls", type=int, default=200_000, help="in process: calls per rep")
    p.add_argument("--reps", type=int, default=None, help="reps (default: 5, --wire: 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="--wire: seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="--wire: seconds measured")
    p.add_argument("--timeout", type=float, default=60.0, help="--wire: kill a load run after")
    add_harness_paths(p)
    p.add_argument("--no-pin", dest="pin", action="store_false", help="--wire: do not pin CPUs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.wire:
        args.reps = max(1, args.reps if args.reps is not None else 3)
        return wire(args)
    figures = measure(max(1, args.calls), max(1, args.reps if args.reps is not None else 5))
    base = figures["/plain"]
    print(f"{'route':<14} {'ns/call':>8} {'+ns':>6}")
    for pattern, ns in figures.items():
        print(f"{pattern:<14} {ns:8.0f} {ns - base:6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

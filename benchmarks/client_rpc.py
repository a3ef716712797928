#!/usr/bin/env python3
"""Calls per second of the Python ``WsClient`` against the reference app.

    .venv/bin/python benchmarks/client_rpc.py [--reps 3] [--loop asyncio|uvloop]

The s1 shape of the harness: 50 clients x 10 ``rpc /echo`` calls in flight (~100-byte JSON
object), 2 s warm-up + 8 s measured. For every rep it starts a fresh reference app with
``python -m wsevents run`` pinned to --server-cpu, and measures, interleaved:

* ``wsclient``: this script's own process, pinned to --client-cpu, driving the server with
  ``wsevents.client.WsClient`` (every reply awaited through ``call()``);
* ``loadgen``: the harness' Node load generator (``loadgen.js --scenario s1``), same pinning.

The load generator is the reference for how fast the server can answer; the ratio shows
what the Python client itself costs. Every run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import ROOT, start_reference_app, stop

PAYLOAD = {
    "user": "alice",
    "room": "bench",
    "text": "hello world, this is a benchmark payload",
    "n": 12345,
    "ok": True,
    "tags": ["a", "b"],
}


async def drive_wsclient(port: int, args: argparse.Namespace) -> float:
    from wsevents.client import WsClient

    clients = [WsClient(f"ws://127.0.0.1:{port}/ws") for _ in range(args.conns)]
    for client in clients:
        await client.connect()
    counting = False
    done = 0
    stop = False

    async def worker(client: WsClient) -> None:
        nonlocal done
        while not stop:
            reply = await client.call("rpc", "/echo", PAYLOAD, timeout=10)
            if reply != PAYLOAD:
                raise AssertionError(f"bad reply {reply!r}")
            if counting:
                done += 1

    tasks = [asyncio.create_task(worker(c)) for c in clients for _ in range(args.inflight)]
    await asyncio.sleep(args.warmup)
    counting, t0 = True, time.perf_counter()
    await asyncio.sleep(args.duration)
    counting, elapsed = False, time.perf_counter() - t0
    stop = True
    await asyncio.wait(tasks, timeout=15)
    for client in clients:
        await client.close()
    return done / elapsed


def run_wsclient(port: int, args: argparse.Namespace) -> float:
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(drive_wsclient(port, args))
    return asyncio.run(drive_wsclient(port, args))


def run_loadgen(port: int, args: argparse.Namespace) -> float:
    pin = ["taskset", "-c", args.client_cpu] if args.pin else []
    cmd = [
        *pin,
        "node",
        str(Path(args.bench_dir) / "loadgen.js"),
        "--port",
        str(port),
        "--scenario",
        "s1",
        "--conns",
        str(args.conns),
        "--inflight",
        str(args.inflight),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return float(json.loads(line[7:])["replies_per_s"])
    raise RuntimeError(f"loadgen printed no result:\n{out}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--inflight", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument(
        "--bench-dir",
        default=os.environ.get("WSEVENTS_BENCH_DIR", str(ROOT.parent / "shared" / "bench")),
    )
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {int(args.client_cpu)})
    results: dict[str, list[float]] = {"wsclient": [], "loadgen": []}
    for rep in range(args.reps):
        order = ["wsclient", "loadgen"] if rep % 2 == 0 else ["loadgen", "wsclient"]
        for name in order:
            proc, port = start_reference_app(cpu=args.server_cpu if args.pin else None)
            try:
                rate = run_wsclient(port, args) if name == "wsclient" else run_loadgen(port, args)
            finally:
                stop(proc)
            results[name].append(rate)
            print(f"[rep {rep + 1}] {name:9} {rate:9.0f} calls/s", flush=True)
    py, node = statistics.median(results["wsclient"]), statistics.median(results["loadgen"])
    print("\n| client | calls/s, median (min..max) |\n|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):.0f} ({min(rates):.0f}..{max(rates):.0f}) |")
    print(f"\nwsclient/loadgen = {py / node:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fan-out across instances: one instance alone vs the same room split over a broker.

    .venv/bin/python benchmarks/multi_instance.py [--subs 1000] [--reps 3] [--redis-url URL]
        [--engine redis|redis-cluster|nats|both] [--cluster-url redis+cluster://...]
        [--nats-url nats://host:port]

For every rep (configurations interleaved) it starts the reference app with
``python -m wsevents run`` on free 127.0.0.1 ports, pinned to --server-cpu, and drives it
with ``benchmarks/fanout_multi.js`` (Node + ``ws`` from the harness' node_modules), pinned to
--client-cpu:

* ``single``: one instance, no transport, all subscribers on it;
* ``redis-N``: N instances started with ``--redis-url``, the subscribers spread round-robin,
  the publisher on the first instance (so N-1 of every N deliveries cross Redis);
* ``redis-cluster-N``: the same on a Redis Cluster (``--engine redis-cluster`` or ``both``):
  ``--cluster-url``, or else a 3-master 3-replica cluster started for the run in a temporary
  directory on free loopback ports (``redis-server`` and ``redis-cli`` needed) and stopped
  at the end;
* ``nats-N`` (with ``--engine nats``): the same with ``--nats-url``, across NATS.

It reports deliveries/s and CPU seconds per 100k deliveries of the wsevents processes and,
separately, of the broker (the Redis servers, every node of a cluster, or the local
nats-server listening on the URL's port). Every run is bounded (warm-up + duration, hard
limits).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _servers import start_reference_app, stop  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def redis_pid(url: str) -> int | None:
    """The process id of the Redis server of ``url`` (the first node of a cluster URL)."""
    pids = redis_pids(url)
    return pids[0] if pids else None


def redis_pids(url: str) -> list[int]:
    """The process ids of the Redis server of ``url``, or of every node of a cluster URL."""
    if not shutil.which("redis-cli"):
        return []
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        nodes = url.split("://", 1)[1].rpartition("@")[2].split("/")[0].split(",")
        targets = [["-h", n.rpartition(":")[0], "-p", n.rpartition(":")[2]] for n in nodes]
    else:
        targets = [["-u", url]]
    pids: list[int] = []
    for target in targets:
        out = subprocess.run(
            ["redis-cli", *target, "info", "server"], capture_output=True, text=True, timeout=10
        ).stdout
        pids += [
            int(line.split(":", 1)[1])
            for line in out.splitlines()
            if line.startswith("process_id:")
        ]
    return pids


def nats_pid(url: str) -> int | None:
    """The pid of the local nats-server started with ``-p <the URL's port>``."""
    port = url.rsplit(":", 1)[-1].strip("/") or "4222"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"nats-server"):
            for flag, value in itertools.pairwise(argv):
                if flag in (b"-p", b"--port") and value.decode() == port:
                    return int(entry.name)
    return None


def run_once(args: argparse.Namespace, instances: int, url: str | None) -> dict[str, object]:
    """One run; ``url``: the broker every instance is started with (None: no broker)."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    nats = bool(url) and str(url).startswith("nats")
    extra = [("--nats-url" if nats else "--redis-url"), url] if url else []
    try:
        for _ in range(instances):
            proc, port = start_reference_app(cpu=args.server_cpu if args.pin else None, extra=extra)
            procs.append(proc)
            ports.append(port)
        if not url:
            rpids: list[int] = []
        elif nats:
            rpids = [pid] if (pid := nats_pid(url)) else []
        else:
            rpids = redis_pids(url)
        gen = [
            *(["taskset", "-c", args.client_cpu] if args.pin else []),
            "node",
            str(HERE / "fanout_multi.js"),
            "--ports",
            ",".join(map(str, ports)),
            "--subs",
            str(args.subs),
            "--warmup",
            str(args.warmup),
            "--duration",
            str(args.duration),
        ]
        loadgen = subprocess.Popen(gen, stdout=subprocess.PIPE, text=True)
        assert loadgen.stdout is not None
        result: dict[str, object] = {}
        cpu0 = rcpu0 = 0.0
        deadline = time.monotonic() + args.warmup + args.duration + 90
        for line in loadgen.stdout:
            if line.startswith("MARK start"):
                cpu0 = sum(cpu_seconds(p.pid) for p in procs)
                rcpu0 = sum(cpu_seconds(pid) for pid in rpids)
            elif line.startswith("MARK end"):
                cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
                rcpu = sum(cpu_seconds(pid) for pid in rpids) - rcpu0
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
            if time.monotonic() > deadline:
                break
        loadgen.wait(timeout=30)
        if not result:
            raise RuntimeError("the load generator printed no result")
        deliveries = float(result["deliveries_per_s"]) * float(result["seconds"])
        result["srv_cpu_per_100k"] = cpu / deliveries * 1e5 if deliveries else None
        result["redis_cpu_per_100k"] = rcpu / deliveries * 1e5 if deliveries and rpids else None
        return result
    finally:
        for proc in procs:
            stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--engine", choices=["redis", "redis-cluster", "nats", "both"], default="redis")
    ap.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    ap.add_argument("--cluster-url", help="a running Redis Cluster (redis+cluster://...)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        cluster_url = args.cluster_url
        if args.engine in ("redis-cluster", "both") and not cluster_url:
            cluster_url = stack.enter_context(throwaway_cluster())
        return bench(args, cluster_url)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A 3-master 3-replica Redis Cluster for the run, stopped (by PID) at the end."""
    sys.path.insert(0, str(HERE.parent))
    from tests.redis_support import ThrowawayRedisCluster

    with tempfile.TemporaryDirectory() as directory:
        cluster = ThrowawayRedisCluster(directory)
        try:
            cluster.start()
            print(f"started a Redis Cluster: {cluster.url}", flush=True)
            yield cluster.url
        finally:
            cluster.stop()


def bench(args: argparse.Namespace, cluster_url: str | None) -> int:
    configs: list[tuple[str, int, str | None]] = [("single", 1, None)]
    if args.engine in ("redis", "both"):
        configs.append((f"redis-{args.instances}", args.instances, args.redis_url))
    if args.engine in ("redis-cluster", "both"):
        configs.append((f"redis-cluster-{args.instances}", args.instances, cluster_url))
    if args.engine == "nats":
        configs.append((f"nats-{args.instances}", args.instances, args.nats_url))
    runs: dict[str, list[dict[str, object]]] = {name: [] for name, _, _ in configs}
    for rep in range(args.reps):
        order = configs if rep % 2 == 0 else configs[::-1]
        for name, n, url in order:
            r = run_once(args, n, url)
            runs[name].append(r)
            print(
                f"[rep {rep + 1}] {name:10} {r['deliveries_per_s']:9.0f} deliv/s "
                f"srv {r['srv_cpu_per_100k']:.3f} s/100k broker {r['redis_cpu_per_100k'] or 0:.3f} "
                f"s/100k dup={r['duplicates']} bad={r['bad']} per_port={r['per_port']}",
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return statistics.median(float(r[key] or 0) for r in runs[name])

    print("\n| setup | deliveries/s | wsevents CPU s/100k | broker CPU s/100k | duplicates |")
    print("|---|---|---|---|---|")
    for name, _, _ in configs:
        dup = sum(int(r["duplicates"]) for r in runs[name])
        print(
            f"| {name} | {med(name, 'deliveries_per_s'):.0f} | "
            f"{med(name, 'srv_cpu_per_100k'):.3f} | {med(name, 'redis_cpu_per_100k'):.3f} | {dup} |"
        )
    print()
    for multi, _, _ in configs[1:]:
        print(
            f"{multi}/single deliveries/s = "
            f"{med(multi, 'deliveries_per_s') / med('single', 'deliveries_per_s'):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

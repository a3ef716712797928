"""The flood test: does one client flooding a rate-limited route hurt everybody else?

Two servers, both the reference app, each started fresh per rep and measured with the
harness' scenario ``s1`` (50 connections x 10 ``rpc /echo`` in flight), reps interleaved:

* ``quiet``: nothing else;
* ``flooded``: meanwhile one more client sends ``rpc /limited/echo`` (a limit of 5 a
  second per connection) at ``--rate`` messages a second (10k by default). Almost every
  call is refused with 429; once the connection is closed with 4429 for flooding, the
  flooder reconnects at once and goes on, as a persistent attacker would.

The key figure is the p99 latency of the 50 (the harness' replies), ``flooded`` against
``quiet`` from the same run; the target is ``flooded / quiet <= 1.10``. The flooder is a
process of its own, detached from the server (the harness' server CPU figures count the
server alone) and pinned to ``--flood-cpu`` (by default the load generator's core: on a
2-core machine, the flooder shares it). It stops when the server is gone, or after
``--max-seconds``; what it did (sent, refused, closed, reconnected) is printed below the
table. Run from the project root, on a quiet machine:

    python benchmarks/ratelimit_flood.py              # 3 reps of 2 + 8 s per server (~1 min)
    python benchmarks/ratelimit_flood.py --reps 1 --warmup 1 --duration 2   # a quick check

The harness (``bench.py``, ``loadgen.js``) is ``../shared/bench`` unless ``--bench-dir`` or
``$WSEVENTS_BENCH_DIR`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _servers import load_records, run_harness  # noqa: E402  (benchmarks/ is not a package)

PYTHON = str(ROOT / ".venv" / "bin" / "python")
SERVERS = ("quiet", "flooded")
TARGET = 1.10
FLOOD_PATH = "/limited/echo"
_CATCH_UP = 0.01
"""Seconds of sending the flooder may catch up at once (after a reconnect, a stall)."""


# -- the flooder ----------------------------------------------------------------------------


def new_stats() -> dict[str, Any]:
    return {
        "sent": 0,
        "ok": 0,
        "refused_429": 0,
        "other_replies": 0,
        "closed_4429": 0,
        "other_closes": 0,
        "connects": 0,
        "failed_connects": 0,
        "seconds": 0.0,
    }


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _read(ws: Any, stats: dict[str, Any]) -> None:
    async for msg in ws:
        data = msg.data
        if not isinstance(data, str):
            continue
        if '"error"' not in data:
            stats["ok"] += 1
        elif '"code":429' in data:
            stats["refused_429"] += 1
        else:
            stats["other_replies"] += 1


async def flood(port: int, rate: float, max_seconds: float) -> dict[str, Any]:
    """Send ``rpc /limited/echo`` to ``127.0.0.1:port`` at ``rate`` a second, reconnecting
    whenever the server closes the connection, until the server is gone (no connection
    for 1 s) or ``max_seconds`` passed; returns what happened."""
    import aiohttp

    stats = new_stats()
    deadline = time.monotonic() + max_seconds
    while not _port_open(port):
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)
    start = time.monotonic()
    url = f"ws://127.0.0.1:{port}/ws"
    message_id = 0
    failing_since: float | None = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
            except (TimeoutError, aiohttp.ClientError, OSError):
                stats["failed_connects"] += 1
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > 1.0:
                    break  # the server is gone
                await asyncio.sleep(0.05)
                continue
            failing_since = None
            stats["connects"] += 1
            reader = asyncio.get_running_loop().create_task(_read(ws, stats))
            budget, last = 0.0, time.monotonic()
            try:
                while not ws.closed and time.monotonic() < deadline:
                    now = time.monotonic()
                    budget = min(budget + (now - last) * rate, rate * _CATCH_UP)
                    last = now
                    while budget >= 1.0 and not ws.closed:
                        message_id += 1
                        await ws.send_str(
                            f'{{"event":"rpc","path":"{FLOOD_PATH}","data":1,"id":{message_id}}}'
                        )
                        stats["sent"] += 1
                        budget -= 1.0
                    await asyncio.sleep(0.002)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass  # closed under us: counted below
            finally:
                if not ws.closed:
                    await ws.close()
                await asyncio.wait({reader}, timeout=2.0)
                reader.cancel()
            if ws.close_code == 4429:
                stats["closed_4429"] += 1
            else:
                stats["other_closes"] += 1
    stats["seconds"] = round(time.monotonic() - start, 3)
    return stats


# -- the server command the harness runs for "flooded" --------------------------------------


def server_cmd() -> str:
    return (
        f"{PYTHON} -m wsevents run examples.reference_app:app --host 127.0.0.1 --port {{port}} "
        "--log-level warning"
    )


def serve(a: argparse.Namespace) -> None:
    """Start a detached flooder for ``a.port``, then become the reference app's server.

    The flooder is spawned through an intermediate process that exits at once, so it is
    no descendant of the server (whose CPU the harness measures) and outlives no one: it
    stops by itself once the server is gone.
    """
    cmd = [
        sys.executable,
        __file__,
        "flood",
        "--port",
        str(a.port),
        "--rate",
        str(a.rate),
        "--max-seconds",
        str(a.max_seconds),
        "--stats",
        str(Path(a.stats_dir) / f"flood-{a.port}.json"),
    ]
    if a.flood_cpu is not None:
        cmd = ["taskset", "-c", a.flood_cpu, *cmd]
    spawner = subprocess.Popen(
        [sys.executable, __file__, "spawn", "--", *cmd], stdin=subprocess.DEVNULL
    )
    spawner.wait(timeout=30)
    os.execv(PYTHON, [PYTHON, *server_cmd().replace("{port}", str(a.port)).split()[1:]])


def spawn(cmd: list[str]) -> None:
    """Start ``cmd`` in a session of its own and return (the intermediate of [`serve`][])."""
    subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# -- the driver -----------------------------------------------------------------------------


def table(
    records: list[dict[str, Any]], floods: dict[int, dict[str, Any]]
) -> tuple[str, dict[str, float]]:
    """A Markdown table of the median p50 / p99 latency and replies/s of the 50 per server,
    the p99 ratio to ``quiet``, and what the flooder did; also the p99 medians by server."""
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    rate: dict[str, list[float]] = {}
    flooded: list[dict[str, Any]] = []
    for rec in records:
        result = rec.get("result") or {}
        latency = result.get("latency") or {}
        if rec.get("error") or result.get("error") or latency.get("p99_ms") is None:
            continue
        server = rec["server"]
        p50.setdefault(server, []).append(latency["p50_ms"])
        p99.setdefault(server, []).append(latency["p99_ms"])
        rate.setdefault(server, []).append(result.get("replies_per_s") or 0.0)
        if server == "flooded" and rec.get("port") in floods:
            flooded.append(floods[rec["port"]])
    medians = {name: statistics.median(values) for name, values in p99.items()}
    base = medians.get("quiet")
    lines = [
        "| server | reps | p50 ms | p99 ms | p99 / quiet | replies/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in SERVERS:
        if name not in medians:
            lines.append(f"| {name} | 0 | failed | | | |")
            continue
        ratio = f"{medians[name] / base:.3f}" if base else "n/a"
        lines.append(
            f"| {name} | {len(p99[name])} | {statistics.median(p50[name]):.2f} | "
            f"{medians[name]:.2f} | {ratio} | {statistics.median(rate[name]):.0f} |"
        )
    if flooded:
        total = {key: sum(f[key] for f in flooded) for key in new_stats()}
        seconds = total["seconds"] or 1.0
        lines.append("")
        lines.append(
            f"flooder ({len(flooded)} runs): {total['sent'] / seconds:.0f} msg/s sent, "
            f"{total['refused_429']} refused (429), {total['ok']} served, "
            f"{total['closed_4429']} closed with 4429, {total['connects']} connections"
        )
    return "\n".join(lines), medians


def load_floods(stats_dir: Path) -> dict[int, dict[str, Any]]:
    floods = {}
    for path in stats_dir.glob("flood-*.json"):
        try:
            floods[int(path.stem.split("-", 1)[1])] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
    return floods


def drive(a: argparse.Namespace) -> int:
    bench = a.bench_dir.resolve() / "bench.py"
    if not bench.exists():
        print(f"ratelimit_flood.py: no harness at {bench}; give --bench-dir", file=sys.stderr)
        return 2
    stats_dir = Path(tempfile.mkdtemp(prefix="wsevents-flood-"))
    max_seconds = a.warmup + a.duration + 30.0
    flooded = (
        f"{PYTHON} {Path(__file__).resolve()} serve --port {{port}} --rate {a.rate} "
        f"--max-seconds {max_seconds} --stats-dir {stats_dir}"
        + (f" --flood-cpu {a.flood_cpu}" if a.pin else "")
    )
    cmd = [
        sys.executable,
        str(bench),
        "--compare",
        ",".join(SERVERS),
        "--scenarios",
        "s1",
        "--reps",
        str(a.reps),
        "--warmup",
        str(a.warmup),
        "--duration",
        str(a.duration),
        "--timeout",
        str(a.timeout),
        "--raw",
        str(a.raw_dir),
        "--label",
        "ratelimit-flood",
        "--extra",
        f"quiet={server_cmd()}",
        "--extra",
        f"flooded={flooded}",
    ]
    if not a.pin:
        cmd.append("--no-pin")
    run_dir, returncode = run_harness(cmd)
    if run_dir is None:
        print(f"ratelimit_flood.py: bench.py exited with {returncode}", file=sys.stderr)
        return 1
    # The last flooder stops within ~1 s of its server; wait for its figures (bounded).
    records = load_records(run_dir, "s1")
    wanted = {r.get("port") for r in records if r.get("server") == "flooded"}
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not wanted <= set(load_floods(stats_dir)):
        time.sleep(0.2)
    floods = load_floods(stats_dir)
    (run_dir / "floods.json").write_text(json.dumps(floods, indent=1))
    text, medians = table(records, floods)
    print("\nLatency of the 50 echo connections, with and without a flooder (median over reps)\n")
    print(text)
    if "quiet" in medians and "flooded" in medians:
        ratio = medians["flooded"] / medians["quiet"]
        verdict = "within" if ratio <= TARGET else "OVER"
        print(f"\np99 flooded/quiet = {ratio:.3f} ({verdict} the {TARGET:.2f} target)")
    return 0 if len(medians) == len(SERVERS) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    p.add_argument("--reps", type=int, default=3, help="interleaved reps per server")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    p.add_argument("--timeout", type=float, default=60.0, help="kill a load run after this")
    p.add_argument("--rate", type=float, default=10_000.0, help="flooder messages per second")
    p.add_argument("--flood-cpu", default="0", help="CPU the flooder is pinned to")
    p.add_argument(
        "--bench-dir",
        type=Path,
        default=Path(os.environ.get("WSEVENTS_BENCH_DIR") or ROOT.parent / "shared" / "bench"),
    )
    p.add_argument(
        "--raw-dir", type=Path, default=ROOT / "benchmarks" / "results" / "raw", help="raw runs"
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    # What the harness and the flooder run (not for direct use).
    s = sub.add_parser("serve", help="(internal) a detached flooder, then the server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--max-seconds", type=float, required=True)
    s.add_argument("--stats-dir", required=True)
    s.add_argument("--flood-cpu", default=None)
    f = sub.add_parser("flood", help="(internal) the flooder")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--rate", type=float, required=True)
    f.add_argument("--max-seconds", type=float, required=True)
    f.add_argument("--stats", required=True)
    sp = sub.add_parser("spawn", help="(internal) start a detached process")
    sp.add_argument("cmd", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "serve":
        serve(a)  # does not return: becomes the server
        return 0
    if a.command == "spawn":
        spawn([c for c in a.cmd if c != "--"] if a.cmd[:1] == ["--"] else a.cmd)
        return 0
    if a.command == "flood":
        stats = asyncio.run(flood(a.port, a.rate, a.max_seconds))
        Path(a.stats).write_text(json.dumps(stats))
        return 0
    return drive(a)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark wsevents against its peers and render the results (tables and charts).

One command runs everything and renders it; run it from the project root:

  python benchmarks/run.py             # full run, about 25 min on 2 cores
  python benchmarks/run.py --publish   # ... and copy summary.md + charts to docs/img/perf/
  python benchmarks/run.py --from-run benchmarks/results/raw/<run>   # only re-render

A full run has three parts, in this order:

  fixed     the harness' scenarios (s1, s2_100, s2_1000, s3, s4) for wsevents and --peers,
            run by the harness itself (bench.py), reps interleaved across servers;
  fanout    fan-out cost as the room grows: the s2 workload with --fanout-members
            subscribers, for wsevents and --scaling-peers;
  idle      memory as idle connections grow: the s3 workload with --idle-conns
            connections, for wsevents and --scaling-peers.

The scaling parts drive the harness' own run function (imported from bench.py) with a
different subscriber or connection count, so servers are started, pinned and measured
exactly as in the fixed scenarios. Every run writes one JSON record into the raw run folder
(default benchmarks/results/raw/<date-time>[-label]/, git-ignored); the rendered
summary.md and PNG charts go to benchmarks/results/<run-name>/ (and docs/img/perf/ with
--publish). An empty list (e.g. --scenarios "") skips a part.

The harness folder (bench.py, loadgen.js, servers.json) is ../shared/bench relative to the
project root unless --bench-dir or $WSEVENTS_BENCH_DIR says otherwise. It needs Node >= 18,
npm and taskset; the charts need matplotlib (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (sibling module; benchmarks/ is not a package)
from _servers import run_harness  # noqa: E402

DEFAULT_PEERS = "limit-aiohttp,wooks,socketio"
DEFAULT_SCALING_PEERS = "limit-aiohttp,wooks"
DEFAULT_SCENARIOS = ",".join(report.FIXED_SCENARIOS)
DEFAULT_FANOUT = "10,100,1000,5000"
DEFAULT_IDLE = "1000,2500,5000,10000"
SUBJECT = "wsevents"
# The harness' base scenarios of the scaling series and the load generator option changed.
SERIES_BASE = {"fanout": ("s2_100", "--subs"), "idle": ("s3", "--idle")}
# Seconds a load generator run may take beyond warm-up + duration (connecting 10000 sockets,
# subscribing, draining) before it is killed.
LOADGEN_SLACK = 120.0


def default_wsevents_cmd() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = ".venv/bin/python" if venv_python.exists() else shlex.quote(sys.executable)
    return f"{python} -m wsevents run examples.reference_app:app --host 127.0.0.1 --port {{port}}"


def csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def csv_ints(text: str) -> list[int]:
    try:
        values = [int(item) for item in csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"want positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = ap.add_argument_group("what to run")
    what.add_argument(
        "--peers",
        default=DEFAULT_PEERS,
        help=f"peers of the fixed scenarios, names from the harness' servers.json "
        f"(default {DEFAULT_PEERS}; '' = wsevents alone)",
    )
    what.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"fixed scenarios (default {DEFAULT_SCENARIOS}; '' skips the fixed part)",
    )
    what.add_argument(
        "--fanout-members",
        type=csv_ints,
        default=csv_ints(DEFAULT_FANOUT),
        metavar="N,N,...",
        help=f"room sizes of the fan-out series (default {DEFAULT_FANOUT}; '' skips it)",
    )
    what.add_argument(
        "--idle-conns",
        type=csv_ints,
        default=csv_ints(DEFAULT_IDLE),
        metavar="N,N,...",
        help=f"connection counts of the memory series (default {DEFAULT_IDLE}; '' skips it)",
    )
    what.add_argument(
        "--scaling-peers",
        default=DEFAULT_SCALING_PEERS,
        help=f"peers of both scaling series (default {DEFAULT_SCALING_PEERS})",
    )
    what.add_argument(
        "--wsevents-cmd",
        default=default_wsevents_cmd(),
        help="command of the wsevents server, run from the project root; {port} is replaced "
        "(default: %(default)s)",
    )
    what.add_argument(
        "--name", default=SUBJECT, help="row name of the wsevents server (default %(default)s)"
    )

    how = ap.add_argument_group("how")
    how.add_argument("--reps", type=int, default=3, help="interleaved reps (default 3)")
    how.add_argument(
        "--duration", type=float, default=8, help="measured seconds per run (default 8)"
    )
    how.add_argument("--warmup", type=float, default=2, help="warm-up seconds per run (default 2)")
    how.add_argument("--label", default="", help="suffix of the run folder name")
    how.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin server and load generator to CPUs with taskset",
    )
    how.add_argument("--server-cpu", default="1", help="CPU of the server (default 1)")
    how.add_argument("--client-cpu", default="0", help="CPU of the load generator (default 0)")
    how.add_argument(
        "--bench-dir",
        type=Path,
        default=Path(os.environ.get("WSEVENTS_BENCH_DIR") or ROOT.parent / "shared" / "bench"),
        help="harness folder with bench.py, loadgen.js and servers.json "
        "(default $WSEVENTS_BENCH_DIR or ../shared/bench from the project root)",
    )
    how.add_argument(
        "--raw-dir",
        type=Path,
        default=HERE / "results" / "raw",
        help="parent of the raw run folders (default benchmarks/results/raw, git-ignored)",
    )

    out = ap.add_argument_group("output")
    out.add_argument(
        "--from-run",
        type=Path,
        metavar="RUN_DIR",
        help="run nothing: re-render an existing raw run folder (one made by this script or "
        "by bench.py alone, e.g. ../shared/bench/results/raw/<run>)",
    )
    out.add_argument(
        "--out",
        type=Path,
        help="folder of summary.md and the charts (default benchmarks/results/<run-name>)",
    )
    out.add_argument(
        "--publish",
        action="store_true",
        help="also copy summary.md and the charts to --publish-dir",
    )
    out.add_argument(
        "--publish-dir",
        type=Path,
        default=ROOT / "docs" / "img" / "perf",
        help="where --publish copies to (default docs/img/perf)",
    )
    out.add_argument("--no-charts", action="store_true", help="write summary.md only")
    return ap


# ── harness ──────────────────────────────────────────────────────────────────
def load_harness(bench_dir: Path) -> ModuleType:
    """Import the harness' bench.py as a module (it is a script, not a package)."""
    path = bench_dir / "bench.py"
    if not path.exists():
        raise SystemExit(
            f"run.py: no harness at {path}; give --bench-dir or set WSEVENTS_BENCH_DIR"
        )
    spec = importlib.util.spec_from_file_location("wsevents_bench_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raise_open_files(needed: int) -> None:
    """Raise the soft open-file limit (inherited by the servers and the load generator)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 1024  # sockets plus the interpreter's own files
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < want:
        print(
            f"run.py: open-file limit {soft} (hard {hard}) is below the {want} that "
            f"{needed} connections need; the largest runs may fail",
            file=sys.stderr,
        )


def run_fixed(a: argparse.Namespace, bench_dir: Path, peers: list[str]) -> tuple[Path, int]:
    """Run the fixed scenarios through bench.py; returns its run folder and exit status."""
    cmd = [
        sys.executable,
        str(bench_dir / "bench.py"),
        "--scenarios",
        ",".join(a.scenario_list),
        "--reps",
        str(a.reps),
        "--warmup",
        str(a.warmup),
        "--duration",
        str(a.duration),
        "--raw",
        str(a.raw_dir),
        "--server-cpu",
        a.server_cpu,
        "--client-cpu",
        a.client_cpu,
        "--extra",
        f"{a.name}={a.wsevents_cmd}",
    ]
    if peers:
        cmd += ["--compare", ",".join([a.name, *peers])]
    if a.label:
        cmd += ["--label", a.label]
    if not a.pin:
        cmd.append("--no-pin")
    print("run.py: " + shlex.join(cmd), flush=True)
    run_dir, returncode = run_harness(cmd)
    if run_dir is None:
        raise SystemExit(f"run.py: bench.py exited with {returncode} before it made a run")
    return run_dir, returncode


def run_series(
    bench: ModuleType,
    a: argparse.Namespace,
    run_dir: Path,
    series: str,
    sizes: list[int],
    servers: list[dict[str, Any]],
) -> bool:
    """Run one scaling series with the harness' run function; True when every run counted."""
    base, option = SERIES_BASE[series]
    spec = report.SPECS[series]
    scratch = run_dir / f".{series}-tmp"
    scratch.mkdir(exist_ok=True)
    budget = a.warmup + a.duration + LOADGEN_SLACK
    opts = argparse.Namespace(
        server_cpu=a.server_cpu,
        client_cpu=a.client_cpu,
        pin=a.pin,
        ready_timeout=30.0,
        warmup=a.warmup,
        duration=a.duration,
        path="",
        timeout=budget + 30,
    )
    all_ok = True
    for rep in range(1, a.reps + 1):
        k = (rep - 1) % len(servers)
        order = servers[k:] + servers[:k]  # rotate as bench.py does
        for size in sizes:
            for sv in order:
                started = time.time()
                extra = [*sv.get("loadgen_args", ()), option, str(size)]
                extra += ["--hardlimit", str(int(budget))]
                rec = bench.run_one(
                    sv["name"],
                    sv["cmd"],
                    sv["proto"],
                    base,
                    rep,
                    opts,
                    str(scratch),
                    sv.get("cwd", str(bench.HERE)),
                    extra,
                )
                line = bench.headline(rec)
                scenario = f"{series}_{size}"
                rec.update(scenario=scenario, series=series, size=size, base_scenario=base)
                stem = f"{sv['name']}.{scenario}.{rep}"
                with (run_dir / f"{stem}.json").open("w") as f:
                    json.dump(rec, f, indent=1)
                (scratch / f"{sv['name']}.{base}.{rep}.json").unlink(missing_ok=True)
                log = scratch / f"{sv['name']}.{base}.{rep}.server.log"
                if log.exists():
                    log.replace(run_dir / f"{stem}.server.log")
                all_ok = all_ok and report.is_ok(rec, spec)
                print(
                    f"[rep {rep}] {sv['name']:<22} {scenario:<12} {line}  "
                    f"({time.time() - started:.1f}s)",
                    flush=True,
                )
    shutil.rmtree(scratch, ignore_errors=True)
    return all_ok


# ── versions ─────────────────────────────────────────────────────────────────
_PY_VERSIONS = """
import importlib.metadata as m, json, platform, sys
out = [platform.python_implementation() + " " + platform.python_version()]
for name in sys.argv[1:]:
    try:
        out.append(name + " " + m.version(name))
    except m.PackageNotFoundError:
        pass
try:
    import aiohttp.http_parser as hp
    if "Py" not in hp.HttpRequestParser.__name__:
        out.append("(aiohttp C extensions)")
except Exception:
    pass
print(json.dumps(out))
"""
WSEVENTS_PACKAGES = ("wsevents", "aiohttp", "orjson", "uvloop")
PEER_PACKAGES = ("aiohttp", "orjson", "uvloop", "python-socketio", "python-engineio")


def _probe(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _python_versions(python: Path, packages: tuple[str, ...]) -> str:
    if not python.exists():
        return ""
    text = _probe([str(python), "-c", _PY_VERSIONS, *packages])
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    return ", ".join(map(str, data)) if isinstance(data, list) else ""


def _machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPU {model}{mem}, {platform.system()} {platform.release()}"


def versions(bench_dir: Path) -> dict[str, str]:
    """Versions of everything measured, for the summary's table."""
    out = {"machine": _machine()}
    mine = _python_versions(ROOT / ".venv" / "bin" / "python", WSEVENTS_PACKAGES)
    if not mine:
        mine = _python_versions(Path(sys.executable), WSEVENTS_PACKAGES)
    if mine:
        out["wsevents side"] = mine
    peers = _python_versions(bench_dir / ".venv" / "bin" / "python", PEER_PACKAGES)
    if peers:
        out["Python peers"] = peers
    node = _probe(["node", "--version"])
    modules = []
    for package in ("ws", "@wooksjs/event-ws", "@wooksjs/event-core", "wooks"):
        try:
            with (bench_dir / "node_modules" / package / "package.json").open() as f:
                modules.append(f"{package} {json.load(f)['version']}")
        except (OSError, ValueError, KeyError):
            pass
    node_side = ([f"Node {node}"] if node else []) + modules
    if node_side:
        out["Node side"] = ", ".join(node_side)
    return out


# ── main ─────────────────────────────────────────────────────────────────────
def render_and_publish(run_dir: Path, a: argparse.Namespace) -> Path:
    out_dir = a.out or HERE / "results" / run_dir.resolve().name
    charts = not a.no_charts
    if charts and not report.have_matplotlib():
        print(
            "run.py: matplotlib is not installed, writing summary.md without charts "
            "(pip install -e '.[bench]')",
            file=sys.stderr,
        )
    summary, written = report.render(run_dir, out_dir, charts=charts)
    print(f"run.py: wrote {summary}" + (f" and {', '.join(written)}" if written else ""))
    if a.publish:
        a.publish_dir.mkdir(parents=True, exist_ok=True)
        for name in ["summary.md", *written]:
            shutil.copy2(out_dir / name, a.publish_dir / name)
        print(f"run.py: published to {a.publish_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.from_run is not None:
        try:
            render_and_publish(a.from_run, a)
        except FileNotFoundError as exc:
            print(f"run.py: {exc}", file=sys.stderr)
            return 2
        return 0

    if a.reps < 1 or a.duration <= 0 or a.warmup < 0:
        ap.error("--reps must be >= 1, --duration > 0 and --warmup >= 0")
    a.scenario_list = csv(a.scenarios)
    unknown = [s for s in a.scenario_list if s not in report.FIXED_SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(report.FIXED_SCENARIOS)}")
    if not (a.scenario_list or a.fanout_members or a.idle_conns):
        ap.error("nothing to run: --scenarios, --fanout-members and --idle-conns are all empty")
    bench_dir = a.bench_dir.resolve()
    bench = load_harness(bench_dir)
    with (bench_dir / "servers.json").open() as f:
        known = {sv["name"]: sv for sv in json.load(f)}
    peers, scaling_peers = csv(a.peers), csv(a.scaling_peers)
    missing = sorted({*peers, *scaling_peers} - set(known))
    if missing:
        ap.error(f"unknown peer(s) {missing}; known: {', '.join(known)}")
    if a.name in known:
        ap.error(f"--name {a.name!r} is a peer's name")
    if a.pin and not bench.have_taskset():
        print("run.py: taskset not found, running unpinned", file=sys.stderr)
        a.pin = False
    if not a.no_charts and not report.have_matplotlib():
        print("run.py: matplotlib is missing: the run will render without charts", file=sys.stderr)

    subject = {"name": a.name, "cmd": a.wsevents_cmd, "proto": "wooks", "cwd": str(ROOT)}
    scaling_servers = [subject, *(known[n] for n in scaling_peers)]
    raise_open_files(max([2000, *a.fanout_members, *a.idle_conns]))
    bench.ensure_env([subject, *(known[n] for n in {*peers, *scaling_peers})])
    a.raw_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    status = 0
    if a.scenario_list:
        run_dir, rc = run_fixed(a, bench_dir, peers)
        status = max(status, rc)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = a.raw_dir / (stamp + (f"-{a.label}" if a.label else ""))
        run_dir.mkdir(parents=True)
    meta = {
        "command": shlex.join(
            ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "subject": a.name,
        "servers": [subject, *(known[n] for n in dict.fromkeys([*peers, *scaling_peers]))],
        "scenarios": a.scenario_list,
        "fanout_members": a.fanout_members,
        "idle_conns": a.idle_conns,
        "scaling_servers": [sv["name"] for sv in scaling_servers],
        "reps": a.reps,
        "warmup": a.warmup,
        "duration": a.duration,
        "pinned": a.pin,
        "server_cpu": a.server_cpu,
        "client_cpu": a.client_cpu,
        "versions": versions(bench_dir),
    }
    with (run_dir / "benchmarks.json").open("w") as f:
        json.dump(meta, f, indent=1)
    for series, sizes in (("fanout", a.fanout_members), ("idle", a.idle_conns)):
        if sizes:
            print(
                f"run.py: {series} series, sizes {sizes}, {len(scaling_servers)} server(s) x "
                f"{a.reps} rep(s), raw -> {run_dir}",
                flush=True,
            )
            if not run_series(bench, a, run_dir, series, sizes, scaling_servers):
                status = max(status, 1)
    print(f"run.py: measured in {time.time() - started:.0f}s; raw records in {run_dir}")
    render_and_publish(run_dir, a)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Start and stop reference-app servers for the benchmark scripts (bounded waits)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def wsevents_run(target: str, *flags: str) -> str:
    """The harness command (``{port}`` left to fill) serving ``target`` with this project's
    ``python -m wsevents run``, quiet, with extra ``flags``."""
    return " ".join(
        [
            f"{PYTHON} -m wsevents run {target} --host 127.0.0.1 --port {{port}}",
            "--log-level warning",
            *flags,
        ]
    )


def add_harness_paths(p: argparse.ArgumentParser) -> None:
    """``--bench-dir`` (the harness, ``../shared/bench`` unless ``$WSEVENTS_BENCH_DIR`` says
    otherwise) and ``--raw-dir`` (where its runs go) of a script that runs the harness."""
    p.add_argument(
        "--bench-dir",
        type=Path,
        default=Path(os.environ.get("WSEVENTS_BENCH_DIR") or ROOT.parent / "shared" / "bench"),
        help="the harness folder (bench.py, loadgen.js)",
    )
    p.add_argument(
        "--raw-dir", type=Path, default=ROOT / "benchmarks" / "results" / "raw", help="raw runs"
    )


def harness_records(
    script: str, a: Any, servers: dict[str, str], *, label: str, scenario: str = "s1"
) -> list[dict[str, Any]] | int:
    """Run the harness on ``servers`` (see [`harness_command`][]) and return the records of
    ``scenario``; or the script's exit status when it cannot (2: no harness, 1: bench.py
    failed), after saying why on stderr in ``script``'s name."""
    bench = a.bench_dir.resolve() / "bench.py"
    if not bench.exists():
        print(f"{script}: no harness at {bench}; give --bench-dir", file=sys.stderr)
        return 2
    cmd = harness_command(bench, a, servers, scenario=scenario, label=label)
    run_dir, returncode = run_harness(cmd)
    if run_dir is None:
        print(f"{script}: bench.py exited with {returncode}", file=sys.stderr)
        return 1
    return load_records(run_dir, scenario)


def s1_samples(
    records: list[dict[str, Any]], *, scale: float = 1.0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per server, the server CPU s/100k replies (times ``scale``) and the replies/s of
    each successful run of an ``s1`` harness run."""
    cpu: dict[str, list[float]] = {}
    rate: dict[str, list[float]] = {}
    for rec in records:
        result = rec.get("result") or {}
        if rec.get("error") or result.get("error") or rec.get("server_cpu_s_per_100k") is None:
            continue
        cpu.setdefault(rec["server"], []).append(rec["server_cpu_s_per_100k"] * scale)
        if result.get("replies_per_s") is not None:
            rate.setdefault(rec["server"], []).append(result["replies_per_s"])
    return cpu, rate


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_reference_app(
    *,
    cpu: str | None,
    extra: list[str] | None = None,
    timeout: float = 30.0,
    target: str = "examples.reference_app:app",
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m wsevents run examples.reference_app:app`` (or ``target``) on a free port,
    ready to use.

    Pinned to ``cpu`` with taskset when given; its own process group, so that
    :func:`stop` can signal it and its children.
    """
    port = free_port()
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    cmd = [
        *pin,
        str(ROOT / ".venv/bin/python"),
        "-m",
        "wsevents",
        "run",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *(extra or []),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"server on {port} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_harness(cmd: list[str]) -> tuple[Path | None, int]:
    """Run the shared harness (``bench.py ...``) from the project root, echoing its output.

    Returns the run's raw folder (None when bench.py exited before it made one) and the
    exit status. ``--extra`` commands run in the caller's folder: the project root.
    """
    run_dir: Path | None = None
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            found = re.search(r"raw -> (.+)$", line.rstrip("\n"))
            if found and run_dir is None:
                run_dir = Path(found.group(1))
    return run_dir, proc.returncode


def load_records(run_dir: Path, scenario: str) -> list[dict[str, Any]]:
    """The per-run JSON records of ``scenario`` in a harness run folder."""
    records = []
    for path in sorted(run_dir.glob(f"*.{scenario}.*.json")):
        with path.open() as f:
            records.append(json.load(f))
    return records


def harness_command(
    bench: Path,
    a: Any,
    servers: dict[str, str],
    *,
    scenario: str,
    label: str,
    cpus: bool = False,
) -> list[str]:
    """The ``bench.py --compare`` command for ``servers`` (name: command with ``{port}``),
    reps interleaved, from the script's options ``a`` (``reps``, ``warmup``, ``duration``,
    ``timeout``, ``raw_dir``, ``pin``; with ``cpus``, also ``server_cpu`` and
    ``client_cpu``)."""
    cmd = [
        sys.executable,
        str(bench),
        "--compare",
        ",".join(servers),
        "--scenarios",
        scenario,
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
    ]
    if cpus:
        cmd += ["--server-cpu", a.server_cpu, "--client-cpu", a.client_cpu]
    cmd += ["--label", label]
    for name, command in servers.items():
        cmd += ["--extra", f"{name}={command}"]
    if not a.pin:
        cmd.append("--no-pin")
    return cmd


def fanout_cpu_table(
    records: list[dict[str, Any]], servers: list[str], base: str
) -> tuple[str, dict[str, float]]:
    """A Markdown table of a harness fan-out run: per server of ``servers``, the reps, the
    median server CPU s/100k deliveries with its ratio to ``base``, the median
    deliveries/s and the pushes lost; also the medians of CPU s/100k by server. Failed
    runs are left out; a server without a run reads "failed"."""
    cpu: dict[str, list[float]] = {}
    rate: dict[str, list[float]] = {}
    lost: dict[str, int] = {}
    for rec in records:
        result = rec.get("result") or {}
        if rec.get("error") or result.get("error") or rec.get("server_cpu_s_per_100k") is None:
            continue
        cpu.setdefault(rec["server"], []).append(rec["server_cpu_s_per_100k"])
        if result.get("deliveries_per_s") is not None:
            rate.setdefault(rec["server"], []).append(result["deliveries_per_s"])
        lost[rec["server"]] = lost.get(rec["server"], 0) + int(result.get("lost") or 0)
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    base_cpu = medians.get(base)
    lines = [
        f"| server | reps | srv CPU s/100k deliveries | ratio to {base} | deliveries/s | lost |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in servers:
        if name not in medians:
            lines.append(f"| {name} | 0 | failed | | | |")
            continue
        ratio = f"{medians[name] / base_cpu:.3f}" if base_cpu else "n/a"
        deliveries = f"{statistics.median(rate[name]):.0f}" if rate.get(name) else "n/a"
        lines.append(
            f"| {name} | {len(cpu[name])} | {medians[name]:.3f} | {ratio} | {deliveries} "
            f"| {lost[name]} |"
        )
    return "\n".join(lines), medians

"""What observability costs: server CPU per 100k RPC replies, with metrics on and off.

The reference app, started fresh per rep and measured with the harness' scenario ``s1``
(50 connections x 10 ``rpc /echo`` in flight), reps interleaved, under several command
lines that differ only by their flags:

* ``off``: ``python -m wsevents run examples.reference_app:app``;
* ``metrics``: the same with ``--metrics`` (Prometheus counters on, ``GET /metrics``
  mounted; nothing scrapes during the run, as a scrape every 15 s costs next to nothing).

The key figure is the server's CPU seconds per 100k replies (lower is better), compared
with ``off`` from the same run; the target is ``metrics / off <= 1.03``. More
configurations go in ``CONFIGS`` (name, extra CLI flags, target ratio). Run from the project
root, on a quiet machine:

    python benchmarks/observability.py                  # 3 reps of 2 + 8 s per config (~1.5 min)
    python benchmarks/observability.py --reps 1 --warmup 1 --duration 2   # a quick check
    python benchmarks/observability.py --only off,metrics

The harness (``bench.py``, ``loadgen.js``) is ``../shared/bench`` unless ``--bench-dir`` or
``$WSEVENTS_BENCH_DIR`` says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _servers import (  # noqa: E402  (benchmarks/ is not a package)
    add_harness_paths,
    harness_command,
    load_records,
    run_harness,
    s1_samples,
    wsevents_run,
)

BASE = "off"
# name -> (extra flags of `python -m wsevents run`, target ratio to BASE or None)
CONFIGS: dict[str, tuple[list[str], float | None]] = {
    BASE: ([], None),
    "metrics": (["--metrics"], 1.03),
}


def server_cmd(flags: list[str]) -> str:
    return wsevents_run("examples.reference_app:app", *flags)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved reps per configuration")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    p.add_argument("--timeout", type=float, default=60.0, help="kill a load run after this")
    p.add_argument(
        "--only", default=",".join(CONFIGS), help=f"configurations (default: {','.join(CONFIGS)})"
    )
    add_harness_paths(p)
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    return p


def table(records: list[dict[str, Any]], names: list[str]) -> tuple[str, dict[str, float]]:
    """A Markdown table of median CPU s/100k replies and replies/s per configuration, with
    the ratio to ``off`` and its target; also the medians of CPU s/100k by configuration."""
    cpu, rate = s1_samples(records)
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = medians.get(BASE)
    lines = [
        f"| config | reps | srv CPU s/100k replies | ratio to {BASE} | target | replies/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        target = CONFIGS[name][1]
        goal = f"<= {target:.2f}" if target is not None else ""
        if name not in medians:
            lines.append(f"| {name} | 0 | failed | | {goal} | |")
            continue
        ratio = f"{medians[name] / base:.3f}" if base else "n/a"
        replies = f"{statistics.median(rate[name]):.0f}" if rate.get(name) else "n/a"
        lines.append(
            f"| {name} | {len(cpu[name])} | {medians[name]:.3f} | {ratio} | {goal} | {replies} |"
        )
    return "\n".join(lines), medians


def harness_cmd(a: argparse.Namespace, bench: Path, names: list[str]) -> list[str]:
    """The harness command for the configurations ``names``."""
    servers = {name: server_cmd(CONFIGS[name][0]) for name in names}
    return harness_command(bench, a, servers, scenario="s1", label="observability")


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    names = [name.strip() for name in a.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or BASE not in names:
        print(
            f"observability.py: --only needs {BASE} and names from {','.join(CONFIGS)}",
            file=sys.stderr,
        )
        return 2
    bench = a.bench_dir.resolve() / "bench.py"
    if not bench.exists():
        print(f"observability.py: no harness at {bench}; give --bench-dir", file=sys.stderr)
        return 2
    run_dir, returncode = run_harness(harness_cmd(a, bench, names))
    if run_dir is None:
        print(f"observability.py: bench.py exited with {returncode}", file=sys.stderr)
        return 1
    text, medians = table(load_records(run_dir, "s1"), names)
    print("\nServer CPU per 100k RPC replies (median over reps; lower is better)\n")
    print(text)
    for name in names:
        target = CONFIGS[name][1]
        if target is not None and name in medians and BASE in medians:
            ratio = medians[name] / medians[BASE]
            verdict = "within" if ratio <= target else "OVER"
            print(f"{name}/{BASE} = {ratio:.3f} ({verdict} the {target:.2f} target)")
    return 0 if len(medians) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())

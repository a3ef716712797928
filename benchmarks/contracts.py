"""What declared types cost: server CPU per 100k RPC replies, validated or not.

Three servers, each started fresh per rep and measured with the harness' scenario ``s1``
(50 connections x 10 ``rpc /echo`` in flight, a ~100-byte object), reps interleaved:

* ``echo``: the reference app's plain ``/echo``;
* ``typed-msgspec``: ``/echo`` declared ``data=Payload, reply=Payload`` (a msgspec Struct
  with the constraints of ``/typed/message``), see ``benchmarks/contracts_app.py``;
* ``typed-pydantic``: the same with a pydantic model.

The key figure is the server's CPU seconds per 100k replies (lower is better), compared
with ``echo`` from the same run; the target is ``typed-msgspec / echo <= 1.10``. Run from
the project root, on a quiet machine:

    python benchmarks/contracts.py                  # 3 reps of 2 + 8 s per server (~2 min)
    python benchmarks/contracts.py --reps 1 --warmup 1 --duration 2   # a quick check

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
from _servers import add_harness_paths, harness_records, s1_samples, wsevents_run  # noqa: E402  (benchmarks/ is not a package)

SERVERS = {
    "echo": "examples.reference_app:app",
    "typed-msgspec": "benchmarks.contracts_app:msgspec_app",
    "typed-pydantic": "benchmarks.contracts_app:pydantic_app",
}
TARGET = 1.10


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved reps per server")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    p.add_argument("--timeout", type=float, default=60.0, help="kill a load run after this")
    add_harness_paths(p)
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    return p


def table(records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """A Markdown table of median CPU s/100k replies and replies/s per server, with ratios
    to ``echo``; also the medians of CPU s/100k by server."""
    cpu, rate = s1_samples(records)
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = medians.get("echo")
    lines = [
        "| server | reps | srv CPU s/100k replies | ratio to echo | replies/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in SERVERS:
        if name not in medians:
            lines.append(f"| {name} | 0 | failed | | |")
            continue
        ratio = f"{medians[name] / base:.3f}" if base else "n/a"
        replies = f"{statistics.median(rate[name]):.0f}" if rate.get(name) else "n/a"
        lines.append(f"| {name} | {len(cpu[name])} | {medians[name]:.3f} | {ratio} | {replies} |")
    return "\n".join(lines), medians


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    records = harness_records(
        "contracts.py",
        a,
        {name: wsevents_run(target) for name, target in SERVERS.items()},
        label="contracts",
    )
    if isinstance(records, int):
        return records
    text, medians = table(records)
    print("\nServer CPU per 100k RPC replies (median over reps; lower is better)\n")
    print(text)
    if "echo" in medians and "typed-msgspec" in medians:
        ratio = medians["typed-msgspec"] / medians["echo"]
        verdict = "within" if ratio <= TARGET else "OVER"
        print(f"\ntyped-msgspec/echo = {ratio:.3f} ({verdict} the {TARGET:.2f} target)")
    return 0 if len(medians) == len(SERVERS) else 1


if __name__ == "__main__":
    sys.exit(main())

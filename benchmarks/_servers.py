"""Start and stop reference-app servers for the benchmark scripts (bounded waits)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_reference_app(
    *, cpu: str | None, extra: list[str] | None = None, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m wsevents run examples.reference_app:app`` on a free port, ready to use.

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
        "examples.reference_app:app",
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

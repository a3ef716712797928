"""The server of ``benchmarks/presence.py``'s fan-out part: the reference app with presence
on its chat rooms.

``app`` is a fresh copy of ``examples.reference_app``'s app (the module is loaded again
under another name, so the reference app itself stays as it is) that also tracks
``/chat/rooms/:room`` with presence mode ``"list"``: each ``subscribe`` records the member
and pushes ``presence`` to the room, and each broadcast goes through a presence room. Run
it with ``python -m wsevents run benchmarks.presence_app:app``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from wsevents import WsApp

_SOURCE = Path(__file__).resolve().parent.parent / "examples" / "reference_app.py"


def load_app() -> WsApp:
    """A new reference app, with presence ("list") on ``/chat/rooms/:room``."""
    spec = importlib.util.spec_from_file_location("wsevents_bench_reference_app", _SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its declared types resolve their names through it
    spec.loader.exec_module(module)
    ws: WsApp = module.app
    ws.presence.track("/chat/rooms/:room", mode="list")
    return ws


app = load_app()

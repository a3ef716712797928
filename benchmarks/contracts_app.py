"""Servers for ``benchmarks/contracts.py``: ``rpc /echo`` with a declared data and reply type.

The load generator sends ``rpc /echo`` with a ~100-byte object and checks that the reply's
``data`` equals it, so these apps serve that path with the payload's type declared: each
RPC is validated on the way in and dumped through the type on the way out, what a
``/typed/message`` call costs. Run one with
``python -m wsevents run benchmarks.contracts_app:msgspec_app``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import pydantic

from wsevents import WsApp, create_ws_app, use_ws_data


class Payload(msgspec.Struct):
    user: str
    room: str
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    n: int
    ok: bool
    tags: Annotated[list[str], msgspec.Meta(max_length=5)] = []


class PPayload(pydantic.BaseModel):
    user: str
    room: str
    text: str = pydantic.Field(min_length=1, max_length=500)
    n: int
    ok: bool
    tags: list[str] = pydantic.Field(default_factory=list, max_length=5)


def _typed_echo(tp: type[Payload] | type[PPayload]) -> WsApp:
    app = create_ws_app()

    @app.on_message("rpc", "/echo", data=tp, reply=tp)
    def echo() -> Payload | PPayload:
        return use_ws_data(tp)

    return app


msgspec_app = _typed_echo(Payload)
pydantic_app = _typed_echo(PPayload)

"""create_ws_app takes exactly WsApp's options, so readers and type checkers see them."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import wsevents.app
from wsevents import WsApp, create_ws_app


def _options(fn: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn, eval_str=True).parameters.values())
    return [p for p in params if p.name != "self"]


def test_create_ws_app_signature_is_ws_app_init_signature() -> None:
    # Same names, order, kinds, annotations and defaults: an option added to WsApp but not
    # to create_ws_app (or a default changed in one place) fails here.
    assert _options(create_ws_app) == _options(WsApp.__init__)
    assert inspect.signature(create_ws_app, eval_str=True).return_annotation is WsApp


def test_create_ws_app_options_are_keyword_only() -> None:
    kinds = {p.kind for p in _options(create_ws_app)}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}
    with pytest.raises(TypeError):
        create_ws_app(30.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        create_ws_app(no_such_option=1)  # type: ignore[call-arg]


def test_create_ws_app_forwards_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    received: dict[str, Any] = {}

    class Recorder:
        def __init__(self, **options: Any) -> None:
            received.update(options)

    monkeypatch.setattr(wsevents.app, "WsApp", Recorder)
    # A distinct value per option: swapping two options in the forwarding call fails.
    sent: dict[str, Any] = {p.name: object() for p in _options(WsApp.__init__)}
    create_ws_app(**sent)
    assert received == sent


def test_create_ws_app_defaults_match_a_bare_ws_app() -> None:
    made, bare = create_ws_app(), WsApp()
    for name in ("heartbeat", "heartbeat_timeout", "max_message_size", "max_frame_size"):
        assert getattr(made, name) == getattr(bare, name)
    assert (made.max_in_flight, made.max_send_buffer) == (bare.max_in_flight, bare.max_send_buffer)
    assert made.allowed_origins == bare.allowed_origins is None

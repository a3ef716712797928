"""cluster.py: channel names and the envelope, byte for byte as on the wire."""

from __future__ import annotations

import dataclasses
import logging

import orjson
import pytest

from wsevents.cluster import (
    BROADCAST_CHANNEL,
    INSTANCE_CHANNEL_PREFIX,
    ROOM_CHANNEL_PREFIX,
    Envelope,
    decode_envelope,
    instance_channel,
    room_channel,
)


def test_channel_names_are_the_wire_names() -> None:
    assert (ROOM_CHANNEL_PREFIX, BROADCAST_CHANNEL, INSTANCE_CHANNEL_PREFIX) == (
        "ws:room:",
        "ws:broadcast",
        "ws:instance:",
    )
    assert room_channel("/chat/a b") == "ws:room:/chat/a b"
    assert instance_channel("abc") == "ws:instance:abc"


@pytest.mark.parametrize(
    ("envelope", "wire"),
    [
        (
            Envelope("o", "room", "/r", "message", "/r", {"t": 1}, {"id": "7"}, "c1"),
            '{"event":"message","path":"/r","data":{"t":1},"params":{"id":"7"},'
            '"excludeId":"c1","origin":"o"}',
        ),
        (Envelope("o", "room", "/r", "e", "/r"), '{"event":"e","path":"/r","origin":"o"}'),
        (
            Envelope("o", "broadcast", None, "announcement", "/all", [1], {}),
            '{"event":"announcement","path":"/all","data":[1],"origin":"o"}',
        ),
        (
            Envelope("o", "direct", "conn-1", "note", "/p", "hi"),
            '{"to":"conn-1","event":"note","path":"/p","data":"hi","origin":"o"}',
        ),
    ],
)
def test_envelopes_encode_with_the_keys_and_order_of_the_wire(envelope, wire) -> None:
    assert envelope.encode() == wire
    kind = envelope.kind
    decoded = decode_envelope(wire, "me", kind, envelope.target if kind == "room" else None)
    expected = envelope if envelope.params else dataclasses.replace(envelope, params=None)
    assert decoded == expected


def test_envelope_is_frozen_and_encoding_changes_nothing() -> None:
    params = {"a": "1"}
    envelope = Envelope("o", "room", "/r", "e", "/r", None, params)
    envelope.encode()
    assert params == {"a": "1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        envelope.origin = "x"  # type: ignore[misc]


def test_non_string_keys_in_data_are_encoded_as_strings() -> None:
    wire = Envelope("o", "broadcast", None, "e", "/p", {1: "a"}).encode()
    assert orjson.loads(wire)["data"] == {"1": "a"}


def test_a_direct_envelope_without_a_target_is_dropped_silently(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert decode_envelope('{"event":"e","path":"/p","origin":"o"}', "me", "direct") is None
    assert caplog.records == []


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_trace_context_travels_before_origin_and_only_when_set() -> None:
    traced = Envelope("o", "room", "/r", "e", "/r", 1, traceparent=TRACEPARENT, tracestate="v=1")
    wire = (
        '{"event":"e","path":"/r","data":1,'
        f'"traceparent":"{TRACEPARENT}","tracestate":"v=1","origin":"o"}}'
    )
    assert traced.encode() == wire
    assert decode_envelope(wire, "me", "room", "/r") == traced
    no_state = dataclasses.replace(traced, tracestate=None)
    assert '"tracestate"' not in no_state.encode()
    assert decode_envelope(no_state.encode(), "me", "room", "/r") == no_state
    assert '"trace' not in Envelope("o", "room", "/r", "e", "/r").encode()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"traceparent": 7, "tracestate": "v=1"}, (None, None)),
        ({"traceparent": "x" * 257}, (None, None)),
        ({"traceparent": TRACEPARENT, "tracestate": ["v=1"]}, (TRACEPARENT, None)),
        ({"traceparent": TRACEPARENT, "tracestate": "v" * 1025}, (TRACEPARENT, None)),
        ({"tracestate": "v=1"}, (None, None)),
    ],
)
def test_odd_trace_fields_are_ignored_not_fatal(fields, expected) -> None:
    wire = orjson.dumps({"event": "e", "path": "/r", **fields, "origin": "o"})
    envelope = decode_envelope(wire, "me", "room", "/r")
    assert envelope is not None
    assert (envelope.traceparent, envelope.tracestate) == expected

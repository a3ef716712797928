"""The wire protocol: parsing client frames and encoding replies and pushes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsevents.exceptions import ProtocolError
from wsevents.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_NESTING_DEPTH,
    ClientMessage,
    Codec,
    JsonCodec,
    encode_error,
    encode_push,
    encode_reply,
    parse_client_message,
)


def frame(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


@pytest.mark.parametrize(
    "raw",
    ["", "{", "not json", '{"event": "rpc", "path": "/a",}', "{'event': 'rpc'}", "NaN"],
)
def test_invalid_json_is_a_protocol_error(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)


def test_invalid_utf8_bytes_are_a_protocol_error() -> None:
    raw = b'{"event": "rpc", "path": "/\xff"}'
    with pytest.raises(ProtocolError):
        parse_client_message(raw)


def test_lone_surrogate_in_text_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_client_message('{"event": "rpc", "path": "/\ud800"}')


@pytest.mark.parametrize("raw", ["[]", '["rpc", "/a"]', "1", '"rpc"', "null", "true", "1.5"])
def test_non_object_json_is_a_protocol_error(raw: str) -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        parse_client_message(raw)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"path": "/a"},
        {"event": "rpc"},
        {"event": None, "path": "/a"},
        {"event": "rpc", "path": None},
        {"event": 1, "path": "/a"},
        {"event": "rpc", "path": 1},
        {"event": ["rpc"], "path": "/a"},
        {"event": "rpc", "path": {"p": "/a"}},
        {"event": True, "path": "/a"},
    ],
)
def test_missing_or_non_string_event_or_path_is_a_protocol_error(
    fields: dict[str, Any],
) -> None:
    with pytest.raises(ProtocolError, match="'event' and 'path'"):
        parse_client_message(frame(**fields, id=1))


def test_deep_nesting_is_a_protocol_error_not_a_crash() -> None:
    depth = 100_000
    raw = '{"event": "rpc", "path": "/a", "data": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ProtocolError):
        parse_client_message(raw)


def nested(kind: str, depth: int, leaf: str = "1") -> str:
    """JSON text of ``depth`` nested arrays or objects around ``leaf``."""
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"k":' * depth + leaf + "}" * depth


def nested_frame(kind: str, depth: int, leaf: str = "1") -> str:
    """An echo RPC whose nesting is ``depth`` levels, its own object included."""
    return '{"event":"rpc","path":"/a","id":1,"data":' + nested(kind, depth - 1, leaf) + "}"


def test_max_nesting_depth_is_the_deepest_orjson_encodes() -> None:
    # What the parser accepts must be echoable: orjson encodes 254 levels, not 255.
    assert MAX_NESTING_DEPTH == 254
    for kind in ("array", "object"):
        orjson.dumps(orjson.loads(nested(kind, MAX_NESTING_DEPTH)))
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(orjson.loads(nested(kind, MAX_NESTING_DEPTH + 1)))


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("leaf", ["1", '"\\ud83d"'], ids=["plain", "lone-surrogate"])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_nesting_up_to_the_limit_parses_and_re_encodes(
    kind: str, leaf: str, as_bytes: bool
) -> None:
    text = nested_frame(kind, MAX_NESTING_DEPTH, leaf)
    raw: str | bytes = text.encode() if as_bytes else text
    msg = parse_client_message(raw)
    assert msg.data == json.loads(nested(kind, MAX_NESTING_DEPTH - 1, leaf))
    assert json.loads(encode_reply(msg.id, msg.data)) == {"id": 1, "data": msg.data}


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("leaf", ["1", '"\\ud83d"'], ids=["plain", "lone-surrogate"])
@pytest.mark.parametrize("as_bytes", [False, True])
@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 500, 900, 1024, 1025, 5000])
def test_nesting_over_the_limit_is_a_protocol_error(
    kind: str, leaf: str, as_bytes: bool, depth: int
) -> None:
    text = nested_frame(kind, depth, leaf)
    with pytest.raises(ProtocolError):
        parse_client_message(text.encode() if as_bytes else text)
    with pytest.raises(ValueError):
        JsonCodec.decode(text)


def test_a_frame_with_many_shallow_containers_is_parsed() -> None:
    # More brackets than the limit, none of them deep.
    data = [{"a": [i]} for i in range(2 * MAX_NESTING_DEPTH)]
    assert parse_client_message(frame(event="rpc", path="/a", data=data)).data == data


def test_default_max_message_size_is_one_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 1 << 20


def test_text_of_exactly_max_size_bytes_is_accepted_and_one_more_is_dropped() -> None:
    raw = frame(event="rpc", path="/echo", data="x" * 200)
    size = len(raw.encode())
    assert parse_client_message(raw, max_size=size).data == "x" * 200
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message(raw, max_size=size - 1)


def test_multibyte_characters_count_as_their_utf8_bytes() -> None:
    raw = frame(event="rpc", path="/echo", data="é€😀" * 10)
    nbytes = len(raw.encode())
    assert nbytes > len(raw)  # characters alone would fit
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message(raw, max_size=nbytes - 1)
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message(raw, max_size=len(raw))
    assert parse_client_message(raw, max_size=nbytes).data == "é€😀" * 10


def test_text_with_more_characters_than_max_size_is_dropped() -> None:
    raw = frame(event="rpc", path="/echo", data="a" * 100)
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message(raw, max_size=10)


def test_small_text_under_a_large_limit_is_accepted() -> None:
    raw = frame(event="rpc", path="/echo", data="é")
    assert len(raw) * 4 <= DEFAULT_MAX_MESSAGE_SIZE
    assert parse_client_message(raw).data == "é"


def test_bytes_of_exactly_max_size_are_accepted_and_one_more_is_dropped() -> None:
    raw = frame(event="rpc", path="/echo", data="é" * 50).encode()
    assert parse_client_message(raw, max_size=len(raw)).data == "é" * 50
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message(raw, max_size=len(raw) - 1)


def test_oversize_frame_is_dropped_before_decoding() -> None:
    calls: list[object] = []

    def decode(raw: str | bytes) -> Any:
        calls.append(raw)
        return {"event": "rpc", "path": "/a"}

    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message(b"x" * 11, max_size=10, decode=decode)
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message("x" * 11, max_size=10, decode=decode)
    assert calls == []


def test_text_frame_parses_into_a_client_message() -> None:
    raw = frame(event="rpc", path="/users/1", data={"a": [1, 2]}, id=7)
    msg = parse_client_message(raw)
    assert msg == ClientMessage("rpc", "/users/1", {"a": [1, 2]}, 7, True, raw)


def test_bytes_frame_parses_like_text() -> None:
    text = frame(event="message", path="/chat/ü", data={"text": "héllo"}, id="x")
    from_text = parse_client_message(text)
    from_bytes = parse_client_message(text.encode())
    assert (from_bytes.event, from_bytes.path, from_bytes.data, from_bytes.id) == (
        from_text.event,
        from_text.path,
        from_text.data,
        from_text.id,
    )
    assert from_bytes.has_id and from_bytes.raw == text.encode()


def test_message_without_id_or_data() -> None:
    msg = parse_client_message('{"event": "ping", "path": "/"}')
    assert (msg.data, msg.id, msg.has_id) == (None, None, False)


@pytest.mark.parametrize("message_id", [None, False, 0, "", 1, "abc", 1.5, [1], {"k": 1}])
def test_any_present_id_sets_has_id_and_is_kept_verbatim(message_id: Any) -> None:
    msg = parse_client_message(frame(event="rpc", path="/a", id=message_id))
    assert msg.has_id is True
    assert msg.id == message_id
    assert type(msg.id) is type(message_id)


def test_unknown_keys_are_ignored() -> None:
    msg = parse_client_message(frame(event="rpc", path="/a", extra=1, params={"x": "y"}))
    assert (msg.event, msg.path, msg.has_id) == ("rpc", "/a", False)


def test_empty_event_and_path_strings_are_accepted() -> None:
    # Routing decides what to do with them (no route matches: a 404 for an RPC).
    msg = parse_client_message(frame(event="", path=""))
    assert (msg.event, msg.path) == ("", "")


class _Frozen(Mapping[str, Any]):
    """A read-only mapping that is not a dict, as a binary decoder might return."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class TaggedCodec:
    """A tiny binary codec: a magic byte, then ``key=value`` lines of text."""

    binary = True
    MAGIC = b"\x01"

    @staticmethod
    def decode(raw: str | bytes, /) -> Any:
        if not isinstance(raw, bytes) or not raw.startswith(TaggedCodec.MAGIC):
            raise ValueError("not a tagged frame")
        body = raw[1:].decode("ascii")
        return _Frozen(dict(line.split("=", 1) for line in body.splitlines()))

    @staticmethod
    def encode(message: dict[str, Any], /) -> bytes:
        return TaggedCodec.MAGIC + "\n".join(f"{k}={v}" for k, v in message.items()).encode()


def test_custom_codec_satisfies_the_codec_protocol() -> None:
    codec: Codec = TaggedCodec()
    json_codec: Codec = JsonCodec()
    assert codec.binary is True
    assert json_codec.binary is False


def test_parse_uses_a_custom_decoder_and_accepts_any_mapping() -> None:
    raw = b"\x01event=rpc\npath=/users/1\nid=9\ndata=hello"
    msg = parse_client_message(raw, decode=TaggedCodec.decode)
    assert msg == ClientMessage("rpc", "/users/1", "hello", "9", True, raw)


def test_custom_decoder_failure_is_a_protocol_error_with_cause() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"event": "rpc", "path": "/a"}', decode=TaggedCodec.decode)
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "not a tagged frame"


def test_custom_decoder_returning_a_non_mapping_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        parse_client_message(b"x", decode=lambda raw: [("event", "rpc"), ("path", "/a")])


def test_custom_decoder_mapping_without_path_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="'event' and 'path'"):
        parse_client_message(b"\x01event=rpc", decode=TaggedCodec.decode)


def test_encoders_use_a_custom_encoder() -> None:
    enc = TaggedCodec.encode
    assert encode_reply(3, "ok", enc) == b"\x01id=3\ndata=ok"
    assert encode_error(3, 404, "Not found", enc) == (
        b"\x01id=3\nerror={'code': 404, 'message': 'Not found'}"
    )
    assert encode_push("news", "/n", "hi", {"a": "b"}, enc) == (
        b"\x01event=news\npath=/n\nparams={'a': 'b'}\ndata=hi"
    )


def test_reply_with_none_data_encodes_null() -> None:
    assert orjson.loads(encode_reply(1, None)) == {"id": 1, "data": None}
    assert encode_reply(1, None) == b'{"id":1,"data":null}'


@pytest.mark.parametrize("message_id", [None, False, 0, "", "req-1", 2**53])
def test_reply_echoes_any_id_verbatim(message_id: Any) -> None:
    decoded = orjson.loads(encode_reply(message_id, {"ok": True}))
    assert decoded == {"id": message_id, "data": {"ok": True}}
    assert type(decoded["id"]) is type(message_id)


def test_error_reply_shape() -> None:
    assert orjson.loads(encode_error("a", 403, "private room")) == {
        "id": "a",
        "error": {"code": 403, "message": "private room"},
    }


def test_push_with_data_and_params() -> None:
    raw = encode_push("message", "/chat/rooms/lobby", {"text": "hi"}, {"room": "lobby"})
    assert orjson.loads(raw) == {
        "event": "message",
        "path": "/chat/rooms/lobby",
        "params": {"room": "lobby"},
        "data": {"text": "hi"},
    }


def test_push_leaves_out_empty_params_and_none_data() -> None:
    assert orjson.loads(encode_push("e", "/p")) == {"event": "e", "path": "/p"}
    assert orjson.loads(encode_push("e", "/p", None, {})) == {"event": "e", "path": "/p"}
    assert orjson.loads(encode_push("e", "/p", None, MappingProxyType({}))) == {
        "event": "e",
        "path": "/p",
    }


@pytest.mark.parametrize("data", [False, 0, "", [], {}])
def test_push_keeps_falsy_data_that_is_not_none(data: Any) -> None:
    assert orjson.loads(encode_push("e", "/p", data)) == {"event": "e", "path": "/p", "data": data}


def test_push_accepts_read_only_params_mapping() -> None:
    params = MappingProxyType({"id": "7"})
    assert orjson.loads(encode_push("e", "/u/7", None, params)) == {
        "event": "e",
        "path": "/u/7",
        "params": {"id": "7"},
    }


def test_encoders_stringify_non_string_dict_keys() -> None:
    assert orjson.loads(encode_reply(1, {1: "a", 2.5: "b", None: "c"})) == {
        "id": 1,
        "data": {"1": "a", "2.5": "b", "null": "c"},
    }
    assert orjson.loads(encode_push("e", "/p", {7: True})) == {
        "event": "e",
        "path": "/p",
        "data": {"7": True},
    }


LONE_SURROGATE_FRAME = '{"event":"rpc","path":"/echo","id":30,"data":"a\\ud83db"}'


@pytest.mark.parametrize("as_bytes", [False, True])
def test_lone_surrogate_escape_parses_and_encodes_back_as_the_same_escape(
    as_bytes: bool,
) -> None:
    # A JavaScript string cut inside an emoji: valid JSON that orjson alone refuses.
    raw = LONE_SURROGATE_FRAME.encode() if as_bytes else LONE_SURROGATE_FRAME
    msg = parse_client_message(raw)
    assert (msg.id, msg.data) == (30, "a\ud83db")
    reply = encode_reply(msg.id, msg.data)
    assert reply == b'{"id":30,"data":"a\\ud83db"}'
    push = encode_push("message", "/room", {"\udc00": ["\ud83d", "é"]}, {"k": "\ud83d"})
    assert json.loads(push) == {
        "event": "message",
        "path": "/room",
        "params": {"k": "\ud83d"},
        "data": {"\udc00": ["\ud83d", "é"]},
    }
    push.decode("ascii")  # escaped, so any UTF-8 reader accepts it


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("123456789012345678901234567890", 1.2345678901234568e29),
        ("-123456789012345678901234567890", -1.2345678901234568e29),
        ("18446744073709551615", 18446744073709551615),
        ("-9223372036854775808", -9223372036854775808),
        ("1.5", 1.5),
        ('{"a":[true,false,null]}', {"a": [True, False, None]}),
    ],
)
def test_the_lone_surrogate_path_reads_numbers_like_orjson(data: str, expected: Any) -> None:
    text = '{"event":"rpc","path":"/a","data":[' + data + ',"\\ud83d"]}'
    value = parse_client_message(text).data[0]
    assert value == orjson.loads(data) == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "data", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 400, '"\\ud83d', "[,]"]
)
def test_the_lone_surrogate_path_refuses_what_orjson_refuses(data: str) -> None:
    with pytest.raises(ProtocolError):
        parse_client_message('{"event":"rpc","path":"/a","data":[' + data + ',"\\ud83d"]}')


def test_encoding_falls_back_only_for_surrogates() -> None:
    for unencodable in (object(), 2**70, {"x": {1, 2}}, ["\ud83d", object()]):
        with pytest.raises(TypeError):
            JsonCodec.encode({"data": unencodable})
    # Keys that are not strings are stringified on the fallback path too.
    assert json.loads(JsonCodec.encode({"data": {1: "\ud83d", None: 2}})) == {
        "data": {"1": "\ud83d", "null": 2}
    }


def test_json_codec_round_trips_text_and_bytes() -> None:
    encoded = JsonCodec.encode({"a": "é", "b": [1, None]})
    assert isinstance(encoded, bytes)
    assert JsonCodec.decode(encoded) == {"a": "é", "b": [1, None]}
    assert JsonCodec.decode(encoded.decode()) == {"a": "é", "b": [1, None]}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Text including lone surrogates, which no valid UTF-8 frame can carry.
any_text = st.text(st.characters(exclude_categories=()))
sizes = st.integers(min_value=0, max_value=4096)


def _parse_or_error(raw: str | bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
    try:
        result = parse_client_message(raw, max_size=max_size)
    except ProtocolError:
        return
    assert type(result) is ClientMessage
    assert type(result.event) is str and type(result.path) is str
    assert result.raw is raw


@given(st.binary(), sizes)
def test_any_bytes_give_a_message_or_protocol_error(raw: bytes, max_size: int) -> None:
    _parse_or_error(raw, max_size)


@given(any_text, sizes)
def test_any_text_gives_a_message_or_protocol_error(raw: str, max_size: int) -> None:
    _parse_or_error(raw, max_size)


# Text where lone surrogates are frequent, not one code point in five hundred.
surrogate_text = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
    | st.characters(exclude_categories=())
)


@given(surrogate_text, st.dictionaries(surrogate_text, surrogate_text, max_size=3))
def test_any_text_round_trips_through_the_json_codec(text: str, obj: dict[str, str]) -> None:
    message = {"data": text, "obj": obj}
    encoded = JsonCodec.encode(message)
    assert JsonCodec.decode(encoded) == message
    assert JsonCodec.decode(encoded.decode()) == message


@given(json_values)
def test_any_json_value_gives_a_message_or_protocol_error(value: Any) -> None:
    raw = orjson.dumps(value)
    _parse_or_error(raw)
    _parse_or_error(raw.decode())


@given(
    event=st.text(),
    path=st.text(),
    data=json_values,
    message_id=json_values,
    has_id=st.booleans(),
    as_bytes=st.booleans(),
)
def test_every_valid_message_round_trips(
    event: str, path: str, data: Any, message_id: Any, has_id: bool, as_bytes: bool
) -> None:
    fields: dict[str, Any] = {"event": event, "path": path, "data": data}
    if has_id:
        fields["id"] = message_id
    encoded = orjson.dumps(fields)
    raw: str | bytes = encoded if as_bytes else encoded.decode()
    msg = parse_client_message(raw, max_size=len(encoded))
    assert (msg.event, msg.path, msg.data) == (event, path, data)
    assert msg.has_id is has_id
    assert msg.id == (message_id if has_id else None)
    assert msg.raw is raw


def test_error_with_details_encodes_them_inside_error() -> None:
    details = [{"path": ["tags", 1], "message": "expected a string"}]
    raw = encode_error(7, 400, "Invalid data: tags[1]: expected a string", details=details)
    assert orjson.loads(raw) == {
        "id": 7,
        "error": {
            "code": 400,
            "message": "Invalid data: tags[1]: expected a string",
            "details": [{"path": ["tags", 1], "message": "expected a string"}],
        },
    }


def test_error_without_details_has_no_details_key() -> None:
    assert "details" not in orjson.loads(encode_error(1, 400, "Bad Request"))["error"]


def test_error_with_retry_after_encodes_it_beside_code_and_message() -> None:
    raw = encode_error(3, 429, "Too Many Requests", retry_after=0.2)
    assert orjson.loads(raw) == {
        "id": 3,
        "error": {"code": 429, "message": "Too Many Requests", "retry_after": 0.2},
    }
    assert "retry_after" not in orjson.loads(encode_error(1, 400, "Bad Request"))["error"]

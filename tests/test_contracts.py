"""Declared data, reply and param types: validation, the 400 error shape, schemas, pushes."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import orjson
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wsevents
from wsevents import WsError
from wsevents.contracts import (
    InvalidPush,
    PushSpec,
    check_push,
    compile_data_type,
    compile_param_type,
    compile_params,
    error_message,
    to_builtins,
)
from wsevents.protocol import encode_error

PACKAGE = Path(wsevents.__file__).parent


# The spec's /typed/message type, once per engine, with the same constraints.
class Message(msgspec.Struct):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    tags: Annotated[list[str], msgspec.Meta(max_length=5)] | None = None


class PMessage(pydantic.BaseModel):
    text: Annotated[str, pydantic.Field(min_length=1, max_length=500)]
    tags: Annotated[list[str], pydantic.Field(max_length=5)] | None = None


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Rich(msgspec.Struct, forbid_unknown_fields=True):
    by_key: dict[str, Message] = {}
    items: list[Message] = []
    color: Color = Color.RED
    kind: Literal["a", "b"] = "a"
    ref: uuid.UUID | None = None
    count: Annotated[int, msgspec.Meta(ge=0, multiple_of=3)] = 0
    ratio: Annotated[float, msgspec.Meta(gt=0.5)] = 1.0
    code: Annotated[str, msgspec.Meta(pattern="^a+$")] = "a"
    scores: dict[str, int] = {}


class PRich(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    by_key: dict[str, PMessage] = {}
    items: list[PMessage] = []
    color: Color = Color.RED
    kind: Literal["a", "b"] = "a"
    ref: uuid.UUID | None = None
    count: Annotated[int, pydantic.Field(ge=0, multiple_of=3)] = 0
    ratio: Annotated[float, pydantic.Field(gt=0.5)] = 1.0
    code: Annotated[str, pydantic.Field(pattern="^a+$")] = "a"
    scores: dict[str, int] = {}


def rejection(tp: Any, obj: Any) -> WsError:
    contract = compile_data_type(tp)
    with pytest.raises(WsError) as info:
        contract.validate(obj)
    assert info.value.code == 400
    return info.value


MESSAGE_FAILURES = [
    (5, "Invalid data: expected an object", [], "expected an object"),
    ([], "Invalid data: expected an object", [], "expected an object"),
    ({}, "Invalid data: text: missing required field", ["text"], "missing required field"),
    (
        {"text": ""},
        "Invalid data: text: expected at least 1 character",
        ["text"],
        "expected at least 1 character",
    ),
    (
        {"text": "x" * 501},
        "Invalid data: text: expected at most 500 characters",
        ["text"],
        "expected at most 500 characters",
    ),
    ({"text": 3}, "Invalid data: text: expected a string", ["text"], "expected a string"),
    ({"text": None}, "Invalid data: text: expected a string", ["text"], "expected a string"),
    (
        {"text": "hi", "tags": ["a"] * 6},
        "Invalid data: tags: expected at most 5 items",
        ["tags"],
        "expected at most 5 items",
    ),
    (
        {"text": "hi", "tags": ["a", 3]},
        "Invalid data: tags[1]: expected a string",
        ["tags", 1],
        "expected a string",
    ),
    (
        {"text": "hi", "tags": "a"},
        "Invalid data: tags: expected an array or null",
        ["tags"],
        "expected an array or null",
    ),
]


@pytest.mark.parametrize("tp", [Message, PMessage], ids=["msgspec", "pydantic"])
@pytest.mark.parametrize(("obj", "message", "path", "reason"), MESSAGE_FAILURES)
def test_message_failures_have_the_spec_shape(
    tp: Any, obj: Any, message: str, path: list[Any], reason: str
) -> None:
    exc = rejection(tp, obj)
    if tp is PMessage and reason == "expected an array or null":
        # pydantic reports each branch of the union; the first names the array.
        reason = message_reason = "expected an array"
        message = f"Invalid data: tags: {message_reason}"
    assert exc.message == message
    assert exc.details is not None
    assert exc.details[0] == {"path": path, "message": reason}
    assert orjson.loads(encode_error(1, exc.code, exc.message, details=exc.details)) == {
        "id": 1,
        "error": {"code": 400, "message": message, "details": exc.details},
    }


RICH_FAILURES = [
    ({"by_key": {"ok": {"text": "x"}, "bad key": {"text": ""}}}, ["by_key", "bad key", "text"]),
    ({"items": [{"text": "x"}, {"text": 1}]}, ["items", 1, "text"]),
    ({"color": "blue"}, ["color"]),
    ({"kind": "c"}, ["kind"]),
    ({"ref": "not-a-uuid"}, ["ref"]),
    ({"count": -3}, ["count"]),
    ({"count": 4}, ["count"]),
    ({"ratio": 0.1}, ["ratio"]),
    ({"code": "b"}, ["code"]),
    ({"scores": {"a": 1, "b": "x"}}, ["scores", "b"]),
    ({"extra": 1}, ["extra"]),
    ({"count": 1.5}, ["count"]),
]


@pytest.mark.parametrize(("obj", "path"), RICH_FAILURES)
def test_msgspec_and_pydantic_report_the_same_failure(obj: Any, path: list[Any]) -> None:
    from_msgspec = rejection(Rich, obj)
    from_pydantic = rejection(PRich, obj)
    assert from_msgspec.details == from_pydantic.details
    assert from_msgspec.message == from_pydantic.message
    assert from_msgspec.details is not None
    assert from_msgspec.details[0]["path"] == path


def test_reasons_use_wsevents_words() -> None:
    reasons = {
        repr(obj): rejection(Rich, obj).details[0]["message"]  # type: ignore[index]
        for obj, _ in RICH_FAILURES
    }
    assert reasons == {
        repr(RICH_FAILURES[0][0]): "expected at least 1 character",
        repr(RICH_FAILURES[1][0]): "expected a string",
        repr({"color": "blue"}): "expected one of the allowed values",
        repr({"kind": "c"}): "expected one of the allowed values",
        repr({"ref": "not-a-uuid"}): "expected a UUID",
        repr({"count": -3}): "expected a value >= 0",
        repr({"count": 4}): "expected a multiple of 3",
        repr({"ratio": 0.1}): "expected a value > 0.5",
        repr({"code": "b"}): "expected a string matching '^a+$'",
        repr({"scores": {"a": 1, "b": "x"}}): "expected an integer",
        repr({"extra": 1}): "unknown field",
        repr({"count": 1.5}): "expected an integer",
    }


def test_pydantic_lists_every_failing_field_and_names_the_first() -> None:
    exc = rejection(PMessage, {"text": "", "tags": [1, "ok", 2]})
    assert exc.message == "Invalid data: text: expected at least 1 character"
    assert exc.details == [
        {"path": ["text"], "message": "expected at least 1 character"},
        {"path": ["tags", 0], "message": "expected a string"},
        {"path": ["tags", 2], "message": "expected a string"},
    ]


@pytest.mark.parametrize("tp", [dict[int, int]])
def test_a_bad_dict_key_points_at_the_dict(tp: Any) -> None:
    class MS(msgspec.Struct):
        table: dict[int, int]

    class PD(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(strict=True)
        table: dict[int, int]

    for model in (MS, PD):
        exc = rejection(model, {"table": {"zzz": 1}})
        assert exc.details == [{"path": ["table"], "message": "invalid key: expected an integer"}]


@pytest.mark.parametrize("tp", [Message, PMessage], ids=["msgspec", "pydantic"])
def test_length_counts_code_points(tp: Any) -> None:
    contract = compile_data_type(tp)
    assert contract.validate({"text": "😀" * 500}).text == "😀" * 500
    assert rejection(tp, {"text": "😀" * 501}).details == [
        {"path": ["text"], "message": "expected at most 500 characters"}
    ]


def test_valid_data_becomes_the_declared_type() -> None:
    @dataclasses.dataclass
    class Point:
        x: int
        y: int = 0

    class Named(TypedDict):
        name: str

    assert compile_data_type(Message).validate({"text": "hi"}) == Message("hi")
    assert compile_data_type(PMessage).validate({"text": "hi", "tags": ["a"]}) == PMessage(
        text="hi", tags=["a"]
    )
    assert compile_data_type(Point).validate({"x": 1}) == Point(1, 0)
    assert compile_data_type(Named).validate({"name": "n"}) == {"name": "n"}
    assert compile_data_type(list[int]).validate([1, 2]) == [1, 2]
    assert compile_data_type(Any).validate({"a": [1]}) == {"a": [1]}
    assert compile_data_type(Point).engine == "msgspec"
    assert compile_data_type(PMessage).engine == "pydantic"
    assert rejection(Point, {"x": "1"}).message == "Invalid data: x: expected an integer"
    assert rejection(Named, {}).message == "Invalid data: name: missing required field"


def test_pydantic_inside_a_builtin_generic_goes_through_pydantic() -> None:
    contract = compile_data_type(list[PMessage])
    assert contract.engine == "pydantic"
    assert contract.validate([{"text": "a"}]) == [PMessage(text="a")]
    assert rejection(list[PMessage], [{"text": "a"}, {}]).details == [
        {"path": [1, "text"], "message": "missing required field"}
    ]


def test_unsupported_type_is_a_type_error_at_compile_time() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"unsupported data type: .*Opaque"):
        compile_data_type(Opaque)


class _Validated(msgspec.Struct):
    n: int

    def __post_init__(self) -> None:
        if self.n == 13:
            raise ValueError(f"unlucky {self.n} at 0xdeadbeef")


def test_custom_validator_text_never_reaches_the_client() -> None:
    exc = rejection(_Validated, {"n": 13})
    assert exc.message == "Invalid data: invalid value"
    assert "unlucky" not in str(exc.details)


SENTINEL = "zqxsecret"
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5).map(lambda s: SENTINEL + s),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["text", "tags", "by_key", "items", "color", "ref", "count", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
LEAKS = (SENTINEL, "`", "$", "http", "msgspec", "pydantic", "Error", "Struct", "Input", "type=")


@pytest.mark.parametrize("tp", [Rich, PRich, Message, PMessage])
@given(obj=json_values)
def test_rejections_never_leak_input_or_library_text(tp: Any, obj: Any) -> None:
    contract = compile_data_type(tp)
    try:
        contract.validate(obj)
    except WsError as exc:
        assert exc.code == 400
        assert exc.details
        texts = [exc.message, *(d["message"] for d in exc.details)]
        for text in texts:
            assert not any(leak in text for leak in LEAKS), text
        for detail in exc.details:
            assert set(detail) == {"path", "message"}
            assert all(type(p) in (str, int) for p in detail["path"])
        assert exc.message == error_message("Invalid data", exc.details)


def test_error_message_formats_paths() -> None:
    def fmt(path: list[Any]) -> str:
        return error_message("Invalid data", [{"path": path, "message": "bad"}])

    assert fmt([]) == "Invalid data: bad"
    assert fmt(["a", 0, "b", 2, 3]) == "Invalid data: a[0].b[2][3]: bad"
    assert fmt([0]) == "Invalid data: [0]: bad"


def test_to_builtins_dumps_typed_replies() -> None:
    @dataclasses.dataclass
    class Ack:
        ok: bool
        color: Color

    ref = uuid.UUID(int=1)
    assert to_builtins(Message("hi")) == {"text": "hi", "tags": None}
    assert to_builtins(Ack(True, Color.GREEN)) == {"ok": True, "color": "green"}
    assert to_builtins(PMessage(text="hi")) == {"text": "hi", "tags": None}
    assert to_builtins({"ref": ref, "items": [Message("a")]}) == {
        "ref": str(ref),
        "items": [{"text": "a", "tags": None}],
    }
    for plain in (None, "s", 1, 1.5, True):
        assert to_builtins(plain) is plain
    assert compile_data_type(Message).dump(Message("x")) == {"text": "x", "tags": None}


def test_json_schema_of_msgspec_and_pydantic_types() -> None:
    for tp, name in ((Message, "Message"), (PMessage, "PMessage")):
        schema, components = compile_data_type(tp).json_schema()
        assert schema == {"$ref": f"#/components/schemas/{name}"}
        body = components[name]
        assert body["required"] == ["text"]
        text = body["properties"]["text"]
        assert (text["type"], text["minLength"], text["maxLength"]) == ("string", 1, 500)
    schema, components = compile_data_type(list[PMessage]).json_schema(ref_template="#/d/{name}")
    assert schema == {"type": "array", "items": {"$ref": "#/d/PMessage"}}
    assert set(components) == {"PMessage"}
    schema, components = compile_data_type(Rich).json_schema()
    assert set(components) == {"Rich", "Message", "Color"}
    assert compile_data_type(int).json_schema() == ({"type": "integer"}, {})


def test_pydantic_serialization_schema_shows_computed_fields() -> None:
    class Reply(pydantic.BaseModel):
        n: int

        @pydantic.computed_field  # type: ignore[prop-decorator]
        @property
        def double(self) -> int:
            return self.n * 2

    contract = compile_data_type(Reply)
    _, validation = contract.json_schema()
    _, serialization = contract.json_schema(mode="serialization")
    assert "double" not in validation["Reply"]["properties"]
    assert "double" in serialization["Reply"]["properties"]
    assert contract.dump(Reply(n=2)) == {"n": 2, "double": 4}


# --------------------------------------------------------------------------------- params


def param_rejection(name: str, tp: Any, text: str) -> WsError:
    with pytest.raises(WsError) as info:
        compile_param_type(name, tp).convert(text)
    return info.value


@pytest.mark.parametrize(
    ("tp", "text", "value"),
    [
        (int, "42", 42),
        (int, "-7", -7),
        (int, "007", 7),
        (float, "1.5", 1.5),
        (float, "-2e3", -2000.0),
        (float, "3", 3.0),
        (bool, "true", True),
        (bool, "0", False),
        (str, "a b", "a b"),
        (
            uuid.UUID,
            "12345678-1234-5678-1234-567812345678",
            uuid.UUID(int=0x12345678123456781234567812345678),
        ),
        (Color, "green", Color.GREEN),
        (Literal["x", 2, True], "2", 2),
        (Literal["x", 2, True], "true", True),
        (Annotated[int, msgspec.Meta(ge=1)], "1", 1),
    ],
)
def test_params_convert(tp: Any, text: str, value: Any) -> None:
    converted = compile_param_type("p", tp).convert(text)
    assert converted == value
    assert type(converted) is type(value)


@pytest.mark.parametrize(
    ("tp", "text", "reason"),
    [
        (int, "abc", "expected an integer"),
        (int, "1.5", "expected an integer"),
        (int, " 1", "expected an integer"),
        (int, "+1", "expected an integer"),
        (int, "1_000", "expected an integer"),
        (int, "١٢", "expected an integer"),
        (int, "", "expected an integer"),
        (int, "9" * 5000, "expected an integer"),
        (float, "nan", "expected a number"),
        (float, "inf", "expected a number"),
        (float, "1e999", "expected a finite number"),
        (bool, "yes", "expected true or false"),
        (uuid.UUID, "nope", "expected a UUID"),
        (uuid.UUID, "0" * 100, "expected a UUID"),
        (Color, "blue", "expected one of: red, green"),
        (Literal["x", "y"], "z", "expected one of: x, y"),
        (Annotated[int, msgspec.Meta(ge=1)], "0", "expected a value >= 1"),
        (Annotated[str, msgspec.Meta(max_length=3)], "abcd", "expected at most 3 characters"),
    ],
)
def test_bad_param_is_a_400_naming_the_param(tp: Any, text: str, reason: str) -> None:
    exc = param_rejection("id", tp, text)
    assert exc.code == 400
    assert exc.message == f"Invalid param id: {reason}"
    assert exc.details == [{"path": ["params", "id"], "message": reason}]


@given(st.integers())
def test_any_int_round_trips_through_its_text(n: int) -> None:
    assert compile_param_type("id", int).convert(str(n)) == n


@given(st.text(max_size=20))
def test_any_text_is_an_int_or_a_400(text: str) -> None:
    contract = compile_param_type("id", int)
    try:
        value = contract.convert(text)
    except WsError as exc:
        assert exc.message == "Invalid param id: expected an integer"
    else:
        assert re.fullmatch("-?[0-9]+", text)
        assert value == int(text)


def test_long_choices_are_cut_in_the_reason() -> None:
    many = Literal["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
    exc = param_rejection("x", many, "z")
    assert exc.message == "Invalid param x: expected one of: a, b, c, d, e, f, g, h, i, j, ..."


def test_param_schemas() -> None:
    assert compile_param_type("id", int).schema == {"type": "integer"}
    assert compile_param_type("id", uuid.UUID).schema == {"type": "string", "format": "uuid"}
    color = compile_param_type("c", Color)
    assert (color.schema, color.enum) == ({"enum": ["red", "green"]}, ("red", "green"))
    bounded = compile_param_type("n", Annotated[int, msgspec.Meta(ge=1, le=9)])
    assert bounded.schema == {"type": "integer", "minimum": 1, "maximum": 9}


@pytest.mark.parametrize(
    "tp",
    [list[int], dict, Annotated[int, pydantic.Field(ge=1)], Literal[1.5], bytes],
)
def test_unsupported_param_types_fail_at_compile_time(tp: Any) -> None:
    with pytest.raises(TypeError, match="param 'id'"):
        compile_param_type("id", tp)


def test_params_contract_converts_declared_params_only() -> None:
    params = compile_params({"id": int, "key": bool})
    assert params.convert({"id": "3", "room": "r"}) == {"id": 3, "room": "r"}
    assert params.convert({"id": "3", "key": "true"}) == {"id": 3, "key": True}
    with pytest.raises(WsError, match="Invalid param key: expected true or false"):
        params.convert({"id": "3", "key": "maybe"})
    wildcard = compile_params({"*": str})
    assert wildcard.convert({"*": "a/b"}) == {"*": "a/b"}


# --------------------------------------------------------------------------------- pushes


def test_check_push_accepts_matching_push_and_dumps_it() -> None:
    spec = PushSpec("message", "/chat/rooms/:room", compile_data_type(Message))
    assert check_push(spec, Message("hi"), "/chat/rooms/lobby") == {"text": "hi", "tags": None}
    assert check_push(spec, {"text": "hi"}) == {"text": "hi"}
    assert check_push(PushSpec("any", "/x"), [1]) == [1]


def test_check_push_rejects_bad_data_with_details() -> None:
    spec = PushSpec("message", "/chat/rooms/:room", compile_data_type(PMessage))
    with pytest.raises(InvalidPush) as info:
        check_push(spec, {"text": ""})
    assert str(info.value) == (
        "push message /chat/rooms/:room: Invalid data: text: expected at least 1 character"
    )
    assert info.value.details == [{"path": ["text"], "message": "expected at least 1 character"}]
    assert isinstance(info.value, ValueError)


def test_check_push_rejects_a_path_outside_the_pattern() -> None:
    spec = PushSpec("message", "/chat/rooms/:room")
    with pytest.raises(InvalidPush, match="does not match /chat/rooms/:room"):
        check_push(spec, None, "/other/lobby")


# ------------------------------------------------------------------------------- layering


def test_contracts_import_without_io_or_pydantic() -> None:
    script = f"""
import sys, types
for name in ("aiohttp", "asyncio", "redis", "pydantic"):
    sys.modules[name] = None  # importing these now fails
pkg = types.ModuleType("wsevents")
pkg.__path__ = [{str(PACKAGE)!r}]
sys.modules["wsevents"] = pkg
import msgspec
import wsevents.contracts as c, wsevents.asyncapi

class M(msgspec.Struct):
    n: int

contract = c.compile_data_type(M)
assert contract.engine == "msgspec"
try:
    contract.validate({{"n": "x"}})
except c.WsError as exc:
    assert exc.message == "Invalid data: n: expected an integer", exc.message
else:
    raise AssertionError("no error")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


class _PUnion(pydantic.BaseModel):
    v: int | list[int]


class _PTagged(pydantic.BaseModel):
    class Cat(pydantic.BaseModel):
        kind: Literal["cat"]
        lives: int

    class Dog(pydantic.BaseModel):
        kind: Literal["dog"]

    pet: Annotated[Cat | Dog, pydantic.Field(discriminator="kind")]


def test_pydantic_union_members_and_tags_stay_out_of_paths() -> None:
    assert rejection(_PUnion, {"v": ["x"]}).details == [
        {"path": ["v"], "message": "expected an integer"},
        {"path": ["v", 0], "message": "expected an integer"},
    ]
    assert rejection(_PTagged, {"pet": {"kind": "cat", "lives": "x"}}).details == [
        {"path": ["pet", "lives"], "message": "expected an integer"}
    ]
    assert rejection(_PTagged, {"pet": {"kind": "cat"}}).details == [
        {"path": ["pet", "lives"], "message": "missing required field"}
    ]


class _Shapes(msgspec.Struct):
    table: Annotated[dict[str, int], msgspec.Meta(max_length=1)] = {}
    pair: tuple[int, str] = (0, "")
    either: dict[str, int] | list[int] = []
    when: datetime.datetime | None = None
    day: datetime.date | None = None
    clock: datetime.time | None = None
    span: datetime.timedelta | None = None
    amount: decimal.Decimal | None = None
    blob: bytes = b""
    named: _Named | None = None
    rows: list[dict[str, int]] = []
    fixed: tuple[dict[str, int], int] = ({}, 0)


class _Named(TypedDict):
    scores: dict[str, int]


class _PShapes(pydantic.BaseModel):
    table: Annotated[dict[str, int], pydantic.Field(max_length=1)] = {}
    ratio: float = 1.0


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    [
        ({"table": {"a": 1, "b": 2}}, ["table"], "expected at most 1 entry"),
        ({"pair": [1]}, ["pair"], "expected an array of 2 items"),
        ({"either": {"a": "x"}}, ["either"], "invalid value"),
        ({"when": "x"}, ["when"], "expected a datetime"),
        ({"day": "x"}, ["day"], "expected a date"),
        ({"clock": "x"}, ["clock"], "expected a time"),
        ({"span": "x"}, ["span"], "expected a duration"),
        ({"amount": "x"}, ["amount"], "expected a decimal number"),
        ({"blob": "!!"}, ["blob"], "expected base64-encoded bytes"),
        (
            {"named": {"scores": {"a": 1, "b": "x"}}},
            ["named", "scores", "b"],
            "expected an integer",
        ),
        ({"rows": [{}, {"a": 1, "b": None}]}, ["rows", 1, "b"], "expected an integer"),
        ({"fixed": [{"k": "x"}, 0]}, ["fixed", 0, "k"], "expected an integer"),
    ],
)
def test_msgspec_reasons(obj: Any, path: list[Any], reason: str) -> None:
    assert rejection(_Shapes, obj).details == [{"path": path, "message": reason}]


def test_pydantic_reasons_for_dicts_and_numbers() -> None:
    assert rejection(_PShapes, {"table": {"a": 1, "b": 2}}).details == [
        {"path": ["table"], "message": "expected at most 1 entry"}
    ]
    assert rejection(_PShapes, {"ratio": "x"}).details == [
        {"path": ["ratio"], "message": "expected a number"}
    ]


def test_pydantic_validator_text_never_reaches_the_client() -> None:
    class Checked(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def not_13(cls, n: int) -> int:
            if n == 13:
                raise ValueError(f"unlucky {n} at 0xdeadbeef")
            return n

    assert rejection(Checked, {"n": 13}).details == [{"path": ["n"], "message": "invalid value"}]


def test_contract_repr_names_type_and_engine() -> None:
    assert repr(compile_data_type(Message)) == "DataContract(Message, engine='msgspec')"


def test_dumper_gives_what_dump_gives_for_each_engine() -> None:
    contract = compile_data_type(Message)
    value = Message("x", tags=["a"])
    assert contract.dumper()(value) == contract.dump(value) == {"text": "x", "tags": ["a"]}
    model = compile_data_type(PMessage)
    pvalue = PMessage(text="y")
    assert model.dumper()(pvalue) == model.dump(pvalue)

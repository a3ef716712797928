"""Declared data, reply and param types: validation and JSON Schema (sans-I/O).

A route may declare the type of its ``data`` (``data=Message``), of its reply
(``reply=Ack``) and of its params (``params={"id": int}``). This module turns such a
declaration into a compiled contract once, at registration:

* [`compile_data_type`][wsevents.contracts.compile_data_type] gives a
  [`DataContract`][wsevents.contracts.DataContract]: ``validate(obj)`` turns the parsed
  ``data`` into the declared type or raises ``WsError(400, ...)`` with ``details``;
  ``dump(value)`` turns a typed reply back into JSON-ready values; ``json_schema()`` exports
  the schema.
* [`compile_param_type`][wsevents.contracts.compile_param_type] gives a
  [`ParamContract`][wsevents.contracts.ParamContract] converting one route param from text.
* [`PushSpec`][wsevents.contracts.PushSpec] declares a server push;
  [`check_push`][wsevents.contracts.check_push] checks one against its declaration.

msgspec is the native path (Structs, dataclasses, ``TypedDict``, builtin and ``Annotated``
types). pydantic v2 models work too, through ``TypeAdapter``; pydantic is never imported
here: a type is treated as a pydantic type only when the application already imported
pydantic.

Validation errors never show the library's own text: every reason is rewritten into one
vocabulary ("expected a string", "expected at most 500 characters", ...), the same for
msgspec and pydantic, without class names, URLs or the rejected input.
"""

from __future__ import annotations

import enum
import importlib
import math
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from .exceptions import WsError, WsEventsError
from .routing import Router

__all__ = [
    "DataContract",
    "InvalidPush",
    "ParamContract",
    "ParamsContract",
    "PushChecker",
    "PushSpec",
    "check_push",
    "compile_data_type",
    "compile_param_type",
    "compile_params",
    "error_message",
    "to_builtins",
]

PathItem = str | int
Detail = dict[str, Any]
SchemaMode = Literal["validation", "serialization"]

COMPONENTS_REF = "#/components/schemas/{name}"
"""Where JSON Schema references point by default: AsyncAPI's (and OpenAPI's) components."""


# --------------------------------------------------------------------------- error shape


def error_message(prefix: str, details: list[Detail]) -> str:
    """The client-facing message: ``"<prefix>: <path>: <reason>"`` of the first failure.

    The path is written ``a.b[2].c``; an empty path (the whole value) is left out:
    ``"Invalid data: expected an object"``.
    """
    first = details[0]
    path = _format_path(first["path"])
    return f"{prefix}: {path}: {first['message']}" if path else f"{prefix}: {first['message']}"


def _format_path(path: list[PathItem]) -> str:
    out: list[str] = []
    for item in path:
        if isinstance(item, int):
            out.append(f"[{item}]")
        else:
            out.append(f".{item}" if out else item)
    return "".join(out)


def _invalid_data(details: list[Detail]) -> WsError:
    return WsError(400, error_message("Invalid data", details), details=details)


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ----------------------------------------------------------------- msgspec error rewriting

_MS_SUFFIX = re.compile(r" - at `(?P<key>key` in `)?(?P<path>\$[^`]*)`$")
_MS_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_MS_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
    "uuid": "a UUID",
    "datetime": "a datetime",
    "date": "a date",
    "time": "a time",
    "duration": "a duration",
    "decimal": "a decimal number",
    "bytes": "base64-encoded bytes",
}
_MS_EXPECTED_TYPE = re.compile(r"Expected `([^`]+)`, got `[^`]+`")
_MS_LENGTH = re.compile(r"Expected `(str|array|object|bytes)` of length (<=|>=) (\d+)")
_MS_EXACT_LENGTH = re.compile(r"Expected `array` of length (\d+), got \d+")
_MS_BOUND = re.compile(r"Expected `(?:int|float|decimal)` (>=|>|<=|<) (\S+)")
_MS_MULTIPLE = re.compile(r"Expected `(?:int|float|decimal)` that's a multiple of (\S+)")
_MS_REGEX = re.compile(r"Expected `str` matching regex (.+)")
_MS_MISSING = re.compile(r"Object missing required field `(.+)`")
_MS_UNKNOWN = re.compile(r"Object contains unknown field `(.+)`")
_MS_INVALID = (
    ("Invalid enum value", "expected one of the allowed values"),
    ("Invalid value", "expected one of the allowed values"),
    ("Invalid UUID", "expected a UUID"),
    ("Invalid RFC3339 encoded datetime", "expected a datetime"),
    ("Invalid RFC3339 encoded date", "expected a date"),
    ("Invalid RFC3339 encoded time", "expected a time"),
    ("Invalid ISO8601 duration", "expected a duration"),
    ("Invalid decimal", "expected a decimal number"),
    ("Invalid base64", "expected base64-encoded bytes"),
)
_LENGTH_UNITS = {"str": "character", "array": "item", "object": "entry", "bytes": "byte"}


def _type_phrase(names: str) -> str:
    return " or ".join(_MS_TYPE_NAMES.get(n, "a valid value") for n in names.split(" | "))


def _msgspec_reason(text: str) -> tuple[str, str | None]:
    """Rewrite one msgspec error text (suffix removed); also return a field name to append."""
    if m := _MS_EXPECTED_TYPE.fullmatch(text):
        return f"expected {_type_phrase(m[1])}", None
    if m := _MS_LENGTH.fullmatch(text):
        unit = _LENGTH_UNITS[m[1]]
        if m[1] == "object":
            count = m[3] + (" entry" if m[3] == "1" else " entries")
        else:
            count = _plural(int(m[3]), unit)
        return f"expected {'at least' if m[2] == '>=' else 'at most'} {count}", None
    if m := _MS_EXACT_LENGTH.fullmatch(text):
        return f"expected an array of {_plural(int(m[1]), 'item')}", None
    if m := _MS_BOUND.fullmatch(text):
        return f"expected a value {m[1]} {m[2]}", None
    if m := _MS_MULTIPLE.fullmatch(text):
        return f"expected a multiple of {m[1]}", None
    if m := _MS_REGEX.fullmatch(text):
        # The pattern is the schema's, quoted by msgspec with repr(): not the input.
        return f"expected a string matching {m[1]}", None
    if m := _MS_MISSING.fullmatch(text):
        return "missing required field", m[1]
    if m := _MS_UNKNOWN.fullmatch(text):
        return "unknown field", m[1]
    if text.startswith("Invalid "):
        # "Invalid enum value 'x'" quotes the input: keep only what kind of value it was.
        for prefix, reason in _MS_INVALID:
            if text.startswith(prefix):
                return reason, None
    return "invalid value", None


def _msgspec_details(exc: msgspec.ValidationError, tp: Any, obj: Any) -> list[Detail]:
    text = str(exc)
    path: list[PathItem] = []
    is_key = False
    if m := _MS_SUFFIX.search(text):
        text = text[: m.start()]
        is_key = m["key"] is not None
        unresolved = False
        for seg in _MS_SEGMENT.finditer(m["path"], 1):
            if seg[1] is not None:
                path.append(seg[1])
            elif seg[2] is not None:
                path.append(int(seg[2]))
            else:
                # msgspec names no key inside a dict: find which value fails.
                key = _first_failing_key(tp, obj, path)
                if key is None:
                    unresolved = True
                    break
                path.append(key)
        if unresolved:
            return [{"path": path, "message": "invalid value"}]
    reason, field = _msgspec_reason(text)
    if is_key:
        reason = f"invalid key: {reason}"
    if field is not None:
        path.append(field)
    return [{"path": path, "message": reason}]


def _first_failing_key(tp: Any, obj: Any, path: list[PathItem]) -> str | None:
    """The first key of the dict at ``path`` in ``obj`` whose value fails its type."""
    for item in path:
        tp = _child_type(tp, item)
        try:
            obj = obj[item]
        except (KeyError, IndexError, TypeError):
            return None
    tp = _child_type(tp, None)
    if tp is None or not isinstance(obj, dict):
        return None
    for key, value in obj.items():
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError:
            return key if isinstance(key, str) else None
    return None


def _child_type(tp: Any, item: PathItem | None) -> Any:
    """The declared type of ``tp``'s field ``item`` (a dict's value type for ``None``)."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        candidates = [a for a in args if a is not type(None)]
        return _child_type(candidates[0], item) if len(candidates) == 1 else None
    if item is None:
        return args[1] if origin in (dict, Mapping) and len(args) == 2 else None
    if isinstance(item, int):
        if origin in (list, tuple, set, frozenset) and args:
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                return args[item] if item < len(args) else None
            return args[0]
        return None
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        for f in msgspec.structs.fields(tp):
            if f.encode_name == item:
                return f.type
        return None
    try:
        return typing.get_type_hints(tp, include_extras=True).get(item)
    except TypeError:
        return None


# ---------------------------------------------------------------- pydantic error rewriting

_PD_TYPES = {
    "string_type": "a string",
    "string_unicode": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "frozen_set_type": "an array",
    "none_required": "null",
    "uuid_type": "a UUID",
    "uuid_parsing": "a UUID",
    "datetime_type": "a datetime",
    "datetime_parsing": "a datetime",
    "date_type": "a date",
    "date_parsing": "a date",
    "time_type": "a time",
    "time_parsing": "a time",
    "time_delta_type": "a duration",
    "time_delta_parsing": "a duration",
    "decimal_type": "a decimal number",
    "decimal_parsing": "a decimal number",
}
_PD_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}
_PD_BOUND_KEYS = {
    "greater_than": "gt",
    "greater_than_equal": "ge",
    "less_than": "lt",
    "less_than_equal": "le",
}


def _pydantic_reason(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in _PD_TYPES:
        return f"expected {_PD_TYPES[kind]}"
    if kind == "missing":
        return "missing required field"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("string_too_short", "string_too_long"):
        n = ctx.get("min_length" if kind == "string_too_short" else "max_length")
        bound = "at least" if kind == "string_too_short" else "at most"
        return f"expected {bound} {_plural(n, 'character')}"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        bound = "at least" if kind == "too_short" else "at most"
        if ctx.get("field_type") == "Dictionary":
            return f"expected {bound} {n} {'entry' if n == 1 else 'entries'}"
        return f"expected {bound} {_plural(n, 'item')}"
    if kind in _PD_BOUNDS:
        return f"expected a value {_PD_BOUNDS[kind]} {ctx.get(_PD_BOUND_KEYS[kind])}"
    if kind == "multiple_of":
        return f"expected a multiple of {ctx.get('multiple_of')}"
    if kind == "string_pattern_mismatch":
        return f"expected a string matching {ctx.get('pattern')!r}"
    if kind in ("enum", "literal_error"):
        return "expected one of the allowed values"
    if kind == "finite_number":
        return "expected a finite number"
    return "invalid value"


def _pydantic_path(loc: tuple[Any, ...], obj: Any) -> tuple[list[PathItem], bool]:
    """Keys and indexes of ``loc`` found in ``obj``; also whether a dict key is at fault.

    pydantic puts more than keys in ``loc``: union members (``"list[int]"``), tagged-union
    tags and validator names. Walking the input tells them apart: they are not keys there.
    """
    path: list[PathItem] = []
    last = len(loc) - 1
    for i, item in enumerate(loc):
        if item == "[key]" and i == last and path:
            # pydantic names the bad key; msgspec cannot: point at the dict in both.
            return path[:-1], True
        if isinstance(obj, dict) and isinstance(item, str) and (item in obj or i == last):
            path.append(item)
            obj = obj.get(item)
        elif isinstance(obj, list | tuple) and isinstance(item, int) and 0 <= item < len(obj):
            path.append(item)
            obj = obj[item]
    return path, False


def _pydantic_details(errors: list[Any], obj: Any) -> list[Detail]:
    details: list[Detail] = []
    for err in errors:
        path, bad_key = _pydantic_path(tuple(err.get("loc", ())), obj)
        reason = _pydantic_reason(err)
        details.append({"path": path, "message": f"invalid key: {reason}" if bad_key else reason})
    return details


# ----------------------------------------------------------------------- data contracts


def _pydantic() -> Any:
    """The pydantic module when the application imported it, else ``None``."""
    return sys.modules.get("pydantic")


def _is_pydantic_instance(value: Any) -> bool:
    pd = _pydantic()
    return pd is not None and isinstance(value, pd.BaseModel)


def to_builtins(value: Any) -> Any:
    """Turn a handler's result into JSON-ready values (dicts, lists, str, numbers...).

    msgspec Structs, dataclasses, enums, UUIDs and datetimes go through
    ``msgspec.to_builtins``; a pydantic model through ``model_dump(mode="json")``. Plain
    scalars come back as they are.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if _is_pydantic_instance(value):
        return value.model_dump(mode="json", by_alias=True)
    return msgspec.to_builtins(value)


class DataContract:
    """A compiled ``data`` or ``reply`` type, from [`compile_data_type`][].

    Attributes:
        type: the declared type.
        engine: ``"msgspec"`` or ``"pydantic"``.
    """

    __slots__ = ("_adapter", "engine", "type")

    def __init__(
        self, tp: Any, engine: Literal["msgspec", "pydantic"], adapter: Any = None
    ) -> None:
        self.type = tp
        self.engine = engine
        self._adapter = adapter

    def __repr__(self) -> str:
        return f"DataContract({_type_name(self.type)}, engine={self.engine!r})"

    def validate(self, obj: Any) -> Any:
        """Turn parsed ``data`` (builtins, as decoded from the frame) into the declared type.

        Raises:
            WsError: 400 ``"Invalid data: <path>: <reason>"`` with ``details``, a list of
                ``{"path": [...], "message": reason}`` (msgspec reports the first failing
                field, pydantic every one).
        """
        if self._adapter is None:
            try:
                return msgspec.convert(obj, self.type)
            except msgspec.ValidationError as exc:
                raise _invalid_data(_msgspec_details(exc, self.type, obj)) from None
        try:
            return self._adapter.validate_python(obj)
        except _pydantic().ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            raise _invalid_data(_pydantic_details(errors, obj)) from None

    def dump(self, value: Any) -> Any:
        """Turn a reply of the declared type into JSON-ready values ([`to_builtins`][])."""
        return to_builtins(value)

    def dumper(self) -> Callable[[Any], Any]:
        """[`dump`][wsevents.contracts.DataContract.dump] as the fastest function for this
        engine (what the dispatcher calls per reply): a msgspec type's replies go straight
        to ``msgspec.to_builtins``, without the check for pydantic models."""
        return msgspec.to_builtins if self.engine == "msgspec" else to_builtins

    def json_schema(
        self, *, ref_template: str = COMPONENTS_REF, mode: SchemaMode = "validation"
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The JSON Schema of the type and the named schemas it refers to.

        Args:
            ref_template: how a ``$ref`` to a named schema is written; ``{name}`` is replaced.
            mode: ``"validation"`` for ``data``, ``"serialization"`` for replies (pydantic
                may differ, e.g. for computed fields).

        Returns:
            ``(schema, components)``: ``schema`` may be a ``$ref`` into ``components``.
        """
        if self._adapter is None:
            (schema,), components = msgspec.json.schema_components(
                (self.type,), ref_template=ref_template
            )
            return schema, components
        pd = _pydantic()
        template = ref_template.replace("{name}", "{model}")
        if isinstance(self.type, type) and issubclass(self.type, pd.BaseModel):
            # pydantic is imported already (the model is one); this loads its submodule.
            generator = importlib.import_module("pydantic.json_schema")
            refs, defs = generator.models_json_schema([(self.type, mode)], ref_template=template)
            return refs[(self.type, mode)], dict(defs.get("$defs", {}))
        schema = dict(self._adapter.json_schema(mode=mode, ref_template=template))
        components = schema.pop("$defs", {})
        return schema, dict(components)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def compile_data_type(tp: Any) -> DataContract:
    """Compile a declared ``data``/``reply`` type once, at registration.

    msgspec handles Structs, dataclasses, ``TypedDict``, ``Annotated[..., msgspec.Meta(...)]``
    and builtin types. A pydantic model (or any type msgspec does not support, when pydantic
    is imported) goes through ``pydantic.TypeAdapter``.

    Raises:
        TypeError: neither msgspec nor pydantic supports the type.
    """
    pd = _pydantic()
    if pd is not None and _is_pydantic_type(pd, tp):
        return DataContract(tp, "pydantic", pd.TypeAdapter(tp))
    try:
        msgspec.json.Decoder(tp)  # raises TypeError on an unsupported type
        msgspec.json.schema(tp)
    except TypeError as exc:
        if pd is not None:
            try:
                return DataContract(tp, "pydantic", pd.TypeAdapter(tp))
            except pd.PydanticSchemaGenerationError:
                pass
        raise TypeError(f"unsupported data type: {_type_name(tp)}") from exc
    return DataContract(tp, "msgspec")


def _is_pydantic_type(pd: Any, tp: Any) -> bool:
    if isinstance(tp, type) and issubclass(tp, pd.BaseModel):
        return True
    dataclasses_mod = sys.modules.get("pydantic.dataclasses")
    return bool(dataclasses_mod is not None and dataclasses_mod.is_pydantic_dataclass(tp))


# ---------------------------------------------------------------------- param contracts

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


class _BadParam(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _to_int(text: str) -> int:
    if _INT.fullmatch(text) is None:
        raise _BadParam("expected an integer")
    try:
        return int(text)
    except ValueError:  # more digits than int() accepts
        raise _BadParam("expected an integer") from None


def _to_float(text: str) -> float:
    if _FLOAT.fullmatch(text) is None:
        raise _BadParam("expected a number")
    value = float(text)
    if not math.isfinite(value):
        raise _BadParam("expected a finite number")
    return value


def _to_bool(text: str) -> bool:
    try:
        return _BOOLS[text]
    except KeyError:
        raise _BadParam("expected true or false") from None


def _to_uuid(text: str) -> uuid.UUID:
    if len(text) > 45:
        raise _BadParam("expected a UUID")
    try:
        return uuid.UUID(text)
    except ValueError:
        raise _BadParam("expected a UUID") from None


def _to_str(text: str) -> str:
    return text


def _choices(values: dict[str, Any]) -> Callable[[str], Any]:
    shown = ", ".join(list(values)[:10]) + (", ..." if len(values) > 10 else "")
    reason = f"expected one of: {shown}"

    def convert(text: str) -> Any:
        try:
            return values[text]
        except KeyError:
            raise _BadParam(reason) from None

    return convert


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class ParamContract:
    """A compiled route param type: ``convert(text)`` turns the matched text into the type.

    Attributes:
        name: the param's name (``"*"`` for a wildcard).
        type: the declared type.
        schema: a JSON Schema of the converted value (e.g. ``{"type": "integer"}``).
        enum: the accepted texts, for an ``Enum`` or ``Literal`` type, else ``None``.
    """

    name: str
    type: Any
    schema: dict[str, Any]
    enum: tuple[str, ...] | None
    _convert: Callable[[str], Any]
    _constraint: Any = None

    def convert(self, text: str) -> Any:
        """Convert one param value.

        Raises:
            WsError: 400 ``"Invalid param <name>: <reason>"``, details path
                ``["params", <name>]``.
        """
        try:
            value = self._convert(text)
            if self._constraint is not None:
                msgspec.convert(value, self._constraint)
        except _BadParam as exc:
            raise self._error(exc.reason) from None
        except msgspec.ValidationError as exc:
            raise self._error(
                _msgspec_details(exc, self._constraint, value)[0]["message"]
            ) from None
        return value

    def _error(self, reason: str) -> WsError:
        details: list[Detail] = [{"path": ["params", self.name], "message": reason}]
        return WsError(400, f"Invalid param {self.name}: {reason}", details=details)


_SIMPLE: dict[Any, tuple[Callable[[str], Any], dict[str, Any]]] = {
    str: (_to_str, {"type": "string"}),
    int: (_to_int, {"type": "integer"}),
    float: (_to_float, {"type": "number"}),
    bool: (_to_bool, {"type": "boolean"}),
    uuid.UUID: (_to_uuid, {"type": "string", "format": "uuid"}),
}


def compile_param_type(name: str, tp: Any) -> ParamContract:
    """Compile the declared type of route param ``name``.

    Supported: ``str``, ``int`` (ASCII digits, optional ``-``), ``float`` (finite, JSON
    number syntax), ``bool`` (``true``/``false``/``1``/``0``), ``uuid.UUID``, an ``Enum``
    (by value) or a ``Literal`` of str/int/bool, and any of them in
    ``Annotated[..., msgspec.Meta(...)]`` for bounds, lengths or a pattern.

    Raises:
        TypeError: the type is not one of these.
    """
    constraint = None
    base = tp
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        if not meta or not all(isinstance(m, msgspec.Meta) for m in meta):
            raise TypeError(f"param {name!r}: only msgspec.Meta constraints are supported")
        constraint = tp
    if base in _SIMPLE:
        convert, schema = _SIMPLE[base]
        if constraint is not None:
            schema = {**schema, **msgspec.json.schema(constraint)}
        return ParamContract(name, tp, dict(schema), None, convert, constraint)
    values: dict[str, Any]
    if isinstance(base, type) and issubclass(base, enum.Enum):
        values = {_param_text(m.value): m for m in base}
    elif typing.get_origin(base) is Literal:
        values = {_param_text(v): v for v in typing.get_args(base)}
    else:
        raise TypeError(f"param {name!r}: unsupported type {_type_name(tp)}")
    if not all(
        isinstance(v.value if isinstance(v, enum.Enum) else v, str | int) for v in values.values()
    ):
        raise TypeError(f"param {name!r}: enum and literal values must be str, int or bool")
    return ParamContract(
        name, tp, {"enum": list(values)}, tuple(values), _choices(values), constraint
    )


class ParamsContract:
    """All the declared params of a route: ``convert(params)`` converts them in one go."""

    __slots__ = ("params",)

    def __init__(self, params: Mapping[str, ParamContract]) -> None:
        self.params = dict(params)

    def convert(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Return a new dict: declared params converted, the others as matched.

        A declared param missing from ``params`` (an optional ``:key?``) stays missing.

        Raises:
            WsError: 400 naming the first param (in pattern order) that does not convert.
        """
        out = dict(params)
        for name, contract in self.params.items():
            text = out.get(name)
            if text is not None:
                out[name] = contract.convert(text)
        return out


def compile_params(types: Mapping[str, Any]) -> ParamsContract:
    """Compile ``params={"id": int, ...}`` with [`compile_param_type`][]."""
    return ParamsContract({name: compile_param_type(name, tp) for name, tp in types.items()})


# ----------------------------------------------------------------------------- pushes


class InvalidPush(WsEventsError, ValueError):
    """A push does not match its [`PushSpec`][wsevents.contracts.PushSpec] (a server bug).

    ``details`` lists the failing fields, as in a 400 validation error.
    """

    def __init__(self, message: str, details: list[Detail] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


@dataclass(frozen=True, slots=True)
class PushSpec:
    """A declared server push: the ``event`` sent on paths matching ``pattern``.

    Attributes:
        event: the push's event, e.g. ``"message"``.
        pattern: a route pattern, e.g. ``"/chat/rooms/:room"``.
        data: the declared type of ``data`` (``None``: anything).
        summary: one line for the schema export.
        description: more text for the schema export.
    """

    event: str
    pattern: str
    data: DataContract | None = None
    summary: str | None = None
    description: str | None = None


def check_push(spec: PushSpec, data: Any, path: str | None = None) -> Any:
    """Check a push against its declaration (a debug aid: it costs a validation).

    Args:
        spec: the declaration.
        data: the push's ``data``; typed values (Structs, models) are dumped first.
        path: the concrete path, checked against ``spec.pattern`` when given.

    Returns:
        ``data`` as JSON-ready values.

    Raises:
        InvalidPush: the path does not match the pattern or the data does not validate.
    """
    if path is not None:
        router: Router[None] = Router(cache_size=0)
        router.add(spec.event, spec.pattern, None)
        if router.match(spec.event, path) is None:
            raise InvalidPush(f"push {spec.event}: path {path!r} does not match {spec.pattern}")
    plain = to_builtins(data)
    if spec.data is not None:
        try:
            spec.data.validate(plain)
        except WsError as exc:
            message = f"push {spec.event} {spec.pattern}: {exc.message}"
            raise InvalidPush(message, exc.details) from None
    return plain


PushCheck = Callable[[str, str, Any], None]
"""``check(event, path, data)``: raises [`InvalidPush`][wsevents.contracts.InvalidPush]."""


class PushChecker:
    """The declared pushes of an app, matched by event and path.

    ``check(event, path, data)`` finds the declaration of a push: an event with no
    declaration passes unchecked; a declared event sent on a path that matches none of its
    patterns, or whose ``data`` does not validate, raises
    [`InvalidPush`][wsevents.contracts.InvalidPush].
    """

    __slots__ = ("_events", "_router", "_specs")

    def __init__(self) -> None:
        self._specs: list[PushSpec] = []
        self._events: dict[str, list[str]] = {}
        self._router: Router[PushSpec] = Router(cache_size=256)

    def add(self, spec: PushSpec) -> None:
        """Declare ``spec``.

        Raises:
            RoutingError: a bad pattern, or the same event and pattern declared twice.
        """
        self._router.add(spec.event, spec.pattern, spec)
        self._specs.append(spec)
        self._events.setdefault(spec.event, []).append(spec.pattern)

    def specs(self) -> tuple[PushSpec, ...]:
        """The declarations, in order."""
        return tuple(self._specs)

    def check(self, event: str, path: str, data: Any) -> None:
        """Check one push against its declaration.

        Raises:
            InvalidPush: see the class.
        """
        patterns = self._events.get(event)
        if patterns is None:
            return
        found = self._router.match(event, path)
        if found is None:
            raise InvalidPush(
                f"push {event}: path {path!r} matches none of its declared patterns "
                f"({', '.join(patterns)})"
            )
        check_push(found.handler, data)

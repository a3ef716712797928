"""An AsyncAPI 3.0 description of an app's routes and pushes (sans-I/O).

[`build_asyncapi`][wsevents.asyncapi.build_asyncapi] turns plain descriptions of the routes
([`RouteSpec`][wsevents.asyncapi.RouteSpec]) and of the declared pushes
([`PushSpec`][wsevents.contracts.PushSpec]) into an AsyncAPI 3.0 document (a dict ready for
JSON); [`to_yaml`][wsevents.asyncapi.to_yaml] writes it as block-style YAML.

What maps to what:

* a route pattern is a channel; its ``address`` is the pattern with ``{param}`` placeholders
  (``/chat/rooms/:room`` → ``/chat/rooms/{room}``, a wildcard ``*`` → ``{wildcard}``), and
  each placeholder is described under ``parameters``;
* each route is a ``receive`` operation on its channel; its message's ``payload`` is the
  schema of the frame's ``data`` (``{}``, anything, when no type is declared); a declared
  reply type adds a ``reply`` whose messages are the reply and the error reply;
* each declared push is a ``send`` operation on the channel of its pattern;
* named schemas live under ``components.schemas`` and are referenced with ``$ref``.

The envelope (``event``, ``path``, ``id``) is not part of the payload: each message says in
its ``description`` how it travels, and carries ``x-wsevents-event``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .contracts import COMPONENTS_REF, DataContract, ParamContract, PushSpec, SchemaMode

__all__ = [
    "ASYNCAPI_VERSION",
    "AddressParam",
    "RouteSpec",
    "build_asyncapi",
    "docstring_summary",
    "pattern_to_address",
    "to_yaml",
]

ASYNCAPI_VERSION = "3.0.0"
_SCHEMA_PREFIX = COMPONENTS_REF.split("{", 1)[0]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAM_NAME = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

ENVELOPE_DESCRIPTION = (
    "Every frame is a JSON object sent as a WebSocket text message. A client sends "
    '`{"event", "path", "data"?, "id"?}`: each `receive` operation below is one event on '
    "one channel, `path` is a concrete path matching the channel's address, and the "
    "message payload describes `data`. A frame with an `id` gets exactly one reply, "
    '`{"id", "data"}` (the reply payload describes `data`) or '
    '`{"id", "error": {"code", "message", "details"?}}`. Each `send` operation is a '
    'server push, `{"event", "path", "params"?, "data"?}`, whose payload describes `data`.'
)

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "properties": {
        "code": {"type": "integer", "description": "HTTP-like status: 400, 403, 404, 500..."},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "description": "With code 400: every failing field of `data` (or the param).",
            "items": {
                "type": "object",
                "properties": {
                    "path": {
                        "type": "array",
                        "items": {"type": ["string", "integer"]},
                        "description": "Keys and array indexes from `data` to the field.",
                    },
                    "message": {"type": "string"},
                },
                "required": ["path", "message"],
            },
        },
    },
    "required": ["code", "message"],
}


# ---------------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class AddressParam:
    """One ``{placeholder}`` of a channel address.

    Attributes:
        name: the param's key in the route's params (``"*"`` for the wildcard).
        placeholder: its name in the address (``"wildcard"`` for ``*``).
        regex: the ``:name(regex)`` constraint, if any.
        optional: a trailing ``:name?``.
        wildcard: the ``*`` wildcard (its value may contain ``/``).
    """

    name: str
    placeholder: str
    regex: str | None = None
    optional: bool = False
    wildcard: bool = False


def pattern_to_address(pattern: str) -> tuple[str, list[AddressParam]]:
    """Turn a route pattern into an AsyncAPI address and its params.

    ``/users/:id`` → ``/users/{id}``; ``/:from-:to`` → ``/{from}-{to}``; ``/n/:id(\\d+)`` →
    ``/n/{id}`` (the regex is kept on the param); ``/vars/:key?`` → ``/vars/{key}``
    (optional); ``/static/*`` → ``/static/{wildcard}``; ``/a\\:b`` → ``/a:b``.
    The pattern is assumed valid (the router checked it at registration).
    """
    names = set(_PARAM_NAME.findall(pattern))
    out: list[str] = []
    params: list[AddressParam] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            out.append(pattern[i + 1])
            i += 2
        elif ch == ":" and (m := _NAME.match(pattern, i + 1)) is not None:
            name, i = m.group(), m.end()
            regex = None
            if i < n and pattern[i] == "(":
                j, depth = i, 0
                while j < n:
                    if pattern[j] == "\\":
                        j += 2
                        continue
                    depth += {"(": 1, ")": -1}.get(pattern[j], 0)
                    if depth == 0:
                        break
                    j += 1
                regex, i = pattern[i + 1 : j], j + 1
            optional = i < n and pattern[i] == "?"
            i += optional
            out.append("{" + name + "}")
            params.append(AddressParam(name, name, regex, optional))
        elif ch == "*":
            placeholder = "wildcard"
            while placeholder in names:
                placeholder += "_"
            out.append("{" + placeholder + "}")
            params.append(AddressParam("*", placeholder, wildcard=True))
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out), params


# ---------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What the schema export needs to know about one route.

    Attributes:
        event: the route's event, e.g. ``"rpc"``.
        pattern: the route pattern, e.g. ``"/typed/items/:id"``.
        data: the compiled ``data=`` type, or ``None`` (anything).
        reply: the compiled ``reply=`` type, or ``None`` (no reply is described).
        params: the compiled ``params=`` types.
        summary: one line, e.g. the first line of the handler's docstring.
        description: the rest of the docstring.
    """

    event: str
    pattern: str
    data: DataContract | None = None
    reply: DataContract | None = None
    params: tuple[ParamContract, ...] = ()
    summary: str | None = None
    description: str | None = None


def docstring_summary(handler: Callable[..., Any]) -> tuple[str | None, str | None]:
    """Split a handler's docstring into ``(summary, description)`` (``None`` when absent)."""
    doc = inspect.getdoc(handler)
    if not doc:
        return None, None
    summary, _, rest = doc.partition("\n")
    return summary.strip() or None, rest.strip() or None


# ---------------------------------------------------------------------------- building


class _Ids:
    """Unique AsyncAPI keys (``^[A-Za-z0-9_.-]+$``) derived from free text."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def make(self, text: str) -> str:
        base = _ID_UNSAFE.sub("_", text).strip("_") or "root"
        key, k = base, 1
        while key in self._used:
            k += 1
            key = f"{base}_{k}"
        self._used.add(key)
        return key


class _Schemas:
    """``components.schemas``, merged from many contracts; clashing names are renamed."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def add(self, contract: DataContract | None, mode: SchemaMode) -> dict[str, Any]:
        if contract is None:
            return {}
        schema, components = contract.json_schema(mode=mode)
        renames: dict[str, str] = {}
        for name, body in components.items():
            if name in self.components and self.components[name] != body:
                k = 2
                while f"{name}{k}" in self.components or f"{name}{k}" in components:
                    k += 1
                renames[name] = f"{name}{k}"
        if renames:
            schema = _rename_refs(schema, renames)
            components = {
                renames.get(n, n): _rename_refs(b, renames) for n, b in components.items()
            }
        for name, body in components.items():
            self.components.setdefault(name, body)
        return schema


def _rename_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_SCHEMA_PREFIX):
                name = value[len(_SCHEMA_PREFIX) :]
                value = _SCHEMA_PREFIX + renames.get(name, name)
            out[key] = _rename_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_rename_refs(v, renames) for v in node]
    return node


def _param_object(param: AddressParam, contract: ParamContract | None) -> dict[str, Any]:
    parts: list[str] = []
    if param.wildcard:
        parts.append("The rest of the path (may contain `/`); the handler sees it as `*`.")
    else:
        parts.append("Text matched in the path, percent-decoded.")
    if contract is not None and contract.enum is None:
        kind = contract.schema.get("type", "string")
        parts.append(f"Converted to {kind} before the handler runs; otherwise error 400.")
    if param.regex is not None:
        parts.append(f"Matches the regular expression `{param.regex}`.")
    if param.optional:
        parts.append("Optional: the path may end before this segment.")
    out: dict[str, Any] = {}
    if contract is not None and contract.enum is not None:
        out["enum"] = list(contract.enum)
        parts.append("One of the listed values; otherwise error 400.")
    if parts:
        out["description"] = " ".join(parts)
    return out


@dataclass(slots=True)
class _Channel:
    key: str
    body: dict[str, Any]
    messages: _Ids
    error_key: str | None = None


def build_asyncapi(
    routes: Iterable[RouteSpec],
    pushes: Iterable[PushSpec] = (),
    *,
    title: str,
    version: str,
    description: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Build an AsyncAPI 3.0 document (a JSON-ready dict).

    Args:
        routes: one [`RouteSpec`][wsevents.asyncapi.RouteSpec] per registered route.
        pushes: the declared pushes.
        title: ``info.title``.
        version: ``info.version`` (the application's version, not the spec's).
        description: prepended to the explanation of the envelope in ``info.description``.
        server: a ``ws://`` or ``wss://`` URL, e.g. ``ws://localhost:8080/ws``, described as
            the server ``default``.

    Raises:
        ValueError: ``server`` is not a ``ws://`` or ``wss://`` URL with a host.
    """
    schemas = _Schemas()
    channel_ids = _Ids()
    operation_ids = _Ids()
    channels: dict[str, _Channel] = {}
    operations: dict[str, Any] = {}
    param_types: dict[str, dict[str, ParamContract]] = {}

    def channel(pattern: str, params: Iterable[ParamContract] = ()) -> _Channel:
        param_types.setdefault(pattern, {}).update((p.name, p) for p in params)
        found = channels.get(pattern)
        if found is None:
            address, _ = pattern_to_address(pattern)
            body: dict[str, Any] = {"address": address, "title": pattern, "messages": {}}
            found = channels[pattern] = _Channel(channel_ids.make(address), body, _Ids())
        return found

    def message_ref(ch: _Channel, key: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{ch.key}/messages/{key}"}

    for route in routes:
        ch = channel(route.pattern, route.params)
        key = ch.messages.make(route.event)
        ch.body["messages"][key] = _message(
            route.event,
            schemas.add(route.data, "validation"),
            route.summary,
            f'Sent by the client as `{{"event": {_q(route.event)}, "path", "data", "id"?}}` '
            f"with a `path` matching `{ch.body['address']}`; the payload describes `data`.",
        )
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{ch.key}"},
            "title": f"{route.event} {route.pattern}",
            "messages": [message_ref(ch, key)],
        }
        if route.summary:
            operation["summary"] = route.summary
        if route.description:
            operation["description"] = route.description
        if route.reply is not None:
            reply_key = ch.messages.make(f"{route.event}.reply")
            ch.body["messages"][reply_key] = _message(
                route.event,
                schemas.add(route.reply, "serialization"),
                f"Reply to {route.event}",
                'Sent by the server as `{"id", "data"}`, `id` echoing the request\'s; '
                "the payload describes `data`.",
            )
            if ch.error_key is None:
                ch.error_key = ch.messages.make("error")
                ch.body["messages"][ch.error_key] = {"$ref": "#/components/messages/error"}
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{ch.key}"},
                "messages": [message_ref(ch, reply_key), message_ref(ch, ch.error_key)],
            }
        operations[operation_ids.make(f"{route.event}_{ch.key}")] = operation

    for push in pushes:
        ch = channel(push.pattern)
        key = ch.messages.make(f"{push.event}.push")
        ch.body["messages"][key] = _message(
            push.event,
            schemas.add(push.data, "serialization"),
            push.summary,
            f'Pushed by the server as `{{"event": {_q(push.event)}, "path", "params"?, '
            f'"data"}}` with a `path` matching `{ch.body["address"]}`; the payload '
            "describes `data`.",
        )
        operation = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{ch.key}"},
            "title": f"push {push.event} {push.pattern}",
            "messages": [message_ref(ch, key)],
        }
        if push.summary:
            operation["summary"] = push.summary
        if push.description:
            operation["description"] = push.description
        operations[operation_ids.make(f"push_{push.event}_{ch.key}")] = operation

    for pattern, ch in channels.items():
        _, address_params = pattern_to_address(pattern)
        if address_params:
            types = param_types.get(pattern, {})
            ch.body["parameters"] = {
                p.placeholder: _param_object(p, types.get(p.name)) for p in address_params
            }

    info: dict[str, Any] = {"title": title, "version": version}
    info["description"] = (
        f"{description}\n\n{ENVELOPE_DESCRIPTION}" if description else ENVELOPE_DESCRIPTION
    )
    doc: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    if server is not None:
        doc["servers"] = {"default": _server(server)}
    doc["defaultContentType"] = "application/json"
    doc["channels"] = {ch.key: ch.body for ch in channels.values()}
    doc["operations"] = operations
    components: dict[str, Any] = {"schemas": {**schemas.components, "wsevents.Error": ERROR_SCHEMA}}
    components["messages"] = {
        "error": {
            "name": "error",
            "title": "Error reply",
            "summary": "The reply when the handler fails or the input is invalid",
            "description": 'Sent by the server as `{"id", "error": <payload>}`.',
            "contentType": "application/json",
            "payload": {"$ref": f"{_SCHEMA_PREFIX}wsevents.Error"},
        }
    }
    doc["components"] = components
    return doc


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _message(
    event: str, payload: dict[str, Any], summary: str | None, description: str
) -> dict[str, Any]:
    message: dict[str, Any] = {"name": event, "title": event}
    if summary:
        message["summary"] = summary
    message["description"] = description
    message["contentType"] = "application/json"
    message["payload"] = payload
    message["x-wsevents-event"] = event
    return message


def _server(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"server must be a ws:// or wss:// URL, got {url!r}")
    server: dict[str, Any] = {"host": parts.netloc, "protocol": parts.scheme}
    if parts.path and parts.path != "/":
        server["pathname"] = parts.path
    return server


# ---------------------------------------------------------------------------- YAML

# Plain (unquoted) only when no YAML 1.1 or 1.2 parser could read anything but this string.
_PLAIN = re.compile(r"[A-Za-z_/$][A-Za-z0-9_./${}-]*")
_RESERVED = frozenset(["y", "n", "yes", "no", "on", "off", "true", "false", "null"])
_MAX_SIMPLE_KEY = 1000
# YAML forbids these raw in a document (and line breaks would fold): escape them.
_ESCAPE = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff"\\\\]')
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\", "\x00": "\\0"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return _ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text:
            # "1e+20" is a string to YAML 1.1 parsers: write "1.0e+20".
            mantissa, _, exponent = text.partition("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return '"' + _ESCAPE.sub(_escape, value) + '"'
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _emit(value: Any, indent: int, lines: list[str], prefix: str) -> None:
    """Append ``value`` to ``lines``; ``prefix`` is what precedes it on its first line."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("YAML mapping keys must be strings")
            key_text = _scalar(key)
            if len(key_text) > _MAX_SIMPLE_KEY:
                # Implicit keys are limited to 1024 characters: write an explicit "? key".
                lines.append((prefix if first else pad) + "? " + key_text)
                head = pad + ":"
            else:
                head = (prefix if first else pad) + key_text + ":"
            first = False
            if isinstance(item, dict | list) and item:
                if isinstance(item, dict):
                    lines.append(head)
                    _emit(item, indent + 2, lines, " " * (indent + 2))
                else:
                    lines.append(head)
                    _emit(item, indent, lines, pad)
            else:
                lines.append(f"{head} {_leaf(item)}")
    elif isinstance(value, list) and value:
        first = True
        for item in value:
            head = (prefix if first else pad) + "- "
            first = False
            if isinstance(item, dict | list) and item:
                _emit(item, indent + 2, lines, head)
            else:
                lines.append(head + _leaf(item))
    else:
        lines.append(prefix + _leaf(value))


def _leaf(value: Any) -> str:
    """A scalar, or an empty mapping or sequence (in flow style: block style has none)."""
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(document: Any) -> str:
    """Write a JSON-like value (dicts with str keys, lists, str, numbers, bools, ``None``) as
    block-style YAML that YAML 1.1 and 1.2 parsers read back as the same value.

    Raises:
        TypeError: a value or key of another type.
    """
    lines: list[str] = []
    _emit(document, 0, lines, "")
    return "\n".join(lines) + "\n"

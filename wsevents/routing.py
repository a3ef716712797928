"""Event + path routing with Wooks-style patterns, compiled by Routes (sans-I/O).

Pattern syntax:

* ``/users/:id``: a parameter, one path segment (percent-decoded in the result);
* ``/:from-:to``: several parameters in one segment;
* ``/item/:id(\\d+)``: a parameter constrained by a regular expression;
* ``/static/*``: a wildcard matching the rest of the path, its value under ``"*"``;
* ``/vars/:key?``: an optional trailing parameter (matches ``/vars`` and ``/vars/x``);
* ``/time\\:now``: an escaped ``:`` (also ``\\*``, ``\\(``) is a literal character.

Static routes win over parametric ones, which win over wildcards, whatever the
registration order. The event plays the role of the HTTP method.

[`Route`][] is what one registration declares (event, pattern, handler, guards, and the
slots for declared types); [`join_pattern`][] joins a group's prefix and a pattern.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from routes import Mapper

from .exceptions import RoutingError
from .ratelimit import Limiter

__all__ = ["Guard", "Route", "RouteMatch", "Router", "join_pattern", "param_names"]

H = TypeVar("H")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WILD = "__wild__"
_STATIC, _PARAMETRIC, _WILDCARD = 0, 1, 2
# Characters that Routes itself treats as syntax in a path template.
_ROUTES_SPECIAL = frozenset("\\:*{}")


Guard = Callable[[], "bool | Awaitable[bool | None] | None"]
"""A check that runs before a handler, sync or ``async``, with no arguments (composables
reach the message and the connection): it refuses the message by raising
[`WsError`][wsevents.WsError] (that error is the reply) or by returning ``False`` (403
``"Forbidden"``); returning ``None`` or ``True`` lets it through."""


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """What one registered route declares: read by the dispatcher, listed by
    [`WsApp.routes`][wsevents.WsApp.routes], seen by interceptors as ``scope.route``.

    Attributes:
        event: the message event it answers.
        pattern: the full pattern (a group's prefix included), e.g. ``/chat/rooms/:room``;
            a bounded label for metrics, unlike the concrete path.
        handler: the function registered (sync or ``async``).
        guards: the route's guards in the order they run: its groups' guards (the
            outermost group first), then its own. The app's guards, which run before
            them, are not included.
        data: the declared type of the message's ``data`` (None: not declared), validated
            before the handler runs.
        reply: the declared type of the reply's ``data`` (None: not declared); the
            handler's return value is dumped to JSON values through it.
        params: the declared types of route params, by name, converted before the
            handler runs.
        summary: the first line of the handler's docstring, if any.
        rate_limits: the rate limits the route counts against, in the order they are
            taken: the app's, its groups' (the outermost first), then its own; each
            [`Limiter`][wsevents.ratelimit.Limiter] counts its rejections.
        public: served to connections not yet authenticated, on an app with
            ``auth_required=True`` (a login route); other routes answer them 401.
    """

    event: str
    pattern: str
    handler: Callable[[], Any]
    guards: tuple[Guard, ...] = ()
    data: Any = None
    reply: Any = None
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    summary: str | None = None
    rate_limits: tuple[Limiter, ...] = ()
    public: bool = False


def join_pattern(prefix: str, pattern: str) -> str:
    """Join a group's ``prefix`` and a ``pattern`` registered in it.

    Trailing slashes of the prefix are ignored (``/admin/`` is ``/admin``), a pattern
    ``/`` stands for the prefix itself, and a group at ``/`` leaves patterns unchanged:
    ``/admin`` + ``/stats`` → ``/admin/stats``; ``/admin`` + ``/`` → ``/admin``;
    ``/`` + ``/stats`` → ``/stats``.

    Raises:
        RoutingError: the prefix or the pattern does not start with ``/``.
    """
    for part in (prefix, pattern):
        if not part.startswith("/"):
            raise RoutingError(f"a group prefix and a route pattern start with '/': {part!r}")
    base = prefix.rstrip("/")
    if pattern == "/":
        return base or "/"
    return base + pattern


def param_names(pattern: str) -> tuple[str, ...]:
    """The names of ``pattern``'s params, in order (``"*"`` for the wildcard):
    ``/teams/:team/channels/:channel`` → ``("team", "channel")``.

    Raises:
        RoutingError: the pattern is malformed.
    """
    names = _compile_pattern(pattern, ignore_trailing_slash=False)[0].names
    return tuple("*" if name == _WILD else name for name in names)


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[H]):
    """A resolved route: the handler, its read-only params and the pattern it came from."""

    handler: H
    params: Mapping[str, str]
    pattern: str


@dataclass(slots=True)
class _Variant:
    template: str  # Routes template, e.g. "/users/{id}"
    requirements: dict[str, str]
    names: tuple[str, ...]
    kind: int


@dataclass(slots=True)
class _Route(Generic[H]):
    event: str
    pattern: str
    handler: H
    order: int
    variants: list[_Variant]


def _compile_pattern(pattern: str, *, ignore_trailing_slash: bool) -> list[_Variant]:
    """Translate one Wooks pattern into one or two Routes templates."""
    if not pattern.startswith("/"):
        raise RoutingError(f"route pattern must start with '/': {pattern!r}")
    out: list[str] = []  # pieces of the Routes template
    reqs: dict[str, str] = {}
    names: list[str] = []
    optional_at: int | None = None  # index in `out` where an optional last param starts
    kind = _STATIC
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if optional_at is not None:
            raise RoutingError(f"an optional parameter must end the pattern: {pattern!r}")
        if ch == "\\":
            if i + 1 >= n:
                raise RoutingError(f"pattern ends with a lone backslash: {pattern!r}")
            lit = pattern[i + 1]
            out.append("\\" + lit if lit in _ROUTES_SPECIAL else lit)
            i += 2
        elif ch == ":":
            m = _NAME.match(pattern, i + 1)
            if m is None:
                raise RoutingError(f"':' must be followed by a parameter name: {pattern!r}")
            name = m.group()
            if name in names or name.startswith("__"):
                raise RoutingError(f"parameter name {name!r} is repeated or reserved")
            i = m.end()
            regex = "[^/]+?"
            if i < n and pattern[i] == "(":
                depth, j = 0, i
                while j < n:
                    if pattern[j] == "\\":
                        j += 2
                        continue
                    if pattern[j] == "(":
                        depth += 1
                    elif pattern[j] == ")":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                if j >= n:
                    raise RoutingError(f"unbalanced '(' in pattern: {pattern!r}")
                regex = pattern[i + 1 : j]
                try:
                    re.compile(regex)
                except re.error as exc:
                    raise RoutingError(f"bad regex for {name!r}: {exc}") from exc
                i = j + 1
            if i < n and pattern[i] == "?":
                i += 1
                slash = len(out) - 1
                if slash < 0 or out[slash] != "/":
                    raise RoutingError(
                        f"an optional parameter must be a whole last segment: {pattern!r}"
                    )
                optional_at = slash
            out.append("{" + name + "}")
            reqs[name] = regex
            names.append(name)
            kind = max(kind, _PARAMETRIC)
        elif ch == "*":
            if _WILD in reqs:
                raise RoutingError(f"only one wildcard per pattern: {pattern!r}")
            out.append("{" + _WILD + "}")
            reqs[_WILD] = ".*"
            names.append(_WILD)
            kind = _WILDCARD
            i += 1
        else:
            out.append("\\" + ch if ch in _ROUTES_SPECIAL else ch)
            i += 1

    def variant(pieces: list[str], vnames: list[str]) -> _Variant:
        template = "".join(pieces) or "/"
        if ignore_trailing_slash and len(template) > 1 and template.endswith("/"):
            template = template.rstrip("/") or "/"
        vreqs = {k: v for k, v in reqs.items() if k in vnames}
        vkind = _STATIC if not vnames else (_WILDCARD if _WILD in vnames else _PARAMETRIC)
        return _Variant(template, vreqs, tuple(vnames), vkind)

    if optional_at is None:
        return [variant(out, names)]
    return [variant(out, names), variant(out[:optional_at], names[:-1])]


def _lower_literals(template: str) -> str:
    """Lowercase the literal parts of a Routes template, leaving ``{name}`` alone."""
    parts = re.split(r"(\{[^}]*\})", template)
    return "".join(p if p.startswith("{") else p.lower() for p in parts)


class Router(Generic[H]):
    """Resolve ``(event, path)`` to a handler and its params.

    Args:
        ignore_case: match paths case-insensitively (param values keep their case).
        ignore_trailing_slash: treat ``/a/`` like ``/a``.
        cache_size: how many resolved ``(event, path)`` pairs to remember (0 = none).
    """

    def __init__(
        self,
        *,
        ignore_case: bool = False,
        ignore_trailing_slash: bool = False,
        cache_size: int = 1024,
    ) -> None:
        self.ignore_case = ignore_case
        self.ignore_trailing_slash = ignore_trailing_slash
        self.cache_size = cache_size
        self._routes: list[_Route[H]] = []
        self._static: dict[tuple[str, str], RouteMatch[H]] = {}
        self._cache: dict[tuple[str, str], RouteMatch[H] | None] = {}
        self._mapper: list[Any] | None = None
        self._by_name: dict[str, tuple[_Route[H], _Variant]] = {}
        self._nocase: dict[str, re.Pattern[str]] = {}

    def add(self, event: str, pattern: str, handler: H) -> None:
        """Register ``handler`` for ``event`` on ``pattern``.

        Raises:
            RoutingError: the pattern is malformed, or the same event and pattern are
                already registered.
        """
        if not event:
            raise RoutingError("event must be a non-empty string")
        if any(r.event == event and r.pattern == pattern for r in self._routes):
            raise RoutingError(f"duplicate route: {event} {pattern}")
        variants = _compile_pattern(pattern, ignore_trailing_slash=self.ignore_trailing_slash)
        route = _Route(event, pattern, handler, len(self._routes), variants)
        self._routes.append(route)
        for v in variants:
            if v.kind == _STATIC:
                path = v.template.replace("\\", "")
                key = (event, path.lower() if self.ignore_case else path)
                self._static.setdefault(key, RouteMatch(handler, _EMPTY, pattern))
        self._mapper = None
        self._cache.clear()

    def routes(self) -> Iterator[tuple[str, str, H]]:
        """Yield ``(event, pattern, handler)`` in registration order."""
        for r in self._routes:
            yield r.event, r.pattern, r.handler

    def _build(self) -> list[Any]:
        entries = [(v.kind, r.order, r, v) for r in self._routes for v in r.variants]
        entries.sort(key=lambda e: (e[0], e[1]))
        self._by_name = {}
        self._nocase = {}
        mappers: list[Any] = []
        # One mapper per kind: Routes tries longer literal prefixes first, which would let
        # "/files/*" win over "/:dir/x" on "/files/x".
        for kind in (_PARAMETRIC, _WILDCARD):
            mapper = Mapper(explicit=True)
            mapper.minimization = False
            for idx, (k, _, r, v) in enumerate(entries):
                if k != kind:
                    continue  # statics are served from the static table
                name = f"r{idx}"
                requirements = v.requirements
                if self.ignore_case:
                    requirements = {key: f"(?i:{rx})" for key, rx in requirements.items()}
                mapper.connect(
                    name,
                    _lower_literals(v.template) if self.ignore_case else v.template,
                    conditions={"method": [r.event]},
                    requirements=requirements,
                )
                self._by_name[name] = (r, v)
            if not mapper.matchlist:
                continue
            mapper.create_regs([])
            if self.ignore_case:
                # Routes matches case-sensitively: the mapper sees lowercased templates and
                # paths, and each route's own regex, recompiled case-blind, reads the values
                # from the original path so that they keep their case.
                self._nocase.update(
                    (route.name, re.compile(route.regexp, re.IGNORECASE))
                    for route in mapper.matchlist
                )
            mappers.append(mapper)
        self._mapper = mappers
        return mappers

    def match(self, event: str, path: str) -> RouteMatch[H] | None:
        """Resolve a concrete path; ``None`` when nothing matches (a 404).

        A ``?query`` suffix is ignored; params are percent-decoded.
        """
        if "?" in path:
            path = path.partition("?")[0]
        if self.ignore_trailing_slash and len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        key = (event, path)
        found = self._static.get((event, path.lower()) if self.ignore_case else key)
        if found is not None:
            return found
        # Keyed by the path as sent: with ignore_case, params keep the case of each path.
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            pass
        result = self._resolve(event, path)
        if self.cache_size > 0:
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]
            cache[key] = result
        return result

    def _resolve(self, event: str, path: str) -> RouteMatch[H] | None:
        mappers = self._mapper if self._mapper is not None else self._build()
        url = path.lower() if self.ignore_case else path
        environ = {"REQUEST_METHOD": event}
        for mapper in mappers:
            found = mapper.routematch(url=url, environ=environ)
            if found:
                break
        else:
            return None
        values, route = found
        if self.ignore_case:
            original = self._nocase[route.name].match(path)
            if original is None:
                return None
            values = original.groupdict()
        r, v = self._by_name[route.name]
        params = {
            ("*" if name == _WILD else name): unquote(values[name])
            for name in v.names
            if values.get(name) is not None
        }
        return RouteMatch(r.handler, MappingProxyType(params) if params else _EMPTY, r.pattern)

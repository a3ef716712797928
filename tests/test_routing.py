"""The router: pattern forms, priority, options, cache and malformed patterns."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsevents.exceptions import RoutingError
from wsevents.routing import Route, RouteMatch, Router, join_pattern, param_names


def resolve(router: Router[str], path: str, event: str = "rpc") -> tuple[str, dict[str, str]]:
    found = router.match(event, path)
    assert found is not None, f"{event} {path} did not match"
    return found.handler, dict(found.params)


def resolve_match(router: Router[str], path: str) -> RouteMatch[str]:
    found = router.match("rpc", path)
    assert found is not None
    return found


def router_with(
    *patterns: str, ignore_case: bool = False, ignore_trailing_slash: bool = False
) -> Router[str]:
    router: Router[str] = Router(
        ignore_case=ignore_case, ignore_trailing_slash=ignore_trailing_slash
    )
    for pattern in patterns:
        router.add("rpc", pattern, pattern)
    return router


def test_static_route_matches_only_its_path() -> None:
    router = router_with("/a/b")
    assert resolve(router, "/a/b") == ("/a/b", {})
    assert router.match("rpc", "/a") is None
    assert router.match("rpc", "/a/b/c") is None


def test_root_route() -> None:
    router = router_with("/")
    assert resolve(router, "/") == ("/", {})
    assert router.match("rpc", "") is None


def test_param_matches_one_segment() -> None:
    router = router_with("/users/:id")
    assert resolve(router, "/users/42") == ("/users/:id", {"id": "42"})
    assert router.match("rpc", "/users/1/2") is None
    assert router.match("rpc", "/users/") is None
    assert router.match("rpc", "/users") is None


def test_several_params_in_one_segment() -> None:
    router = router_with("/:from-:to")
    assert resolve(router, "/NYC-LA") == ("/:from-:to", {"from": "NYC", "to": "LA"})
    assert router.match("rpc", "/NYC") is None


def test_params_in_several_segments() -> None:
    router = router_with("/teams/:team/channels/:channel")
    assert resolve(router, "/teams/red/channels/general") == (
        "/teams/:team/channels/:channel",
        {"team": "red", "channel": "general"},
    )


def test_param_followed_by_a_literal_suffix() -> None:
    router = router_with("/files/:name.json")
    assert resolve(router, "/files/report.json") == ("/files/:name.json", {"name": "report"})
    assert router.match("rpc", "/files/report.xml") is None


def test_regex_constrained_param() -> None:
    router = router_with(r"/item/:id(\d+)")
    assert resolve(router, "/item/12") == (r"/item/:id(\d+)", {"id": "12"})
    assert router.match("rpc", "/item/ab") is None
    assert router.match("rpc", "/item/12a") is None


def test_regex_with_braces_quantifier() -> None:
    router = router_with(r"/code/:c(\d{3})")
    assert resolve(router, "/code/123") == (r"/code/:c(\d{3})", {"c": "123"})
    assert router.match("rpc", "/code/12") is None
    assert router.match("rpc", "/code/1234") is None


def test_regex_with_nested_and_escaped_parentheses() -> None:
    router = router_with(r"/v/:ver((v|r)\d+\(x\))")
    assert resolve(router, "/v/v2(x)") == (r"/v/:ver((v|r)\d+\(x\))", {"ver": "v2(x)"})
    assert router.match("rpc", "/v/q2(x)") is None


def test_regex_param_then_more_path() -> None:
    router = router_with(r"/item/:id(\d+)/tags/:tag")
    assert resolve(router, "/item/5/tags/new") == (
        r"/item/:id(\d+)/tags/:tag",
        {"id": "5", "tag": "new"},
    )


def test_wildcard_value_is_under_star() -> None:
    router = router_with("/static/*")
    assert resolve(router, "/static/css/site.css") == ("/static/*", {"*": "css/site.css"})
    assert resolve(router, "/static/") == ("/static/*", {"*": ""})
    assert router.match("rpc", "/static") is None


def test_wildcard_in_the_middle() -> None:
    router = router_with("/w/*/end")
    assert resolve(router, "/w/a/b/end") == ("/w/*/end", {"*": "a/b"})
    assert router.match("rpc", "/w/a/b") is None


def test_wildcard_with_a_param() -> None:
    router = router_with("/u/:id/*")
    assert resolve(router, "/u/7/x/y") == ("/u/:id/*", {"id": "7", "*": "x/y"})


def test_optional_trailing_param() -> None:
    router = router_with("/vars/:key?")
    assert resolve(router, "/vars") == ("/vars/:key?", {})
    assert resolve(router, "/vars/x") == ("/vars/:key?", {"key": "x"})
    assert router.match("rpc", "/vars/x/y") is None
    assert router.match("rpc", "/vars/") is None


def test_optional_param_at_the_root() -> None:
    router = router_with("/:key?")
    assert resolve(router, "/") == ("/:key?", {})
    assert resolve(router, "/k") == ("/:key?", {"key": "k"})


def test_optional_param_with_regex() -> None:
    router = router_with(r"/page/:n(\d+)?")
    assert resolve(router, "/page") == (r"/page/:n(\d+)?", {})
    assert resolve(router, "/page/3") == (r"/page/:n(\d+)?", {"n": "3"})
    assert router.match("rpc", "/page/x") is None


def test_escaped_colon_is_a_literal() -> None:
    router = router_with(r"/time\:now")
    assert resolve(router, "/time:now") == (r"/time\:now", {})
    assert router.match("rpc", "/time") is None


def test_escaped_colon_next_to_a_param() -> None:
    router = router_with(r"/api/v1\:list/:id")
    assert resolve(router, "/api/v1:list/3") == (r"/api/v1\:list/:id", {"id": "3"})


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        (r"/x\*y/:id", "/x*y/2"),
        (r"/p\(q\)/:id", "/p(q)/2"),
        (r"/s\\t/:id", "/s\\t/2"),
        (r"/\a/:id", "/a/2"),
        ("/a{b}/:id", "/a{b}/2"),
    ],
)
def test_escaped_and_special_characters_are_literals(pattern: str, path: str) -> None:
    assert resolve(router_with(pattern), path) == (pattern, {"id": "2"})


def test_escaped_special_characters_in_a_static_route() -> None:
    router = router_with(r"/a\*b{c}")
    assert resolve(router, "/a*b{c}") == (r"/a\*b{c}", {})


def test_regex_special_characters_in_literals_are_not_regex() -> None:
    router = router_with("/a.b/:id", "/c+d")
    assert resolve(router, "/a.b/1") == ("/a.b/:id", {"id": "1"})
    assert router.match("rpc", "/aXb/1") is None
    assert resolve(router, "/c+d") == ("/c+d", {})
    assert router.match("rpc", "/ccd") is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/users/a%2Fb", "a/b"),
        ("/users/a%2fb", "a/b"),
        ("/users/%E2%82%AC", "€"),
        ("/users/john%20doe", "john doe"),
        ("/users/a%252F", "a%2F"),  # decoded once only
        ("/users/100%", "100%"),
        ("/users/%zz", "%zz"),
        ("/users/é", "é"),
    ],
)
def test_param_values_are_percent_decoded(path: str, value: str) -> None:
    assert resolve(router_with("/users/:id"), path) == ("/users/:id", {"id": value})


def test_wildcard_value_is_percent_decoded() -> None:
    router = router_with("/static/*")
    assert resolve(router, "/static/a%20b/c") == ("/static/*", {"*": "a b/c"})


def test_query_string_is_ignored() -> None:
    router = router_with("/a/b", "/users/:id")
    assert resolve(router, "/a/b?x=1") == ("/a/b", {})
    assert resolve(router, "/users/42?x=1&y=2") == ("/users/:id", {"id": "42"})
    assert resolve(router, "/users/42?") == ("/users/:id", {"id": "42"})


def test_params_are_read_only() -> None:
    params = resolve_match(router_with("/users/:id"), "/users/1").params
    assert isinstance(params, Mapping)
    with pytest.raises(TypeError):
        params["id"] = "2"  # type: ignore[index]


def test_match_carries_the_pattern() -> None:
    router = router_with(r"/item/:id(\d+)")
    assert resolve_match(router, "/item/1").pattern == r"/item/:id(\d+)"


def test_event_acts_as_method() -> None:
    router: Router[str] = Router()
    router.add("subscribe", "/chat/:room", "sub")
    router.add("message", "/chat/:room", "msg")
    router.add("rpc", "/static", "rpc-static")
    assert resolve(router, "/chat/lobby", "subscribe") == ("sub", {"room": "lobby"})
    assert resolve(router, "/chat/lobby", "message") == ("msg", {"room": "lobby"})
    assert router.match("unsubscribe", "/chat/lobby") is None
    assert router.match("other", "/static") is None
    assert router.match("rpc", "/chat/lobby") is None


def test_same_pattern_may_serve_several_events() -> None:
    router: Router[str] = Router()
    router.add("a", "/x", "A")
    router.add("b", "/x", "B")
    assert resolve(router, "/x", "a") == ("A", {})
    assert resolve(router, "/x", "b") == ("B", {})


def test_empty_router_matches_nothing() -> None:
    router: Router[str] = Router()
    assert router.match("rpc", "/") is None
    assert router.match("rpc", "/a/b") is None


def test_router_with_only_static_routes_misses_other_paths() -> None:
    router = router_with("/a")
    assert router.match("rpc", "/b") is None


def test_routes_lists_registrations_in_order() -> None:
    router: Router[str] = Router()
    router.add("rpc", "/b/:id", "first")
    router.add("message", "/a", "second")
    assert list(router.routes()) == [("rpc", "/b/:id", "first"), ("message", "/a", "second")]


def test_matching_is_case_sensitive_by_default() -> None:
    router = router_with("/Users/list", "/Users/:id")
    assert resolve(router, "/Users/list") == ("/Users/list", {})
    assert router.match("rpc", "/users/list") is None
    assert router.match("rpc", "/USERS/7") is None


def test_trailing_slash_is_significant_by_default() -> None:
    router = router_with("/a/b", "/e/:id/")
    assert router.match("rpc", "/a/b/") is None
    assert resolve(router, "/e/1/") == ("/e/:id/", {"id": "1"})
    assert router.match("rpc", "/e/1") is None


def test_ignore_case_matches_static_and_parametric_routes() -> None:
    router = router_with("/Users/list", "/Users/:id", ignore_case=True)
    assert resolve(router, "/users/LIST") == ("/Users/list", {})
    assert resolve(router, "/USERS/Bob") == ("/Users/:id", {"id": "Bob"})


def test_ignore_case_param_values_keep_the_case_of_each_path() -> None:
    router = router_with("/users/:id", "/files/*", ignore_case=True)
    assert resolve(router, "/users/Bob") == ("/users/:id", {"id": "Bob"})
    assert resolve(router, "/USERS/bob") == ("/users/:id", {"id": "bob"})
    assert resolve(router, "/Users/BOB") == ("/users/:id", {"id": "BOB"})
    assert resolve(router, "/FILES/A/b") == ("/files/*", {"*": "A/b"})
    assert resolve(router, "/files/a/B") == ("/files/*", {"*": "a/B"})


def test_ignore_case_applies_to_regex_constraints() -> None:
    router = router_with("/item/:code([A-Z]{3})", ignore_case=True)
    assert resolve(router, "/item/ABC") == ("/item/:code([A-Z]{3})", {"code": "ABC"})
    assert resolve(router, "/ITEM/abc") == ("/item/:code([A-Z]{3})", {"code": "abc"})
    assert router.match("rpc", "/item/AB1") is None


def test_ignore_case_with_optional_param() -> None:
    router = router_with("/Vars/:key?", ignore_case=True)
    assert resolve(router, "/vars") == ("/Vars/:key?", {})
    assert resolve(router, "/VARS/Key") == ("/Vars/:key?", {"key": "Key"})


def test_ignore_case_does_not_resplit_a_path_whose_lowercase_changes_length() -> None:
    # "İ".lower() is two characters: the values could not be read from the original path.
    router = router_with("/i\u0307/:id", ignore_case=True)
    assert resolve(router, "/i\u0307/5") == ("/i\u0307/:id", {"id": "5"})
    assert router.match("rpc", "/\u0130/5") is None


def test_ignore_case_still_distinguishes_events() -> None:
    router = router_with("/a/:id", ignore_case=True)
    assert router.match("RPC", "/a/1") is None


def test_ignore_trailing_slash_folds_paths_and_patterns() -> None:
    router = router_with("/a", "/b/", "/e/:id/", "/w/*", ignore_trailing_slash=True)
    assert resolve(router, "/a/") == ("/a", {})
    assert resolve(router, "/a") == ("/a", {})
    assert resolve(router, "/b") == ("/b/", {})
    assert resolve(router, "/b/") == ("/b/", {})
    assert resolve(router, "/e/1") == ("/e/:id/", {"id": "1"})
    assert resolve(router, "/e/1/") == ("/e/:id/", {"id": "1"})
    assert resolve(router, "/w/x/") == ("/w/*", {"*": "x"})


def test_ignore_trailing_slash_keeps_the_root() -> None:
    router = router_with("/", ignore_trailing_slash=True)
    assert resolve(router, "/") == ("/", {})


def test_ignore_trailing_slash_with_query() -> None:
    router = router_with("/a/:id", ignore_trailing_slash=True)
    assert resolve(router, "/a/1/?x=1") == ("/a/:id", {"id": "1"})


def test_ignore_trailing_slash_first_of_two_equivalent_static_routes_wins() -> None:
    router = router_with("/a", "/a/", ignore_trailing_slash=True)
    assert resolve(router, "/a/") == ("/a", {})


def test_both_options_together() -> None:
    router = router_with("/Users/:id/", ignore_case=True, ignore_trailing_slash=True)
    assert resolve(router, "/USERS/Bob/") == ("/Users/:id/", {"id": "Bob"})
    assert resolve(router, "/users/bob") == ("/Users/:id/", {"id": "bob"})


def test_static_beats_parametric_beats_wildcard() -> None:
    router = router_with("/files/*", "/files/:name", "/files/index")
    assert resolve(router, "/files/index") == ("/files/index", {})
    assert resolve(router, "/files/other") == ("/files/:name", {"name": "other"})
    assert resolve(router, "/files/a/b") == ("/files/*", {"*": "a/b"})


def test_parametric_beats_a_wildcard_with_a_longer_literal_prefix() -> None:
    router = router_with("/files/*", "/:dir/x/y")
    assert resolve(router, "/files/x/y") == ("/:dir/x/y", {"dir": "files"})
    assert resolve(router, "/files/q") == ("/files/*", {"*": "q"})


def test_parametric_with_a_longer_literal_prefix_wins_among_parametric_routes() -> None:
    router = router_with("/:a/:b", "/users/:id")
    assert resolve(router, "/users/1") == ("/users/:id", {"id": "1"})
    assert resolve(router, "/teams/1") == ("/:a/:b", {"a": "teams", "b": "1"})


def test_first_registered_wins_between_equivalent_parametric_routes() -> None:
    router = router_with("/u/:x", "/u/:y")
    assert resolve(router, "/u/1") == ("/u/:x", {"x": "1"})


def test_optional_param_route_without_its_param_is_static() -> None:
    router = router_with("/vars/*", "/vars/:key?")
    assert resolve(router, "/vars") == ("/vars/:key?", {})
    assert resolve(router, "/vars/k") == ("/vars/:key?", {"key": "k"})
    assert resolve(router, "/vars/k/l") == ("/vars/*", {"*": "k/l"})


@st.composite
def priority_cases(draw: st.DrawFn) -> tuple[str, str, str, str, list[int]]:
    segment = st.text("abcxyz0123456789", min_size=1, max_size=6)
    prefix, name = draw(segment), draw(segment)
    order = draw(st.permutations([0, 1, 2]))
    return f"/{prefix}/{name}", f"/{prefix}/:p", f"/{prefix}/*", f"/{prefix}/{name}", order


@given(priority_cases(), st.booleans(), st.booleans())
def test_priority_does_not_depend_on_registration_order(
    case: tuple[str, str, str, str, list[int]], ignore_case: bool, ignore_slash: bool
) -> None:
    static, parametric, wildcard, path, order = case
    patterns = [static, parametric, wildcard]
    router: Router[str] = Router(ignore_case=ignore_case, ignore_trailing_slash=ignore_slash)
    for i in order:
        router.add("rpc", patterns[i], patterns[i])
    prefix, _, name = path.rpartition("/")
    assert resolve(router, path) == (static, {})
    other = f"{prefix}/{name}_"
    assert resolve(router, other) == (parametric, {"p": f"{name}_"})
    assert resolve(router, f"{path}/deeper") == (wildcard, {"*": f"{name}/deeper"})


@given(st.permutations(["/:dir/x/y", "/files/*", "/files/x/y"]))
def test_priority_with_different_literal_prefixes_ignores_registration_order(
    patterns: list[str],
) -> None:
    router = router_with(*patterns)
    assert resolve(router, "/files/x/y") == ("/files/x/y", {})
    assert resolve(router, "/other/x/y") == ("/:dir/x/y", {"dir": "other"})
    assert resolve(router, "/files/x/z") == ("/files/*", {"*": "x/z"})


def test_every_registration_order_of_mixed_routes_resolves_by_kind() -> None:
    patterns = ["/a/b", "/a/:x", "/a/*", r"/a/:n(\d+)", "/:y/b"]
    for perm in itertools.permutations(patterns):
        router = router_with(*perm)
        assert resolve(router, "/a/b") == ("/a/b", {})
        assert resolve(router, "/a/q") == ("/a/:x", {"x": "q"})
        assert resolve(router, "/a/q/r") == ("/a/*", {"*": "q/r"})
        assert resolve(router, "/z/b") == ("/:y/b", {"y": "z"})
        # Parametric routes with the same literal prefix are tried in registration order.
        first = min("/a/:x", r"/a/:n(\d+)", key=perm.index)
        assert resolve(router, "/a/7")[0] == first


def test_cache_never_grows_over_cache_size() -> None:
    router: Router[str] = Router(cache_size=8)
    router.add("rpc", "/users/:id", "user")
    for i in range(50):
        assert resolve(router, f"/users/{i}") == ("user", {"id": str(i)})
        assert router.match("rpc", f"/missing/{i}") is None
        assert len(router._cache) <= 8
    assert len(router._cache) == 8


def test_cached_result_is_reused() -> None:
    router: Router[str] = Router(cache_size=4)
    router.add("rpc", "/users/:id", "user")
    first = router.match("rpc", "/users/1")
    assert router.match("rpc", "/users/1") is first


def test_cached_miss_is_reused() -> None:
    router: Router[str] = Router(cache_size=4)
    router.add("rpc", "/users/:id", "user")
    assert router.match("rpc", "/nope") is None
    assert router._cache == {("rpc", "/nope"): None}
    assert router.match("rpc", "/nope") is None


def test_cache_size_zero_caches_nothing() -> None:
    router: Router[str] = Router(cache_size=0)
    router.add("rpc", "/users/:id", "user")
    assert resolve(router, "/users/1") == ("user", {"id": "1"})
    assert resolve(router, "/users/1") == ("user", {"id": "1"})
    assert router._cache == {}


def test_route_added_after_a_cached_match_is_seen() -> None:
    router: Router[str] = Router()
    router.add("rpc", "/users/:id", "user")
    assert resolve(router, "/users/me") == ("user", {"id": "me"})
    assert router.match("rpc", "/teams/1") is None
    router.add("rpc", "/users/me", "me")
    router.add("rpc", "/teams/:id", "team")
    assert resolve(router, "/users/me") == ("me", {})
    assert resolve(router, "/teams/1") == ("team", {"id": "1"})


def test_static_routes_are_not_cached() -> None:
    router = router_with("/a")
    assert resolve(router, "/a") == ("/a", {})
    assert router._cache == {}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("users", "must start with '/'"),
        ("", "must start with '/'"),
        ("/a\\", "lone backslash"),
        (r"/a/:id(\d+", "unbalanced"),
        (r"/a/:id((\d+)", "unbalanced"),
        ("/a/:id([)", "bad regex"),
        ("/a/:id(*)", "bad regex"),
        ("/a/:x/:x", "repeated"),
        ("/a/:x-:x", "repeated"),
        ("/a/:__x", "reserved"),
        ("/a/:x?/b", "optional parameter must end"),
        ("/a/:x?:y", "optional parameter must end"),
        ("/a-:x?", "whole last segment"),
        ("/*/*", "only one wildcard"),
        ("/a/:", "parameter name"),
        ("/a/:/b", "parameter name"),
        ("/a/:1", "parameter name"),
    ],
)
def test_malformed_pattern_raises_routing_error(pattern: str, message: str) -> None:
    router: Router[str] = Router()
    with pytest.raises(RoutingError, match=message):
        router.add("rpc", pattern, "h")
    assert list(router.routes()) == []


def test_bad_regex_error_chains_the_cause() -> None:
    with pytest.raises(RoutingError) as info:
        Router[str]().add("rpc", "/a/:id([)", "h")
    assert info.value.__cause__ is not None


def test_duplicate_route_raises_routing_error() -> None:
    router = router_with("/a/:id")
    with pytest.raises(RoutingError, match="duplicate route: rpc /a/:id"):
        router.add("rpc", "/a/:id", "again")
    assert resolve(router, "/a/1") == ("/a/:id", {"id": "1"})


def test_empty_event_raises_routing_error() -> None:
    with pytest.raises(RoutingError, match="event"):
        Router[str]().add("", "/a", "h")


def test_routing_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Router[str]().add("rpc", "nope", "h")


# -- group prefixes and route metadata ------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "pattern", "joined"),
    [
        ("/admin", "/stats", "/admin/stats"),
        ("/admin/", "/stats", "/admin/stats"),
        ("/admin///", "/stats/", "/admin/stats/"),
        ("/", "/stats", "/stats"),
        ("/admin", "/", "/admin"),
        ("/", "/", "/"),
        ("/users/:id", "/posts", "/users/:id/posts"),
    ],
)
def test_join_pattern(prefix: str, pattern: str, joined: str) -> None:
    assert join_pattern(prefix, pattern) == joined


@pytest.mark.parametrize(("prefix", "pattern"), [("admin", "/x"), ("/admin", "x"), ("", "/")])
def test_join_pattern_refuses_parts_without_leading_slash(prefix: str, pattern: str) -> None:
    with pytest.raises(RoutingError, match="start with '/'"):
        join_pattern(prefix, pattern)


def test_a_route_declares_nothing_by_default_and_is_frozen() -> None:
    def handler() -> None:
        return None

    route = Route("rpc", "/x", handler)
    assert (route.guards, route.data, route.reply, dict(route.params), route.summary) == (
        (),
        None,
        None,
        {},
        None,
    )
    with pytest.raises(AttributeError):
        route.event = "other"  # type: ignore[misc]
    assert route != Route("rpc", "/x", handler)  # compared by identity: one per registration


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("/echo", ()),
        ("/teams/:team/channels/:channel", ("team", "channel")),
        ("/:from-:to", ("from", "to")),
        ("/n/:id(\\d+)", ("id",)),
        ("/vars/:key?", ("key",)),
        ("/static/*", ("*",)),
        ("/time\\:now", ()),
    ],
)
def test_param_names_in_pattern_order(pattern: str, names: tuple[str, ...]) -> None:
    assert param_names(pattern) == names


def test_param_names_of_a_bad_pattern_raise() -> None:
    with pytest.raises(RoutingError):
        param_names("no-slash")

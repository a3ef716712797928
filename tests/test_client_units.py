"""The client's pure parts: backoff delays, push listeners, RPC bookkeeping, push streams."""

from __future__ import annotations

import ast
import gc
import random
import sys
from pathlib import Path
from typing import Any

import pytest

import wsevents.client
from wsevents.client import Push, WsClientError
from wsevents.client._backoff import Backoff
from wsevents.client._client import PushStream
from wsevents.client._listeners import Listeners
from wsevents.client._recovery import Recovery, reply_position, with_since
from wsevents.client._rpc import Reply, RpcTracker, build_message, parse_server_message

# -- _backoff ----------------------------------------------------------------------------


def top() -> float:
    """A random source at the top of its range: delays equal their ceilings."""
    return 1.0


def test_exponential_ceilings_double_up_to_max_delay() -> None:
    backoff = Backoff(base_delay=1.0, max_delay=30.0, rand=top)
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_linear_ceilings_grow_by_base_up_to_max_delay() -> None:
    backoff = Backoff(base_delay=0.5, max_delay=2.0, strategy="linear", rand=top)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_full_jitter_draws_across_the_whole_range_below_the_ceiling() -> None:
    rng = random.Random(20240601)
    backoff = Backoff(base_delay=1.0, max_delay=8.0, rand=rng.random)
    for attempt in range(6):
        ceiling = backoff.ceiling(attempt)
        draws = []
        for _ in range(200):
            backoff._attempt = attempt
            delay = backoff.next_delay()
            assert delay is not None
            draws.append(delay)
        assert all(0.0 <= d <= ceiling for d in draws)
        # Full jitter, not "ceiling/2 + jitter": both ends of [0, ceiling] are reached.
        assert min(draws) < 0.1 * ceiling
        assert max(draws) > 0.9 * ceiling


def test_jitter_of_zero_gives_zero_delay() -> None:
    backoff = Backoff(base_delay=5.0, rand=lambda: 0.0)
    assert backoff.next_delay() == 0.0


def test_ceiling_never_overflows_after_many_attempts() -> None:
    backoff = Backoff(base_delay=3.0, max_delay=45.0)
    assert backoff.ceiling(10_000) == 45.0
    assert Backoff(base_delay=3.0, max_delay=45.0, strategy="linear").ceiling(10_000) == 45.0


def test_max_retries_ends_the_delays_and_reset_starts_again() -> None:
    backoff = Backoff(base_delay=1.0, max_retries=3, rand=top)
    assert [backoff.next_delay() for _ in range(3)] == [1, 2, 4]
    assert backoff.attempt == 3
    assert backoff.exhausted
    assert backoff.next_delay() is None
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 1


def test_unlimited_retries_never_run_out() -> None:
    backoff = Backoff(base_delay=0.0, max_delay=0.0, max_retries=None)
    assert all(backoff.next_delay() == 0.0 for _ in range(1000))
    assert not backoff.exhausted


def test_zero_max_retries_means_no_attempt() -> None:
    assert Backoff(max_retries=0).next_delay() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay": -1.0},
        {"base_delay": 2.0, "max_delay": 1.0},
        {"max_retries": -1},
        {"strategy": "fibonacci"},
    ],
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# -- _listeners --------------------------------------------------------------------------


def test_exact_pattern_matches_only_that_event_and_path() -> None:
    listeners: Listeners[str] = Listeners()
    listeners.add("message", "/chat/a", "h")
    assert listeners.match("message", "/chat/a") == ["h"]
    assert listeners.match("message", "/chat/ab") == []
    assert listeners.match("message", "/chat") == []
    assert listeners.match("other", "/chat/a") == []


def test_star_pattern_matches_by_prefix() -> None:
    listeners: Listeners[str] = Listeners()
    listeners.add("message", "/chat/*", "chat")
    listeners.add("message", "*", "all")
    assert listeners.match("message", "/chat/a") == ["chat", "all"]
    assert listeners.match("message", "/chat/a/b") == ["chat", "all"]
    assert listeners.match("message", "/chat/") == ["chat", "all"]
    assert listeners.match("message", "/chatter") == ["all"]
    assert listeners.match("message", "/") == ["all"]
    assert listeners.match("system", "/chat/a") == []


def test_exact_handlers_come_before_prefix_handlers_each_in_registration_order() -> None:
    listeners: Listeners[str] = Listeners()
    listeners.add("e", "/a/*", "prefix1")
    listeners.add("e", "/a/b", "exact1")
    listeners.add("e", "*", "prefix2")
    listeners.add("e", "/a/b", "exact2")
    assert listeners.match("e", "/a/b") == ["exact1", "exact2", "prefix1", "prefix2"]


def test_off_removes_only_its_own_registration_and_is_idempotent() -> None:
    listeners: Listeners[str] = Listeners()
    off_first = listeners.add("e", "/p", "same")
    listeners.add("e", "/p", "same")
    off_prefix = listeners.add("e", "/*", "same")
    listeners.add("e", "/*", "same")
    assert len(listeners) == 4
    off_first()
    off_first()
    off_prefix()
    off_prefix()
    assert listeners.match("e", "/p") == ["same", "same"]
    assert len(listeners) == 2


def test_removing_the_last_exact_handler_forgets_the_key() -> None:
    listeners: Listeners[str] = Listeners()
    off = listeners.add("e", "/p", "h")
    off()
    assert len(listeners) == 0
    assert listeners._exact == {}


def test_clear_removes_every_handler() -> None:
    listeners: Listeners[str] = Listeners()
    listeners.add("e", "/p", "h")
    listeners.add("e", "/*", "h")
    listeners.clear()
    assert listeners.match("e", "/p") == []
    assert len(listeners) == 0


def test_match_returns_a_copy_safe_to_change_while_dispatching() -> None:
    listeners: Listeners[str] = Listeners()
    off = listeners.add("e", "/p", "h")
    found = listeners.match("e", "/p")
    off()
    assert found == ["h"]


# -- _rpc --------------------------------------------------------------------------------


class FakeCall:
    """A pending call recording how it was settled (the tracker needs no event loop)."""

    def __init__(self) -> None:
        self.result: Any = None
        self.exception: BaseException | None = None
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: Any) -> None:
        self.result, self.settled = result, True

    def set_exception(self, exception: BaseException) -> None:
        self.exception, self.settled = exception, True


def test_ids_start_at_one_and_increase() -> None:
    tracker = RpcTracker()
    assert [tracker.next_id() for _ in range(4)] == [1, 2, 3, 4]
    assert RpcTracker().next_id() == 1  # per client


def test_build_message_leaves_out_absent_data_and_id() -> None:
    assert build_message("rpc", "/a") == {"event": "rpc", "path": "/a"}
    assert build_message("rpc", "/a", {"x": 1}, 7) == {
        "event": "rpc",
        "path": "/a",
        "data": {"x": 1},
        "id": 7,
    }
    assert build_message("rpc", "/a", 0, None) == {"event": "rpc", "path": "/a", "data": 0}


def test_reply_with_data_settles_the_call() -> None:
    tracker = RpcTracker()
    call = FakeCall()
    tracker.track(tracker.next_id(), call)
    assert tracker.resolve(Reply(1, {"ok": True}))
    assert call.result == {"ok": True}
    assert len(tracker) == 0


def test_error_reply_fails_the_call_with_its_code_and_message() -> None:
    tracker = RpcTracker()
    call = FakeCall()
    tracker.track(tracker.next_id(), call)
    reply = parse_server_message({"id": 1, "error": {"code": 403, "message": "private"}})
    assert isinstance(reply, Reply)
    assert tracker.resolve(reply)
    assert isinstance(call.exception, WsClientError)
    assert (call.exception.code, call.exception.message) == (403, "private")


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ([{"path": ["a", 0], "message": "bad"}], [{"path": ["a", 0], "message": "bad"}]),
        ([], []),
        (None, None),
        ("not a list", None),
        ([1, 2], None),
    ],
)
def test_error_reply_details_reach_the_error(details: Any, expected: Any) -> None:
    error: dict[str, Any] = {"code": 400, "message": "Invalid data"}
    if details is not None:
        error["details"] = details
    reply = parse_server_message({"id": 1, "error": error})
    assert isinstance(reply, Reply)
    assert reply.error is not None
    assert reply.error.details == expected
    assert (reply.error.code, reply.error.message) == (400, "Invalid data")


def test_reply_nobody_waits_for_is_dropped() -> None:
    tracker = RpcTracker()
    call = FakeCall()
    tracker.track(1, call)
    tracker.discard(1)
    assert not tracker.resolve(Reply(1, "late"))
    assert not tracker.resolve(Reply(99, "unknown"))
    assert not call.settled


def test_reply_ids_match_as_ints_also_when_a_proxy_made_them_strings() -> None:
    tracker = RpcTracker()
    call = FakeCall()
    tracker.track(5, call)
    assert not tracker.resolve(Reply(True, "bool is not an id"))
    assert not tracker.resolve(Reply("x5", "not digits"))
    assert tracker.resolve(Reply("5", "ok"))
    assert call.result == "ok"


def test_fail_all_fails_every_pending_call_once() -> None:
    tracker = RpcTracker()
    calls = [FakeCall() for _ in range(3)]
    for call in calls:
        tracker.track(tracker.next_id(), call)
    calls[0].set_result("already done")
    assert tracker.fail_all(503, "Connection lost") == 2
    assert calls[0].result == "already done"
    for call in calls[1:]:
        assert isinstance(call.exception, WsClientError)
        assert (call.exception.code, call.exception.message) == (503, "Connection lost")
    assert len(tracker) == 0
    assert tracker.fail_all(503, "again") == 0


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        ({"id": 1, "error": {"code": 418, "message": "teapot"}}, 418, "teapot"),
        ({"id": 1, "error": {"message": "no code"}}, 500, "no code"),
        ({"id": 1, "error": {"code": True, "message": "bool"}}, 500, "bool"),
        ({"id": 1, "error": {"code": 404}}, 404, "Not found"),
        ({"id": 1, "error": "boom"}, 500, "Internal Error"),
    ],
)
def test_malformed_error_replies_still_fail_the_call(frame: Any, code: int, message: str) -> None:
    reply = parse_server_message(frame)
    assert isinstance(reply, Reply)
    assert reply.error is not None
    assert (reply.error.code, reply.error.message) == (code, message)


def test_push_frames_become_push_objects() -> None:
    assert parse_server_message(
        {"event": "message", "path": "/chat/a", "params": {"room": "a"}, "data": [1]}
    ) == Push("message", "/chat/a", {"room": "a"}, [1])
    assert parse_server_message({"event": "e", "path": "/p"}) == Push("e", "/p", {}, None)
    assert parse_server_message({"event": "e", "path": "/p", "params": [1]}) == Push("e", "/p")
    # A null id is no id (Wooks' client reads it the same way).
    assert parse_server_message({"id": None, "event": "e", "path": "/p"}) == Push("e", "/p")


@pytest.mark.parametrize(
    "frame",
    [[1, 2], "text", 3, None, {"event": "e"}, {"path": "/p"}, {"event": 1, "path": "/p"}, {}],
)
def test_frames_that_are_neither_reply_nor_push_are_dropped(frame: Any) -> None:
    assert parse_server_message(frame) is None


# -- PushStream (buffering; its delivery over a socket is in test_client_functional) -------


async def test_push_stream_keeps_the_newest_pushes_and_counts_dropped() -> None:
    listeners: Listeners[Any] = Listeners()
    stream = PushStream(listeners, "e", "/*", max_queue=2)
    for i in range(5):
        for handler in listeners.match("e", f"/{i}"):
            handler(Push("e", f"/{i}"))
    assert stream.dropped == 3
    stream._end()
    assert [push.path async for push in stream] == ["/3", "/4"]


async def test_push_stream_unregisters_when_closed_or_collected() -> None:
    listeners: Listeners[Any] = Listeners()
    async with PushStream(listeners, "e", "/p", max_queue=1):
        assert len(listeners) == 1
    assert len(listeners) == 0
    PushStream(listeners, "e", "/p", max_queue=1)  # abandoned at once
    gc.collect()
    assert len(listeners) == 0


def test_push_stream_needs_room_for_one_push() -> None:
    with pytest.raises(ValueError):
        PushStream(Listeners(), "e", "/p", max_queue=0)


# -- layering ------------------------------------------------------------------------------


def test_client_imports_only_the_core_and_aiohttp() -> None:
    # _aio: the shared stdlib-only hook and task helpers.
    allowed_package = {"wsevents.exceptions", "wsevents.protocol", "wsevents._aio"}
    allowed_third_party = {"aiohttp"}
    for source in Path(wsevents.client.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert f"wsevents.{node.module}" in allowed_package, (source.name, node.module)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top_name = node.module.split(".")[0]
                assert top_name != "wsevents", (source.name, node.module)
                assert top_name in allowed_third_party or _is_stdlib(top_name), node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top_name = alias.name.split(".")[0]
                    assert top_name in allowed_third_party or _is_stdlib(top_name), alias.name


def _is_stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(0.25, 0.25), (3, 3.0), (None, None), ("soon", None), (True, None)],
)
def test_error_reply_retry_after_reaches_the_error(retry_after: Any, expected: Any) -> None:
    error: dict[str, Any] = {"code": 429, "message": "Too Many Requests"}
    if retry_after is not None:
        error["retry_after"] = retry_after
    reply = parse_server_message({"id": 1, "error": error})
    assert isinstance(reply, Reply)
    assert reply.error is not None
    assert reply.error.retry_after == expected
    assert reply.error.code == 429


# -- _recovery: history rooms across reconnects ---------------------------------------------


def feed(offset: int | None, path: str = "/feed/a") -> Push:
    return Push("message", path, {}, f"m{offset}", offset)


def offsets(pushes: list[Push]) -> list[int | None]:
    return [p.offset for p in pushes]


def followed(reply_offset: int = 3, epoch: str = "e1") -> Recovery:
    recovery = Recovery()
    assert recovery.begin("/feed/a") is True
    recovery.subscribed(
        "/feed/a", None, {"subscribed": True, "offset": reply_offset, "epoch": epoch}
    )
    return recovery


def test_push_frames_carry_their_offset_when_it_is_a_valid_int() -> None:
    assert parse_server_message({"event": "e", "path": "/p", "offset": 7}) == Push(
        "e", "/p", {}, None, 7
    )
    for bad in (-1, "7", 7.0, True, None):
        push = parse_server_message({"event": "e", "path": "/p", "offset": bad})
        assert isinstance(push, Push) and push.offset is None, bad


def test_build_message_carries_idem_only_when_given() -> None:
    assert build_message("rpc", "/p", None, 1, "k") == {
        "event": "rpc",
        "path": "/p",
        "id": 1,
        "idem": "k",
    }
    assert "idem" not in build_message("rpc", "/p", None, 1)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"offset": 0, "epoch": "e"}, (0, "e")),
        ({"offset": 5, "epoch": "e", "recovered": True}, (5, "e")),
        ({"offset": -1, "epoch": "e"}, None),
        ({"offset": True, "epoch": "e"}, None),
        ({"offset": 1, "epoch": ""}, None),
        ({"offset": 1}, None),
        ({"subscribed": True}, None),
        ("text", None),
        (None, None),
    ],
)
def test_reply_position_needs_an_int_offset_and_an_epoch(reply: Any, expected: Any) -> None:
    assert reply_position(reply) == expected


def test_with_since_keeps_the_subscribe_data() -> None:
    since = {"offset": 3, "epoch": "e"}
    assert with_since(None, since) == {"since": since}
    assert with_since({"a": 1, "since": {"offset": 0, "epoch": "old"}}, since) == {
        "a": 1,
        "since": since,
    }


def test_a_subscribe_reply_with_a_position_is_followed_and_others_are_not() -> None:
    recovery = followed(3)
    assert recovery.positions() == {"/feed/a": (3, "e1")}
    recovery.begin("/chat/a")
    recovery.subscribed("/chat/a", None, {"subscribed": True})
    recovery.begin("/feed/text")
    recovery.subscribed("/feed/text", "not a mapping", {"offset": 1, "epoch": "e"})
    assert recovery.positions() == {"/feed/a": (3, "e1")}
    assert recovery.since("/chat/a") is None and recovery.since("/feed/text") is None
    assert recovery.since("/feed/a") == {"offset": 3, "epoch": "e1"}


def test_pushes_before_the_first_reply_count_for_the_position() -> None:
    recovery = Recovery()
    recovery.begin("/feed/a")
    assert offsets(recovery.push(feed(4))) == [4]  # handed over: nothing to compare with
    recovery.subscribed("/feed/a", {}, {"offset": 3, "epoch": "e1"})
    assert recovery.positions() == {"/feed/a": (4, "e1")}


def test_live_pushes_move_the_position_and_pass_through_untracked_paths() -> None:
    recovery = followed(3)
    assert offsets(recovery.push(feed(4))) == [4]
    assert offsets(recovery.push(feed(5))) == [5]
    assert offsets(recovery.push(feed(None))) == [None]  # no offset: untouched
    assert offsets(recovery.push(feed(1, "/other"))) == [1]
    assert recovery.positions() == {"/feed/a": (5, "e1")}


def test_a_live_offset_going_back_is_a_restarted_stream_not_a_duplicate() -> None:
    recovery = followed(500)
    assert offsets(recovery.push(feed(1))) == [1]
    assert recovery.positions() == {"/feed/a": (1, "e1")}


def test_a_recovery_hands_over_held_pushes_sorted_once_and_after_the_position() -> None:
    recovery = followed(3)
    recovery.hold()
    assert recovery.holding("/feed/a")
    # A resumed connection: live pushes first, then the replay, with repeats.
    for offset in (7, 8, 2, 3, 4, 5, 5, 6, 7):
        assert recovery.push(feed(offset)) == []
    assert offsets(recovery.push(feed(None))) == [None]  # no offset: never held
    out, failed = recovery.recovered("/feed/a", {"offset": 8, "epoch": "e1", "recovered": True})
    assert (offsets(out), failed) == ([4, 5, 6, 7, 8], False)
    assert [p.data for p in out] == ["m4", "m5", "m6", "m7", "m8"]
    assert not recovery.holding("/feed/a")
    assert recovery.positions() == {"/feed/a": (8, "e1")}
    assert offsets(recovery.push(feed(9))) == [9]


def test_a_failed_recovery_hands_over_every_held_push_and_takes_the_new_position() -> None:
    recovery = followed(300)
    recovery.hold()
    for offset in (2, 1, 2):  # a new epoch: its offsets start again
        recovery.push(feed(offset))
    out, failed = recovery.recovered("/feed/a", {"offset": 2, "epoch": "e2", "recovered": False})
    assert (offsets(out), failed) == ([1, 2], True)
    assert recovery.positions() == {"/feed/a": (2, "e2")}
    recovery.hold()
    out, failed = recovery.recovered("/feed/a", {"offset": 2, "epoch": "e2"})  # no "recovered"
    assert (out, failed) == ([], True)


def test_a_recovery_reply_without_a_position_stops_following() -> None:
    recovery = followed(3)
    recovery.hold()
    recovery.push(feed(4))
    out, failed = recovery.recovered("/feed/a", {"subscribed": True, "recovered": True})
    assert (offsets(out), failed) == ([4], False)
    assert recovery.positions() == {}
    assert recovery.recovered("/feed/a", {}) == ([], False)  # not followed: nothing


def test_release_after_an_error_hands_over_what_is_after_the_position() -> None:
    recovery = followed(3)
    recovery.hold()
    recovery.hold()  # a second socket before the reply: still one hold
    for offset in (5, 3, 4):
        recovery.push(feed(offset))
    assert offsets(recovery.release_all()) == [4, 5]
    assert recovery.release("/feed/a") == []
    assert recovery.positions() == {"/feed/a": (5, "e1")}


def test_forget_and_clear_drop_positions_and_held_pushes() -> None:
    recovery = followed(3)
    recovery.hold()
    recovery.push(feed(4))
    recovery.forget("/feed/a")
    assert recovery.positions() == {} and recovery.release_all() == []
    recovery = followed(3)
    recovery.clear()
    assert recovery.positions() == {}
    assert recovery.begin("/feed/a") is True and recovery.begin("/feed/a") is False

"""Token buckets (sans-I/O, a hand-driven clock)."""

from __future__ import annotations

import logging

import pytest

from wsevents import RateLimit
from wsevents.ratelimit import Limiter


def test_a_bucket_starts_full_and_refuses_the_call_after_the_burst() -> None:
    limiter = Limiter(RateLimit(5, per=1.0, burst=5))
    assert [limiter.take("a", 10.0) for _ in range(5)] == [0.0] * 5
    assert limiter.take("a", 10.0) == pytest.approx(0.2)
    assert limiter.rejected == 1


def test_retry_after_is_the_time_until_a_token_is_free() -> None:
    limiter = Limiter(RateLimit(2, per=1.0, burst=1))
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.1) == pytest.approx(0.4)
    # After waiting the time given, the call goes through.
    assert limiter.take("a", 0.5) == 0.0


def test_tokens_refill_over_time_up_to_the_burst() -> None:
    limiter = Limiter(RateLimit(10, per=1.0, burst=3))
    for _ in range(3):
        assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) > 0
    # A long quiet time refills to the burst, not beyond.
    assert [limiter.take("a", 100.0) for _ in range(3)] == [0.0] * 3
    assert limiter.take("a", 100.0) > 0


def test_keys_have_buckets_of_their_own() -> None:
    limiter = Limiter(RateLimit(1, per=60.0))
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) > 0
    assert limiter.take("b", 0.0) == 0.0


def test_burst_defaults_to_the_rate_and_at_least_one() -> None:
    assert RateLimit(5).capacity == 5.0
    assert RateLimit(0.5, per=1.0).capacity == 1.0
    assert RateLimit(5, burst=2).capacity == 2.0


def test_dry_run_counts_and_logs_but_never_refuses(caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter(RateLimit(1, per=60.0, dry_run=True))
    with caplog.at_level(logging.INFO, logger="wsevents.ratelimit"):
        assert [limiter.take("a", 0.0) for _ in range(4)] == [0.0] * 4
    assert limiter.rejected == 3
    # Logged at most once a second, whatever the flood.
    assert len([r for r in caplog.records if "dry run" in r.getMessage()]) == 1


def test_full_buckets_are_swept_once_the_table_grows() -> None:
    limiter = Limiter(RateLimit(1, per=1.0))
    for key in range(1024):
        limiter.take(key, 0.0)
    assert len(limiter) == 1024
    # A second later every bucket has refilled: the next new key sweeps them.
    limiter.take("new", 1.0)
    assert len(limiter) == 1


def test_empty_buckets_survive_the_sweep() -> None:
    limiter = Limiter(RateLimit(1, per=60.0))
    for key in range(1024):
        limiter.take(key, 0.0)
    limiter.take("new", 1.0)
    assert len(limiter) == 1025
    assert limiter.take(5, 1.0) > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0}, {"rate": 1, "per": 0}, {"rate": 1, "burst": 0.5}, {"rate": 1, "key": "room"}],
)
def test_bad_declarations_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="RateLimit"):
        RateLimit(**kwargs)  # type: ignore[arg-type]


def test_a_function_key_is_accepted() -> None:
    assert RateLimit(1, key=lambda conn: conn.request).key is not None

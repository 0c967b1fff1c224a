"""usersync.ratelimit: the limits' syntax and the sliding-window limiter (threads, shares, hand-overs)."""

from __future__ import annotations

import threading
import time

import pytest
from usersync.ratelimit import RateLimiter, parse_rate_limit


def test_parse_rate_limit():
    assert parse_rate_limit("2/s, 1200/h") == [(2, 1.0), (1200, 3600.0)]
    assert parse_rate_limit("100/5m") == [(100, 300.0)]
    assert parse_rate_limit(None) == []
    with pytest.raises(ValueError, match="bad rate_limit"):
        parse_rate_limit("fast")


def test_limiter_never_lets_more_than_count_calls_start_within_a_period():
    limiter, starts = RateLimiter([(5, 0.3)]), []

    def caller():
        for _ in range(6):
            slot = limiter.acquire()
            starts.append(time.monotonic())
            time.sleep(0.02)  # the call's latency
            limiter.release(slot)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(starts) == 24
    busiest = max(sum(1 for t in starts if first <= t < first + 0.3) for first in starts)
    assert busiest == 5


def test_a_client_taking_over_waits_for_the_places_its_predecessor_still_holds():
    before = RateLimiter([(3, 0.5), (100, 3600.0)])
    for _ in range(3):
        before.release(before.acquire())
    after = RateLimiter([(3, 0.5), (100, 3600.0)])
    after.continue_from(before.history())
    started = time.monotonic()
    after.release(after.acquire())
    assert time.monotonic() - started >= 0.4  # the predecessor's 3 calls filled the half-second window

    fresh = RateLimiter([(3, 0.5)])
    started = time.monotonic()
    fresh.release(fresh.acquire())
    assert time.monotonic() - started < 0.1


def test_a_divided_limiter_keeps_to_its_share():
    limiter = RateLimiter([(10, 1.0), (1200, 3600.0)])
    limiter.divide(4)
    assert limiter.limits == [(2, 1.0), (300, 3600.0)]
    limiter.divide(1000)
    assert limiter.limits == [(1, 1.0), (1, 3600.0)]

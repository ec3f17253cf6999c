"""The log rate limit: at most K lines per key per interval, then a count of what was left out."""

from __future__ import annotations

import pytest

from switch.ratelimit import Allowance, LogRateLimiter

# (key, seconds, logged, suppressed reported) with 2 lines per key per 10 s window.
FLOOD = [
    ("unknown_ca", 0.0, True, 0),
    ("unknown_ca", 1.0, True, 0),
    ("unknown_ca", 2.0, False, 0),
    ("unknown_ca", 3.0, False, 0),
    ("protocol", 3.0, True, 0),  # another key has a window of its own
    ("unknown_ca", 9.999, False, 0),
    ("unknown_ca", 10.0, True, 3),  # a new window: the three left out are reported once
    ("unknown_ca", 11.0, True, 0),
    ("unknown_ca", 12.0, False, 0),
    ("protocol", 12.0, True, 0),  # its window opened at 3 s: still its second line
    ("protocol", 12.5, False, 0),
    ("unknown_ca", 45.0, True, 1),  # windows later: the count waited for the next line
    ("protocol", 45.0, True, 1),
    ("unknown_ca", 45.5, True, 0),
]


def test_a_flood_is_cut_to_k_lines_per_window_and_the_rest_counted() -> None:
    limiter = LogRateLimiter(lines_max=2, interval_s=10)
    got = [limiter.admit(key, now_s) for key, now_s, _, _ in FLOOD]
    assert got == [Allowance(logged, suppressed) for _, _, logged, suppressed in FLOOD]


@pytest.mark.parametrize(("lines_max", "interval_s"), [(0, 1.0), (1, 0.0)])
def test_limits_are_positive(lines_max: int, interval_s: float) -> None:
    with pytest.raises(AssertionError):
        LogRateLimiter(lines_max, interval_s)

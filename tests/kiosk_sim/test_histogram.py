"""The latency histogram against exact percentiles of the same samples."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from kiosk_sim.histogram import Histogram


def exact_percentile(values: list[int], percentile: float) -> int:
    ordered = sorted(values)
    rank = max(1, round(len(ordered) * percentile / 100))
    return ordered[rank - 1]


@given(
    st.lists(st.integers(0, 10_000_000), min_size=1, max_size=500),
    st.sampled_from([50, 90, 99, 99.9, 100]),
)
def test_percentiles_are_within_the_precision(values: list[int], percentile: float) -> None:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    exact = exact_percentile(values, percentile)
    assert (
        exact
        <= histogram.percentile_us(percentile)
        <= max(exact, math.floor(exact * (1 + 1 / 128)))
    )
    assert histogram.max_us == max(values)
    assert histogram.total == len(values)


def test_small_values_are_exact_and_empty_is_zero() -> None:
    histogram = Histogram()
    assert histogram.percentile_us(99) == 0
    for value in (1, 2, 3, 100):
        histogram.record(value)
    assert [histogram.percentile_us(p) for p in (25, 50, 75, 100)] == [1, 2, 3, 100]


def test_merge_equals_recording_everything_in_one() -> None:
    one, two, both = Histogram(), Histogram(), Histogram()
    for value in range(0, 50_000, 7):
        (one if value % 2 else two).record(value)
        both.record(value)
    one.merge(two)
    assert one == both

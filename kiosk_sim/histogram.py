"""A latency histogram in the manner of HdrHistogram: log-linear buckets, bounded relative error.

Values are whole microseconds. Each power-of-two range is split into `2**precision_bits`
linear sub-buckets, so any recorded value is reported within 1/2**precision_bits of itself
(under 0.8% at the default 7 bits), at a fixed memory cost whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_VALUE_US = 3_600_000_000  # an hour: anything longer is clamped


@dataclass
class Histogram:
    precision_bits: int = 7
    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_us: int = 0
    min_us: int = MAX_VALUE_US

    def _index(self, value_us: int) -> int:
        sub = 1 << self.precision_bits
        if value_us < sub:
            return value_us
        shift = value_us.bit_length() - self.precision_bits - 1
        return (shift + 1) * sub + (value_us >> shift) - sub

    def _lowest(self, index: int) -> int:
        sub = 1 << self.precision_bits
        if index < sub:
            return index
        shift = index // sub - 1
        return ((index % sub) + sub) << shift

    def _highest(self, index: int) -> int:
        return self._lowest(index + 1) - 1

    def record(self, value_us: int) -> None:
        # Once or twice per request (the run's histogram and its second's): comparisons instead
        # of min()/max() calls make it more than twice as fast.
        value = value_us if 0 <= value_us <= MAX_VALUE_US else min(max(value_us, 0), MAX_VALUE_US)
        index = self._index(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.total += 1
        if value > self.max_us:  # noqa: PLR1730 - see above
            self.max_us = value
        if value < self.min_us:  # noqa: PLR1730
            self.min_us = value

    def merge(self, other: Histogram) -> None:
        assert other.precision_bits == self.precision_bits
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)
        self.min_us = min(self.min_us, other.min_us)

    def percentile_us(self, percentile: float) -> int:
        """The value at or below which `percentile`% of samples fall (the bucket's top)."""
        assert 0 <= percentile <= 100
        if self.total == 0:
            return 0
        rank = max(1, round(self.total * percentile / 100))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(self._highest(index), self.max_us)
        return self.max_us

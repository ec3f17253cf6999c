"""Terminal activity as the ledger keeps it: session events, traffic per time bucket, the
latency histogram they share, and the switch process that wrote them. Pure: no I/O.

The switch records these (never card data: a terminal id, times, counts and response codes);
the fleet view, the alert rules and the SLA report read them back (ledger.operations).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

# Financial latency histogram bounds. Finer than the /metrics histogram's: the SLA report quotes
# p50 and p99 from them, interpolated within a bucket as Prometheus' histogram_quantile does.
# Stored as counts per bound in ledger.terminal_traffic: never reorder or remove a bound.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000,
    10_000,
)  # fmt: skip
HISTOGRAM_SIZE = len(LATENCY_BOUNDS_MS) + 1
UNAVAILABLE_CODES = frozenset({"91", "96"})
CHIP_SECURITY_CODE = "63"
APPROVED_CODE = "00"


class EventKind(StrEnum):
    CONNECT = "connect"
    SIGN_ON = "sign_on"
    KEY_CHANGE = "key_change"
    SIGN_OFF = "sign_off"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A switch process: `process_id` is unique across hosts and restarts."""

    host: str
    pid: int
    started_at: datetime

    @property
    def process_id(self) -> str:
        return f"{self.host}:{self.pid}:{int(self.started_at.timestamp() * 1000)}"


@dataclass(frozen=True, slots=True)
class TerminalEvent:
    """One session event on one connection of this process. `terminal_id` is None until the
    connection signs on; `detail` holds plain facts (peer address, close reason), never card
    data."""

    kind: EventKind
    occurred_at: datetime
    connection_seq: int
    terminal_id: str | None
    detail: Mapping[str, str]


def latency_bucket(latency_ms: float) -> int:
    """The histogram slot of a latency: the first bound at or above it, else the last slot."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


@dataclass(frozen=True, slots=True)
class TrafficCounts:
    """A terminal's answered requests over some period: all of them, the financial ones, those
    approved, financial responses by code, their latency histogram, and the financial ones that
    carried chip data (F55)."""

    requests: int
    financial: int
    approved: int
    response_codes: Mapping[str, int]
    latency_counts: Sequence[int]
    chip: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.approved <= self.financial <= self.requests, self
        assert 0 <= self.chip <= self.financial, self
        assert len(self.latency_counts) == HISTOGRAM_SIZE, len(self.latency_counts)

    @property
    def unavailable(self) -> int:
        """Financial requests answered 91 or 96: the switch or issuer could not serve them."""
        return sum(self.response_codes.get(code, 0) for code in UNAVAILABLE_CODES)

    @property
    def declined(self) -> int:
        """Financial requests declined on their merits (91 and 96 are not the card's fault)."""
        return self.financial - self.approved - self.unavailable

    @property
    def chip_refused(self) -> int:
        """Chip requests refused for their card's security: an ARQC that does not verify (or
        not for this request), a replayed ATC, a wrong PSN. Only these are answered 63."""
        return self.response_codes.get(CHIP_SECURITY_CODE, 0)

    @property
    def approval_rate(self) -> float | None:
        return self.approved / self.financial if self.financial else None

    def latency_ms(self, quantile: float) -> float | None:
        return latency_quantile_ms(self.latency_counts, quantile)


EMPTY_HISTOGRAM: tuple[int, ...] = (0,) * HISTOGRAM_SIZE
NO_TRAFFIC = TrafficCounts(0, 0, 0, {}, EMPTY_HISTOGRAM)


def add_traffic(counts: Sequence[TrafficCounts]) -> TrafficCounts:
    codes: dict[str, int] = {}
    for each in counts:
        for code, count in each.response_codes.items():
            codes[code] = codes.get(code, 0) + count
    return TrafficCounts(
        requests=sum(each.requests for each in counts),
        financial=sum(each.financial for each in counts),
        approved=sum(each.approved for each in counts),
        response_codes=codes,
        latency_counts=tuple(
            sum(slot) for slot in zip(*(each.latency_counts for each in counts), strict=True)
        )
        if counts
        else EMPTY_HISTOGRAM,
        chip=sum(each.chip for each in counts),
    )


def latency_quantile_ms(latency_counts: Sequence[int], quantile: float) -> float | None:
    """The quantile of a histogram, interpolated linearly within its bucket (as Prometheus'
    histogram_quantile does; the first bucket starts at 0). Above the last bound it is that
    bound: the histogram knows no more. None without observations."""
    assert 0 < quantile < 1, quantile
    total = sum(latency_counts)
    if total == 0:
        return None
    rank = quantile * total
    below = 0
    for slot, count in enumerate(latency_counts):
        if below + count >= rank and count > 0:
            if slot == len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[slot - 1] if slot else 0
            upper = LATENCY_BOUNDS_MS[slot]
            return lower + (upper - lower) * (rank - below) / count
        below += count
    raise AssertionError("the rank lies within the total")

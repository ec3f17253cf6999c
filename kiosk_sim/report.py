"""A load run's report: what was asked (seed, mix, faults, mode), what came back (sessions,
requests, response codes, errors, latency percentiles), and how it went second by second.

`Report` is the tally the load generator fills in as answers come; `Report.summary()` freezes it
into a `Summary`, the one model that the text, Markdown and JSON formats all render, so they
carry the same facts. Pure: the caller passes every time in, nothing here reads a clock.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from kiosk_sim.cash import Balancing
from kiosk_sim.histogram import Histogram

PERCENTILES: tuple[float, ...] = (50, 90, 99, 99.9)
APPROVED = "00"
# A longer run keeps its last hour second by second; its totals still cover all of it.
SERIES_SECONDS_MAX = 3_600
# 1/16 relative error is plenty to see a stall in a second's p99, at an eighth of the buckets of
# the whole run's histogram (7 bits), so an hour of seconds stays a few megabytes.
SECOND_PRECISION_BITS = 4
# Text and Markdown list this many end-state differences; JSON lists them all.
DIFFERENCES_SHOWN_MAX = 20


def _per_s(count: int, duration_s: float) -> float:
    return count / duration_s if duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class SecondFigures:
    """One second of the run, [second, second + 1) from its start; latency None if nothing was
    answered in it."""

    second: int
    answered: int
    approved: int
    timeouts: int
    errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@dataclass(slots=True)
class SecondTally:
    """One second's counts while the run is in it (mutable: the hot path adds to it)."""

    answered: int = 0
    approved: int = 0
    timeouts: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(SECOND_PRECISION_BITS))

    def figures(self, second: int) -> SecondFigures:
        timed = self.latency.total > 0
        p50_ms, p99_ms = (
            self.latency.percentile_us(percentile) / 1000 if timed else None
            for percentile in (50, 99)
        )
        return SecondFigures(
            second, self.answered, self.approved, self.timeouts, self.errors, p50_ms, p99_ms
        )


class Series:
    """Per-second tallies of the last `seconds_max` seconds: O(1) per sample, and memory bounded
    whatever the run's length. A quiet second holds nothing and reads as zeros."""

    def __init__(self, seconds_max: int = SERIES_SECONDS_MAX) -> None:
        assert seconds_max > 0
        self.seconds_max = seconds_max
        # Seconds in increasing order (samples come in time order), so the first is the oldest.
        self._tallies: dict[int, SecondTally] = {}
        self._newest = -1

    def tally(self, second: int) -> SecondTally:
        tally = self._tallies.get(second)
        if tally is None:
            tally = self._open(second)
        return tally

    def _open(self, second: int) -> SecondTally:
        assert second >= max(self._newest, 0), (
            f"second {second} after {self._newest}: clock went back"
        )
        self._newest = second
        tally = self._tallies[second] = SecondTally()
        while (oldest := next(iter(self._tallies))) <= second - self.seconds_max:
            del self._tallies[oldest]
        return tally

    def figures(self, second: int) -> SecondFigures:
        return self._tallies.get(second, SecondTally()).figures(second)

    def window(self, duration_s: float) -> tuple[int, tuple[SecondFigures, ...]]:
        """Every second of a run of `duration_s` still kept, quiet ones included, after how many
        earlier seconds fell out of the window."""
        last = max(self._newest, math.ceil(duration_s) - 1)
        first = max(0, last - self.seconds_max + 1)
        return first, tuple(self.figures(second) for second in range(first, last + 1))


@dataclass(frozen=True, slots=True)
class Chart:
    """The chart beside a written report: its file name, or why it was skipped."""

    file_name: str | None = None
    skipped_because: str | None = None

    def __post_init__(self) -> None:
        assert (self.file_name is None) != (self.skipped_because is None), "a file or a reason"

    def describe(self) -> str:
        return self.file_name or f"skipped: {self.skipped_because}"


@dataclass
class Report:
    """The run's tally, filled in while it runs (hence not frozen); `summary()` freezes it."""

    seed: int
    terminals: int
    mix: Mapping[str, int]
    faults: Mapping[str, float] = field(default_factory=dict)
    target_rate_per_s: float | None = None
    # Set by `begin`: the wall-clock start, and the run clock's reading then, from which the
    # series counts its seconds.
    started_at: datetime | None = None
    started_s: float = 0.0
    duration_s: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    response_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    # Sessions started, per kind (a session is one or more requests: a partial dispense is a
    # withdrawal and its reversal, a duplicate sends its 0200 twice).
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    idle_echoes: int = 0
    timeouts: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    series: Series = field(default_factory=Series)
    # None until an end-state check has run.
    differences: list[str] | None = None
    # Per account: the ledger's balance minus the model's (only accounts that differ).
    discrepancies: dict[str, int] | None = None
    # Kiosks with cash: partial dispenses (jams, and cassettes their rejects emptied) and notes
    # rejected.
    cash: collections.Counter[str] = field(default_factory=collections.Counter)
    # The 0500s sent at the end of the run and their answers; None when it did not balance.
    balancing: list[Balancing] | None = None
    miscounting: str | None = None  # the kiosk that reports wrong counters on purpose

    def begin(self, *, at_s: float, at: datetime) -> None:
        """The run starts at `at_s` on the run clock, which is `at` on the wall (UTC)."""
        assert self.started_at is None, "a run begins once"
        assert at.utcoffset() is not None, "a wall-clock time with its zone"
        self.started_s, self.started_at = at_s, at

    def end(self, *, at_s: float) -> None:
        self.duration_s = at_s - self.started_s

    def record_answer(self, code: str, *, at_s: float, latency_us: int | None) -> None:
        """An answer with `code` came at `at_s` (run clock); `latency_us` None if not timed."""
        tally = self._second(at_s)
        tally.answered += 1
        self.response_codes[code] += 1
        if code == APPROVED:
            tally.approved += 1
        if latency_us is not None:
            self.latency.record(latency_us)
            tally.latency.record(latency_us)

    def record_timeout(self, *, at_s: float) -> None:
        self._second(at_s).timeouts += 1
        self.timeouts += 1

    def record_error(self, name: str, *, at_s: float, count: int = 1) -> None:
        assert count > 0
        self._second(at_s).errors += count
        self.errors[name] += count

    def _second(self, at_s: float) -> SecondTally:
        assert self.started_at is not None, "begin() before the first sample"
        return self.series.tally(int(at_s - self.started_s))

    @property
    def answered(self) -> int:
        return sum(self.response_codes.values())

    @property
    def approved(self) -> int:
        return self.response_codes[APPROVED]

    @property
    def sessions(self) -> int:
        return sum(self.kinds.values())

    def rate_per_s(self, count: int) -> float:
        return _per_s(count, self.duration_s)

    def latency_ms(self) -> dict[str, float]:
        figures = {f"p{p:g}": self.latency.percentile_us(p) / 1000 for p in PERCENTILES}
        figures["max"] = self.latency.max_us / 1000
        return figures

    def summary(self) -> Summary:
        assert self.started_at is not None, "the run has begun"
        seconds_dropped, seconds = self.series.window(self.duration_s)
        return Summary(
            seed=self.seed,
            terminals=self.terminals,
            mix=tuple((kind, weight) for kind, weight in self.mix.items() if weight),
            faults=tuple((name, chance) for name, chance in self.faults.items() if chance),
            target_rate_per_s=self.target_rate_per_s,
            started_at=self.started_at,
            duration_s=self.duration_s,
            sessions=self.sessions,
            kinds=tuple(sorted(self.kinds.items())),
            answered=self.answered,
            approved=self.approved,
            response_codes=tuple(sorted(self.response_codes.items())),
            idle_echoes=self.idle_echoes,
            timeouts=self.timeouts,
            errors=tuple(sorted(self.errors.items())),
            latency_ms=tuple(self.latency_ms().items()),
            seconds=seconds,
            seconds_dropped=seconds_dropped,
            differences=None if self.differences is None else tuple(self.differences),
            cash=tuple(sorted(self.cash.items())),
            balancing=None if self.balancing is None else tuple(self.balancing),
            miscounting=self.miscounting,
        )

    def to_text(self) -> str:
        return self.summary().text()


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything a report says, frozen: text, Markdown and JSON are renderings of it."""

    seed: int
    terminals: int
    mix: tuple[tuple[str, int], ...]  # weights above 0, in the order given
    faults: tuple[tuple[str, float], ...]  # chances above 0
    target_rate_per_s: float | None
    started_at: datetime
    duration_s: float
    sessions: int
    kinds: tuple[tuple[str, int], ...]
    answered: int
    approved: int
    response_codes: tuple[tuple[str, int], ...]
    idle_echoes: int
    timeouts: int
    errors: tuple[tuple[str, int], ...]
    latency_ms: tuple[tuple[str, float], ...]
    seconds: tuple[SecondFigures, ...]
    seconds_dropped: int
    differences: tuple[str, ...] | None
    cash: tuple[tuple[str, int], ...] = ()
    balancing: tuple[Balancing, ...] | None = None
    miscounting: str | None = None
    chart: Chart | None = None  # set once a chart was drawn (or skipped) beside a written report

    @property
    def mode(self) -> str:
        if self.target_rate_per_s is None:
            return "closed loop"
        return f"open loop at {self.target_rate_per_s:,.1f} sessions/s"

    @property
    def started_at_iso(self) -> str:
        return self.started_at.astimezone(UTC).isoformat(timespec="milliseconds")

    def rate_per_s(self, count: int) -> float:
        return _per_s(count, self.duration_s)

    def rows(self) -> list[tuple[str, str]]:
        """The report as (label, value) rows: text and Markdown both render these, so neither
        can leave a fact out."""
        rows = [
            ("run", f"{self.terminals} terminals, {self.duration_s:.1f} s, {self.mode}"),
            ("answered", self._answered()),
            ("sessions", self._sessions()),
            ("latency", "  ".join(f"{name} {ms:.1f} ms" for name, ms in self.latency_ms)),
            ("codes", "  ".join(f"{code}: {n}" for code, n in self.response_codes) or "-"),
            ("timeouts", self._timeouts_and_errors()),
            ("started", self.started_at_iso),
            ("seed", str(self.seed)),
            # In --mix and --faults syntax, so a run can be repeated from its report.
            ("mix", ",".join(f"{kind}={weight}" for kind, weight in self.mix)),
            ("faults", ",".join(f"{name}={chance:g}" for name, chance in self.faults) or "none"),
            ("seconds", self._seconds()),
        ]
        if self.idle_echoes:
            rows.append(("echoes", f"{self.idle_echoes} (idle kiosks keeping their connection)"))
        if self.chart is not None:
            rows.append(("chart", self.chart.describe()))
        if self.cash:
            rows.append(("cash", ", ".join(f"{name} {n}" for name, n in self.cash)))
        if self.balancing is not None:
            rows.append(("balancing", self._balancing()))
        if self.differences is not None:
            rows.append(("end state", f"{len(self.differences)} differences"))
        return rows

    def _balancing(self) -> str:
        balanced = sum(1 for result in self.balancing or () if result.balanced)
        kiosks = len({result.terminal_id for result in self.balancing or ()})
        sent = len(self.balancing or ())
        line = f"{sent} 0500s from {kiosks} kiosks: {balanced} balanced (00), {sent - balanced} not"
        if self.miscounting is not None:
            line += f"; {self.miscounting} miscounts on purpose"
        return line

    def _imbalances(self) -> list[str]:
        """Each 0500 not balanced, with the fields that differ and the host's figures."""
        return [result.describe() for result in self.balancing or () if not result.balanced]

    def _answered(self) -> str:
        return (
            f"{self.answered} ({self.rate_per_s(self.answered):,.1f}/s), "
            f"approved {self.approved} ({self.rate_per_s(self.approved):,.1f}/s)"
        )

    def _sessions(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.kinds)
        rate = f"{self.sessions} ({self.rate_per_s(self.sessions):,.1f}/s)"
        return f"{rate}: {kinds}" if kinds else rate

    def _timeouts_and_errors(self) -> str:
        errors = f"errors {sum(n for _, n in self.errors)}"
        if self.errors:
            errors += " (" + ", ".join(f"{name} {n}" for name, n in self.errors) + ")"
        return f"{self.timeouts}   {errors}"

    def _seconds(self) -> str:
        """The series in a line: how many seconds had no answer, and the worst second's p99."""
        kept = f"{len(self.seconds)}" + (
            f" (the first {self.seconds_dropped} dropped)" if self.seconds_dropped else ""
        )
        quiet = sum(1 for second in self.seconds if second.answered == 0)
        timed = [second for second in self.seconds if second.latency_p99_ms is not None]
        if not timed:
            return f"{kept}, {quiet} with nothing answered"
        worst = max(timed, key=lambda second: second.latency_p99_ms or 0.0)
        return (
            f"{kept}, {quiet} with nothing answered; worst p99 {worst.latency_p99_ms:,.1f} ms"
            f" in second {worst.second}"
        )

    def _differences_shown(self) -> list[str]:
        shown = list((self.differences or ())[:DIFFERENCES_SHOWN_MAX])
        more = len(self.differences or ()) - len(shown)
        return shown + ([f"... and {more} more (all in the JSON report)"] if more else [])

    def text(self) -> str:
        lines = [f"{label:<9} {value}" for label, value in self.rows()]
        lines += [f"  0510 {imbalance}" for imbalance in self._imbalances()]
        lines += [f"  - {difference}" for difference in self._differences_shown()]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| figure | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in self.rows()]
        imbalances = self._imbalances()
        if imbalances:
            lines += ["", "Not balanced (0510):", "", *(f"- {line}" for line in imbalances)]
        shown = self._differences_shown()
        if shown:
            lines += ["", *(f"- {difference}" for difference in shown)]
        if self.chart is not None and self.chart.file_name is not None:
            image = f"![latency p50/p99 and answers per second]({quote(self.chart.file_name)})"
            lines += ["", image]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "terminals": self.terminals,
            "target_rate_per_s": self.target_rate_per_s,
            "mix": dict(self.mix),
            "faults": dict(self.faults),
            "started_at": self.started_at_iso,
            "duration_s": round(self.duration_s, 3),
            "sessions": self.sessions,
            "sessions_per_s": round(self.rate_per_s(self.sessions), 1),
            "answered": self.answered,
            "answered_per_s": round(self.rate_per_s(self.answered), 1),
            "approved": self.approved,
            "approved_per_s": round(self.rate_per_s(self.approved), 1),
            "latency_ms": {name: round(ms, 3) for name, ms in self.latency_ms},
            "response_codes": dict(self.response_codes),
            "kinds": dict(self.kinds),
            "idle_echoes": self.idle_echoes,
            "timeouts": self.timeouts,
            "errors": dict(self.errors),
            "series": {
                "seconds_dropped": self.seconds_dropped,
                "seconds": [_second_as_dict(second) for second in self.seconds],
            },
            "chart": None
            if self.chart is None
            else {"file_name": self.chart.file_name, "skipped_because": self.chart.skipped_because},
            "cash": dict(self.cash),
            "balancing": None
            if self.balancing is None
            else {
                "miscounting": self.miscounting,
                "results": [_balancing_as_dict(result) for result in self.balancing],
            },
            "end_state_differences": None if self.differences is None else len(self.differences),
            "end_state_details": None if self.differences is None else list(self.differences),
        }

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def _balancing_as_dict(result: Balancing) -> dict[str, object]:
    return {
        "terminal_id": result.terminal_id,
        "business_date": result.business_date_mmdd,
        "code": result.code,
        "differences": [
            {"field": name, "terminal": ours, "host": host}
            for name, ours, host in result.differences
        ],
    }


def _second_as_dict(second: SecondFigures) -> dict[str, object]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "second": second.second,
        "answered": second.answered,
        "approved": second.approved,
        "timeouts": second.timeouts,
        "errors": second.errors,
        "latency_p50_ms": ms(second.latency_p50_ms),
        "latency_p99_ms": ms(second.latency_p99_ms),
    }

"""The SLA report: per terminal and business day, how well the service was delivered.

- availability: the time the terminal was signed on over the scheduled time (the whole business
  day, or the service hours asked for; for today, up to now);
- requests, financial requests and their approval rate;
- financial latency p50 and p99 (from the traffic histograms, interpolated within a bucket);
- financial requests answered 91 and 96;
- alerts raised about the terminal, how many were acknowledged and the mean time to do so.

Signed-on time is replayed from the durable session events: a session runs from a sign-on to
the sign-off or disconnect of the same connection, and ends at the latest when its switch
process stopped or last beat (a killed process writes no disconnect). `fetch_report` reads
through the ledger's functions, so the CLI (as the owner) and the switch (as its role) compute
the same figures; everything else here is pure.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from ledger.activity import NO_TRAFFIC, TrafficCounts
from ledger.migrations import Connection
from ledger.operations import AlertRecord, alerts_raised, traffic_by_day
from ledger.rules import business_day

OPENING_KINDS = frozenset({"sign_on", "key_change"})
CLOSING_KINDS = frozenset({"sign_off", "disconnect"})
# A report covers at most this many business days: its work and its size stay bounded.
DAYS_MAX = 92

Interval = tuple[datetime, datetime]


class ReportError(ValueError):
    """The report's parameters are inconsistent; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class ServiceHours:
    """The daily scheduled window, UTC clock times within the business day: [start, end)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> ServiceHours:
        """'HH:MM-HH:MM'."""
        first, separator, second = text.partition("-")
        try:
            hours = cls(time.fromisoformat(first), time.fromisoformat(second))
        except ValueError:
            hours = None
        if not separator or hours is None or hours.start >= hours.end:
            raise ReportError(f"hours: expected HH:MM-HH:MM with the start first, got {text!r}")
        return hours

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A row of ledger.session_events."""

    terminal_id: str
    kind: str
    occurred_at: datetime
    process_id: str
    connection_seq: int
    process_beat_at: datetime | None
    process_stopped_at: datetime | None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class SlaRow:
    terminal_id: str
    location: str
    status: str
    business_date: date
    scheduled_s: float
    signed_on_s: float
    traffic: TrafficCounts
    alerts_raised: int
    alerts_acknowledged: int
    acknowledge_s_mean: float | None

    @property
    def availability(self) -> float | None:
        return self.signed_on_s / self.scheduled_s if self.scheduled_s > 0 else None

    def as_json(self) -> dict[str, object]:
        traffic = self.traffic
        return {
            "terminal_id": self.terminal_id,
            "location": self.location,
            "status": self.status,
            "business_date": self.business_date.isoformat(),
            "scheduled_s": round(self.scheduled_s, 3),
            "signed_on_s": round(self.signed_on_s, 3),
            "availability": _rounded(self.availability, 5),
            "requests": traffic.requests,
            "financial": traffic.financial,
            "approved": traffic.approved,
            "approval_rate": _rounded(traffic.approval_rate, 5),
            "latency_p50_ms": _rounded(traffic.latency_ms(0.5), 1),
            "latency_p99_ms": _rounded(traffic.latency_ms(0.99), 1),
            "responses_91": traffic.response_codes.get("91", 0),
            "responses_96": traffic.response_codes.get("96", 0),
            "alerts_raised": self.alerts_raised,
            "alerts_acknowledged": self.alerts_acknowledged,
            "acknowledge_s_mean": _rounded(self.acknowledge_s_mean, 1),
        }


# The report's columns, in order: those of a row's JSON.
COLUMNS = tuple(SlaRow("", "", "", date.min, 0, 0, NO_TRAFFIC, 0, 0, None).as_json())


@dataclass(frozen=True, slots=True)
class SlaReport:
    first_day: date
    last_day: date
    cutover: time
    hours: ServiceHours | None
    generated_at: datetime
    rows: Sequence[SlaRow]

    def as_json(self) -> dict[str, object]:
        return {
            "from": self.first_day.isoformat(),
            "to": self.last_day.isoformat(),
            "business_day_cutover": f"{self.cutover:%H:%M}",
            "service_hours": None if self.hours is None else str(self.hours),
            "generated_at": self.generated_at.isoformat(),
            "rows": [row.as_json() for row in self.rows],
        }


def day_start(business_date: date, cutover: time) -> datetime:
    return datetime.combine(business_date, cutover, UTC)


def check_hours(hours: ServiceHours, cutover: time) -> None:
    """Service hours lie within the business day: from its cut-over to midnight UTC."""
    if hours.start < cutover:
        raise ReportError(f"hours: {hours} starts before the business day ({cutover:%H:%M})")


def days(first_day: date, last_day: date) -> list[date]:
    if last_day < first_day:
        raise ReportError(f"to: {last_day} is before from ({first_day})")
    count = (last_day - first_day).days + 1
    if count > DAYS_MAX:
        raise ReportError(f"to: at most {DAYS_MAX} business days per report, asked for {count}")
    return [first_day + timedelta(days=n) for n in range(count)]


def scheduled_window(
    business_date: date, cutover: time, hours: ServiceHours | None, now: datetime
) -> Interval | None:
    """The part of the business day the terminal should have been in service, up to `now`."""
    start = day_start(business_date, cutover)
    end = start + timedelta(days=1)
    if hours is not None:
        check_hours(hours, cutover)
        start = datetime.combine(business_date, hours.start, UTC)
        end = datetime.combine(business_date, hours.end, UTC)
    end = min(end, now)
    return (start, end) if end > start else None


def signed_on_intervals(
    events: Iterable[SessionEvent], until: datetime
) -> dict[str, list[Interval]]:
    """Each terminal's signed-on time, merged over its connections, up to `until`. `events` in
    time order. A session still open at its process's last beat (or stop) ends there."""
    open_at: dict[tuple[str, str, int], SessionEvent] = {}
    intervals: dict[str, list[Interval]] = {}

    def close(opening: SessionEvent, at: datetime) -> None:
        ends = [at, until]
        ends += [t for t in (opening.process_stopped_at, opening.process_beat_at) if t is not None]
        end = min(ends)
        if end > opening.occurred_at:
            intervals.setdefault(opening.terminal_id, []).append((opening.occurred_at, end))

    for event in events:
        key = (event.terminal_id, event.process_id, event.connection_seq)
        if event.kind in OPENING_KINDS:
            open_at.setdefault(key, event)
        elif event.kind in CLOSING_KINDS and key in open_at:
            close(open_at.pop(key), event.occurred_at)
    for opening in open_at.values():
        close(opening, until)
    return {terminal: _merged(spans) for terminal, spans in intervals.items()}


def _merged(spans: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def overlap_s(intervals: Sequence[Interval], window: Interval) -> float:
    start, end = window
    return sum(
        max(0.0, (min(end, span_end) - max(start, span_start)).total_seconds())
        for span_start, span_end in intervals
    )


@dataclass(frozen=True, slots=True)
class Terminal:
    terminal_id: str
    location: str
    status: str


def build_rows(
    terminals: Sequence[Terminal],
    report_days: Sequence[date],
    *,
    cutover: time,
    hours: ServiceHours | None,
    now: datetime,
    events: Sequence[SessionEvent],
    traffic: Mapping[tuple[str, date], TrafficCounts],
    alerts: Sequence[AlertRecord],
) -> list[SlaRow]:
    """Every terminal on every day, with or without traffic. An out-of-service terminal has no
    scheduled time, so no availability."""
    intervals = signed_on_intervals(events, now)
    alerts_by_day: dict[tuple[str, date], list[AlertRecord]] = {}
    for alert in alerts:
        if alert.terminal_id is not None:
            key = (alert.terminal_id, business_day(alert.raised_at, cutover))
            alerts_by_day.setdefault(key, []).append(alert)
    rows = []
    for terminal in terminals:
        for business_date in report_days:
            window = scheduled_window(business_date, cutover, hours, now)
            in_service = window is not None and terminal.status == "active"
            raised = alerts_by_day.get((terminal.terminal_id, business_date), [])
            waits = [
                (alert.acknowledged_at - alert.raised_at).total_seconds()
                for alert in raised
                if alert.acknowledged_at is not None
            ]
            rows.append(
                SlaRow(
                    terminal_id=terminal.terminal_id,
                    location=terminal.location,
                    status=terminal.status,
                    business_date=business_date,
                    scheduled_s=_length_s(window) if in_service else 0.0,
                    signed_on_s=overlap_s(intervals.get(terminal.terminal_id, []), window)
                    if in_service and window is not None
                    else 0.0,
                    traffic=traffic.get((terminal.terminal_id, business_date), NO_TRAFFIC),
                    alerts_raised=len(raised),
                    alerts_acknowledged=len(waits),
                    acknowledge_s_mean=sum(waits) / len(waits) if waits else None,
                )
            )
    return rows


def _length_s(window: Interval | None) -> float:
    return 0.0 if window is None else (window[1] - window[0]).total_seconds()


async def fetch_report(
    conn: Connection,
    first_day: date,
    last_day: date,
    *,
    cutover: time,
    hours: ServiceHours | None,
    now: datetime,
    timeout_ms: int,
) -> SlaReport:
    report_days = days(first_day, last_day)
    if hours is not None:
        check_hours(hours, cutover)
    start = day_start(first_day, cutover)
    end = min(day_start(last_day, cutover) + timedelta(days=1), now)
    timeout_s = timeout_ms / 1000
    terminals = [
        Terminal(row["terminal_id"], row["location"], row["status"])
        for row in await conn.fetch("SELECT * FROM ledger.terminal_list()", timeout=timeout_s)
    ]
    rows = await conn.fetch(
        "SELECT * FROM ledger.session_events($1, $2)", start, end, timeout=timeout_s
    )
    events = [SessionEvent(**dict(row)) for row in rows]
    traffic = await traffic_by_day(conn, start, end, cutover, timeout_ms=timeout_ms)
    alerts = await alerts_raised(conn, start, end, timeout_ms=timeout_ms)
    return SlaReport(
        first_day,
        last_day,
        cutover,
        hours,
        now,
        build_rows(
            terminals,
            report_days,
            cutover=cutover,
            hours=hours,
            now=now,
            events=events,
            traffic=traffic,
            alerts=alerts,
        ),
    )


def as_csv(report: SlaReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: "" if v is None else v for k, v in row.as_json().items()})
    return out.getvalue()


def as_json(report: SlaReport) -> str:
    return json.dumps(report.as_json(), indent=2) + "\n"

"""The asyncpg edge of the operations data: terminal events, traffic, the fleet's state, alerts
and journal checks (tables in sql/0002_terminal_events.sql, functions at the end of
sql/functions.sql).

Each query is a function of a connection, so the switch (its role, through `OperationsStore`)
and the ledger CLI (the owner) run the same ones. The store has a pool of its own: recording
events and refreshing the fleet view never wait for a connection a request needs, nor hold one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import asyncpg

from ledger.activity import (
    HISTOGRAM_SIZE,
    ProcessInfo,
    TerminalEvent,
    TrafficCounts,
)
from ledger.batches import UNAVAILABLE
from ledger.deadline import Deadline
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.migrations import Connection


@dataclass(frozen=True, slots=True)
class TrafficBucket:
    """One terminal's traffic in one time bucket, as one process counted it."""

    terminal_id: str
    bucket_start: datetime
    counts: TrafficCounts
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    """What the fleet view decides a terminal's state from (ledger.fleet_state)."""

    terminal_id: str
    location: str
    status: str
    # Its latest sign-on, and when that connection closed (None: not since).
    signed_on_at: datetime | None
    closed_at: datetime | None
    # The switch process that connection is on: when it last beat, and when it stopped.
    process_id: str | None
    process_beat_at: datetime | None
    process_stopped_at: datetime | None
    last_event_at: datetime | None
    last_traffic_at: datetime | None

    @property
    def last_seen_at(self) -> datetime | None:
        seen = [at for at in (self.last_event_at, self.last_traffic_at) if at is not None]
        return max(seen, default=None)


ALERT_STATES = ("firing", "acknowledged", "resolved")


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert_id: int
    rule: str
    subject: str
    terminal_id: str | None
    severity: str
    summary: str
    state: str
    raised_at: datetime
    raised_by: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> AlertRecord:
        """From the jsonb of a ledger.alerts row."""
        assert row["state"] in ALERT_STATES, row["state"]
        return cls(
            alert_id=int(row["alert_id"]),
            rule=row["rule"],
            subject=row["subject"],
            terminal_id=row["terminal_id"],
            severity=row["severity"],
            summary=row["summary"],
            state=row["state"],
            raised_at=_timestamp(row["raised_at"]),
            raised_by=row["raised_by"],
            acknowledged_at=_optional_timestamp(row["acknowledged_at"]),
            acknowledged_by=row["acknowledged_by"],
            resolved_at=_optional_timestamp(row["resolved_at"]),
        )

    @property
    def is_open(self) -> bool:
        return self.state != "resolved"

    def as_json(self) -> dict[str, object]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "subject": self.subject,
            "terminal_id": self.terminal_id,
            "severity": self.severity,
            "summary": self.summary,
            "state": self.state,
            "raised_at": self.raised_at.isoformat(),
            "raised_by": self.raised_by,
            "acknowledged_at": _iso(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "resolved_at": _iso(self.resolved_at),
        }


@dataclass(frozen=True, slots=True)
class NewAlert:
    rule: str
    subject: str
    terminal_id: str | None
    severity: str
    summary: str


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """outcome: 'acknowledged', 'unknown' (no such alert) or 'not_firing'."""

    outcome: str
    alert: AlertRecord | None


AUDIT_OUTCOMES = ("ok", "damaged", "failed")


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """One run of `audit verify`: ok, damaged (with the first damage), or failed to finish."""

    checked_at: datetime
    outcome: str
    records: int | None
    problem: str | None

    def __post_init__(self) -> None:
        assert self.outcome in AUDIT_OUTCOMES, self.outcome
        assert (self.outcome == "ok") == (self.problem is None), self


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_timestamp(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


async def beat(
    conn: Connection, process: ProcessInfo, at: datetime, *, stopped: bool, timeout_ms: int
) -> None:
    await conn.execute(
        "SELECT ledger.process_beat($1, $2, $3, $4, $5, $6)",
        process.process_id, process.host, process.pid, process.started_at, at, stopped,
        timeout=timeout_ms / 1000,
    )  # fmt: skip


async def record_events(
    conn: Connection, process_id: str, events: Sequence[TerminalEvent], *, timeout_ms: int
) -> int:
    count = await conn.fetchval(
        "SELECT ledger.record_terminal_events($1, $2, $3, $4, $5, $6)",
        process_id,
        [event.terminal_id for event in events],
        [event.kind.value for event in events],
        [event.occurred_at for event in events],
        [event.connection_seq for event in events],
        [dict(event.detail) for event in events],
        timeout=timeout_ms / 1000,
    )
    assert count == len(events), (count, len(events))
    return len(events)


async def record_traffic(
    conn: Connection, process_id: str, buckets: Sequence[TrafficBucket], *, timeout_ms: int
) -> int:
    keys = {(bucket.terminal_id, bucket.bucket_start) for bucket in buckets}
    # One row may be changed once per statement: the caller adds up a bucket's counts first.
    assert len(keys) == len(buckets), "one item per terminal and bucket"
    count = await conn.fetchval(
        "SELECT ledger.record_terminal_traffic($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        process_id,
        [bucket.terminal_id for bucket in buckets],
        [bucket.bucket_start for bucket in buckets],
        [bucket.counts.requests for bucket in buckets],
        [bucket.counts.financial for bucket in buckets],
        [bucket.counts.approved for bucket in buckets],
        [dict(bucket.counts.response_codes) for bucket in buckets],
        [count for bucket in buckets for count in bucket.counts.latency_counts],
        [bucket.last_seen_at for bucket in buckets],
        [bucket.counts.chip for bucket in buckets],
        timeout=timeout_ms / 1000,
    )
    assert count == len(buckets), (count, len(buckets))
    return len(buckets)


def _counts(row: asyncpg.Record) -> TrafficCounts:
    latency = row["latency_counts"]
    return TrafficCounts(
        requests=row["requests"],
        financial=row["financial"],
        approved=row["approved"],
        response_codes={code: int(count) for code, count in row["response_codes"].items()},
        latency_counts=tuple(latency) if latency else (0,) * HISTOGRAM_SIZE,
        chip=row["chip"],
    )


async def traffic_totals(
    conn: Connection, start: datetime, end: datetime, *, timeout_ms: int
) -> dict[str, TrafficCounts]:
    """Each terminal's traffic with buckets starting in [start, end), over every process."""
    rows = await conn.fetch(
        "SELECT * FROM ledger.traffic_totals($1, $2, NULL)", start, end, timeout=timeout_ms / 1000
    )
    return {row["terminal_id"]: _counts(row) for row in rows}


async def traffic_by_day(
    conn: Connection, start: datetime, end: datetime, cutover: time, *, timeout_ms: int
) -> dict[tuple[str, date], TrafficCounts]:
    """The same per terminal and business day (starting at `cutover`, UTC)."""
    rows = await conn.fetch(
        "SELECT * FROM ledger.traffic_totals($1, $2, $3)",
        start, end, timedelta(hours=cutover.hour, minutes=cutover.minute),
        timeout=timeout_ms / 1000,
    )  # fmt: skip
    return {(row["terminal_id"], row["business_date"]): _counts(row) for row in rows}


async def fleet_state(
    conn: Connection, traffic_since: datetime, *, timeout_ms: int
) -> list[TerminalRecord]:
    rows = await conn.fetch(
        "SELECT * FROM ledger.fleet_state($1)", traffic_since, timeout=timeout_ms / 1000
    )
    return [
        TerminalRecord(
            terminal_id=row["terminal_id"],
            location=row["location"],
            status=row["status"],
            signed_on_at=row["signed_on_at"],
            closed_at=row["closed_at"],
            process_id=row["process_id"],
            process_beat_at=row["process_beat_at"],
            process_stopped_at=row["process_stopped_at"],
            last_event_at=row["last_event_at"],
            last_traffic_at=row["last_traffic_at"],
        )
        for row in rows
    ]


async def live_processes(conn: Connection, since: datetime, *, timeout_ms: int) -> frozenset[str]:
    """The switch processes that beat from `since` on and have not stopped."""
    rows = await conn.fetch(
        "SELECT ledger.live_processes($1) AS process_id", since, timeout=timeout_ms / 1000
    )
    return frozenset(row["process_id"] for row in rows)


async def fire_alert(
    conn: Connection, alert: NewAlert, at: datetime, process_id: str, *, timeout_ms: int
) -> tuple[AlertRecord, bool]:
    """Raise `alert` unless one for its rule and subject is open; True when this call raised
    it (the open one comes back otherwise)."""
    row = await conn.fetchrow(
        "SELECT * FROM ledger.fire_alert($1, $2, $3, $4, $5, $6, $7)",
        alert.rule, alert.subject, alert.terminal_id, alert.severity, alert.summary, at,
        process_id, timeout=timeout_ms / 1000,
    )  # fmt: skip
    assert row is not None
    return AlertRecord.of(row["alert"]), bool(row["created"])


async def resolve_alert(
    conn: Connection, alert_id: int, at: datetime, process_id: str, *, timeout_ms: int
) -> AlertRecord | None:
    """Resolve an open alert; None when it was resolved already (by another process)."""
    row = await conn.fetchval(
        "SELECT ledger.resolve_alert($1, $2, $3)", alert_id, at, process_id,
        timeout=timeout_ms / 1000,
    )  # fmt: skip
    return None if row is None else AlertRecord.of(row)


async def acknowledge_alert(
    conn: Connection, alert_id: int, by: str, at: datetime, process_id: str, *, timeout_ms: int
) -> Acknowledgement:
    row = await conn.fetchrow(
        "SELECT * FROM ledger.acknowledge_alert($1, $2, $3, $4)", alert_id, by, at, process_id,
        timeout=timeout_ms / 1000,
    )  # fmt: skip
    assert row is not None
    alert = row["alert"]
    return Acknowledgement(row["outcome"], None if alert is None else AlertRecord.of(alert))


async def alert_list(
    conn: Connection, since: datetime, limit: int, *, timeout_ms: int
) -> list[AlertRecord]:
    """Every open alert, then those raised or resolved since `since`, at most `limit`."""
    rows = await conn.fetch(
        "SELECT ledger.alert_list($1, $2) AS alert", since, limit, timeout=timeout_ms / 1000
    )
    return [AlertRecord.of(row["alert"]) for row in rows]


async def alerts_raised(
    conn: Connection, start: datetime, end: datetime, *, timeout_ms: int
) -> list[AlertRecord]:
    rows = await conn.fetch(
        "SELECT ledger.alerts_raised($1, $2) AS alert", start, end, timeout=timeout_ms / 1000
    )
    return [AlertRecord.of(row["alert"]) for row in rows]


async def record_audit_check(
    conn: Connection, process_id: str, check: AuditCheck, *, timeout_ms: int
) -> None:
    await conn.execute(
        "SELECT ledger.record_audit_check($1, $2, $3, $4, $5)",
        process_id, check.checked_at, check.outcome, check.records, check.problem,
        timeout=timeout_ms / 1000,
    )  # fmt: skip


async def latest_audit_check(conn: Connection, *, timeout_ms: int) -> AuditCheck | None:
    row = await conn.fetchrow(
        "SELECT * FROM ledger.latest_audit_check()", timeout=timeout_ms / 1000
    )
    if row is None:
        return None
    return AuditCheck(row["checked_at"], row["outcome"], row["records"], row["problem"])


async def init_connection(conn: Connection) -> None:
    """jsonb to and from Python values: every connection the calls above use needs it."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class OperationsStore:
    """A small pool for the operations data, separate from the request path's. Build it with
    `open_operations`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def connection(self, *, timeout_ms: int) -> AsyncIterator[Connection]:
        """A connection for the calls above: LedgerUnavailable when the database cannot be
        reached or does not answer in time, LedgerError when it refuses."""
        deadline = Deadline(timeout_ms)
        try:
            async with self._pool.acquire(timeout=deadline.remaining_s()) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise LedgerUnavailable(f"ledger unavailable: {type(exc).__name__}") from exc
        except asyncpg.PostgresError as exc:
            raise LedgerError(f"ledger error: {exc.sqlstate} {exc}") from exc

    async def close(self, *, timeout_ms: int) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout_ms / 1000)
        except TimeoutError:
            self._pool.terminate()


async def open_operations(
    dsn: str, *, pool_size: int, connect_timeout_ms: int, statement_timeout_ms: int
) -> OperationsStore:
    """Connect lazily: the switch starts even when the ledger is down for a moment (the request
    path's own pool has proven the schema current)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=pool_size,
        init=init_connection,
        timeout=connect_timeout_ms / 1000,
        server_settings={"statement_timeout": str(statement_timeout_ms), "TimeZone": "UTC"},
    )
    return OperationsStore(pool)

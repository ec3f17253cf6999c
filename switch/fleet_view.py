"""The fleet as the operations page and the alert rules see it, decided from the ledger's
durable terminal events and traffic (so it is right with several switch processes and after a
restart). Pure: the snapshot is read elsewhere (switch.fleet_reader), time is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ledger.activity import NO_TRAFFIC, TrafficCounts, add_traffic
from ledger.balancing import Imbalance
from ledger.cash import CashLevel, cash_level
from ledger.cassettes import CassetteCounts
from ledger.operations import AlertRecord, AuditCheck, TerminalRecord


class TerminalState(StrEnum):
    UP = "up"
    DOWN = "down"
    NEVER_SEEN = "never_seen"
    OUT_OF_SERVICE = "out_of_service"


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """One read of the ledger: every provisioned terminal, traffic today (per terminal, since
    the business day began), in the recent window and in the baseline before it, the open and
    recently closed alerts, the latest journal check, the switch processes alive, every
    terminal's cassettes and the balancings that did not balance."""

    read_at: datetime
    terminals: Sequence[TerminalRecord]
    today: Mapping[str, TrafficCounts]
    recent: Mapping[str, TrafficCounts]
    baseline: Mapping[str, TrafficCounts]
    alerts: Sequence[AlertRecord]
    audit: AuditCheck | None
    live_processes: frozenset[str]
    cash: Sequence[CassetteCounts] = ()
    # Terminals whose latest 0500 of the last two business days did not balance.
    imbalances: Sequence[Imbalance] = ()

    def cassettes(self) -> dict[str, list[CassetteCounts]]:
        """Each terminal's cassettes (terminals without any are absent)."""
        by_terminal: dict[str, list[CassetteCounts]] = {}
        for cassette in self.cash:
            by_terminal.setdefault(cassette.terminal_id, []).append(cassette)
        return by_terminal


def terminal_cash(cassettes: Sequence[CassetteCounts]) -> dict[str, object] | None:
    """A terminal's cash for the page: its level and each cassette's counts."""
    level = cash_level((c.remaining_notes, c.low_notes) for c in cassettes)
    if level is None:
        return None
    return {"level": level.value, "cassettes": [_cassette_json(c) for c in cassettes]}


def _cassette_json(c: CassetteCounts) -> dict[str, object]:
    return {
        "cassette": c.cassette_no, "currency": c.currency,
        "denomination_minor": c.denomination_minor, "loaded": c.loaded_notes,
        "dispensed": c.dispensed_notes, "rejected": c.rejected_notes,
        "remaining": c.remaining_notes, "low_notes": c.low_notes,
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class TerminalView:
    record: TerminalRecord
    state: TerminalState
    # When a terminal that was seen went down (its connection closed, or its process died).
    down_since: datetime | None


def terminal_state(
    record: TerminalRecord, now: datetime, process_dead_after: timedelta
) -> TerminalView:
    """Up: signed on over a connection not closed since, on a process still beating."""
    if record.status != "active":
        return TerminalView(record, TerminalState.OUT_OF_SERVICE, None)
    if record.last_seen_at is None:
        return TerminalView(record, TerminalState.NEVER_SEEN, None)
    if record.signed_on_at is None:  # connected, never signed on
        return TerminalView(record, TerminalState.DOWN, record.last_seen_at)
    if record.closed_at is not None:
        return TerminalView(record, TerminalState.DOWN, record.closed_at)
    if record.process_stopped_at is not None:
        return TerminalView(record, TerminalState.DOWN, record.process_stopped_at)
    beat_at = record.process_beat_at
    if beat_at is None or beat_at < now - process_dead_after:
        return TerminalView(record, TerminalState.DOWN, beat_at or record.signed_on_at)
    return TerminalView(record, TerminalState.UP, None)


def terminal_views(
    snapshot: FleetSnapshot, now: datetime, process_dead_after: timedelta
) -> list[TerminalView]:
    return [terminal_state(record, now, process_dead_after) for record in snapshot.terminals]


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _terminal_json(
    view: TerminalView,
    today: TrafficCounts,
    alert_ids: list[int],
    now: datetime,
    cash: dict[str, object] | None,
) -> dict[str, object]:
    record = view.record
    seen = record.last_seen_at
    return {
        "terminal_id": record.terminal_id,
        "location": record.location,
        "state": view.state.value,
        "last_seen": _iso(seen),
        "last_seen_s": None if seen is None else round((now - seen).total_seconds(), 1),
        "down_since": _iso(view.down_since),
        "requests_today": today.requests,
        "financial_today": today.financial,
        "approval_rate": _rate(today.approval_rate),
        "response_codes": dict(sorted(today.response_codes.items())),
        "alerts": alert_ids,
        "cash": cash,
    }


def fleet_json(
    snapshot: FleetSnapshot,
    *,
    now: datetime,
    process_dead_after: timedelta,
    window: timedelta,
    readiness: Mapping[str, bool],
    stale_reason: str | None,
) -> dict[str, object]:
    """What GET /fleet answers: a summary, every terminal, and the alerts. `stale_reason`:
    why the snapshot is an old one (the ledger could not be read), or None."""
    views = terminal_views(snapshot, now, process_dead_after)
    open_alerts = [alert for alert in snapshot.alerts if alert.is_open]
    alerts_by_terminal: dict[str, list[int]] = {}
    for alert in open_alerts:
        if alert.terminal_id is not None:
            alerts_by_terminal.setdefault(alert.terminal_id, []).append(alert.alert_id)
    recent = add_traffic(list(snapshot.recent.values()))
    today = add_traffic(list(snapshot.today.values()))
    p99 = recent.latency_ms(0.99)
    states = {state.value: 0 for state in TerminalState}
    for view in views:
        states[view.state.value] += 1
    cassettes = snapshot.cassettes()
    cash = {terminal: terminal_cash(held) for terminal, held in cassettes.items()}
    levels = [entry["level"] for entry in cash.values() if entry is not None]
    return {
        "generated_at": now.isoformat(),
        "read_at": snapshot.read_at.isoformat(),
        "stale": stale_reason,
        "summary": {
            "ready": all(readiness.values()),
            "checks": dict(readiness),
            "terminals": states,
            "window_s": window.total_seconds(),
            "throughput_per_s": round(recent.requests / window.total_seconds(), 3),
            "latency_p99_ms": None if p99 is None else round(p99, 1),
            "approval_rate_today": _rate(today.approval_rate),
            "alerts_open": len(open_alerts),
            "cash": {level.value: levels.count(level.value) for level in CashLevel},
        },
        "terminals": [
            _terminal_json(
                view,
                snapshot.today.get(view.record.terminal_id, NO_TRAFFIC),
                alerts_by_terminal.get(view.record.terminal_id, []),
                now,
                cash.get(view.record.terminal_id),
            )
            for view in views
        ],
        "alerts": [alert.as_json() for alert in snapshot.alerts],
    }

"""The sans-I/O parts of operations: alert rules over injected time and counters, alert state,
the fleet's terminal states, the activity recorder's bounds, the SLA's replay of sessions, and
the latency histogram."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from ledger.activity import (
    HISTOGRAM_SIZE,
    LATENCY_BOUNDS_MS,
    NO_TRAFFIC,
    EventKind,
    TerminalEvent,
    TrafficCounts,
    latency_bucket,
    latency_quantile_ms,
)
from ledger.balancing import Imbalance
from ledger.cassettes import CassetteCounts
from ledger.operations import AlertRecord, AuditCheck, TerminalRecord
from ledger.sla import (
    ReportError,
    ServiceHours,
    SessionEvent,
    days,
    overlap_s,
    scheduled_window,
    signed_on_intervals,
)
from switch.activity import ActivityRecorder
from switch.alerts import (
    AlertRules,
    Condition,
    HeldCertificate,
    Observation,
    Pending,
    ProcessAlerts,
    Rule,
    Severity,
    evaluate,
    plan,
)
from switch.audit_check import outcome_of
from switch.fleet_view import FleetSnapshot, TerminalState, terminal_state, terminal_views

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RULES = AlertRules(
    terminal_offline_after=timedelta(minutes=5),
    decline_ratio_min=0.2,
    decline_spike_factor=3.0,
    requests_min=20,
    unavailable_ratio_max=0.05,
    arqc_failure_ratio_max=0.02,
    latency_p99_slo_ms=1_000,
    dependency_for=timedelta(seconds=10),
    certificate_expiry_warning=timedelta(days=30),
)
DEAD_AFTER = timedelta(seconds=15)


def traffic(
    financial: int, approved: int, *, codes: Mapping[str, int] | None = None, latency_ms: float = 10
) -> TrafficCounts:
    histogram = [0] * HISTOGRAM_SIZE
    histogram[latency_bucket(latency_ms)] = financial
    declined = financial - approved
    response_codes = dict(codes) if codes is not None else {"00": approved, "51": declined}
    return TrafficCounts(financial, financial, approved, response_codes, tuple(histogram))


def record(terminal_id: str = "T1", **fields: Any) -> TerminalRecord:
    values: dict[str, object] = {
        "location": "hall",
        "status": "active",
        "signed_on_at": None,
        "closed_at": None,
        "process_id": "p1",
        "process_beat_at": NOW,
        "process_stopped_at": None,
        "last_event_at": None,
        "last_traffic_at": None,
    }
    values.update(fields)
    return TerminalRecord(terminal_id, **values)  # type: ignore[arg-type]


def snapshot(**fields: object) -> FleetSnapshot:
    values: dict[str, object] = {
        "read_at": NOW,
        "terminals": [],
        "today": {},
        "recent": {},
        "baseline": {},
        "alerts": [],
        "audit": None,
        "live_processes": frozenset({"p1"}),
    }
    values.update(fields)
    return FleetSnapshot(**values)  # type: ignore[arg-type]


def observe(
    fleet: FleetSnapshot | None = None, checks: Mapping[str, bool] | None = None
) -> list[Condition]:
    views = terminal_views(fleet, NOW, DEAD_AFTER) if fleet is not None else []
    return evaluate(Observation(NOW, "p1", checks or {}, fleet, views), RULES)


def alert(
    rule: str, subject: str, alert_id: int = 1, state: str = "firing", raised_by: str = "p1"
) -> AlertRecord:
    return AlertRecord(
        alert_id, rule, subject, None, "warning", "", state, NOW, raised_by, None, None, None
    )


# the latency histogram


def test_quantiles_interpolate_within_their_bucket() -> None:
    counts = [0] * HISTOGRAM_SIZE
    counts[latency_bucket(12)] = 50  # (10, 15]
    counts[latency_bucket(40)] = 50  # (30, 50]
    assert latency_quantile_ms(counts, 0.5) == 15.0
    assert latency_quantile_ms(counts, 0.99) == pytest.approx(30 + 20 * 49 / 50)
    assert latency_quantile_ms([0] * HISTOGRAM_SIZE, 0.5) is None
    beyond = [0] * HISTOGRAM_SIZE
    beyond[-1] = 3
    assert latency_quantile_ms(beyond, 0.99) == LATENCY_BOUNDS_MS[-1]


def test_declines_leave_out_91_and_96() -> None:
    counts = traffic(10, 5, codes={"00": 5, "51": 2, "91": 2, "96": 1})
    assert (counts.declined, counts.unavailable, counts.approval_rate) == (2, 3, 0.5)


# the activity recorder


def recorder(**limits: int) -> ActivityRecorder:
    return ActivityRecorder(
        clock=NOW.timestamp,
        bucket_ms=limits.get("bucket_ms", 60_000),
        events_max=limits.get("events_max", 100),
        buckets_max=limits.get("buckets_max", 100),
    )


def answer(
    activity: ActivityRecorder, terminal_id: str | None, mti: str, code: str, network: str = ""
) -> None:
    activity.message(
        terminal_id, 7, request_mti=mti, network_code=network or None, response_code=code,
        latency_ms=12.0,
    )  # fmt: skip


def test_session_events_come_from_approved_network_messages_of_a_bound_terminal() -> None:
    activity = recorder()
    activity.connected(7, "10.0.0.1:5000")
    answer(activity, None, "0800", "58", "001")  # refused sign-on: no terminal bound
    answer(activity, "T1", "0800", "00", "001")
    answer(activity, "T1", "0800", "91", "161")  # a key change that failed
    answer(activity, "T1", "0800", "00", "161")
    answer(activity, "T1", "0800", "00", "301")  # echo: no event
    answer(activity, "T1", "0800", "00", "002")
    activity.disconnected("T1", 7, "peer closed its side")
    events = activity.take_events(100)
    assert [(e.kind, e.terminal_id) for e in events] == [
        (EventKind.CONNECT, None),
        (EventKind.SIGN_ON, "T1"),
        (EventKind.KEY_CHANGE, "T1"),
        (EventKind.SIGN_OFF, "T1"),
        (EventKind.DISCONNECT, "T1"),
    ]
    assert events[0].detail == {"peer": "10.0.0.1:5000"}
    assert events[-1].detail == {"reason": "peer closed its side"}
    [bucket] = activity.take_traffic()
    assert bucket.terminal_id == "T1"  # the unbound connection's request is not counted
    assert (bucket.counts.requests, bucket.counts.financial) == (5, 0)
    assert bucket.bucket_start == NOW.replace(second=0)


def test_financial_traffic_is_counted_by_code_and_latency() -> None:
    activity = recorder()
    for mti, code in (("0200", "00"), ("0200", "51"), ("0420", "00"), ("0100", "91")):
        answer(activity, "T1", mti, code)
    [bucket] = activity.take_traffic()
    counts = bucket.counts
    assert (counts.requests, counts.financial, counts.approved) == (4, 4, 2)
    assert counts.response_codes == {"00": 2, "51": 1, "91": 1}
    assert counts.latency_counts[latency_bucket(12.0)] == 4
    assert activity.take_traffic() == []


def test_held_events_are_bounded_and_those_about_no_terminal_go_first() -> None:
    activity = recorder(events_max=3)
    activity.connected(0, "peer")  # about no terminal: a connection not signed on
    activity.disconnected("T1", 1, "idle")
    activity.disconnected("T1", 2, "idle")
    activity.disconnected("T1", 3, "idle")  # full: the connect goes
    activity.connected(4, "peer")  # full of events about terminals: this one goes
    assert activity.events_dropped == 2
    activity.disconnected("T1", 5, "idle")  # only those: the oldest goes
    assert activity.events_dropped == 3
    taken = activity.take_events(2)
    assert [e.connection_seq for e in taken] == [2, 3]
    activity.connected(6, "peer")
    activity.disconnected("T1", 7, "idle")  # full again: 5, 6, 7
    activity.give_back_events(taken)  # no room: counted, not kept
    assert activity.events_dropped == 5
    assert [e.connection_seq for e in activity.take_events(10)] == [5, 6, 7]
    activity.connected(8, "peer")
    activity.disconnected("T1", 9, "idle")  # held: 8, 9; room for one more
    activity.give_back_events([TerminalEvent(EventKind.CONNECT, NOW, 10, None, {}), taken[0]])
    assert activity.events_dropped == 6
    assert [e.connection_seq for e in activity.take_events(10)] == [2, 8, 9]


def test_held_traffic_is_bounded_and_a_failed_write_adds_back() -> None:
    activity = recorder(buckets_max=1)
    answer(activity, "T1", "0200", "00")
    answer(activity, "T2", "0200", "00")  # a second bucket: no room
    assert activity.traffic_dropped == 1
    taken = activity.take_traffic()
    answer(activity, "T1", "0200", "51")
    activity.give_back_traffic(taken)
    [bucket] = activity.take_traffic()
    assert (bucket.counts.financial, bucket.counts.approved) == (2, 1)


# terminal states


@pytest.mark.parametrize(
    ("fields", "state", "down_since"),
    [
        ({"status": "inactive"}, TerminalState.OUT_OF_SERVICE, None),
        ({}, TerminalState.NEVER_SEEN, None),
        ({"last_event_at": NOW}, TerminalState.DOWN, NOW),  # connected, never signed on
        ({"signed_on_at": NOW, "last_event_at": NOW}, TerminalState.UP, None),
        (
            {"signed_on_at": NOW, "closed_at": NOW, "last_event_at": NOW},
            TerminalState.DOWN,
            NOW,
        ),
        (
            {"signed_on_at": NOW, "process_stopped_at": NOW, "last_event_at": NOW},
            TerminalState.DOWN,
            NOW,
        ),
        (
            {"signed_on_at": NOW, "process_beat_at": NOW - 2 * DEAD_AFTER, "last_event_at": NOW},
            TerminalState.DOWN,
            NOW - 2 * DEAD_AFTER,
        ),
    ],
)
def test_terminal_states(
    fields: dict[str, Any], state: TerminalState, down_since: datetime | None
) -> None:
    view = terminal_state(record(**fields), NOW, DEAD_AFTER)
    assert (view.state, view.down_since) == (state, down_since)


# the rules


def test_a_terminal_seen_before_is_offline_after_the_threshold() -> None:
    down = {"signed_on_at": NOW, "last_event_at": NOW}
    fleet = snapshot(
        terminals=[
            record("T1", **down, closed_at=NOW - timedelta(minutes=6)),
            record("T2", **down, closed_at=NOW - timedelta(minutes=4)),
            record("T3"),  # never seen
            record("T4", status="inactive"),
        ]
    )
    [condition] = observe(fleet)
    assert (condition.rule, condition.subject, condition.terminal_id) == (
        Rule.TERMINAL_OFFLINE, "T1", "T1",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("recent", "baseline", "fires"),
    [
        (traffic(20, 10), None, True),  # 50%, no baseline yet: over the floor
        (traffic(20, 10), traffic(100, 95), True),  # 50% against 5%
        (traffic(20, 10), traffic(100, 80), False),  # 50% against 20%: not 3 times
        (traffic(20, 17), traffic(100, 99), False),  # 15%: under the floor
        (traffic(19, 0), None, False),  # too few requests to say
        (traffic(20, 10, codes={"00": 10, "91": 10}), None, False),  # outages are not declines
    ],
)
def test_a_decline_spike_is_measured_against_the_terminal_s_own_baseline(
    recent: TrafficCounts, baseline: TrafficCounts | None, fires: bool
) -> None:
    fleet = snapshot(recent={"T1": recent}, baseline={"T1": baseline} if baseline else {})
    found = [c for c in observe(fleet) if c.rule is Rule.DECLINE_RATE_SPIKE]
    assert bool(found) is fires
    if fires:
        assert found[0].subject == "T1"


def test_the_unavailable_ratio_is_the_fleet_s() -> None:
    quiet = snapshot(recent={"T1": traffic(20, 19, codes={"00": 19, "91": 1})})
    assert not [c for c in observe(quiet) if c.rule is Rule.UNAVAILABLE_RATIO]
    outage = snapshot(
        recent={
            "T1": traffic(20, 18, codes={"00": 18, "91": 2}),
            "T2": traffic(20, 19, codes={"00": 19, "96": 1}),
        }
    )
    [condition] = [c for c in observe(outage) if c.rule is Rule.UNAVAILABLE_RATIO]
    assert condition.subject == "fleet"
    assert condition.summary.startswith("3 of 40 financial requests answered 91 or 96")


def chip_traffic(chip: int, refused: int) -> TrafficCounts:
    counts = traffic(
        chip + 10, chip + 10 - refused, codes={"00": chip + 10 - refused, "63": refused}
    )
    return replace(counts, chip=chip)


@pytest.mark.parametrize(
    ("recent", "summary"),
    [
        # 63 over 2% of chip requests (magstripe requests are not the denominator): fires.
        (
            {"T1": chip_traffic(40, 1), "T2": chip_traffic(40, 2)},
            "3 of 80 chip requests refused for the card's security (63; 3.8%, over 2%);"
            " most at T2 2, T1 1",
        ),
        ({"T1": chip_traffic(50, 1)}, None),  # 2.0%: at the ratio, not over it
        ({"T1": chip_traffic(19, 19)}, None),  # fewer chip requests than requests_min
        ({"T1": traffic(100, 90, codes={"00": 90, "63": 10})}, None),  # no chip request
    ],
)
def test_the_arqc_failure_ratio_is_over_chip_requests(
    recent: dict[str, TrafficCounts], summary: str | None
) -> None:
    found = [c for c in observe(snapshot(recent=recent)) if c.rule is Rule.ARQC_FAILURE_RATIO]
    assert [(c.subject, c.severity, c.summary) for c in found] == (
        [] if summary is None else [("fleet", Severity.CRITICAL, summary)]
    )


def cassette(terminal_id: str, number: int, remaining: int, low: int = 10) -> CassetteCounts:
    return CassetteCounts(terminal_id, number, "EUR", 2000 * number, 100, 100 - remaining, 0,
                          remaining, low)  # fmt: skip


@pytest.mark.parametrize(
    ("cash", "status", "expected"),
    [
        ([cassette("T1", 1, 50), cassette("T1", 2, 11)], "active", []),
        (
            [cassette("T1", 1, 50), cassette("T1", 2, 10)],
            "active",
            [
                (
                    Rule.CASH_LOW,
                    Severity.WARNING,
                    "terminal T1 (hall) cash low: cassette 2 (notes of 4000 EUR minor units)"
                    " 10 left, low mark 10",
                )
            ],
        ),
        (
            [cassette("T1", 1, 0), cassette("T1", 2, 0)],
            "active",
            [(Rule.CASH_OUT, Severity.CRITICAL, "terminal T1 (hall) cash out: no note left")],
        ),
        ([cassette("T1", 1, 0)], "out_of_service", []),  # takes no withdrawals anyway
        ([], "active", []),  # the host counts no notes there
    ],
)
def test_cash_low_and_out_are_per_terminal(
    cash: list[CassetteCounts], status: str, expected: list[tuple[Rule, Severity, str]]
) -> None:
    fleet = snapshot(terminals=[record("T1", status=status)], cash=cash)
    found = [c for c in observe(fleet) if c.rule in (Rule.CASH_LOW, Rule.CASH_OUT)]
    assert [(c.rule, c.severity, c.summary) for c in found] == expected
    assert all(c.subject == c.terminal_id == "T1" for c in found)


def test_a_terminal_whose_last_balancing_differs_is_imbalanced() -> None:
    imbalance = Imbalance("T1", date(2026, 11, 22), "EUR", ("F88", "F124"), NOW, 7)
    [condition] = [
        c for c in observe(snapshot(imbalances=[imbalance])) if c.rule is Rule.TERMINAL_IMBALANCE
    ]
    assert (condition.subject, condition.terminal_id, condition.severity) == (
        "T1", "T1", Severity.CRITICAL,
    )  # fmt: skip
    assert condition.summary == (
        "terminal T1 does not balance for business day 2026-11-22 (EUR): its F88, F124 differ"
        " from the host's"
    )
    assert not [c for c in observe(snapshot()) if c.rule is Rule.TERMINAL_IMBALANCE]


def test_chip_requests_are_counted_apart() -> None:
    activity = recorder()
    for chip, code in ((True, "00"), (True, "63"), (False, "00")):
        activity.message(
            "T1", 7, request_mti="0200", network_code=None, response_code=code, latency_ms=9.0,
            chip=chip,
        )  # fmt: skip
    [bucket] = activity.take_traffic()
    assert (bucket.counts.financial, bucket.counts.chip, bucket.counts.chip_refused) == (3, 2, 1)


def test_latency_p99_over_the_slo() -> None:
    fast = snapshot(recent={"T1": traffic(30, 30, latency_ms=400)})
    slow = snapshot(recent={"T1": traffic(30, 30, latency_ms=1_200)})
    few = snapshot(recent={"T1": traffic(5, 5, latency_ms=1_200)})
    assert not observe(fast)
    assert not observe(few)
    [condition] = observe(slow)
    assert condition.rule is Rule.LATENCY_P99_OVER_SLO


@pytest.mark.parametrize(
    ("check", "fires"),
    [
        (None, False),
        (AuditCheck(NOW, "ok", 10, None), False),
        (AuditCheck(NOW, "damaged", 10, "transaction 7: leaf"), True),
        (AuditCheck(NOW, "failed", None, "did not finish"), True),
    ],
)
def test_the_journal_rule_follows_the_latest_check(check: AuditCheck | None, fires: bool) -> None:
    conditions = observe(snapshot(audit=check))
    assert bool(conditions) is fires
    if fires:
        assert (conditions[0].rule, conditions[0].severity) == (
            Rule.AUDIT_VERIFY_FAILING, Severity.CRITICAL,
        )  # fmt: skip


def test_dependency_rules_are_about_this_process_and_need_no_ledger() -> None:
    conditions = observe(None, {"hsm": False, "database": False})
    assert {(c.rule, c.subject) for c in conditions} == {
        (Rule.HSM_UNREACHABLE, "p1"),
        (Rule.DATABASE_UNREACHABLE, "p1"),
    }


def test_a_dependency_must_stay_down_for_its_duration() -> None:
    pending = Pending()
    [down] = observe(None, {"hsm": False})
    assert pending.held([down], NOW, RULES) == []
    assert pending.held([down], NOW + timedelta(seconds=9), RULES) == []
    assert pending.held([down], NOW + timedelta(seconds=10), RULES) == [down]
    assert pending.held([], NOW + timedelta(seconds=11), RULES) == []
    assert pending.held([down], NOW + timedelta(seconds=12), RULES) == []  # counts again


def test_the_plan_fires_what_holds_and_resolves_what_no_longer_does() -> None:
    offline = Condition(Rule.TERMINAL_OFFLINE, "T1", "T1", Severity.WARNING, "")
    spike = Condition(Rule.DECLINE_RATE_SPIKE, "T2", "T2", Severity.WARNING, "")
    hsm = Condition(Rule.HSM_UNREACHABLE, "p1", None, Severity.CRITICAL, "")
    open_alerts = [
        alert("terminal_offline", "T1", 1),  # still holds
        alert("latency_p99_over_slo", "fleet", 2),  # no longer
        alert("hsm_unreachable", "p1", 3),  # ours: ProcessAlerts' business
        alert("hsm_unreachable", "p2", 4),  # a live process's
        alert("database_unreachable", "p9", 5),  # a process gone
    ]
    decided = plan(
        [offline, spike, hsm], open_alerts, process_id="p1", live_processes=frozenset({"p1", "p2"})
    )
    assert decided.fire == [spike]
    assert [a.alert_id for a in decided.resolve] == [2, 5]


@pytest.mark.parametrize(
    ("held", "summary"),
    [
        (HeldCertificate("KIOSK001", "KIOSK001", NOW + timedelta(days=30)), None),
        (HeldCertificate("KIOSK001", "KIOSK001", NOW + timedelta(days=29, hours=12)),
         "the client certificate of terminal KIOSK001 expires at 2026-12-23 00:00:00 UTC"
         " (29.5 days left)"),
        (HeldCertificate("server CN=switch", None, NOW + timedelta(hours=6)),
         "this switch's server certificate expires at 2026-11-23 18:00:00 UTC (0.2 days left)"),
        (HeldCertificate("server CN=switch", None, NOW),
         "this switch's server certificate expired at 2026-11-23 12:00:00 UTC"),
    ],
)  # fmt: skip
def test_a_certificate_within_the_warning_window_is_expiring(
    held: HeldCertificate, summary: str | None
) -> None:
    observation = Observation(NOW, "p1", {}, None, [], [held])
    conditions = evaluate(observation, RULES)  # no ledger needed to see it
    if summary is None:
        assert conditions == []
        return
    assert conditions == [
        Condition(
            Rule.CERTIFICATE_EXPIRING, held.subject, held.terminal_id, Severity.WARNING, summary
        )
    ]


def test_only_the_process_holding_a_certificate_resolves_its_alert() -> None:
    expiring = Condition(Rule.CERTIFICATE_EXPIRING, "T1", "T1", Severity.WARNING, "")
    open_alerts = [
        alert("certificate_expiring", "T1", 1),  # ours, still holds
        alert("certificate_expiring", "T2", 2),  # ours, renewed or signed off
        alert("certificate_expiring", "T3", 3, raised_by="p2"),  # a live process's
        alert("certificate_expiring", "T4", 4, raised_by="p9"),  # a process gone
    ]
    decided = plan([expiring], open_alerts, process_id="p1", live_processes=frozenset({"p1", "p2"}))
    assert decided.fire == []
    assert [a.alert_id for a in decided.resolve] == [2, 4]
    # Another process sees the terminal now: it raises the alert once ours is resolved.
    decided = plan([expiring], [], process_id="p2", live_processes=frozenset({"p1", "p2"}))
    assert decided.fire == [expiring]


def test_process_alerts_notify_at_once_and_wait_to_be_written() -> None:
    book = ProcessAlerts(limit=2)
    [down] = observe(None, {"database": False})
    [fired] = book.update([down], NOW)
    assert (fired.state, fired.alert["alert_id"]) == ("firing", None)
    assert book.update([down], NOW) == []  # still firing: nothing new
    [resolved] = book.update([], NOW + timedelta(seconds=5))
    assert resolved.state == "resolved"
    [waiting] = book.unwritten()
    book.written(waiting, 41)
    assert book.unwritten() == []
    for n in range(4):  # flapping while the ledger is down: bounded
        book.update([down], NOW + timedelta(seconds=10 + 2 * n))
        book.update([], NOW + timedelta(seconds=11 + 2 * n))
    assert len(book.unwritten()) == 2
    assert book.forgotten == 2


# the SLA's replay


def session(kind: str, hours: float, seq: int = 1, beat: float | None = None) -> SessionEvent:
    start = datetime(2026, 11, 20, tzinfo=UTC)
    beat_at = None if beat is None else start + timedelta(hours=beat)
    return SessionEvent("T1", kind, start + timedelta(hours=hours), "p", seq, beat_at, None)


def test_signed_on_time_merges_overlapping_connections_and_ends_with_the_process() -> None:
    events = [
        session("sign_on", 1, seq=1, beat=20),
        session("sign_on", 2, seq=2, beat=20),  # a second connection before the first closed
        session("disconnect", 3, seq=1, beat=20),
        session("sign_off", 4, seq=2, beat=20),
        session("sign_on", 10, seq=3, beat=20),  # never closed: ends at the last beat
    ]
    start = datetime(2026, 11, 20, tzinfo=UTC)
    intervals = signed_on_intervals(events, start + timedelta(days=2))
    assert intervals["T1"] == [
        (start + timedelta(hours=1), start + timedelta(hours=4)),
        (start + timedelta(hours=10), start + timedelta(hours=20)),
    ]
    assert overlap_s(intervals["T1"], (start, start + timedelta(hours=12))) == 5 * 3600


def test_scheduled_time_and_report_bounds() -> None:
    day = date(2026, 11, 20)
    start = datetime(2026, 11, 20, 2, tzinfo=UTC)
    assert scheduled_window(day, time(2), None, NOW) == (start, start + timedelta(days=1))
    today = NOW.date()
    assert scheduled_window(today, time(0), None, NOW) == (
        datetime.combine(today, time(0), UTC), NOW,
    )  # fmt: skip
    assert scheduled_window(today + timedelta(days=1), time(0), None, NOW) is None
    hours = ServiceHours.parse("06:00-22:00")
    assert scheduled_window(day, time(0), hours, NOW) == (
        datetime(2026, 11, 20, 6, tzinfo=UTC), datetime(2026, 11, 20, 22, tzinfo=UTC),
    )  # fmt: skip
    with pytest.raises(ReportError, match="hours: 06:00-22:00 starts before the business day"):
        scheduled_window(day, time(7), hours, NOW)
    for text in ("22:00-06:00", "6-22", "06:00"):
        with pytest.raises(ReportError, match="hours: expected HH:MM-HH:MM"):
            ServiceHours.parse(text)
    assert len(days(day, day + timedelta(days=91))) == 92
    with pytest.raises(ReportError, match="at most 92 business days"):
        days(day, day + timedelta(days=92))
    assert NO_TRAFFIC.approval_rate is None


# the journal check's reading of the CLI


def test_the_cli_s_verdict_becomes_the_check_s_outcome() -> None:
    ok = "OK: 12 transactions in 3 blocks on 2 chains checked\n"
    damaged = (
        "FIRST BAD RECORD: chain 3 block 2 transaction 9: leaf differs\n"
        "DAMAGED: 12 transactions in 3 blocks on 2 chains checked\n"
    )
    assert outcome_of(0, ok, "") == ("ok", 12, None)
    assert outcome_of(1, damaged, "") == (
        "damaged", 12, "FIRST BAD RECORD: chain 3 block 2 transaction 9: leaf differs",
    )  # fmt: skip
    assert outcome_of(2, "", "error: connection refused\n") == (
        "failed", None, "error: connection refused",
    )  # fmt: skip

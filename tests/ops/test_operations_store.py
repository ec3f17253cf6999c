"""The operations functions in the ledger, as the switch role calls them: append-only events,
traffic added up across flushes and processes, alert transitions made once, the fleet's state
after a process dies, and no table privilege for the switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ledger import operations
from ledger.activity import (
    HISTOGRAM_SIZE,
    EventKind,
    ProcessInfo,
    TerminalEvent,
    TrafficCounts,
    latency_bucket,
)
from ledger.errors import LedgerError
from ledger.operations import NewAlert, OperationsStore, TrafficBucket, open_operations
from switch.fleet_view import TerminalState, terminal_state
from tests.ledger.factory import World
from tests.ops.conftest import OpsDatabase

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
PROCESS = ProcessInfo("host-a", 4242, T0 - timedelta(hours=1))
TIMEOUT_MS = 5_000


@pytest.fixture
async def store(ops_db: OpsDatabase) -> AsyncIterator[OperationsStore]:
    switch_dsn = ops_db.owner_dsn.replace("ledger_owner@", "ledger_switch@")
    store = await open_operations(
        switch_dsn, pool_size=4, connect_timeout_ms=TIMEOUT_MS, statement_timeout_ms=TIMEOUT_MS
    )
    try:
        yield store
    finally:
        await store.close(timeout_ms=TIMEOUT_MS)


@pytest.fixture
async def world(ops_db: OpsDatabase) -> World:
    conn = await asyncpg.connect(ops_db.owner_dsn)
    try:
        world = World()
        await world.load(conn, customers=1, terminals=2)
        return world
    finally:
        await conn.close()


def counts(
    requests: int, financial: int, approved: int, latency_ms: float, *, chip: int = 0
) -> TrafficCounts:
    histogram = [0] * HISTOGRAM_SIZE
    histogram[latency_bucket(latency_ms)] = financial
    declined = financial - approved
    codes = {"00": approved} | ({"51": declined} if declined else {})
    return TrafficCounts(requests, financial, approved, codes, tuple(histogram), chip)


async def test_the_switch_role_reads_and_writes_only_through_the_functions(
    store: OperationsStore,
) -> None:
    for statement in (
        "SELECT * FROM ledger.terminal_events",
        "SELECT * FROM ledger.alerts",
        "INSERT INTO ledger.audit_checks (checked_at, process_id, outcome)"
        " VALUES (now(), 'x', 'ok')",
        "SELECT ledger.append_alert_event(NULL, now(), 'x')",
    ):
        with pytest.raises(LedgerError, match="42501"):
            async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
                await conn.execute(statement)
    events = [TerminalEvent(EventKind.SIGN_ON, T0, 1, "T1", {})] * 2
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="alert functions only"):
            await conn.fetchval(
                "SELECT ledger.record_terminal_events($1, $2, $3, $4, $5, $6)",
                PROCESS.process_id, ["T1"], ["alert"], [T0], [None], [{}],
            )  # fmt: skip
        written = await operations.record_events(
            conn, PROCESS.process_id, events, timeout_ms=TIMEOUT_MS
        )
        assert written == 2


async def test_terminal_events_are_append_only_even_for_the_owner(
    store: OperationsStore, ops_db: OpsDatabase
) -> None:
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        await operations.record_events(
            conn, PROCESS.process_id, [TerminalEvent(EventKind.CONNECT, T0, 1, None, {})],
            timeout_ms=TIMEOUT_MS,
        )  # fmt: skip
    owner = await asyncpg.connect(ops_db.owner_dsn)
    try:
        for statement in (
            "UPDATE ledger.terminal_events SET kind = 'sign_on'",
            "DELETE FROM ledger.terminal_events",
            "TRUNCATE ledger.terminal_events",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement)
    finally:
        await owner.close()


async def test_traffic_adds_up_across_flushes_and_processes(
    store: OperationsStore, world: World
) -> None:
    terminal = world.terminals[0]
    other = ProcessInfo("host-b", 7, T0)
    bucket = T0.replace(minute=5)
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        for flush in (counts(5, 4, 3, 12, chip=2), counts(3, 2, 2, 40, chip=1)):
            await operations.record_traffic(
                conn, PROCESS.process_id, [TrafficBucket(terminal, bucket, flush, bucket)],
                timeout_ms=TIMEOUT_MS,
            )  # fmt: skip
        later = bucket + timedelta(seconds=30)
        await operations.record_traffic(
            conn, other.process_id, [TrafficBucket(terminal, bucket, counts(1, 1, 0, 12), later)],
            timeout_ms=TIMEOUT_MS,
        )  # fmt: skip
        totals = await operations.traffic_totals(
            conn, T0, T0 + timedelta(hours=1), timeout_ms=TIMEOUT_MS
        )
        outside = await operations.traffic_totals(
            conn, T0 + timedelta(hours=1), T0 + timedelta(hours=2), timeout_ms=TIMEOUT_MS
        )
        [state] = [
            r
            for r in await operations.fleet_state(conn, T0, timeout_ms=TIMEOUT_MS)
            if r.terminal_id == terminal
        ]
    total = totals[terminal]
    assert (total.requests, total.financial, total.approved, total.chip) == (9, 7, 5, 3)
    assert total.response_codes == {"00": 5, "51": 2}
    assert total.latency_counts[latency_bucket(12)] == 5
    assert total.latency_counts[latency_bucket(40)] == 2
    assert outside == {}
    assert state.last_traffic_at == later


async def test_an_alert_is_raised_once_however_many_processes_raise_it(
    store: OperationsStore,
) -> None:
    alert = NewAlert("terminal_offline", "T1", "T1", "warning", "down")

    async def fire(n: int) -> bool:
        async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
            _, created = await operations.fire_alert(
                conn, alert, T0, f"process-{n}", timeout_ms=TIMEOUT_MS
            )
        return created

    created = await asyncio.gather(*(fire(n) for n in range(4)))
    assert sorted(created) == [False, False, False, True]


async def test_alert_transitions_are_kept_and_appended_as_events(
    store: OperationsStore, ops_db: OpsDatabase
) -> None:
    alert = NewAlert("terminal_offline", "T1", "T1", "warning", "down")
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        raised, _ = await operations.fire_alert(conn, alert, T0, "p", timeout_ms=TIMEOUT_MS)
        at = T0 + timedelta(minutes=3)
        acked = await operations.acknowledge_alert(
            conn, raised.alert_id, "olga", at, "p", timeout_ms=TIMEOUT_MS
        )
        again = await operations.acknowledge_alert(
            conn, raised.alert_id, "olga", at, "p", timeout_ms=TIMEOUT_MS
        )
        unknown = await operations.acknowledge_alert(
            conn, 999_999, "olga", at, "p", timeout_ms=TIMEOUT_MS
        )
        done = at + timedelta(minutes=1)
        resolved = await operations.resolve_alert(
            conn, raised.alert_id, done, "p", timeout_ms=TIMEOUT_MS
        )
        twice = await operations.resolve_alert(
            conn, raised.alert_id, done, "p", timeout_ms=TIMEOUT_MS
        )
        reopened, created = await operations.fire_alert(
            conn, alert, done, "p", timeout_ms=TIMEOUT_MS
        )
    assert raised.state == "firing"
    assert acked.outcome == "acknowledged"
    assert acked.alert is not None
    assert (acked.alert.acknowledged_by, acked.alert.acknowledged_at) == ("olga", at)
    assert (again.outcome, unknown.outcome, unknown.alert) == ("not_firing", "unknown", None)
    assert resolved is not None
    assert (resolved.state, resolved.resolved_at) == ("resolved", done)
    assert twice is None
    assert created
    assert reopened.alert_id != raised.alert_id  # a condition back after resolving: new alert
    owner = await asyncpg.connect(ops_db.owner_dsn)
    try:
        rows = await owner.fetch(
            "SELECT detail->>'state' AS state FROM ledger.terminal_events"
            " WHERE kind = 'alert' AND (detail->>'alert_id')::bigint = $1 ORDER BY event_id",
            raised.alert_id,
        )
    finally:
        await owner.close()
    assert [row["state"] for row in rows] == ["firing", "acknowledged", "resolved"]


async def test_a_terminal_on_a_process_that_stopped_beating_is_down_since_its_last_beat(
    store: OperationsStore, world: World
) -> None:
    terminal = world.terminals[0]
    beat_at = T0 + timedelta(minutes=10)
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        for at in (T0, beat_at):
            await operations.beat(conn, PROCESS, at, stopped=False, timeout_ms=TIMEOUT_MS)
        events = [
            TerminalEvent(EventKind.CONNECT, T0, 1, None, {"peer": "10.0.0.1:4000"}),
            TerminalEvent(EventKind.SIGN_ON, T0, 1, terminal, {}),
            TerminalEvent(EventKind.KEY_CHANGE, T0, 1, terminal, {}),
        ]
        await operations.record_events(conn, PROCESS.process_id, events, timeout_ms=TIMEOUT_MS)
        [record] = [
            r
            for r in await operations.fleet_state(conn, T0, timeout_ms=TIMEOUT_MS)
            if r.terminal_id == terminal
        ]
        live = await operations.live_processes(conn, beat_at, timeout_ms=TIMEOUT_MS)
    dead_after = timedelta(seconds=15)
    assert live == {PROCESS.process_id}
    assert terminal_state(record, beat_at + timedelta(seconds=5), dead_after).state is (
        TerminalState.UP
    )
    # The process was killed: no disconnect, no more beats.
    view = terminal_state(record, beat_at + timedelta(minutes=1), dead_after)
    assert (view.state, view.down_since) == (TerminalState.DOWN, beat_at)

"""`python -m ledger prune-events` on a real cluster: what is older than the cut-off goes,
except what the fleet view and the SLA report still read and every open alert; the journal is
untouched, and terminal events are append-only again afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ledger import operations
from ledger.__main__ import main
from ledger.activity import EventKind, ProcessInfo, TerminalEvent
from ledger.operations import NewAlert, OperationsStore, TrafficBucket, open_operations
from ledger.retention import Pruned, prune_operations
from tests.ledger.factory import World
from tests.ops.conftest import OpsDatabase
from tests.ops.test_operations_store import counts

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
CUT_OFF = T0 - timedelta(days=30)
TIMEOUT_MS = 5_000
GONE = ProcessInfo("host-g", 1, T0 - timedelta(days=200))  # no row names it
OLD = ProcessInfo("host-o", 2, T0 - timedelta(days=100))  # served the down terminal
LIVE = ProcessInfo("host-l", 3, T0 - timedelta(days=90))
JOURNAL = ("transactions", "postings", "audit_blocks", "audit_heads")


def days_ago(days: float) -> datetime:
    return T0 - timedelta(days=days)


@pytest.fixture
async def store(ops_db: OpsDatabase) -> AsyncIterator[OperationsStore]:
    switch_dsn = ops_db.owner_dsn.replace("ledger_owner@", "ledger_switch@")
    store = await open_operations(
        switch_dsn, pool_size=2, connect_timeout_ms=TIMEOUT_MS, statement_timeout_ms=TIMEOUT_MS
    )
    try:
        yield store
    finally:
        await store.close(timeout_ms=TIMEOUT_MS)


async def _history(store: OperationsStore, up: str, down: str) -> dict[str, int]:
    """Months of operations as the switch writes them; the ids of the alerts raised."""
    session = (EventKind.SIGN_ON, EventKind.SIGN_OFF, EventKind.DISCONNECT)
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        for process in (GONE, OLD, LIVE):
            await operations.beat(conn, process, process.started_at, stopped=False,
                                  timeout_ms=TIMEOUT_MS)  # fmt: skip
        await operations.beat(conn, GONE, days_ago(199), stopped=True, timeout_ms=TIMEOUT_MS)
        await operations.beat(conn, OLD, days_ago(99), stopped=True, timeout_ms=TIMEOUT_MS)
        await operations.beat(conn, LIVE, T0, stopped=False, timeout_ms=TIMEOUT_MS)
        old = [TerminalEvent(EventKind.CONNECT, days_ago(100), 1, None, {})] + [
            TerminalEvent(kind, days_ago(100), 1, down, {}) for kind in session
        ]
        await operations.record_events(conn, OLD.process_id, old, timeout_ms=TIMEOUT_MS)
        live = [
            TerminalEvent(EventKind.CONNECT, days_ago(90), 1, None, {}),
            TerminalEvent(EventKind.SIGN_ON, days_ago(90), 1, up, {}),
            TerminalEvent(EventKind.SIGN_OFF, days_ago(89), 1, up, {}),
            # Signed on two months ago and up ever since.
            TerminalEvent(EventKind.CONNECT, days_ago(60), 2, None, {}),
            TerminalEvent(EventKind.SIGN_ON, days_ago(60), 2, up, {}),
            TerminalEvent(EventKind.KEY_CHANGE, days_ago(60), 2, up, {}),
        ]
        await operations.record_events(conn, LIVE.process_id, live, timeout_ms=TIMEOUT_MS)
        for process, terminal, at in ((OLD, down, 100), (LIVE, up, 60), (LIVE, up, 1)):
            bucket = days_ago(at)
            await operations.record_traffic(
                conn, process.process_id, [TrafficBucket(terminal, bucket, counts(3, 2, 2, 9),
                                                         bucket)],
                timeout_ms=TIMEOUT_MS,
            )  # fmt: skip
        ids = {}
        for name, raised in (("resolved", 80), ("acknowledged", 75), ("firing", 70)):
            new = NewAlert("decline_rate_spike", f"{up}-{name}", up, "warning", name)
            alert, _ = await operations.fire_alert(
                conn, new, days_ago(raised), LIVE.process_id, timeout_ms=TIMEOUT_MS
            )
            ids[name] = alert.alert_id
        await operations.resolve_alert(
            conn, ids["resolved"], days_ago(79), LIVE.process_id, timeout_ms=TIMEOUT_MS
        )
        await operations.acknowledge_alert(
            conn, ids["acknowledged"], "olga", days_ago(74), LIVE.process_id,
            timeout_ms=TIMEOUT_MS,
        )  # fmt: skip
    return ids


async def _views(store: OperationsStore) -> tuple[object, ...]:
    """What the fleet page and an SLA report after the cut-off read."""
    async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
        fleet = await operations.fleet_state(conn, days_ago(2), timeout_ms=TIMEOUT_MS)
        sessions = await conn.fetch("SELECT * FROM ledger.session_events($1, $2)", CUT_OFF, T0)
        totals = await operations.traffic_totals(conn, CUT_OFF, T0, timeout_ms=TIMEOUT_MS)
    return fleet, [tuple(row) for row in sessions], totals


async def _journal_rows(owner: asyncpg.Connection) -> list[int]:
    return [await owner.fetchval(f"SELECT count(*) FROM ledger.{name}") for name in JOURNAL]


async def test_prune_keeps_what_the_views_read_and_every_open_alert(
    ops_db: OpsDatabase, store: OperationsStore
) -> None:
    owner = await asyncpg.connect(ops_db.owner_dsn)
    try:
        world = World()
        await world.load(owner, customers=1, terminals=2)
        up, down = world.terminals
        ids = await _history(store, up, down)
        views = await _views(store)
        journal = await _journal_rows(owner)
        assert journal[0] > 0  # the opening balances are in the journal
        pruned = await prune_operations(owner, CUT_OFF, batch_max=2, timeout_ms=TIMEOUT_MS)
        # Events: the gone connection's connect, the up terminal's earlier session (connect,
        # sign-on, sign-off), its current connection's connect, the resolved alert's two.
        assert pruned == Pruned(events=7, traffic=2, alerts=1, processes=1)
        assert await _views(store) == views
        assert await _journal_rows(owner) == journal
        alerts = await owner.fetch("SELECT alert_id, state FROM ledger.alerts ORDER BY alert_id")
        assert [tuple(a) for a in alerts] == [
            (ids["acknowledged"], "acknowledged"), (ids["firing"], "firing"),
        ]  # fmt: skip
        kept = await owner.fetch(
            "SELECT (detail->>'alert_id')::bigint AS alert_id, detail->>'state' AS state"
            " FROM ledger.terminal_events WHERE kind = 'alert' ORDER BY event_id"
        )
        assert [tuple(k) for k in kept] == [
            (ids["acknowledged"], "firing"), (ids["firing"], "firing"),
            (ids["acknowledged"], "acknowledged"),
        ]  # fmt: skip
        processes = await owner.fetch("SELECT process_id FROM ledger.switch_processes")
        assert {p["process_id"] for p in processes} == {OLD.process_id, LIVE.process_id}
        for table in ("terminal_events", *JOURNAL[:3]):  # the guards are back on
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(f"DELETE FROM ledger.{table}")
    finally:
        await owner.close()


async def test_the_command_runs_as_the_owner_only(
    ops_db: OpsDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    switch_dsn = ops_db.owner_dsn.replace("ledger_owner@", "ledger_switch@")
    for dsn, args, code, said in (
        (switch_dsn, ["--keep-days", "30"], 2, "error: must be owner of table terminal_events"),
        (ops_db.owner_dsn, ["--before", "2999-01-01"], 2, "2999-01-01 00:00 UTC is in the future"),
        (ops_db.owner_dsn, ["--before", "2026-11-01"], 0,
         "pruned before 2026-11-01 00:00:00 UTC: 0 terminal events, 0 traffic rows,"
         " 0 resolved alerts, 0 switch processes"),
    ):  # fmt: skip
        assert await asyncio.to_thread(main, ["prune-events", "--dsn", dsn, *args]) == code
        out, err = capsys.readouterr()
        assert said in (out if code == 0 else err)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--keep-days", "0"], "a whole number of days, 1 or more, got '0'"),
        (["--before", "2026-11-01", "--keep-days", "3"], "not allowed with argument"),
        ([], "one of the arguments --before --keep-days is required"),
    ],
)
def test_the_cut_off_is_one_of_a_date_or_a_retention(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["prune-events", *args])
    assert exited.value.code == 2
    assert error in capsys.readouterr().err

"""The SLA report's figures against a simulated day with known outages, written through the
switch role's functions as the switch writes them: a kiosk that disconnects, signs on again,
loses its switch process to a crash and comes back on another; one signed on all afternoon; one
never seen; one out of service; traffic with known latencies and codes; alerts acknowledged
after known delays. The CLI and GET /reports/sla give the same figures."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from hsm.devkeys import DevKeys
from ledger import operations, sla
from ledger.__main__ import main as ledger_main
from ledger.activity import (
    HISTOGRAM_SIZE,
    EventKind,
    ProcessInfo,
    TerminalEvent,
    TrafficCounts,
    latency_bucket,
)
from ledger.migrations import Connection
from ledger.operations import NewAlert, TrafficBucket, open_operations
from tests.ledger.factory import World
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import AUTH, ops_stack

DAY = date.today() - timedelta(days=10)
MIDNIGHT = datetime.combine(DAY, time(0), UTC)
TIMEOUT_MS = 5_000


def at(hours: float) -> datetime:
    """`hours` after the day's midnight (negative: the day before)."""
    return MIDNIGHT + timedelta(hours=hours)


def histogram(**by_latency_ms: int) -> tuple[int, ...]:
    counts = [0] * HISTOGRAM_SIZE
    for latency, count in by_latency_ms.items():
        counts[latency_bucket(float(latency.removeprefix("ms")))] += count
    return tuple(counts)


@dataclass(frozen=True)
class Day:
    world: World
    t1: str  # outages, a crash, a move to another process
    t2: str  # never seen
    t3: str  # signed on all afternoon
    t4: str  # out of service


async def simulate(db: OpsDatabase) -> Day:
    owner = await asyncpg.connect(db.owner_dsn)
    try:
        world = World()
        await world.load(owner, customers=1, terminals=4)
        await owner.execute(
            "UPDATE ledger.terminals SET status = 'inactive' WHERE terminal_id = $1",
            world.terminals[3],
        )
    finally:
        await owner.close()
    t1, t2, t3, t4 = world.terminals
    store = await open_operations(
        db.owner_dsn.replace("ledger_owner@", "ledger_switch@"),
        pool_size=1, connect_timeout_ms=TIMEOUT_MS, statement_timeout_ms=TIMEOUT_MS,
    )  # fmt: skip
    crashed = ProcessInfo("switch-1", 100, at(-1))
    replacement = ProcessInfo("switch-2", 200, at(12.5))
    try:
        async with store.connection(timeout_ms=TIMEOUT_MS) as conn:
            # switch-1 beats until noon, then is killed (it never says it stopped).
            for hours in (-1, 6, 12):
                await operations.beat(
                    conn, crashed, at(hours), stopped=False, timeout_ms=TIMEOUT_MS
                )
            for later, stopped in ((12.5, False), (24.5, True)):
                await operations.beat(
                    conn, replacement, at(later), stopped=stopped, timeout_ms=TIMEOUT_MS
                )
            await _events(conn, crashed, [
                (EventKind.CONNECT, -0.5, 1, None),
                (EventKind.SIGN_ON, -0.5, 1, t1),  # signed on when the day began
                (EventKind.KEY_CHANGE, 0.2, 1, t1),
                (EventKind.DISCONNECT, 6, 1, t1),  # down 06:00-07:30
                (EventKind.SIGN_ON, 7.5, 2, t1),  # then on until the crash at noon
            ])  # fmt: skip
            await _events(conn, replacement, [
                (EventKind.SIGN_ON, 12.5, 1, t1),
                (EventKind.SIGN_OFF, 23, 1, t1),
                (EventKind.SIGN_ON, 12.5, 2, t3),  # on until its process stopped, next day
            ])  # fmt: skip
            await _traffic(conn, crashed, replacement, t1)
            await _alerts(conn, t1, t3)
    finally:
        await store.close(timeout_ms=TIMEOUT_MS)
    return Day(world, t1, t2, t3, t4)


async def _events(
    conn: Connection,
    process: ProcessInfo,
    events: list[tuple[EventKind, float, int, str | None]],
) -> None:
    await operations.record_events(
        conn,
        process.process_id,
        [
            TerminalEvent(kind, at(hours), seq, terminal, {})
            for kind, hours, seq, terminal in events
        ],
        timeout_ms=TIMEOUT_MS,
    )


async def _traffic(
    conn: Connection, crashed: ProcessInfo, replacement: ProcessInfo, t1: str
) -> None:
    morning = TrafficCounts(
        50, 40, 36, {"00": 36, "51": 2, "91": 1, "96": 1}, histogram(ms18=20, ms40=19, ms1200=1)
    )
    afternoon = TrafficCounts(12, 10, 10, {"00": 10}, histogram(ms18=10))
    the_day_before = TrafficCounts(9, 9, 9, {"00": 9}, histogram(ms18=9))
    for process, bucket, counts in (
        (crashed, at(10), morning),
        (replacement, at(13), afternoon),
        (crashed, at(-0.25), the_day_before),
        (replacement, at(24.2), the_day_before),
    ):
        await operations.record_traffic(
            conn, process.process_id, [TrafficBucket(t1, bucket, counts, bucket)],
            timeout_ms=TIMEOUT_MS,
        )  # fmt: skip


async def _alerts(conn: Connection, t1: str, t3: str) -> None:
    for rule, terminal, raised, acknowledged in (
        ("terminal_offline", t1, 6.1, 6.1 + 600 / 3600),
        ("decline_rate_spike", t1, 14, 14 + 120 / 3600),
        ("terminal_offline", t3, 23.9, None),
        ("unavailable_ratio", None, 10, 10.5),  # about the fleet: in no terminal's row
    ):
        alert, _ = await operations.fire_alert(
            conn,
            NewAlert(rule, terminal or "fleet", terminal, "warning", "simulated"),
            at(raised),
            "switch-1",
            timeout_ms=TIMEOUT_MS,
        )
        if acknowledged is not None:
            await operations.acknowledge_alert(
                conn, alert.alert_id, "olga", at(acknowledged), "switch-1", timeout_ms=TIMEOUT_MS
            )


@pytest.fixture
async def day(ops_db: OpsDatabase) -> Day:
    return await simulate(ops_db)


def cli(capsys: pytest.CaptureFixture[str], db: OpsDatabase, *arguments: str) -> str:
    code = ledger_main(
        ["report", "sla", "--dsn", db.owner_dsn, "--from", str(DAY), "--to", str(DAY), *arguments]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["terminal_id"]: row for row in report["rows"]}


def test_the_figures_of_a_day_with_known_outages(
    day: Day, ops_db: OpsDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    report = json.loads(cli(capsys, ops_db, "--format", "json"))
    rows = rows_of(report)
    assert set(rows) == {day.t1, day.t2, day.t3, day.t4}  # every terminal, traffic or not
    t1, t2, t3, t4 = (rows[t] for t in (day.t1, day.t2, day.t3, day.t4))
    # 00:00-06:00, 07:30-12:00 (the crash: its process's last beat), 12:30-23:00.
    assert t1["signed_on_s"] == 21 * 3600
    assert t1["scheduled_s"] == 24 * 3600
    assert t1["availability"] == 0.875
    assert (t1["requests"], t1["financial"], t1["approved"]) == (62, 50, 46)
    assert t1["approval_rate"] == 0.92
    assert (t1["responses_91"], t1["responses_96"]) == (1, 1)
    # p50: rank 25 of 50, in the 15-20 ms bucket of 30; p99: rank 49.5, in 1000-1500 ms of 1.
    assert t1["latency_p50_ms"] == pytest.approx(15 + 5 * 25 / 30, abs=0.05)
    assert t1["latency_p99_ms"] == 1250.0
    assert (t1["alerts_raised"], t1["alerts_acknowledged"]) == (2, 2)
    assert t1["acknowledge_s_mean"] == 360.0  # 600 s and 120 s
    assert (t2["availability"], t2["requests"], t2["latency_p50_ms"]) == (0.0, 0, None)
    assert t3["signed_on_s"] == 11.5 * 3600  # 12:30 to midnight: its process ran on
    assert (t3["alerts_raised"], t3["alerts_acknowledged"], t3["acknowledge_s_mean"]) == (
        1, 0, None,
    )  # fmt: skip
    assert (t4["status"], t4["scheduled_s"], t4["availability"]) == ("inactive", 0.0, None)


def test_service_hours_narrow_the_scheduled_time(
    day: Day, ops_db: OpsDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = rows_of(json.loads(cli(capsys, ops_db, "--format", "json", "--hours", "06:00-22:00")))
    assert rows[day.t1]["scheduled_s"] == 16 * 3600
    assert rows[day.t1]["signed_on_s"] == (4.5 + 9.5) * 3600  # 07:30-12:00, 12:30-22:00
    assert rows[day.t3]["signed_on_s"] == 9.5 * 3600


def test_csv_and_html_carry_the_same_figures(
    day: Day, ops_db: OpsDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    table = list(csv.DictReader(io.StringIO(cli(capsys, ops_db, "--format", "csv"))))
    assert list(table[0]) == list(sla.COLUMNS)
    [t1] = [row for row in table if row["terminal_id"] == day.t1]
    assert (t1["availability"], t1["approval_rate"], t1["latency_p99_ms"]) == (
        "0.875", "0.92", "1250.0",
    )  # fmt: skip
    [t4] = [row for row in table if row["terminal_id"] == day.t4]
    assert t4["availability"] == ""
    page = cli(capsys, ops_db, "--format", "html")
    assert page.startswith("<!doctype html>")
    assert "<svg" in page
    assert "87.5%" in page  # t1's cell in the chart
    assert f"<td>{day.t1}</td>" in page


def test_bad_parameters_are_refused_by_name(
    ops_db: OpsDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ledger_main(
        ["report", "sla", "--dsn", ops_db.owner_dsn, "--from", "2026-02-01", "--to", "2026-01-01"]
    )
    assert code == 2
    assert "to: 2026-01-01 is before from (2026-02-01)" in capsys.readouterr().err


async def test_the_http_report_matches_the_cli(
    day: Day, ops_db: OpsDatabase, dev_keys: DevKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI runs its own event loop: in a thread of its own here.
    printed = await asyncio.to_thread(cli, capsys, ops_db, "--format", "json")
    expected = rows_of(json.loads(printed))
    async with (
        ops_stack(ops_db, dev_keys, world=day.world) as stack,
        aiohttp.ClientSession(headers=AUTH) as http,
    ):
        url = f"{stack.admin_url}/reports/sla?from={DAY}&to={DAY}"
        async with http.get(url) as reply:
            assert reply.status == 200
            served = rows_of(await reply.json())
        async with http.get(url + "&format=html") as reply:
            assert (reply.status, reply.content_type) == (200, "text/html")
        for query, problem in (
            ("from=2026-13-01", "from: expected YYYY-MM-DD"),
            ("format=pdf", "format: expected one of csv, json, html"),
            ("hours=22:00-06:00", "hours: expected HH:MM-HH:MM"),
            ("from=2026-01-01&to=2026-12-31", "to: at most 92 business days"),
            ("terminal=T1", "terminal: no such parameter"),
        ):
            async with http.get(f"{stack.admin_url}/reports/sla?{query}") as reply:
                assert reply.status == 400, query
                assert problem in (await reply.json())["error"]
    assert served == expected

"""The auditor API against a real ledger: filters, pages, exports, verification jobs, reports,
and the 400s, 429s and 503s."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ledger import audit, exports
from ledger.model import AuditFields, Withdrawal
from ledger.store import LedgerStore
from switch import auditor_api
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, Role
from switch.admin import create_admin_app
from switch.auditor_api import JournalSettings
from switch.monitor import Monitor
from switch.server import Stats
from tests.conftest import PgCluster
from tests.ledger.factory import World, key
from tests.ledger.helpers import run

AUDITOR = {"Authorization": f"Bearer {DEVELOPMENT_TOKENS[Role.AUDITOR]}"}
# Records of these tests are a few seconds apart from here, a time no other test uses.
BASE = datetime(2026, 11, 24, 3, 17, tzinfo=UTC)
Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class Activity:
    terminals: list[str]
    pans: list[str]
    rrns: list[str]


async def _withdraw(
    store: LedgerStore, pan: str, terminal: str, amount_minor: int, *, rrn: str, at: datetime
) -> None:
    audit_fields = AuditFields(mti="0200", processing_code="011000", rrn=rrn)
    await run(store, Withdrawal(pan, key(terminal), audit_fields, "20", amount_minor, "EUR"), at)


@pytest.fixture
async def activity(ledger_store: LedgerStore, owner_conn: asyncpg.Connection) -> Activity:
    """Two customers at two terminals: T1 gets three withdrawals (one of nothing: 13), T2 two."""
    world = World()
    await world.load(owner_conn, 2, terminals=2)
    first, second = (customer.pan for customer in world.customers)
    t1, t2 = world.terminals
    plan = [(first, t1, 2_000), (first, t1, 0), (second, t2, 3_000), (second, t1, 1_000)]
    plan.append((first, t2, 2_500))
    rrns = [f"{t1[-5:]}{index:07d}" for index in range(len(plan))]
    for index, (pan, terminal, amount) in enumerate(plan):
        await _withdraw(ledger_store, pan, terminal, amount, rrn=rrns[index], at=_at(index))
    return Activity(world.terminals, [first, second], rrns)


def _at(index: int) -> datetime:
    return BASE + timedelta(seconds=10 * index)


async def _ready() -> Mapping[str, bool]:
    return {}


def _app(journal: JournalSettings | None) -> web.Application:
    return create_admin_app(
        DEVELOPMENT_KEYS,
        monitor=Monitor(lambda: BASE),
        stats=lambda: Stats(0, 0, 0),
        readiness=_ready,
        journal=journal,
        wall_clock=lambda: BASE,
    )


@pytest.fixture
async def api(pg_cluster: PgCluster) -> AsyncIterator[Client]:
    journal = JournalSettings(pg_cluster.owner_dsn, time(0, 0))
    async with TestClient(TestServer(_app(journal))) as client:
        yield client


async def _page(api: Client, **query: str) -> dict[str, Any]:
    async with api.get("/journal", params=query, headers=AUDITOR) as reply:
        assert reply.status == 200, await reply.text()
        page: dict[str, Any] = await reply.json()
        return page


async def _rrns(api: Client, **query: str) -> list[str]:
    return [record["rrn"] for record in (await _page(api, **query))["records"]]


async def test_records_are_filtered_by_each_field(api: Client, activity: Activity) -> None:
    t1, t2 = activity.terminals
    rrn = activity.rrns
    assert await _rrns(api, terminal=t1) == [rrn[0], rrn[1], rrn[3]]
    assert await _rrns(api, terminal=t2) == [rrn[2], rrn[4]]
    assert await _rrns(api, terminal=t1, response_code="13") == [rrn[1]]
    assert await _rrns(api, rrn=rrn[3]) == [rrn[3]]
    # From inclusive, to exclusive; a time without a zone is UTC.
    window = {"from": _at(1).isoformat(), "to": _at(4).replace(tzinfo=None).isoformat()}
    assert await _rrns(api, terminal=t1, **window) == [rrn[1], rrn[3]]
    last4 = activity.pans[0][-4:]
    assert await _rrns(api, terminal=t2, pan_last4=last4) == [rrn[4]]
    page = await _page(api, pan_last4=last4, limit="1000")
    assert {r["pan_masked"][-4:] for r in page["records"]} == {last4}
    assert {rrn[0], rrn[1], rrn[4]} <= {r["rrn"] for r in page["records"]}


async def test_records_hold_masked_pans_only(api: Client, activity: Activity) -> None:
    page = await _page(api, terminal=activity.terminals[0])
    text = json.dumps(page)
    assert not [pan for pan in activity.pans if pan in text]
    pan = activity.pans[0]
    assert page["records"][0]["pan_masked"] == pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


async def test_pages_follow_the_cursor_to_the_end(api: Client, activity: Activity) -> None:
    t1 = activity.terminals[0]
    whole = (await _page(api, terminal=t1))["records"]
    first = await _page(api, terminal=t1, limit="2")
    assert first["records"] == whole[:2]
    assert first["next_cursor"] == str(whole[1]["transaction_id"])
    second = await _page(api, terminal=t1, limit="2", cursor=first["next_cursor"])
    assert (second["records"], second["next_cursor"]) == (whole[2:], None)
    # A page that ends exactly at the last record says so.
    exact = await _page(api, terminal=t1, limit="3")
    assert (len(exact["records"]), exact["next_cursor"]) == (3, None)


# (path, query, the parameter named, what it must be)
BAD_FILTERS = [
    ("/journal", "from=yesterday", "from", "an ISO 8601 date or date-time"),
    ("/journal", "from=2026-13-01", "from", "an ISO 8601 date"),
    # An unencoded + is a space in a query string: the message says how to write it.
    ("/journal", "from=2026-11-24T03:00:00+01:00", "from", "+ is %2B"),
    ("/journal", "to=2026-11-24T25:00", "to", "an ISO 8601 date"),
    ("/journal", "from=2026-11-24&to=2026-11-24", "to", "a time after from"),
    ("/journal", "from=2026-11-25&to=2026-11-24", "to", "a time after from"),
    ("/journal", "limit=0", "limit", "an integer from 1 to 1000"),
    ("/journal", "limit=1001", "limit", "an integer from 1 to 1000"),
    ("/journal", "limit=ten", "limit", "an integer from 1 to 1000"),
    ("/journal", "limit=%C2%B2", "limit", "an integer from 1 to 1000"),
    ("/journal", "cursor=-1", "cursor", "the next_cursor of an earlier page"),
    ("/journal", "cursor=99999999999999999999", "cursor", "the next_cursor"),
    ("/journal", "terminal=", "terminal", "1 to 16 printable ASCII characters"),
    ("/journal", "terminal=" + "T" * 17, "terminal", "1 to 16 printable ASCII characters"),
    ("/journal", "terminal=A&terminal=B", "terminal", "one value, given once"),
    ("/journal", "response_code=5", "response_code", "two digits or capitals"),
    ("/journal", "rrn=1234567890123", "rrn", "1 to 12 letters or digits"),
    ("/journal", "pan_last4=123", "pan_last4", "the last four digits"),
    ("/journal", "pan_last4=12345", "pan_last4", "the last four digits"),
    ("/journal", "pan=4000001234567899", "pan", "no such parameter here"),
    ("/journal", "format=csv", "format", "no such parameter here"),
    ("/journal/export", "format=xml", "format", "csv or jsonl"),
    ("/journal/export", "rrn=1", "rrn", "no such parameter here (known: format, from, terminal,"),
    ("/journal/export", "from=2026-11-24&to=2026-11-23", "to", "a time after from"),
    ("/journal/export", "to=soon", "to", "an ISO 8601 date"),
    ("/reports/terminals", "business_date=2026-02-30", "business_date", "a date YYYY-MM-DD"),
    ("/reports/terminals", "date=2026-02-03", "date", "no such parameter here"),
]


@pytest.mark.parametrize(("path", "query", "parameter", "expected"), BAD_FILTERS)
async def test_bad_filters_are_400_naming_the_parameter(
    api: Client, path: str, query: str, parameter: str, expected: str
) -> None:
    async with api.get(f"{path}?{query}", headers=AUDITOR) as reply:
        assert reply.status == 400
        body = await reply.json()
    assert body["error"] == "bad_parameter"
    assert body["parameter"] == parameter
    assert expected in body["expected"]


async def _export(api: Client, **query: str) -> tuple[str, str]:
    async with api.get("/journal/export", params=query, headers=AUDITOR) as reply:
        assert reply.status == 200, await reply.text()
        return reply.headers["Content-Type"], await reply.text()


@pytest.mark.parametrize("output_format", ["csv", "jsonl"])
async def test_an_export_is_what_the_cli_writes(
    api: Client, activity: Activity, owner_conn: asyncpg.Connection, output_format: str
) -> None:
    content_type, text = await _export(
        api,
        format=output_format,
        terminal=activity.terminals[0],
        **{"from": _at(0).isoformat(), "to": _at(5).isoformat()},
    )
    expected = io.StringIO()
    count = await exports.export(
        owner_conn,
        expected,
        start=_at(0),
        end=_at(5),
        terminal_id=activity.terminals[0],
        output_format=output_format,
        timeout_ms=60_000,
    )
    # JSON lines carry whole blocks: the terminal's three, and what shares their blocks.
    assert count == 3 if output_format == "csv" else count >= 3
    assert text == expected.getvalue()
    assert content_type.startswith("text/csv" if output_format == "csv" else "application/x-nd")


async def test_a_page_holds_the_records_an_export_holds(api: Client, activity: Activity) -> None:
    terminal = activity.terminals[1]
    _, text = await _export(api, format="jsonl", terminal=terminal)
    exported = [json.loads(line) for line in text.splitlines()]
    # The export holds whole blocks (other terminals' transactions too) in chain order.
    mine = sorted(
        (r for r in exported if r["record"] == "transaction" and r["terminal_id"] == terminal),
        key=lambda r: r["transaction_id"],
    )
    assert mine == (await _page(api, terminal=terminal))["records"]


async def test_an_export_of_nothing(api: Client) -> None:
    empty = {"from": "2000-01-01", "to": "2000-01-02"}
    _, text = await _export(api, **empty)
    assert list(csv.reader(io.StringIO(text))) == [list(exports.CSV_FIELDS)]
    assert await _export(api, format="jsonl", **empty) == ("application/x-ndjson", "")


async def test_exports_at_once_are_bounded(api: Client) -> None:
    journal = api.app[auditor_api.JOURNAL_KEY]
    assert journal is not None
    for _ in range(auditor_api.EXPORTS_AT_ONCE_MAX):
        await journal.exports.acquire()
    async with api.get("/journal/export", headers=AUDITOR) as reply:
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "30"
        assert (await reply.json())["error"] == "busy"


async def _events(api: Client, location: str) -> list[dict[str, Any]]:
    async with api.get(f"{location}/events", headers=AUDITOR) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/x-ndjson"
        return [json.loads(line) async for line in reply.content]


async def test_a_verification_streams_its_progress_then_the_result_verify_gives(
    api: Client, activity: Activity, owner_conn: asyncpg.Connection
) -> None:
    async with api.post("/journal/verifications", headers=AUDITOR) as reply:
        assert reply.status == 202
        started = await reply.json()
        location = reply.headers["Location"]
    assert location == f"/journal/verifications/{started['job_id']}"
    assert started["state"] in {"running", "ok"}
    lines = await _events(api, location)
    *progress, last = lines
    assert all(line["state"] == "running" for line in progress)
    assert last["state"] == "ok"
    expected = await audit.verify(owner_conn, timeout_ms=60_000)
    assert last["result"] == {
        "ok": True,
        "records": expected.records,
        "blocks": expected.blocks,
        "chains": 16,
        "damage_count": 0,
        "damage": [],
        "books_count": 0,
        "books": [],
    }
    # Every row of the walk was counted: one per transaction and per block without any.
    assert last["rows_read"] >= expected.records
    async with api.get(location, headers=AUDITOR) as reply:
        assert await reply.json() == last


async def test_a_verification_started_while_one_runs_joins_it(api: Client) -> None:
    journal = api.app[auditor_api.JOURNAL_KEY]
    assert journal is not None
    first = journal.start_verification()
    assert journal.start_verification() is first
    await first.done.wait()
    assert journal.start_verification() is not first


async def test_the_terminal_report_is_the_cli_report_of_the_business_day(
    api: Client, activity: Activity, owner_conn: asyncpg.Connection
) -> None:
    expected = await audit.terminal_report(owner_conn, BASE.date(), timeout_ms=60_000)
    for query in ({}, {"business_date": BASE.date().isoformat()}):
        async with api.get("/reports/terminals", params=query, headers=AUDITOR) as reply:
            assert reply.status == 200
            report = await reply.json()
        assert report["business_date"] == "2026-11-24"
        assert report["terminals"] == [asdict(d) | {"reconciled": d.reconciled} for d in expected]
    mine = [t for t in report["terminals"] if t["terminal_id"] in activity.terminals]
    assert [(t["withdrawals"], t["withdrawn_minor"], t["reconciled"]) for t in mine] == [
        (2, 3_000, True),
        (2, 5_500, True),
    ]


AUDITOR_ROUTES = [
    ("GET", "/journal"),
    ("GET", "/journal/export"),
    ("POST", "/journal/verifications"),
    ("GET", "/journal/verifications/0123456789abcdef"),
    ("GET", "/reports/terminals"),
]


@pytest.mark.parametrize(("method", "path"), AUDITOR_ROUTES)
async def test_without_a_journal_database_the_auditor_routes_answer_503(
    method: str, path: str
) -> None:
    async with TestClient(TestServer(_app(None))) as client:
        async with client.request(method, path, headers=AUDITOR) as reply:
            assert reply.status == 503
            assert await reply.json() == {
                "error": "journal_unavailable",
                "detail": "the auditor API has no database: set ledger.audit_dsn",
            }


@pytest.mark.parametrize(("method", "path"), AUDITOR_ROUTES[:2] + AUDITOR_ROUTES[4:])
async def test_a_journal_database_that_does_not_answer_is_503(method: str, path: str) -> None:
    # Nothing listens there: the connection is refused.
    journal = JournalSettings("postgresql://nobody@127.0.0.1:9/ledger", time(0, 0))
    async with TestClient(TestServer(_app(journal))) as client:
        async with client.request(method, path, headers=AUDITOR) as reply:
            assert reply.status == 503
            assert (await reply.json())["error"] == "journal_unavailable"


async def test_a_verification_the_database_fails_is_reported_failed() -> None:
    journal = JournalSettings("postgresql://nobody@127.0.0.1:9/ledger", time(0, 0))
    async with TestClient(TestServer(_app(journal))) as client:
        async with client.post("/journal/verifications", headers=AUDITOR) as reply:
            location = reply.headers["Location"]
        last = (await _events(client, location))[-1]
    assert (last["state"], last["result"]) == ("failed", None)
    assert last["failure"].startswith(("ConnectionRefusedError", "OSError"))

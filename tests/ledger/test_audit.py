"""The audit journal, the auditors' CLI, terminal reports and provisioning from fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import asyncpg
import pytest

from ledger import audit, journal
from ledger.__main__ import build_parser, main
from ledger.errors import FixtureError
from ledger.model import Reversal, Withdrawal
from ledger.rules import business_day
from ledger.store import LedgerStore
from tests.conftest import PgCluster
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import balance, run

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo-fixtures.toml"


async def _activity(store: LedgerStore, conn: asyncpg.Connection) -> World:
    world = World()
    await world.load(conn, 1)
    customer, terminal = world.customers[0], world.terminals[0]
    first = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 2_000, "EUR")
    await run(store, first)
    await run(store, Withdrawal(customer.pan, key(terminal), AUDIT, "20", 3_000, "EUR"))
    await run(store, Withdrawal(customer.pan, key(terminal), AUDIT, "20", 0, "EUR"))
    await run(store, Reversal(customer.pan, key(terminal, "0420"), AUDIT, first.key, 500))
    return world


async def _rows(conn: asyncpg.Connection, terminal: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "SELECT t.*, (extract(epoch FROM t.recorded_at) * 1000000)::bigint AS recorded_at_us,"
        " legs.* FROM ledger.transactions t LEFT JOIN LATERAL ("
        "  SELECT array_agg(p.account_id ORDER BY p.account_id) AS account_ids,"
        "   array_agg(p.customer_id ORDER BY p.account_id) AS customer_ids,"
        "   array_agg(p.amount_minor ORDER BY p.account_id) AS amounts_minor,"
        "   array_agg(p.currency::text ORDER BY p.account_id) AS currencies"
        "  FROM ledger.postings p WHERE p.transaction_id = t.transaction_id) legs ON true"
        " WHERE t.terminal_id = $1 ORDER BY t.transaction_id",
        terminal,
    ))  # fmt: skip


async def test_records_carry_their_leaves_and_mask(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await _activity(ledger_store, owner_conn)
    rows = await _rows(owner_conn, world.terminals[0])
    assert [r["response_code"] for r in rows] == ["00", "00", "13", "00"]
    assert [r["amount_minor"] for r in rows] == [2_000, 3_000, 0, 1_500]
    for row in rows:
        assert row["leaf"] == journal.leaf(row, audit.legs_of(row))
    pan = world.customers[0].pan
    assert {r["pan_masked"] for r in rows} == {pan[:6] + "******" + pan[-4:]}
    dump = "".join(str(dict(r)) for r in rows)
    assert pan not in dump
    report = await audit.verify(owner_conn, timeout_ms=60_000)
    assert report.ok, (report.damage, report.books)
    assert report.chains == 16


async def _tampered(pg_cluster: PgCluster, statement: str, *args: object) -> None:
    """As a superuser with the journal's triggers off: what only an attacker with the
    database's keys could do."""
    conn = await asyncpg.connect(pg_cluster.superuser_dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def test_verify_names_an_altered_record(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    world = await _activity(ledger_store, owner_conn)
    second = (await _rows(owner_conn, world.terminals[0]))[1]["transaction_id"]
    update = "UPDATE ledger.transactions SET amount_minor = $2 WHERE transaction_id = $1"
    await _tampered(pg_cluster, update, second, 300)
    try:
        report = await audit.verify(owner_conn, timeout_ms=60_000)
        assert report.damage == [
            journal.Damage(f"transaction {second}", "leaf hash does not match its contents")
        ]
        code, out = await asyncio.to_thread(_cli, "audit", "verify", "--dsn", pg_cluster.owner_dsn)
        assert code == 1
        assert f"FIRST BAD RECORD: transaction {second}: leaf hash" in out
    finally:
        await _tampered(pg_cluster, update, second, 3_000)
    assert (await audit.verify(owner_conn, timeout_ms=60_000)).ok


async def test_verify_finds_postings_changed_with_their_balances(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    """Both legs of a posting and both balances changed to match: the books balance, the leaf
    does not."""
    world = await _activity(ledger_store, owner_conn)
    first = (await _rows(owner_conn, world.terminals[0]))[0]["transaction_id"]
    legs = "UPDATE ledger.postings SET amount_minor = amount_minor / 2 WHERE transaction_id = $1"
    balances = (
        "UPDATE ledger.accounts a SET balance_minor = a.balance_minor - p.amount_minor * $2"
        " FROM ledger.postings p WHERE p.transaction_id = $1 AND p.account_id = a.account_id"
    )
    await _tampered(pg_cluster, balances, first, 1)
    await _tampered(pg_cluster, legs, first)
    await _tampered(pg_cluster, balances, first, -1)
    report = await audit.verify(owner_conn, timeout_ms=60_000)
    assert report.books == []
    assert journal.Damage(f"transaction {first}", "leaf hash does not match its contents") in (
        report.damage
    )
    await _tampered(pg_cluster, balances, first, 1)
    await _tampered(pg_cluster, legs.replace("/ 2", "* 2"), first)
    await _tampered(pg_cluster, balances, first, -1)
    assert (await audit.verify(owner_conn, timeout_ms=60_000)).ok


async def test_verify_finds_what_foreign_keys_would_refuse(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    """Transactions and postings have no foreign keys (only the ledger's functions write them,
    taking the ids from the rows referenced): verify checks what the keys would."""
    world = await _activity(ledger_store, owner_conn)
    first = (await _rows(owner_conn, world.terminals[0]))[0]
    transaction_id, customer_id = first["transaction_id"], first["customer_id"]
    (debited, credited), (_, credited_owner) = first["account_ids"], first["customer_ids"]
    far = 10**12
    moved = "UPDATE ledger.postings SET transaction_id = transaction_id + $2 WHERE account_id = $1"
    owner = "UPDATE ledger.postings SET customer_id = customer_id + $2 WHERE account_id = $1"
    orphan = (
        "UPDATE ledger.transactions SET customer_id = customer_id + $2 WHERE transaction_id = $1"
    )
    one_leg = f"{moved} AND transaction_id = {transaction_id}"
    await _tampered(pg_cluster, one_leg, debited, far)
    await _tampered(pg_cluster, f"{owner} AND transaction_id = {transaction_id}", credited, far)
    await _tampered(pg_cluster, orphan, transaction_id, far)
    try:
        report = await audit.verify(owner_conn, timeout_ms=60_000)
        assert sorted(line for line in report.books if "does not balance" not in line) == [
            f"posting {transaction_id + far}/{debited}: no such transaction",
            f"posting {transaction_id}/{credited}: not an account of customer"
            f" {credited_owner + far}",
            f"transaction {transaction_id}: no such customer {customer_id + far}",
        ]
    finally:
        await _tampered(pg_cluster, f"{moved} AND transaction_id = {transaction_id + far}",
                        debited, -far)  # fmt: skip
        await _tampered(pg_cluster, f"{owner} AND transaction_id = {transaction_id}", credited,
                        -far)  # fmt: skip
        await _tampered(pg_cluster, orphan, transaction_id, -far)
    assert (await audit.verify(owner_conn, timeout_ms=60_000)).ok


async def test_verify_finds_a_removed_block_and_bad_books(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    world = await _activity(ledger_store, owner_conn)
    last = (await _rows(owner_conn, world.terminals[0]))[-1]
    block = await owner_conn.fetchrow(
        "SELECT * FROM ledger.audit_blocks WHERE lane = $1 AND seq = $2",
        last["lane"], last["block_seq"],
    )  # fmt: skip
    assert block is not None
    remove = "DELETE FROM ledger.audit_blocks WHERE lane = $1 AND seq = $2"
    await _tampered(pg_cluster, remove, last["lane"], last["block_seq"])
    checking = world.customers[0].checking
    await _tampered(
        pg_cluster,
        "UPDATE ledger.accounts SET balance_minor = balance_minor + 1 WHERE account_number = $1",
        checking,
    )
    try:
        report = await audit.verify(owner_conn, timeout_ms=60_000)
        where = f"block {last['lane']}#{last['block_seq']}"
        assert journal.Damage(where, "transactions of a block that is missing") in report.damage
        assert report.books == [f"account {checking}: balance 96501 but postings sum to 96500"]
    finally:
        await owner_conn.execute(
            "INSERT INTO ledger.audit_blocks VALUES ($1, $2, $3, $4, $5, $6)", *block.values()
        )
        await _tampered(
            pg_cluster,
            "UPDATE ledger.accounts SET balance_minor = balance_minor - 1"
            " WHERE account_number = $1",
            checking,
        )
    assert (await audit.verify(owner_conn, timeout_ms=60_000)).ok


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.mark.parametrize("output_format", ["csv", "jsonl"])
async def test_export(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    pg_cluster: PgCluster,
    output_format: str,
) -> None:
    world = await _activity(ledger_store, owner_conn)
    terminal = world.terminals[0]
    code, out = await asyncio.to_thread(
        _cli, "audit", "export", "--dsn", pg_cluster.owner_dsn,
        "--from", (NOW - timedelta(minutes=1)).isoformat(),
        "--to", (NOW + timedelta(minutes=1)).isoformat(),
        "--terminal", terminal, "--format", output_format,
    )  # fmt: skip
    assert code == 0
    if output_format == "csv":
        records = list(csv.DictReader(io.StringIO(out)))
    else:
        # In chain order, each block before its transactions; here, in transaction order.
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["record"] == "block"
        records = sorted(
            (r for r in lines if r["record"] == "transaction"), key=lambda r: r["transaction_id"]
        )
    ids = [int(r["transaction_id"]) for r in records]
    assert ids == sorted(ids)
    assert len(ids) == 4
    assert [r["outcome"] for r in records] == ["approved", "approved", "invalid_amount", "approved"]
    assert world.customers[0].pan not in out
    assert records[0]["pan_masked"].startswith("400000")


async def test_terminal_report_reconciles(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    world = await _activity(ledger_store, owner_conn)
    days = await audit.terminal_report(owner_conn, NOW.date(), timeout_ms=60_000)
    mine = [d for d in days if d.terminal_id == world.terminals[0]]
    assert mine == [audit.TerminalDay(world.terminals[0], "EUR", 2, 5_000, 1, 1_500, 3_500, 3_500)]
    assert all(d.reconciled for d in days)
    code, out = await asyncio.to_thread(
        _cli, "report", "terminals", "--dsn", pg_cluster.owner_dsn,
        "--business-date", NOW.date().isoformat(),
    )  # fmt: skip
    assert code == 0
    assert f"{world.terminals[0]},EUR,2,5000,1,1500,3500,3500,yes" in out


@pytest.mark.parametrize(
    ("options", "cutover"), [([], time(0, 0)), (["--cutover", "23:59"], time(23, 59))]
)
async def test_terminal_report_defaults_to_the_current_business_day(
    pg_cluster: PgCluster, capsys: pytest.CaptureFixture[str], options: list[str], cutover: time
) -> None:
    # Either side of the call, in case the business day turns over while it runs.
    days = {business_day(datetime.now(UTC), cutover)}
    code, out = await asyncio.to_thread(
        _cli, "report", "terminals", "--dsn", pg_cluster.owner_dsn, *options
    )
    days.add(business_day(datetime.now(UTC), cutover))
    assert code == 0
    assert out.startswith("terminal,currency,withdrawals,")
    told = capsys.readouterr().err.strip()
    assert told in {f"business day {day} (it starts at {cutover:%H:%M} UTC)" for day in days}


def test_a_cutover_that_is_not_a_time_of_day_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["report", "terminals", "--cutover", "25:00"])
    assert exit_info.value.code == 2
    assert "argument --cutover: a time of day HH:MM, got '25:00'" in capsys.readouterr().err


async def test_demo_fixtures_load_idempotently(
    owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    for _ in range(2):
        code, out = await asyncio.to_thread(_cli, "load", str(DEMO), "--dsn", pg_cluster.owner_dsn)
        assert code == 0
        assert "loaded 3 customers, 6 accounts, 5 cards, 3 terminals" in out
    assert await balance(owner_conn, "EUR-0001-20") == 250_000
    # Its cassettes' first load (100 x USD 100 + 300 x USD 20), posted once.
    assert await balance(owner_conn, "CASH-KIOSK003") == -1_600_000
    cards = await owner_conn.fetch(
        "SELECT pan_masked, emv_scheme FROM ledger.cards WHERE customer_id = 1 ORDER BY card_id"
    )
    assert [tuple(card) for card in cards] == [
        ("411111******1111", None),
        ("476173******0010", "visa"),  # Ada's chip card
    ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"pan": "4111111111111112"}, "Luhn"),
        ({"accounts": {"20": "NOPE"}}, "no 20 account NOPE"),
        ({"daily_count": "5"}, "daily_count"),
    ],
)
async def test_bad_fixtures_are_named(
    owner_conn: asyncpg.Connection, bad: dict[str, object], message: str
) -> None:
    with pytest.raises(FixtureError, match=message):
        await World().load(owner_conn, 1, card=bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate"], ["load"], ["policy"], ["audit", "verify"], ["audit", "export"],
        ["report", "terminals"],
    ],
)  # fmt: skip
def test_every_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "--data-dir" in capsys.readouterr().out


def test_export_time_arguments_default_to_utc() -> None:
    args = build_parser().parse_args(
        ["audit", "export", "--from", "2026-11-23", "--to", "2026-11-24T06:00"]
    )
    assert args.start == datetime(2026, 11, 23, tzinfo=UTC)
    assert args.end == datetime(2026, 11, 24, 6, tzinfo=UTC)


async def test_policy_is_shown_and_set(
    owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    dsn = ("--dsn", pg_cluster.owner_dsn)
    code, out = await asyncio.to_thread(_cli, "policy", *dsn)
    assert (code, out) == (
        0, 'pin_tries_max = 3\ncross_customer_transfers = false\nbusiness_day_cutover = "00:00"\n'
    )  # fmt: skip
    try:
        code, out = await asyncio.to_thread(
            _cli, "policy", *dsn, "--pin-tries-max", "5", "--cross-customer-transfers", "yes",
            "--business-day-cutover", "22:30",
        )  # fmt: skip
        shown = (
            'pin_tries_max = 5\ncross_customer_transfers = true\nbusiness_day_cutover = "22:30"\n'
        )
        assert (code, out) == (0, shown)
    finally:
        await owner_conn.execute(
            "UPDATE ledger.policy SET pin_tries_max = 3, cross_customer_transfers = false,"
            " business_day_cutover = '00:00'"
        )

"""Terminal balancing end to end over TCP: a day's traffic at a terminal, then its 0500 with the
right totals (00), with wrong ones (95 carrying the host's), and refused ones (nothing
recorded); then the day closed and its settlement report, matching the postings."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import pytest

from kiosk_sim.terminal import Terminal
from ledger import balancing, exports
from ledger.__main__ import main
from ledger.balancing import CassetteCounter, DayFigures
from ledger.rules import business_day
from switch.balancing import host_fields
from switch.iso8583 import Message
from switch.iso8583.elements import (
    business_date_of,
    decode_cassette_counters,
    encode_cassette_counters,
)
from tests.conftest import PgCluster
from tests.e2e.conftest import PIN, Stack, StackFactory

# Slot 1: two 50.00 notes; slot 2: three 20.00 notes.
CASSETTES = [
    {"cassette": 1, "denomination_minor": 5_000, "notes": 2},
    {"cassette": 2, "denomination_minor": 2_000, "notes": 3},
]
# 90.00 (50 + 20 + 20) and 20.00 approved, the 90.00 reversed in part (50.00 dispensed: 40.00
# back), one inquiry.
DAY = DayFigures(
    debits=2, debit_reversals=1, inquiries=1, debits_minor=11_000, debit_reversals_minor=4_000,
    net_minor=7_000,
)  # fmt: skip
COUNTERS = (CassetteCounter(1, 5_000, 1, 0, 1), CassetteCounter(2, 2_000, 1, 1, 1))


def balancing_request(
    terminal: Terminal, day: str, figures: DayFigures, counters: tuple[CassetteCounter, ...]
) -> Message:
    """An 0500 as the contract lays it out (a terminal's own fields, MACed)."""
    fields = host_fields(balancing.Balancing(0, ("any",), figures, counters))
    return terminal.financial("0500", {15: day, 50: "978", **fields})


async def day_of_traffic(stack: Stack, terminal: Terminal) -> str:
    pan = stack.customers[0].pan
    ninety = terminal.withdrawal(pan, PIN, 9_000)
    approved = await terminal.send(ninety)
    assert approved.code == "00"
    assert (await terminal.send(terminal.withdrawal(pan, PIN, 2_000))).code == "00"
    reversed_ = await terminal.send(terminal.reversal(ninety, dispensed_minor=5_000))
    assert reversed_.code == "00"
    assert (await terminal.send(terminal.balance_inquiry(pan, PIN))).code == "00"
    # Every answer names its business day, declines and refusals too: all the same day here.
    declined = await terminal.send(terminal.withdrawal(pan, PIN, 2_500))  # no note makes it
    refused = await terminal.send(terminal.financial("0200", {3: "011000"}))  # no PAN: 30
    assert (declined.code, refused.code) == ("13", "30")
    day = approved.response.fields[15]
    assert {e.response.fields[15] for e in (reversed_, declined, refused)} == {day}
    return day


async def test_a_terminal_balances_then_is_told_the_host_figures(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(customers=1, cassettes=CASSETTES, daily_count=20)
    terminal = await stack.terminal()
    day = await day_of_traffic(stack, terminal)
    assert business_date_of(day, datetime.now(UTC).date()) == business_day(
        datetime.now(UTC), stack.store.policy.business_day_cutover
    )

    balanced = await terminal.send(balancing_request(terminal, day, DAY, COUNTERS))
    assert (balanced.code, balanced.response_mac_ok) == ("00", True)
    assert balanced.response.mti == "0510"
    assert {n: balanced.response.fields[n] for n in (15, 41, 50)} == {
        15: day, 41: terminal.terminal_id.ljust(8), 50: "978",
    }  # fmt: skip
    assert 124 not in balanced.response.fields
    # The reject bin's note is recorded: remaining = loaded - dispensed - rejected.
    rows = await stack.owner.fetch(
        "SELECT dispensed_notes, rejected_notes, remaining_notes FROM ledger.cassettes"
        " WHERE terminal_id = $1 ORDER BY cassette_no",
        terminal.terminal_id,
    )
    assert [tuple(r) for r in rows] == [(1, 0, 1), (1, 1, 1)]

    miscounted = replace(DAY, debits_minor=12_000, net_minor=8_000)
    imbalance = await terminal.send(balancing_request(terminal, day, miscounted, COUNTERS))
    assert (imbalance.code, imbalance.response_mac_ok) == ("95", True)
    host = imbalance.response.fields
    assert (host[76], host[77], host[80], host[88], host[89], host[97]) == (
        "0000000002", "0000000001", "0000000001", "0000000000011000", "0000000000004000",
        "D0000000000007000",
    )  # fmt: skip
    assert decode_cassette_counters(host[124]) == COUNTERS
    recorded = await stack.owner.fetch(
        "SELECT result, differences FROM ledger.balancings WHERE terminal_id = $1"
        " ORDER BY balancing_id",
        terminal.terminal_id,
    )
    assert [(r["result"], r["differences"]) for r in recorded] == [
        ("balanced", []), ("imbalance", ["F88", "F97"]),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param({97: "D0000000000000001"}, "13", id="net-not-the-amounts"),
        pytest.param({97: "X0000000000000000"}, "30", id="net-malformed"),
        pytest.param({50: "840"}, "13", id="not-the-terminal-currency"),
        pytest.param({50: "999"}, "13", id="unknown-currency"),
        pytest.param({15: "1332"}, "30", id="not-a-date"),
        pytest.param({124: "01" + "0" * 26}, "30", id="counters-malformed"),
        pytest.param({124: encode_cassette_counters([CassetteCounter(1, 5_000, 0, 3, 0)])},
                     "13", id="rejected-more-than-loaded"),
    ],
)  # fmt: skip
async def test_a_refused_0500_records_nothing(
    make_stack: StackFactory, change: dict[int, str], code: str
) -> None:
    stack = await make_stack(customers=1, cassettes=CASSETTES, daily_count=20)
    terminal = await stack.terminal()
    today = f"{business_day(datetime.now(UTC), stack.store.policy.business_day_cutover):%m%d}"
    good = balancing_request(terminal, today, DayFigures(), ())
    bad = terminal.sign(Message("0500", {**good.fields, **change}))
    answer = await terminal.send(bad)
    assert answer.code == code
    count = await stack.owner.fetchval(
        "SELECT count(*) FROM ledger.balancings WHERE terminal_id = $1", terminal.terminal_id
    )
    rejected = await stack.owner.fetchval(
        "SELECT sum(rejected_notes) FROM ledger.cassettes WHERE terminal_id = $1",
        terminal.terminal_id,
    )
    assert (count, rejected) == (0, 0)


async def test_not_signed_on_or_a_bad_mac_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1, cassettes=CASSETTES)
    today = f"{business_day(datetime.now(UTC), stack.store.policy.business_day_cutover):%m%d}"
    terminal = await stack.terminal()
    request = balancing_request(terminal, today, DayFigures(), ())
    stranger = await stack.terminal(sign_on=False, keys=False)
    assert (await stranger.send(request)).code == "58"
    forged = Message("0500", {**request.fields, 80: "0000000009"})
    assert (await terminal.send(forged)).code == "05"
    count = await stack.owner.fetchval(
        "SELECT count(*) FROM ledger.balancings WHERE terminal_id = $1", terminal.terminal_id
    )
    assert count == 0


# A business day of its own, long over: the switch's clock stands in it, so the day can be
# closed (the shared cluster's other tests book on today's).
SETTLED_DAY = date(2005, 6, 15)


def in_settled_day() -> datetime:
    return datetime.combine(SETTLED_DAY, time(10, 0), UTC)


async def journal_figures(stack: Stack, terminal_id: str) -> DayFigures:
    """The day's withdrawals and their reversals as the audit journal's export carries them
    (its hash chain verified), summed over the legs on the terminal's cash account."""
    cash_account = await stack.owner.fetchval(
        "SELECT cash_account_id FROM ledger.terminals WHERE terminal_id = $1", terminal_id
    )
    out = io.StringIO()
    start = datetime.combine(SETTLED_DAY, time(0, 0), UTC)
    await exports.export(
        stack.owner, out, start=start, end=start + timedelta(days=1), terminal_id=terminal_id,
        output_format="jsonl", timeout_ms=30_000,
    )  # fmt: skip
    lines = out.getvalue().encode().splitlines(keepends=True)
    assert exports.verify_export(lines, {}).ok
    records = [json.loads(line) for line in lines]
    cash = {
        (r["kind"], r["transaction_id"]): leg[2]
        for r in records
        if r["record"] == "transaction" and r["terminal_id"] == terminal_id
        and r["business_date"] == SETTLED_DAY.isoformat() and r["outcome"] == "approved"
        for leg in r["legs"] if leg[0] == cash_account
    }  # fmt: skip
    paid = [amount for (kind, _), amount in cash.items() if kind == "withdrawal"]
    back = [-amount for (kind, _), amount in cash.items() if kind == "reversal"]
    inquiries = sum(
        1 for r in records
        if r["record"] == "transaction" and r["kind"] == "inquiry" and r["outcome"] == "approved"
        and r["terminal_id"] == terminal_id
    )  # fmt: skip
    return DayFigures(
        debits=len(paid), debit_reversals=len(back), inquiries=inquiries,
        debits_minor=sum(paid), debit_reversals_minor=sum(back), net_minor=sum(paid) - sum(back),
    )  # fmt: skip


async def test_replenish_withdraw_reverse_close_then_the_settlement_report_matches_the_journal(
    make_stack: StackFactory, pg_cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await make_stack(
        customers=1, cassettes=CASSETTES, daily_count=20, wall_clock=in_settled_day
    )
    terminal = await stack.terminal()
    evening_before = datetime.combine(SETTLED_DAY - timedelta(days=1), time(23, 0), UTC)
    for slot, notes in ((1, 4), (2, 10)):
        await stack.owner.execute(
            "SELECT ledger.replenish_cassette($1, $2, $3, NULL, $4, 'olga')",
            terminal.terminal_id, slot, notes, evening_before,
        )  # fmt: skip
    day = await day_of_traffic(stack, terminal)
    assert day == f"{SETTLED_DAY:%m%d}"
    counters = (CassetteCounter(1, 5_000, 1, 0, 3), CassetteCounter(2, 2_000, 1, 0, 9))
    assert (await terminal.send(balancing_request(terminal, day, DAY, counters))).code == "00"

    dsn = ["--dsn", pg_cluster.owner_dsn]
    assert (
        await asyncio.to_thread(main, ["day", "close", "--date", SETTLED_DAY.isoformat(), *dsn])
        == 0
    )
    capsys.readouterr()
    assert (
        await asyncio.to_thread(
            main, ["report", "settlement", "--date", SETTLED_DAY.isoformat(), *dsn]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    (entry,) = [t for t in report["terminals"] if t["terminal_id"] == terminal.terminal_id]
    journal = await journal_figures(stack, terminal.terminal_id)
    assert journal == DAY
    assert DayFigures.from_row(entry["host"]) == journal
    assert DayFigures.from_row(entry["terminal"]) == journal
    assert set(entry["difference"].values()) == {0}
    assert (entry["result"], entry["currency"]) == ("balanced", "EUR")
    positions = {
        edge: [(c["cassette_no"], c["loaded_notes"], c["dispensed_notes"]) for c in entry[edge]]
        for edge in ("cassettes_open", "cassettes_close")
    }
    assert positions == {"cassettes_open": [(1, 4, 0), (2, 10, 0)],
                         "cassettes_close": [(1, 4, 1), (2, 10, 1)]}  # fmt: skip
    as_csv = ["report", "settlement", "--date", SETTLED_DAY.isoformat(), "--format", "csv", *dsn]
    assert await asyncio.to_thread(main, as_csv) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    (row,) = [r for r in rows if r["terminal_id"] == terminal.terminal_id]
    assert (row["result"], row["host_debits_minor"], row["terminal_net_minor"]) == (
        "balanced", "11000", "7000",
    )  # fmt: skip
    assert row["cassettes_close"] == "1:5000:4:1;2:2000:10:1"
    # The closed day takes nothing more: this 0500 is refused, and changes nothing.
    assert (await terminal.send(balancing_request(terminal, day, DAY, counters))).code == "12"

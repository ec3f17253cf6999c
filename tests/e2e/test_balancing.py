"""Terminal balancing end to end over TCP: a day's traffic at a terminal, then its 0500 with the
right totals (00), with wrong ones (95 carrying the host's), and refused ones (nothing
recorded); then the day closed and its settlement report, matching the postings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from kiosk_sim.terminal import Terminal
from ledger import balancing
from ledger.balancing import CassetteCounter, DayFigures
from ledger.rules import business_day
from switch.balancing import business_date_of, host_fields
from switch.iso8583 import Message
from switch.iso8583.elements import decode_cassette_counters, encode_cassette_counters
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
    # Every answer names its business day; they are all today's.
    day = approved.response.fields[15]
    assert reversed_.response.fields[15] == day
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

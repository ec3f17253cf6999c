"""Terminal balancing and closing a business day in the ledger: the host's figures from the
journal, every field compared, the refusals that write nothing, rejected notes recorded, a day
closed once and only when over, and what the switch's role cannot do."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import balancing, cassettes
from ledger.__main__ import main
from ledger.balancing import CassetteCounter, DayFigures, TerminalReport
from ledger.cassettes import ReplenishmentRefused
from ledger.errors import BalancingRefused, DayNotOver
from ledger.model import BalanceInquiry, Outcome, Result, Reversal, Withdrawal
from ledger.rules import business_day
from ledger.store import LedgerStore
from tests.conftest import PgCluster
from tests.ledger import helpers
from tests.ledger.factory import AUDIT, World, key

# Slot 1: 50.00 notes, slot 2: 20.00 notes.
CASSETTES = [
    {"cassette": 1, "denomination_minor": 5_000, "notes": 20},
    {"cassette": 2, "denomination_minor": 2_000, "notes": 20},
]
# Business days of their own, long past: closing one disturbs no other test (the cluster is
# shared and a closed day refuses postings).
_days = (date(2003, 1, 1) + timedelta(days=n) for n in itertools.count())
TIMEOUT_MS = 15_000


def day_at(day: date) -> datetime:
    return datetime.combine(day, time(10, 0), UTC)


class Day:
    """One terminal's traffic on one business day of its own."""

    def __init__(self, store: LedgerStore, world: World) -> None:
        self.store, self.world = store, world
        self.date = next(_days)
        self.terminal_id = world.terminals[0]

    async def send(self, request: Withdrawal | Reversal | BalanceInquiry) -> Result:
        return await helpers.run(self.store, request, day_at(self.date))

    def withdrawal(self, amount_minor: int) -> Withdrawal:
        pan = self.world.customers[0].pan
        return Withdrawal(pan, key(self.terminal_id), AUDIT, "20", amount_minor, "EUR")

    def reversal(self, original: Withdrawal, dispensed_minor: int = 0) -> Reversal:
        return Reversal(
            self.world.customers[0].pan, key(self.terminal_id, "0420"),
            replace(AUDIT, mti="0420"), original.key, dispensed_minor,
        )  # fmt: skip

    def inquiry(self) -> BalanceInquiry:
        return BalanceInquiry(self.world.customers[0].pan, key(self.terminal_id), AUDIT, "20")

    def report(
        self, figures: DayFigures, cassettes: tuple[CassetteCounter, ...] = (), **changes: object
    ) -> TerminalReport:
        report = TerminalReport(
            self.terminal_id, "1201000000", "000001", self.date, "EUR", figures, cassettes
        )
        return replace(report, **changes)  # type: ignore[arg-type]

    async def balance(self, report: TerminalReport) -> balancing.Balancing:
        return await self.store.record_balancing(
            report, now=datetime.now(UTC), timeout_ms=TIMEOUT_MS
        )


async def a_day(store: LedgerStore, owner: asyncpg.Connection) -> Day:
    world = World()
    await world.load(owner, 1, card={"daily_count": 100}, cassettes=CASSETTES)
    return Day(store, world)


# 90.00 (50 + 20 + 20) and 20.00 approved, the 90.00 reversed in part (50.00 dispensed: the
# two 20s and 40.00 back), an inquiry, and a declined 700.00 (over the card's 500.00).
DAY = DayFigures(
    debits=2, debit_reversals=1, inquiries=1, debits_minor=11_000, debit_reversals_minor=4_000,
    net_minor=7_000,
)  # fmt: skip
COUNTERS = (CassetteCounter(1, 5_000, 1, 0, 19), CassetteCounter(2, 2_000, 1, 0, 19))


async def traffic(day: Day) -> None:
    ninety = day.withdrawal(9_000)
    assert (await day.send(ninety)).outcome is Outcome.APPROVED
    assert (await day.send(day.withdrawal(2_000))).outcome is Outcome.APPROVED
    assert (await day.send(day.reversal(ninety, 5_000))).outcome is Outcome.APPROVED
    assert (await day.send(day.inquiry())).outcome is Outcome.APPROVED
    assert (await day.send(day.withdrawal(70_000))).outcome is not Outcome.APPROVED


async def test_the_days_figures_balance(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    day = await a_day(ledger_store, owner_conn)
    await traffic(day)
    found = await day.balance(day.report(DAY, COUNTERS))
    assert (found.balanced, found.differences) == (True, ())
    assert (found.host_figures, found.host_cassettes) == (DAY, COUNTERS)
    row = await owner_conn.fetchrow(
        "SELECT result, business_date FROM ledger.balancings WHERE balancing_id = $1",
        found.balancing_id,
    )
    assert row is not None
    assert tuple(row) == ("balanced", day.date)


OFF_BY_ONE = [
    *[(name, f"F{n}") for name, n in zip(
        ("credits", "credit_reversals", "debits", "debit_reversals", "transfers",
         "transfer_reversals", "inquiries"), range(74, 81), strict=True)],
    *[(name, f"F{n}") for name, n in zip(
        ("credits_minor", "credit_reversals_minor", "debits_minor", "debit_reversals_minor"),
        range(86, 90), strict=True)],
    ("net_minor", "F97"),
]  # fmt: skip


@pytest.mark.parametrize(("figure", "field"), OFF_BY_ONE)
async def test_each_field_off_by_one_is_an_imbalance_naming_it(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, figure: str, field: str
) -> None:
    day = await a_day(ledger_store, owner_conn)
    await traffic(day)
    off = replace(DAY, **{figure: getattr(DAY, figure) + 1})
    found = await day.balance(day.report(off, COUNTERS))
    assert (found.balanced, found.differences, found.host_figures) == (False, (field,), DAY)


@pytest.mark.parametrize(
    "counters",
    [
        pytest.param((CassetteCounter(1, 5_000, 2, 0, 18), COUNTERS[1]), id="dispensed"),
        pytest.param((COUNTERS[0],), id="a-cassette-missing"),
        pytest.param((COUNTERS[0], CassetteCounter(2, 1_000, 1, 0, 19)), id="denomination"),
        pytest.param((*COUNTERS, CassetteCounter(3, 1_000, 0, 0, 5)), id="a-cassette-unknown"),
    ],
)
async def test_cassette_counters_that_differ_are_an_imbalance_in_f124(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    counters: tuple[CassetteCounter, ...],
) -> None:
    day = await a_day(ledger_store, owner_conn)
    await traffic(day)
    found = await day.balance(day.report(DAY, counters))
    assert (found.differences, found.host_cassettes) == (("F124",), COUNTERS)


async def cassette_counts(owner: asyncpg.Connection, terminal_id: str) -> list[tuple[int, ...]]:
    rows = await owner.fetch(
        "SELECT dispensed_notes, rejected_notes, remaining_notes FROM ledger.cassettes"
        " WHERE terminal_id = $1 ORDER BY cassette_no",
        terminal_id,
    )
    return [tuple(r) for r in rows]


async def test_rejected_notes_are_recorded_and_only_go_up(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    day = await a_day(ledger_store, owner_conn)
    await traffic(day)
    two_rejected = (CassetteCounter(1, 5_000, 1, 2, 17), COUNTERS[1])
    found = await day.balance(day.report(DAY, two_rejected))
    assert found.balanced  # dispensed counters are compared; rejected ones are recorded
    assert found.host_cassettes == two_rejected
    assert await cassette_counts(owner_conn, day.terminal_id) == [(1, 2, 17), (1, 0, 19)]
    for counters in [
        (CassetteCounter(1, 5_000, 1, 1, 18), COUNTERS[1]),  # fewer than recorded
        (CassetteCounter(1, 5_000, 1, 20, 0), COUNTERS[1]),  # more than the cassette holds
    ]:
        with pytest.raises(BalancingRefused) as refused:
            await day.balance(day.report(DAY, counters))
        assert refused.value.reason == "counters"
    assert await cassette_counts(owner_conn, day.terminal_id) == [(1, 2, 17), (1, 0, 19)]


async def balancings(owner: asyncpg.Connection, terminal_id: str) -> int:
    count = await owner.fetchval(
        "SELECT count(*) FROM ledger.balancings WHERE terminal_id = $1", terminal_id
    )
    assert isinstance(count, int)
    return count


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"business_date": datetime.now(UTC).date() + timedelta(days=2)},
                     "day_not_begun", id="future"),
        pytest.param({"currency": "USD"}, "currency", id="another-currency"),
    ],
)  # fmt: skip
async def test_refused_balancings_write_nothing(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    changes: dict[str, object],
    reason: str,
) -> None:
    day = await a_day(ledger_store, owner_conn)
    with pytest.raises(BalancingRefused) as refused:
        await day.balance(day.report(DAY, (CassetteCounter(1, 5_000, 0, 1, 19),), **changes))
    assert refused.value.reason == reason
    assert await balancings(owner_conn, day.terminal_id) == 0
    assert await cassette_counts(owner_conn, day.terminal_id) == [(0, 0, 20), (0, 0, 20)]


async def close(owner: asyncpg.Connection, day: date) -> bool:
    return await balancing.close_day(owner, day, by="test", timeout_s=TIMEOUT_MS / 1000)


async def test_a_closed_day_is_closed_once_then_refuses_balancings_and_postings(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    day = await a_day(ledger_store, owner_conn)
    await traffic(day)
    assert await close(owner_conn, day.date) is True
    assert await close(owner_conn, day.date) is False
    totals = await owner_conn.fetch(
        "SELECT kind, approved_count, approved_minor, reversal_count, reversed_minor, net_minor"
        " FROM ledger.day_totals WHERE (business_date, terminal_id) = ($1, $2) ORDER BY kind",
        day.date, day.terminal_id,
    )  # fmt: skip
    assert [tuple(r) for r in totals] == [
        ("inquiry", 1, 0, 0, 0, 0), ("transfer", 0, 0, 0, 0, 0),
        ("withdrawal", 2, 11_000, 1, 4_000, 7_000),
    ]  # fmt: skip
    with pytest.raises(BalancingRefused) as refused:
        await day.balance(day.report(DAY, COUNTERS))
    assert refused.value.reason == "day_closed"
    # A request decided on the closed day but written after the close (it straddled the
    # cutover) is decided again as of now: booked on today's business day.
    late = await day.send(day.withdrawal(2_000))
    assert late.outcome is Outcome.APPROVED
    assert late.business_date == business_day(
        datetime.now(UTC), ledger_store.policy.business_day_cutover
    )
    booked = await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1 AND business_date = $2",
        day.terminal_id, day.date,
    )  # fmt: skip
    assert booked == 5  # the day's traffic only


@pytest.mark.parametrize(
    ("cutover", "at", "dated"),
    [
        (time(0, 0), time(3, 0), 0),
        (time(6, 0), time(3, 0), -1),  # before the cutover: the business day before
        (time(6, 0), time(6, 0), 0),
        (time(6, 0), time(23, 59), 0),
    ],
)
async def test_a_replenishment_is_dated_by_the_cutover(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, cutover: time, at: time, dated: int
) -> None:
    day = await a_day(ledger_store, owner_conn)
    # The policy is the whole cluster's: changed in a transaction that is rolled back.
    changed = owner_conn.transaction()
    await changed.start()
    try:
        await owner_conn.execute("UPDATE ledger.policy SET business_day_cutover = $1", cutover)
        done = await cassettes.replenish(
            owner_conn, day.terminal_id, 1, 30, denomination_minor=None, by="test",
            at=datetime.combine(day.date, at, UTC), timeout_ms=TIMEOUT_MS,
        )  # fmt: skip
        booked = await owner_conn.fetchval(
            "SELECT business_date FROM ledger.transactions WHERE transaction_id = $1",
            done.transaction_id,
        )
    finally:
        await changed.rollback()
    assert booked == day.date + timedelta(days=dated)


async def test_a_replenishment_on_a_closed_day_is_refused_and_writes_nothing(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    day = await a_day(ledger_store, owner_conn)
    assert await close(owner_conn, day.date) is True
    count = "SELECT count(*) FROM ledger.replenishments WHERE terminal_id = $1"
    before = await owner_conn.fetchval(count, day.terminal_id)
    with pytest.raises(ReplenishmentRefused, match=f"business day {day.date} is closed"):
        await cassettes.replenish(
            owner_conn, day.terminal_id, 1, 30, denomination_minor=None, by="test",
            at=day_at(day.date), timeout_ms=TIMEOUT_MS,
        )  # fmt: skip
    assert await owner_conn.fetchval(count, day.terminal_id) == before
    assert await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1 AND business_date = $2",
        day.terminal_id, day.date,
    ) == 0  # fmt: skip


async def test_a_day_not_over_cannot_be_closed(owner_conn: asyncpg.Connection) -> None:
    today = await owner_conn.fetchval("SELECT ledger.business_day_of(now())")
    with pytest.raises(DayNotOver, match=f"business day {today} is not over until"):
        await close(owner_conn, today)
    assert not await owner_conn.fetchval(
        "SELECT EXISTS (SELECT FROM ledger.closed_days WHERE business_date = $1)", today
    )


def test_the_command_line_closes_a_day_once(
    pg_cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    day = next(_days)
    dsn = ["--dsn", pg_cluster.owner_dsn]
    assert main(["day", "close", "--date", day.isoformat(), *dsn]) == 0
    assert main(["day", "close", "--date", day.isoformat(), *dsn]) == 0
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert main(["day", "close", "--date", tomorrow, *dsn]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"business day {day} closed",
        f"business day {day} is already closed",
    ]
    assert err.startswith(f"refused: business day {tomorrow} is not over until ")


async def test_the_switch_role_cannot_close_a_day_or_rewrite_a_balancing(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    day = await a_day(ledger_store, owner_conn)
    found = await day.balance(day.report(DAY))
    switch = await asyncpg.connect(pg_cluster.switch_dsn)
    try:
        attacks = [
            ("SELECT ledger.close_business_day($1, 'thief')", (day.date,)),
            ("SELECT ledger.close_business_day(ledger.business_day_of(now()), 'thief')", ()),
            ("INSERT INTO ledger.closed_days VALUES ($1, '00:00', now(), 'thief')", (day.date,)),
            ("UPDATE ledger.balancings SET result = 'balanced'", ()),
            ("DELETE FROM ledger.balancings WHERE balancing_id = $1", (found.balancing_id,)),
            ("UPDATE ledger.cassettes SET rejected_notes = 0", ()),
            ("UPDATE ledger.policy SET business_day_cutover = '23:59'", ()),
            ("SELECT ledger.host_figures($1, $2, 'EUR')", (day.terminal_id, day.date)),
        ]
        for statement, arguments in attacks:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await switch.execute(statement, *arguments)
    finally:
        await switch.close()
    # Nor can the owner rewrite one: balancings are append-only.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner_conn.execute(
            "UPDATE ledger.balancings SET result = 'balanced' WHERE balancing_id = $1",
            found.balancing_id,
        )
    assert await balancings(owner_conn, day.terminal_id) == 1


TRAFFIC = st.lists(
    st.one_of(
        st.tuples(st.just("withdrawal"), st.sampled_from([2_000, 5_000, 9_000, 12_000]),
                  st.sampled_from(["none", "full", "partial"])),
        st.tuples(st.just("inquiry"), st.just(0), st.just("none")),
    ),
    max_size=6,
)  # fmt: skip


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(TRAFFIC)
async def test_host_figures_are_the_sum_over_the_postings(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, steps: list[tuple[str, int, str]]
) -> None:
    day = await a_day(ledger_store, owner_conn)
    for kind, amount_minor, reversal in steps:
        if kind == "inquiry":
            await day.send(day.inquiry())
            continue
        request = day.withdrawal(amount_minor)
        await day.send(request)
        if reversal != "none":
            dispensed = 0 if reversal == "full" else amount_minor - 2_000
            await day.send(day.reversal(request, dispensed))
    found = await day.balance(day.report(DayFigures()))
    legs = await owner_conn.fetch(
        "SELECT t.kind, p.amount_minor FROM ledger.transactions t"
        " JOIN ledger.postings p ON p.transaction_id = t.transaction_id"
        " JOIN ledger.terminals term ON term.cash_account_id = p.account_id"
        " WHERE term.terminal_id = $1 AND t.business_date = $2",
        day.terminal_id, day.date,
    )  # fmt: skip
    out = [leg["amount_minor"] for leg in legs if leg["kind"] == "withdrawal"]
    back = [-leg["amount_minor"] for leg in legs if leg["kind"] == "reversal"]
    inquiries = await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1 AND business_date = $2"
        " AND kind = 'inquiry' AND outcome = 'approved'",
        day.terminal_id, day.date,
    )  # fmt: skip
    assert found.host_figures == DayFigures(
        debits=len(out), debit_reversals=len(back), inquiries=inquiries,
        debits_minor=sum(out), debit_reversals_minor=sum(back), net_minor=sum(out) - sum(back),
    )  # fmt: skip


async def test_the_latest_imbalance_per_terminal_is_readable_by_the_switch(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    since = await owner_conn.fetchval("SELECT now()")
    righted, wrong = await a_day(ledger_store, owner_conn), await a_day(ledger_store, owner_conn)
    untouched = (CassetteCounter(1, 5_000, 0, 0, 20), CassetteCounter(2, 2_000, 0, 0, 20))
    off = DayFigures(inquiries=1)
    await righted.balance(righted.report(off, untouched))
    await righted.balance(righted.report(DayFigures(), untouched))  # balanced since: not listed
    await wrong.balance(wrong.report(DayFigures(), untouched))
    last = await wrong.balance(wrong.report(off, untouched))
    switch = await asyncpg.connect(pg_cluster.switch_dsn)
    try:
        rows = await balancing.latest_imbalances(switch, since, timeout_s=TIMEOUT_MS / 1000)
    finally:
        await switch.close()
    mine = [r for r in rows if r.terminal_id in (righted.terminal_id, wrong.terminal_id)]
    assert [(r.terminal_id, r.business_date, r.differences, r.balancing_id) for r in mine] == [
        (wrong.terminal_id, wrong.date, ("F80",), last.balancing_id)
    ]

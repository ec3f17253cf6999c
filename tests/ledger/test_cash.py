"""ATM cash in the ledger: cassettes provisioned and replenished against the vault, the note mix
of each withdrawal counted in the posting's own transaction, notes put back by reversals, and
the database refusing notes the rules would never send."""

from __future__ import annotations

import asyncio
import contextlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger import audit
from ledger.__main__ import main
from ledger.cash import CassetteNotes, NoteMix
from ledger.codec import WriteItem
from ledger.errors import LedgerError
from ledger.fixtures import EntryError, check_fixtures, load_fixtures
from ledger.model import BalanceInquiry, Outcome, Request, Result, Reversal, Withdrawal
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY
from ledger.store import LedgerStore, Lookup
from tests.conftest import PgCluster
from tests.ledger import helpers
from tests.ledger.factory import AUDIT, NOW, World, key, next_id
from tests.ledger.helpers import balance

# An hour after the other ledger tests' requests: the export tests read every transaction of
# the minute around NOW in the shared cluster, and need not read these too.
AT = NOW + timedelta(hours=1)


async def run(store: LedgerStore, request: Request) -> Result:
    return await helpers.run(store, request, AT)


# Slot 1: 50.00 notes, slot 2: 20.00 notes, slot 3: 10.00 notes.
CASSETTES = [
    {"cassette": 1, "denomination_minor": 5_000, "notes": 10, "low_notes": 2},
    {"cassette": 2, "denomination_minor": 2_000, "notes": 10},
    {"cassette": 3, "denomination_minor": 1_000, "notes": 2},
]


async def cash_world(conn: asyncpg.Connection, customers: int = 1, **kw: Any) -> World:
    world = World()
    card = {"daily_count": 100, **kw.pop("card", {})}
    await world.load(conn, customers, card=card, cassettes=kw.pop("cassettes", CASSETTES), **kw)
    return world


async def remaining(conn: asyncpg.Connection, terminal_id: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT remaining_notes FROM ledger.cassettes WHERE terminal_id = $1 ORDER BY cassette_no",
        terminal_id,
    )
    return [row[0] for row in rows]


def withdrawal(world: World, amount_minor: int, customer: int = 0) -> Withdrawal:
    pan = world.customers[customer].pan
    return Withdrawal(pan, key(world.terminals[0]), AUDIT, "20", amount_minor, "EUR")


def mix(*parts: tuple[int, int, int]) -> NoteMix:
    return NoteMix(tuple(CassetteNotes(slot, d, n, load_seq=1) for slot, d, n in parts))


async def test_cassettes_are_loaded_against_the_vault_and_journalled(
    owner_conn: asyncpg.Connection,
) -> None:
    world = await cash_world(owner_conn)
    terminal = world.terminals[0]
    assert await remaining(owner_conn, terminal) == [10, 10, 2]
    loaded_minor = 10 * 5_000 + 10 * 2_000 + 2 * 1_000
    # Cash into the ATM debits its cash account: minus what the host counts in it.
    assert await balance(owner_conn, f"CASH-{terminal}") == -loaded_minor
    records = await owner_conn.fetch(
        "SELECT r.cassette_no, r.load_seq, r.loaded_notes, t.kind, t.amount_minor"
        " FROM ledger.replenishments r JOIN ledger.transactions t USING (transaction_id)"
        " WHERE r.terminal_id = $1 ORDER BY r.cassette_no",
        terminal,
    )
    assert [tuple(r) for r in records] == [
        (1, 1, 10, "replenishment", 50_000),
        (2, 1, 10, "replenishment", 20_000),
        (3, 1, 2, "replenishment", 2_000),
    ]
    # Cash moved in is not cash paid out: the day's terminal report still reconciles.
    today = datetime.now(UTC).date()
    report = await audit.terminal_report(owner_conn, today, timeout_ms=60_000)
    day = next(row for row in report if row.terminal_id == terminal)
    assert (day.withdrawals, day.posted_minor, day.reconciled) == (0, 0, True)
    # A reload leaves the counts alone.
    await world_reload(owner_conn, world)
    assert await remaining(owner_conn, terminal) == [10, 10, 2]
    # Another denomination is a replenishment's business, not a reload's.
    swapped = [CASSETTES[0], {**CASSETTES[1], "denomination_minor": 1_000}, CASSETTES[2]]
    with pytest.raises(EntryError, match="cassette #2: cassette 2 holds EUR notes of 2000, not"):
        await world_reload(owner_conn, world, swapped)
    assert (await audit.verify(owner_conn, timeout_ms=60_000)).ok


async def world_reload(
    conn: asyncpg.Connection, world: World, cassettes: list[dict[str, int]] = CASSETTES
) -> None:
    data = {
        "terminals": [
            {"id": world.terminals[0], "location": "test", "currency": "EUR", "tmk": "TMK",
             "cassettes": cassettes}
        ]
    }  # fmt: skip
    await load_fixtures(conn, data, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=30_000)


async def test_a_withdrawal_dispenses_its_mix_in_the_posting_transaction(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await cash_world(owner_conn)
    terminal = world.terminals[0]
    request = withdrawal(world, 16_000)
    result = await run(ledger_store, request)
    assert result.outcome is Outcome.APPROVED
    assert result.notes == mix((1, 5_000, 3), (3, 1_000, 1))
    assert await remaining(owner_conn, terminal) == [7, 10, 1]
    # A repeat names the same notes and moves none.
    repeat = await run(ledger_store, request)
    assert (repeat.repeated, repeat.notes) == (True, result.notes)
    assert await remaining(owner_conn, terminal) == [7, 10, 1]
    # 60.00 when no 10.00 note is left: three 20.00 notes, not a 50.00 and a shortfall.
    assert (await run(ledger_store, withdrawal(world, 1_000))).outcome is Outcome.APPROVED
    sixty = await run(ledger_store, withdrawal(world, 6_000))
    assert sixty.notes == mix((2, 2_000, 3))
    assert await remaining(owner_conn, terminal) == [7, 7, 0]


@pytest.mark.parametrize(
    ("amount_minor", "outcome"),
    [
        (500, Outcome.INVALID_AMOUNT),  # no note makes 5.00
        (12_345, Outcome.INVALID_AMOUNT),
        (2_500, Outcome.INVALID_AMOUNT),
    ],
)
async def test_amounts_the_notes_cannot_make_are_declined_and_move_nothing(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, amount_minor: int, outcome: Outcome
) -> None:
    world = await cash_world(owner_conn, balance_minor=1_000_000)
    result = await run(ledger_store, withdrawal(world, amount_minor))
    assert (result.outcome, result.notes) == (outcome, None)
    assert await remaining(owner_conn, world.terminals[0]) == [10, 10, 2]


async def test_notes_run_short_then_out(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    small = [{"cassette": 1, "denomination_minor": 2_000, "notes": 3}]
    world = await cash_world(owner_conn, cassettes=small)
    assert (await run(ledger_store, withdrawal(world, 8_000))).outcome is (
        Outcome.EXCEEDS_AMOUNT_LIMIT
    )
    assert (await run(ledger_store, withdrawal(world, 6_000))).outcome is Outcome.APPROVED
    out = await run(ledger_store, withdrawal(world, 2_000))
    assert out.outcome is Outcome.NOT_PERMITTED_TO_TERMINAL
    assert await remaining(owner_conn, world.terminals[0]) == [0]
    assert await balance(owner_conn, world.customers[0].checking) == 100_000 - 6_000


async def test_a_terminal_without_cassettes_dispenses_as_before(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    result = await run(ledger_store, withdrawal(world, 1_234))
    assert (result.outcome, result.notes) == (Outcome.APPROVED, None)


async def test_reversals_put_back_what_was_not_dispensed(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await cash_world(owner_conn)
    terminal = world.terminals[0]
    pan = world.customers[0].pan
    full = withdrawal(world, 9_000)  # 50 + 2 x 20
    assert (await run(ledger_store, full)).notes == mix((1, 5_000, 1), (2, 2_000, 2))
    undo = Reversal(pan, key(terminal, "0420"), AUDIT, full.key)
    assert (await run(ledger_store, undo)).outcome is Outcome.APPROVED
    assert await remaining(owner_conn, terminal) == [10, 10, 2]
    partial = withdrawal(world, 9_000)
    assert (await run(ledger_store, partial)).outcome is Outcome.APPROVED
    # The dispenser jammed after 50.00: the two 20.00 notes go back.
    jam = Reversal(pan, key(terminal, "0420"), AUDIT, partial.key, dispensed_minor=5_000)
    assert (await run(ledger_store, jam)).outcome is Outcome.APPROVED
    assert await remaining(owner_conn, terminal) == [9, 10, 2]
    movements = await owner_conn.fetch(
        "SELECT m.cassette_no, m.notes FROM ledger.note_movements m"
        " JOIN ledger.transactions t USING (transaction_id)"
        " WHERE t.terminal_id = $1 AND t.kind = 'reversal' ORDER BY t.transaction_id, 1",
        terminal,
    )
    assert [tuple(m) for m in movements] == [(1, -1), (2, -2), (2, -2)]
    # 30.00 dispensed is no part of 50 + 20 + 20: F95 is wrong, nothing moves.
    odd = withdrawal(world, 9_000)
    assert (await run(ledger_store, odd)).outcome is Outcome.APPROVED
    wrong = Reversal(pan, key(terminal, "0420"), AUDIT, odd.key, dispensed_minor=3_000)
    assert (await run(ledger_store, wrong)).outcome is Outcome.INVALID_AMOUNT
    assert (await audit.verify(owner_conn, timeout_ms=60_000)).ok


async def test_a_reversal_after_a_replenishment_puts_back_nothing(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await cash_world(owner_conn)
    terminal = world.terminals[0]
    taken = withdrawal(world, 5_000)
    assert (await run(ledger_store, taken)).outcome is Outcome.APPROVED
    await owner_conn.execute(
        "SELECT ledger.replenish_cassette($1, 1, 10, NULL, now(), 'test')", terminal
    )
    undo = Reversal(world.customers[0].pan, key(terminal, "0420"), AUDIT, taken.key)
    assert (await run(ledger_store, undo)).outcome is Outcome.APPROVED
    assert await remaining(owner_conn, terminal) == [10, 10, 2]
    assert await balance(owner_conn, world.customers[0].checking) == 100_000


def tampered(store: LedgerStore, monkeypatch: pytest.MonkeyPatch, counts: list[int]) -> None:
    """What a stolen switch login would try: its own note counts on a decided request."""
    item = store._item

    def with_counts(lookup: Lookup, *args: Any) -> WriteItem:
        return item(lookup, *args)._replace(note_counts=counts + [0] * (8 - len(counts)))

    monkeypatch.setattr(store, "_item", with_counts)


@pytest.mark.parametrize(
    "case",
    [
        (9_000, [1, 1], "the note mix does not make the amount"),
        (9_000, [0, 0, 0, 9], "a cassette this terminal does not have"),
        (9_000, [-1, 7], "a negative count of notes"),
        (60_000, [0, 30], "more notes than the cassette holds"),
        (3_000, [0, 0, 3], "more notes than the cassette holds"),
        (1_000, [0, 0, 0], "the note mix does not make the amount"),
    ],
)
async def test_the_database_refuses_a_mix_the_cassettes_cannot_give(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[int, list[int], str],
) -> None:
    amount_minor, counts, refusal = case
    world = await cash_world(owner_conn, card={"max_per_txn_minor": 100_000}, balance_minor=500_000)
    tampered(ledger_store, monkeypatch, counts)
    with pytest.raises(LedgerError, match=rf"42501.*{refusal}"):
        await run(ledger_store, withdrawal(world, amount_minor))
    assert await remaining(owner_conn, world.terminals[0]) == [10, 10, 2]
    assert await balance(owner_conn, world.customers[0].checking) == 500_000


async def test_the_database_refuses_notes_on_requests_that_move_no_cash(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await cash_world(owner_conn)
    plain = World()
    await plain.load(owner_conn, 1)
    tampered(ledger_store, monkeypatch, [1])
    inquiry = BalanceInquiry(world.customers[0].pan, key(world.terminals[0]), AUDIT, "20")
    with pytest.raises(
        LedgerError, match=r"42501.*notes on a request \(inquiry\) that moves no cash"
    ):
        await run(ledger_store, inquiry)
    with pytest.raises(LedgerError, match=r"42501.*a cassette this terminal does not have"):
        await run(ledger_store, withdrawal(plain, 5_000))
    assert await remaining(owner_conn, world.terminals[0]) == [10, 10, 2]


async def test_many_withdrawals_at_one_terminal_never_dispense_more_than_loaded(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    """Concurrent withdrawals of many customers at one terminal: each is approved with notes
    still there, declined when they ran short, or refused by the ledger when decided on counts
    another took meanwhile; never more notes out than were loaded, and the cash account agrees
    with the notes."""
    small = [{"cassette": 1, "denomination_minor": 2_000, "notes": 7}]
    world = await cash_world(owner_conn, customers=12, cassettes=small)
    terminal = world.terminals[0]
    results = await asyncio.gather(
        *(run(ledger_store, withdrawal(world, 2_000, n)) for n in range(12)),
        return_exceptions=True,
    )
    approved = sum(
        1 for r in results if not isinstance(r, BaseException) and r.outcome is Outcome.APPROVED
    )
    assert all(isinstance(r, LedgerError) or not isinstance(r, BaseException) for r in results)
    assert 1 <= approved <= 7
    assert await remaining(owner_conn, terminal) == [7 - approved]
    assert await balance(owner_conn, f"CASH-{terminal}") == -7 * 2_000 + approved * 2_000


def test_cassettes_in_fixtures_are_checked() -> None:
    def terminal(*cassettes: dict[str, Any]) -> dict[str, Any]:
        return {"terminals": [{"id": "T1", "location": "x", "currency": "EUR",
                               "cassettes": list(cassettes)}]}  # fmt: skip

    good = {"cassette": 1, "denomination_minor": 2_000, "notes": 10}
    check_fixtures(terminal(good))
    for cassettes, problem in [
        ((good, good), "terminal #1: cassette 1 is listed twice"),
        (({**good, "cassette": 9},), "cassette #1: field 'cassette' must be a slot from 1 to 8"),
        (({**good, "notes": -1},), "cassette #1: field 'notes' must not be negative"),
        (({**good, "denomination_minor": 0},), "field 'denomination_minor' must be positive"),
        (({"cassette": 1, "notes": 1},), "field 'denomination_minor' is missing"),
    ]:
        with pytest.raises(EntryError, match=problem):
            check_fixtures(terminal(*cassettes))


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_replenishment_from_the_command_line(pg_cluster: PgCluster, tmp_path: Path) -> None:
    terminal = f"R{next_id():07d}"
    path = tmp_path / "fixtures.toml"
    path.write_text(
        f'[[terminals]]\nid = "{terminal}"\nlocation = "lobby"\ncurrency = "EUR"\n'
        "[[terminals.cassettes]]\ncassette = 1\ndenomination_minor = 2000\nnotes = 100\n"
        "low_notes = 10\n"
    )
    dsn = ("--dsn", pg_cluster.owner_dsn)
    assert _cli("load", str(path), *dsn)[0] == 0
    code, out, _ = _cli(
        "cash", "replenish", "--terminal", terminal, "--cassette", "1", "--notes", "150",
        "--denomination-minor", "2000", "--by", "ops-7", *dsn,
    )  # fmt: skip
    assert code == 0
    assert out.startswith(
        f"terminal {terminal} cassette 1: 150 notes of 2000 EUR loaded (load 2); taken out 100"
        " left and 0 rejected; 100000 moved from the vault (journal entry "
    )
    code, out, _ = _cli("cash", "show", "--terminal", terminal, *dsn)
    assert out.splitlines()[1:] == [f"{terminal},1,EUR,2000,150,0,0,150,10"]
    for argv, error in [
        (("--cassette", "2", "--notes", "5"), f"terminal {terminal} has no cassette 2"),
        (("--cassette", "1", "--notes", "5", "--denomination-minor", "5000"),
         f"cassette 1 of terminal {terminal} holds notes of 2000, not 5000"),
        (("--cassette", "1", "--notes", "-5"), "a cassette cannot hold -5 notes"),
    ]:  # fmt: skip
        code, _, err = _cli("cash", "replenish", "--terminal", terminal, *argv, *dsn)
        assert (code, err) == (2, f"error: {error}\n")
    records = asyncio.run(_replenishments(pg_cluster.owner_dsn, terminal))
    assert records == [("fixtures", 100, 0), ("ops-7", 150, 100)]


async def _replenishments(dsn: str, terminal_id: str) -> list[tuple[str, int, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT replenished_by, loaded_notes, previous_remaining_notes"
            " FROM ledger.replenishments WHERE terminal_id = $1 ORDER BY load_seq",
            terminal_id,
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows]

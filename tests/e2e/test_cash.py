"""ATM cash end to end: the note mix in F121 of an approved withdrawal, the cash declines, a
partial dispense's notes going back, and a terminal out of cash declining at once."""

from __future__ import annotations

from switch.iso8583.elements import NoteEntry
from tests.e2e.conftest import PIN, StackFactory

# Slot 1: two 50.00 notes; slot 2: three 20.00 notes.
CASSETTES = [
    {"cassette": 1, "denomination_minor": 5_000, "notes": 2},
    {"cassette": 2, "denomination_minor": 2_000, "notes": 3},
]


async def test_withdrawals_against_the_cassettes(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1, cassettes=CASSETTES, daily_count=20)
    terminal = await stack.terminal()
    pan = stack.customers[0].pan

    async def remaining() -> list[int]:
        rows = await stack.owner.fetch(
            "SELECT remaining_notes FROM ledger.cassettes WHERE terminal_id = $1"
            " ORDER BY cassette_no",
            terminal.terminal_id,
        )
        return [row[0] for row in rows]

    ninety = terminal.withdrawal(pan, PIN, 9_000)
    approved = await terminal.send(ninety)
    assert (approved.code, approved.response_mac_ok) == ("00", True)
    assert approved.notes == [NoteEntry(1, 5_000, 1), NoteEntry(2, 2_000, 2)]
    assert approved.response.get(121) == "0100000000500000102000000002000002"
    # The same request sent again gets the same notes and moves none.
    repeat = await terminal.send(ninety)
    assert (repeat.code, repeat.notes) == ("00", approved.notes)
    assert await remaining() == [1, 1]
    # 25.00: no count of 50s and 20s; 60.00: makeable (3 x 20), not from one 50 and one 20.
    assert (await terminal.send(terminal.withdrawal(pan, PIN, 2_500))).code == "13"
    short = await terminal.send(terminal.withdrawal(pan, PIN, 6_000))
    assert (short.code, short.response.get(121)) == ("61", None)
    # The dispenser jammed after the 50.00 note: the two 20.00 notes go back.
    jam = await terminal.send(terminal.reversal(ninety, dispensed_minor=5_000))
    assert jam.code == "00"
    assert await remaining() == [1, 3]
    assert (await terminal.send(terminal.withdrawal(pan, PIN, 11_000))).code == "00"
    assert await remaining() == [0, 0]
    before = await stack.owner.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1", terminal.terminal_id
    )
    # Out of cash: declined at once, before the PIN (a wrong one is not even counted) and with
    # no ledger write.
    out = await terminal.send(terminal.withdrawal(pan, "9999", 2_000))
    assert out.code == "58"
    after = await stack.owner.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1", terminal.terminal_id
    )
    assert after == before
    tries = await stack.owner.fetchval(
        "SELECT pin_tries FROM ledger.cards WHERE customer_id = $1",
        stack.customers[0].customer_id,
    )
    assert tries == 0
    assert await stack.balance(stack.customers[0].checking) == 100_000 - 5_000 - 11_000

"""Every operation and decline path, against the real cluster."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest

from ledger.authorisation import development_session_keys_token
from ledger.errors import LedgerError
from ledger.model import (
    BalanceInquiry,
    Outcome,
    RequestKey,
    Reversal,
    Transfer,
    Withdrawal,
)
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import (
    TIMEOUT_MS,
    authorised,
    balance,
    cross_customer_policy,
    postings,
    run,
)

WIDE = {"max_per_txn_minor": 500_000, "daily_amount_minor": 500_000}


def withdrawal(world: World, amount_minor: int = 2_000, **changes: Any) -> Withdrawal:
    customer = world.customers[0]
    request = Withdrawal(
        customer.pan, key(world.terminals[0]), AUDIT, "20", amount_minor, world.currency
    )
    return replace(request, **changes)


@pytest.mark.parametrize(
    ("card", "floor_minor", "amount_minor", "changes", "expected", "balance_after"),
    [
        ({}, 0, 2_000, {}, Outcome.APPROVED, 98_000),
        ({}, 0, 0, {}, Outcome.INVALID_AMOUNT, 100_000),
        ({}, 0, -5, {}, Outcome.INVALID_AMOUNT, 100_000),
        ({}, 0, 2_000, {"currency": "USD"}, Outcome.INVALID_TRANSACTION, 100_000),
        ({}, 0, 2_000, {"account_type": "30"}, Outcome.NOT_PERMITTED_TO_CARDHOLDER, 100_000),
        ({}, 0, 50_001, {}, Outcome.EXCEEDS_AMOUNT_LIMIT, 100_000),
        (WIDE, 0, 100_001, {}, Outcome.INSUFFICIENT_FUNDS, 100_000),
        (WIDE, 0, 100_000, {}, Outcome.APPROVED, 0),
        (WIDE, -20_000, 120_000, {}, Outcome.APPROVED, -20_000),
        (WIDE, -20_000, 120_001, {}, Outcome.INSUFFICIENT_FUNDS, 100_000),
        ({"expiry": "2610"}, 0, 2_000, {}, Outcome.EXPIRED_CARD, 100_000),
        ({"expiry": "2611"}, 0, 2_000, {}, Outcome.APPROVED, 98_000),
        ({"status": "blocked"}, 0, 2_000, {}, Outcome.RESTRICTED_CARD, 100_000),
        ({"status": "stolen"}, 0, 2_000, {}, Outcome.RESTRICTED_CARD, 100_000),
        ({}, 0, 2_000, {"pan": "4000009999999999"}, Outcome.INVALID_CARD, 100_000),
    ],
)
async def test_withdrawal_outcomes(
    *,
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    card: dict[str, Any],
    floor_minor: int,
    amount_minor: int,
    changes: dict[str, Any],
    expected: Outcome,
    balance_after: int,
) -> None:
    world = World()
    await world.load(owner_conn, 1, card=card, floor_minor=floor_minor)
    result = await run(ledger_store, withdrawal(world, amount_minor, **changes))
    assert result.outcome is expected
    assert result.repeated is False
    checking = world.customers[0].checking
    assert await balance(owner_conn, checking) == balance_after
    assert await postings(owner_conn, checking) == (2 if expected is Outcome.APPROVED else 1)
    if expected is Outcome.APPROVED:
        assert result.amount_minor == amount_minor
        assert result.ledger_balance_minor == balance_after
        assert result.available_balance_minor == balance_after - floor_minor
        assert await balance(owner_conn, f"CASH-{world.terminals[0]}") == amount_minor


async def test_repeat_returns_stored_outcome_and_posts_nothing(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    request = withdrawal(world, 3_000)
    first = await run(ledger_store, request)
    again = await run(ledger_store, request)
    later = await run(ledger_store, request, now=NOW + timedelta(days=3))
    assert first.outcome is Outcome.APPROVED
    assert first.repeated is False
    assert again == replace(first, repeated=True)
    assert later == again
    assert await balance(owner_conn, world.customers[0].checking) == 97_000
    assert await postings(owner_conn, world.customers[0].checking) == 2


async def test_repeated_decline_is_stored_too(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    request = withdrawal(world, 200_000)
    assert (await run(ledger_store, request)).outcome is Outcome.EXCEEDS_AMOUNT_LIMIT
    again = await run(ledger_store, request)
    assert again.outcome is Outcome.EXCEEDS_AMOUNT_LIMIT
    assert again.repeated


async def test_balance_inquiry(ledger_store: LedgerStore, owner_conn: asyncpg.Connection) -> None:
    world = World()
    await world.load(owner_conn, 1, floor_minor=-30_000)
    customer = world.customers[0]
    inquiry = BalanceInquiry(customer.pan, key(world.terminals[0]), AUDIT, "20")
    result = await run(ledger_store, inquiry)
    assert (result.outcome, result.ledger_balance_minor, result.available_balance_minor) == (
        Outcome.APPROVED, 100_000, 130_000,
    )  # fmt: skip
    assert result.currency == "EUR"
    unlinked = await run(
        ledger_store, replace(inquiry, key=key(world.terminals[0]), account_type="30")
    )
    assert unlinked.outcome is Outcome.NOT_PERMITTED_TO_CARDHOLDER


@pytest.mark.parametrize(
    ("daily_count", "amounts", "expected_last"),
    [
        (2, [1_000, 1_000, 1_000], Outcome.EXCEEDS_FREQUENCY_LIMIT),
        (5, [50_000, 50_000, 1], Outcome.EXCEEDS_AMOUNT_LIMIT),
        (5, [50_000, 49_999, 1], Outcome.APPROVED),
    ],
)
async def test_daily_limits(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    daily_count: int,
    amounts: list[int],
    expected_last: Outcome,
) -> None:
    world = World()
    await world.load(owner_conn, 1, balance_minor=300_000, card={"daily_count": daily_count})
    outcomes = [(await run(ledger_store, withdrawal(world, a))).outcome for a in amounts]
    assert outcomes[:-1] == [Outcome.APPROVED] * (len(amounts) - 1)
    assert outcomes[-1] is expected_last
    tomorrow = await run(ledger_store, withdrawal(world, amounts[-1]), now=NOW + timedelta(days=1))
    assert tomorrow.outcome is Outcome.APPROVED


async def test_business_day_cutover(
    ledger_settings: LedgerSettings, owner_conn: asyncpg.Connection
) -> None:
    settings = replace(ledger_settings, business_day_cutover=time(22, 0))
    # The ledger's policy and the switch's settings agree, or the store does not open; set back
    # after the test (the cluster is shared).
    await owner_conn.execute("UPDATE ledger.policy SET business_day_cutover = '22:00'")
    store = await open_store(settings, timeout_ms=TIMEOUT_MS)
    try:
        world = World()
        await world.load(owner_conn, 1, card={"daily_count": 1})
        before = datetime(2026, 11, 23, 21, 59, tzinfo=UTC)
        after = datetime(2026, 11, 23, 22, 1, tzinfo=UTC)
        next_morning = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
        assert (await run(store, withdrawal(world), now=before)).outcome is Outcome.APPROVED
        assert (await run(store, withdrawal(world), now=after)).outcome is Outcome.APPROVED
        limited = await run(store, withdrawal(world), now=next_morning)
        assert limited.outcome is Outcome.EXCEEDS_FREQUENCY_LIMIT
    finally:
        await store.close()
        await owner_conn.execute("UPDATE ledger.policy SET business_day_cutover = '00:00'")


async def test_pin_tries_block_the_card(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    outcomes = []
    for _ in range(4):
        lookup = await ledger_store.lookup(withdrawal(world), timeout_ms=TIMEOUT_MS)
        result = await ledger_store.record_pin_failure(lookup, now=NOW, timeout_ms=TIMEOUT_MS)
        outcomes.append(result.outcome)
    assert outcomes == [
        Outcome.INCORRECT_PIN, Outcome.INCORRECT_PIN, Outcome.PIN_TRIES_EXCEEDED,
        Outcome.PIN_TRIES_EXCEEDED,
    ]  # fmt: skip
    lookup = await ledger_store.lookup(withdrawal(world), timeout_ms=TIMEOUT_MS)
    assert lookup.card is not None
    assert (lookup.card.status, lookup.card.pin_tries) == ("blocked", 3)
    result = await ledger_store.execute(
        lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
    )
    assert result.outcome is Outcome.PIN_TRIES_EXCEEDED


async def test_correct_pin_resets_tries(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    lookup = await ledger_store.lookup(withdrawal(world), timeout_ms=TIMEOUT_MS)
    await ledger_store.record_pin_failure(lookup, now=NOW, timeout_ms=TIMEOUT_MS)
    assert (await run(ledger_store, withdrawal(world))).outcome is Outcome.APPROVED
    lookup = await ledger_store.lookup(withdrawal(world), timeout_ms=TIMEOUT_MS)
    assert lookup.card is not None
    assert lookup.card.pin_tries == 0


async def test_inactive_terminal(ledger_store: LedgerStore, owner_conn: asyncpg.Connection) -> None:
    world = World()
    await world.load(owner_conn, 1)
    await owner_conn.execute(
        "UPDATE ledger.terminals SET status = 'inactive' WHERE terminal_id = $1",
        world.terminals[0],
    )
    result = await run(ledger_store, withdrawal(world))
    assert result.outcome is Outcome.NOT_PERMITTED_TO_TERMINAL


async def test_record_decline_is_audited_and_idempotent(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    request = withdrawal(world)
    lookup = await ledger_store.lookup(request, timeout_ms=TIMEOUT_MS)
    result = await ledger_store.record_decline(
        lookup, Outcome.DO_NOT_HONOUR, now=NOW, timeout_ms=TIMEOUT_MS
    )
    assert result.outcome is Outcome.DO_NOT_HONOUR
    assert (await run(ledger_store, request)).repeated
    count = await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1", world.terminals[0]
    )
    assert count == 1


def transfer(world: World, amount_minor: int, **changes: Any) -> Transfer:
    customer = world.customers[0]
    request = Transfer(
        customer.pan, key(world.terminals[0], "0200"), replace(AUDIT, processing_code="402010"),
        "20", amount_minor, world.currency, to_type="10",
    )  # fmt: skip
    return replace(request, **changes)


@pytest.mark.parametrize(
    ("amount_minor", "changes", "expected", "checking_after", "savings_after"),
    [
        (30_000, {}, Outcome.APPROVED, 70_000, 130_000),
        (100_001, {}, Outcome.INSUFFICIENT_FUNDS, 100_000, 100_000),
        (0, {}, Outcome.INVALID_AMOUNT, 100_000, 100_000),
        (1_000, {"to_type": "20"}, Outcome.INVALID_TRANSACTION, 100_000, 100_000),
        (1_000, {"to_type": "30"}, Outcome.NOT_PERMITTED_TO_CARDHOLDER, 100_000, 100_000),
        (1_000, {"from_type": "30"}, Outcome.NOT_PERMITTED_TO_CARDHOLDER, 100_000, 100_000),
        (1_000, {"currency": "USD"}, Outcome.INVALID_TRANSACTION, 100_000, 100_000),
        (1_000, {"to_type": None, "to_account": "NOPE"}, Outcome.INVALID_TRANSACTION,
         100_000, 100_000),
    ],
)  # fmt: skip
async def test_transfer_between_own_accounts(
    *,
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    amount_minor: int,
    changes: dict[str, Any],
    expected: Outcome,
    checking_after: int,
    savings_after: int,
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    result = await run(ledger_store, transfer(world, amount_minor, **changes))
    assert result.outcome is expected
    customer = world.customers[0]
    assert await balance(owner_conn, customer.checking) == checking_after
    assert await balance(owner_conn, customer.savings) == savings_after


async def test_transfer_to_another_customer_needs_configuration(
    ledger_store: LedgerStore, ledger_settings: LedgerSettings, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 2)
    other = world.customers[1]
    denied = await run(
        ledger_store, transfer(world, 5_000, to_type=None, to_account=other.checking)
    )
    assert denied.outcome is Outcome.NOT_PERMITTED_TO_CARDHOLDER
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(cross_customer_policy(owner_conn))
        store = await open_store(
            replace(ledger_settings, cross_customer_transfers=True), timeout_ms=TIMEOUT_MS
        )
        stack.push_async_callback(store.close)
        request = transfer(world, 5_000, to_type=None, to_account=other.checking)
        assert (await run(store, request)).outcome is Outcome.APPROVED
        reversal = Reversal(
            world.customers[0].pan, key(world.terminals[0], "0420"),
            replace(AUDIT, mti="0420"), request.key,
        )  # fmt: skip
        assert (await run(store, reversal)).outcome is Outcome.APPROVED
    assert await balance(owner_conn, world.customers[0].checking) == 100_000
    assert await balance(owner_conn, other.checking) == 100_000
    assert await postings(owner_conn, other.checking) == 3


def reversal(world: World, original: RequestKey, dispensed_minor: int = 0) -> Reversal:
    return Reversal(
        world.customers[0].pan, key(world.terminals[0], "0420"), replace(AUDIT, mti="0420"),
        original, dispensed_minor,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("dispensed_minor", "expected", "balance_after"),
    [
        (0, Outcome.APPROVED, 100_000),
        (1_500, Outcome.APPROVED, 98_500),
        (4_000, Outcome.INVALID_AMOUNT, 96_000),
        (-1, Outcome.INVALID_AMOUNT, 96_000),
    ],
)
async def test_reversal_full_and_partial(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    dispensed_minor: int,
    expected: Outcome,
    balance_after: int,
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    original = withdrawal(world, 4_000)
    assert (await run(ledger_store, original)).outcome is Outcome.APPROVED
    result = await run(ledger_store, reversal(world, original.key, dispensed_minor))
    assert result.outcome is expected
    assert await balance(owner_conn, world.customers[0].checking) == balance_after
    if expected is Outcome.APPROVED:
        assert result.amount_minor == 4_000 - dispensed_minor
        cash = await balance(owner_conn, f"CASH-{world.terminals[0]}")
        assert cash == dispensed_minor


@pytest.mark.parametrize(
    ("amount_minor", "expected", "balance_after"),
    [
        (None, Outcome.APPROVED, 100_000),  # the ledger's own tools state no F4
        (4_000, Outcome.APPROVED, 100_000),
        (3_999, Outcome.INVALID_AMOUNT, 96_000),
        (9_000, Outcome.INVALID_AMOUNT, 96_000),
    ],
)
async def test_a_reversal_states_its_originals_amount(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    amount_minor: int | None,
    expected: Outcome,
    balance_after: int,
) -> None:
    """F4 of an 0420 is the original's amount: one that states another is no reversal of that
    original, and is declined (13) before it could need a word the ledger would refuse."""
    world = World()
    await world.load(owner_conn, 1)
    original = withdrawal(world, 4_000)
    assert (await run(ledger_store, original)).outcome is Outcome.APPROVED
    undo = replace(reversal(world, original.key), amount_minor=amount_minor)
    assert (await run(ledger_store, undo)).outcome is expected
    assert await balance(owner_conn, world.customers[0].checking) == balance_after


async def test_reversal_applies_at_most_once(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    original = withdrawal(world, 4_000)
    await run(ledger_store, original)
    first = reversal(world, original.key)
    assert (await run(ledger_store, first)).outcome is Outcome.APPROVED
    assert (await run(ledger_store, first)).repeated
    second = await run(ledger_store, reversal(world, original.key))
    assert (second.outcome, second.repeated, second.entry_id) == (Outcome.APPROVED, False, None)
    assert await balance(owner_conn, world.customers[0].checking) == 100_000
    assert await postings(owner_conn, world.customers[0].checking) == 3


async def test_reversal_before_original_declines_the_late_original(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    original = withdrawal(world, 4_000)
    early = await run(ledger_store, reversal(world, original.key))
    assert early.outcome is Outcome.ORIGINAL_NOT_FOUND
    late = await run(ledger_store, original)
    assert late.outcome is Outcome.DO_NOT_HONOUR
    assert await balance(owner_conn, world.customers[0].checking) == 100_000
    assert await postings(owner_conn, world.customers[0].checking) == 1


async def test_reversal_of_unknown_or_declined_original(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    never = await run(ledger_store, reversal(world, key(world.terminals[0])))
    assert never.outcome is Outcome.ORIGINAL_NOT_FOUND
    declined = withdrawal(world, 200_000)
    assert (await run(ledger_store, declined)).outcome is Outcome.EXCEEDS_AMOUNT_LIMIT
    result = await run(ledger_store, reversal(world, declined.key))
    assert (result.outcome, result.entry_id) == (Outcome.APPROVED, None)


async def test_a_reversal_cannot_be_reversed(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    original = withdrawal(world, 4_000)
    await run(ledger_store, original)
    first = reversal(world, original.key)
    assert (await run(ledger_store, first)).outcome is Outcome.APPROVED
    again = await run(ledger_store, reversal(world, first.key))
    assert again.outcome is Outcome.INVALID_TRANSACTION
    assert await balance(owner_conn, world.customers[0].checking) == 100_000


async def test_reversal_gives_back_the_daily_amount(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    first = withdrawal(world, 50_000)
    await run(ledger_store, first)
    await run(ledger_store, withdrawal(world, 50_000))
    assert (await run(ledger_store, withdrawal(world, 10_000))).outcome is (
        Outcome.EXCEEDS_AMOUNT_LIMIT
    )
    await run(ledger_store, reversal(world, first.key))
    assert (await run(ledger_store, withdrawal(world, 10_000))).outcome is Outcome.APPROVED


async def test_terminal_keys(ledger_store: LedgerStore, owner_conn: asyncpg.Connection) -> None:
    world = World()
    await world.load(owner_conn, 0)
    terminal_id = world.terminals[0]
    keys = await ledger_store.terminal_keys(terminal_id, timeout_ms=TIMEOUT_MS)
    assert keys is not None
    tmk = f"TMK-{terminal_id}"
    assert (keys.tmk, keys.tpk, keys.tak, keys.status) == (tmk, None, None, "active")
    for tpk, tak in (("TPK1", "TAK1"), ("TPK2", "TAK2")):
        word = development_session_keys_token(terminal_id, tmk, tpk, tak)
        await ledger_store.set_terminal_keys(
            terminal_id, tpk=tpk, tak=tak, authorisation=word, timeout_ms=TIMEOUT_MS
        )
        keys = await ledger_store.terminal_keys(terminal_id, timeout_ms=TIMEOUT_MS)
        assert keys is not None
        assert (keys.tmk, keys.tpk, keys.tak) == (tmk, tpk, tak)
    assert await ledger_store.terminal_keys("NOPE", timeout_ms=TIMEOUT_MS) is None
    with pytest.raises(LedgerError, match="unknown terminal"):
        await ledger_store.set_terminal_keys(
            "NOPE", tpk="x", tak="y", authorisation=bytes(16), timeout_ms=TIMEOUT_MS
        )

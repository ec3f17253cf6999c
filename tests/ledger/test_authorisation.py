"""A debit needs the HSM's word: a stolen switch login that calls the ledger's functions with no
token, a made-up one, or one for another request or amount moves no money."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from hsm import authorisation as hsm_authorisation
from hsm.authorisation import Authorisation
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY
from ledger import authorisation
from ledger.errors import LedgerError
from ledger.model import BalanceInquiry, Reversal, Transfer, Withdrawal
from ledger.store import LedgerStore
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import TIMEOUT_MS, authorised, balance, postings


def test_the_ledger_and_the_hsm_agree_on_the_development_word() -> None:
    request = Withdrawal("4000001234567899", key("KIOSK001"), AUDIT, "20", 2_500, "EUR")
    pan_hash = bytes(range(32))
    word = Authorisation(*vars_of(request), 2_500, "EUR")
    hsm_key = hsm_authorisation.authorisation_key(DEVELOPMENT_PAN_HASH_KEY)
    assert hsm_key == authorisation.DEVELOPMENT_AUTHORISATION_KEY
    assert authorisation.development_token(request, pan_hash) == hsm_authorisation.token(
        hsm_key, word.message(pan_hash)
    )
    assert authorisation.development_chip_token(request, pan_hash, 9) == hsm_authorisation.token(
        hsm_key, word.chip_message(pan_hash, 9)
    )
    assert authorisation.development_session_keys_token(
        "KIOSK001", "M", "P", "A"
    ) == hsm_authorisation.token(
        hsm_key, hsm_authorisation.session_keys_message("KIOSK001", "M", "P", "A")
    )
    reversal = Reversal(request.pan, key("KIOSK001", "0420"), AUDIT, request.key, 500)
    reversed_ = hsm_authorisation.ReversalAuthorisation(
        *vars_of(reversal), *vars_of(request)[1:], 2_500, 500
    )
    assert authorisation.development_reversal_token(
        reversal, pan_hash, 2_500
    ) == hsm_authorisation.token(hsm_key, reversed_.message(pan_hash))
    assert authorisation.check_value(hsm_key) == hsm_authorisation.check_value(hsm_key)


def vars_of(request: Withdrawal | Reversal) -> tuple[str, str, str, str]:
    k = request.key
    return k.terminal_id, k.transmission_time, k.stan, k.message_class


@pytest.mark.parametrize(
    "word",
    [
        pytest.param(None, id="no-word"),
        pytest.param(bytes(16), id="made-up"),
        pytest.param("other-amount", id="for-another-amount"),
        pytest.param("other-request", id="for-another-request"),
    ],
)
async def test_no_debit_without_the_hsms_word(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, word: object
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    customer, terminal = world.customers[0], world.terminals[0]
    request = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 5_000, "EUR")
    lookup = await ledger_store.lookup(request, timeout_ms=TIMEOUT_MS)
    token: bytes | None
    if word == "other-amount":
        token = authorisation.development_token(
            Withdrawal(customer.pan, request.key, AUDIT, "20", 50, "EUR"), lookup.pan_hash
        )
    elif word == "other-request":
        other = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 5_000, "EUR")
        token = authorisation.development_token(other, lookup.pan_hash)
    else:
        token = word if isinstance(word, bytes) else None
    with pytest.raises(LedgerError, match="no valid word from the HSM"):
        await ledger_store.execute(lookup, authorisation=token, now=NOW, timeout_ms=TIMEOUT_MS)
    assert await balance(owner_conn, customer.checking) == 100_000
    assert await postings(owner_conn, customer.checking) == 1  # the opening balance only
    assert await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1", terminal
    ) == 0  # fmt: skip


async def test_an_inquiry_needs_the_word_too_but_a_decline_does_not(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1, card={"status": "blocked"})
    customer, terminal = world.customers[0], world.terminals[0]
    inquiry = BalanceInquiry(customer.pan, key(terminal), AUDIT, "20")
    lookup = await ledger_store.lookup(inquiry, timeout_ms=TIMEOUT_MS)
    # A blocked card's inquiry is declined: no word is needed to record that.
    result = await ledger_store.execute(lookup, authorisation=None, now=NOW, timeout_ms=TIMEOUT_MS)
    assert result.outcome.value == "restricted_card"
    assert lookup.card is not None


async def _withdrawn(
    store: LedgerStore, conn: asyncpg.Connection
) -> tuple[World, Withdrawal, Reversal]:
    """A customer who withdrew 50.00 (balance 950.00), and the full reversal of it."""
    world = World()
    await world.load(conn, 1)
    customer, terminal = world.customers[0], world.terminals[0]
    original = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 5_000, "EUR")
    lookup = await store.lookup(original, timeout_ms=TIMEOUT_MS)
    await store.execute(lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS)
    assert await balance(conn, customer.checking) == 95_000
    return world, original, Reversal(customer.pan, key(terminal, "0420"), AUDIT, original.key)


def _reversal_word(word: str, reversal: Reversal, pan_hash: bytes) -> bytes | None:
    """The word a stolen switch login might send with `reversal`."""
    other_key = dataclasses.replace(reversal.key, stan="999999")
    forged = {
        "another-amount": (reversal, 4_000),
        "another-dispensed": (dataclasses.replace(reversal, dispensed_minor=1_000), 5_000),
        "another-stan": (dataclasses.replace(reversal, key=other_key), 5_000),
        "another-terminal": (
            dataclasses.replace(
                reversal, key=dataclasses.replace(reversal.key, terminal_id="KIOSK999")
            ),
            5_000,
        ),
    }
    if word in forged:
        request, amount_minor = forged[word]
        return authorisation.development_reversal_token(request, pan_hash, amount_minor)
    if word == "a-pin-word":  # the PIN word of the reversal's own key: no word stands for another
        return authorisation.development_token(reversal, pan_hash)
    return bytes(16) if word == "made-up" else None


@pytest.mark.parametrize(
    "word",
    ["none", "made-up", "another-amount", "another-dispensed", "another-stan", "another-terminal",
     "a-pin-word"],
)  # fmt: skip
async def test_a_reversal_moves_money_back_only_with_the_hsms_word(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, word: str
) -> None:
    """What a stolen switch login would try: give a real approval's money back with no word, a
    made-up one, or the word the HSM gave for another reversal (another amount, STAN or
    terminal). The ledger refuses the call, and nothing is posted."""
    world, _, reversal = await _withdrawn(ledger_store, owner_conn)
    customer = world.customers[0]
    lookup = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    token = _reversal_word(word, reversal, lookup.pan_hash)
    with pytest.raises(LedgerError, match=r"42501.*no valid word from the HSM \(a MAC it verified"):
        await ledger_store.execute(lookup, authorisation=token, now=NOW, timeout_ms=TIMEOUT_MS)
    assert await balance(owner_conn, customer.checking) == 95_000
    assert await postings(owner_conn, customer.checking) == 2  # the opening and the withdrawal
    assert await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE message_class = '0420'"
        " AND terminal_id = $1", world.terminals[0],
    ) == 0  # fmt: skip


@pytest.mark.parametrize("dispensed_minor", [0, 2_000])
async def test_a_reversal_with_its_word_moves_back_what_was_not_dispensed(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, dispensed_minor: int
) -> None:
    world, _, full = await _withdrawn(ledger_store, owner_conn)
    reversal = dataclasses.replace(full, dispensed_minor=dispensed_minor)
    lookup = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    result = await ledger_store.execute(
        lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
    )
    assert result.outcome.value == "approved"
    assert await balance(owner_conn, world.customers[0].checking) == 100_000 - dispensed_minor


async def test_a_partial_reversals_word_gives_back_no_more_than_the_undispensed_part(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the word for a partial reversal (20.00 of 50.00 dispensed), a caller that asks the
    ledger to move the whole 50.00 back is refused: the word says what was dispensed, and the
    ledger moves back exactly the original's amount less that."""
    world, _, full = await _withdrawn(ledger_store, owner_conn)
    reversal = dataclasses.replace(full, dispensed_minor=2_000)
    item = ledger_store._item  # a fault injected on purpose: a caller that is not the switch

    def inflated(*args: object) -> object:
        built = item(*args)  # type: ignore[arg-type]
        # The day's usage as a full reversal would give it back, so only the amount is wrong.
        return built._replace(amount_minor=5_000, card_usage_amount_minor=0)

    monkeypatch.setattr(ledger_store, "_item", inflated)
    lookup = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    with pytest.raises(LedgerError, match=r"42501.*not a reversal of this card's original"):
        await ledger_store.execute(
            lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
        )
    assert await balance(owner_conn, world.customers[0].checking) == 95_000


async def test_a_repeated_reversal_gets_its_stored_answer_without_a_word(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    """A repeat read before the first copy was written still reaches the write: the ledger
    answers it with the stored outcome, asks no word of it, and moves nothing twice."""
    world, _, reversal = await _withdrawn(ledger_store, owner_conn)
    first = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    repeat = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    await ledger_store.execute(
        first, authorisation=authorised(first), now=NOW, timeout_ms=TIMEOUT_MS
    )
    again = await ledger_store.execute(repeat, authorisation=None, now=NOW, timeout_ms=TIMEOUT_MS)
    assert (again.outcome.value, again.repeated) == ("approved", True)
    assert await balance(owner_conn, world.customers[0].checking) == 100_000


async def test_a_reversal_that_moves_no_money_needs_no_word(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    """A reversal of an original the ledger never saw moves nothing: it is kept (to decline a
    late original) without a word. What it can cost is that one original, not money."""
    world = World()
    await world.load(owner_conn, 1)
    customer, terminal = world.customers[0], world.terminals[0]
    never_seen = key(terminal)
    reversal = Reversal(customer.pan, key(terminal, "0420"), AUDIT, never_seen)
    lookup = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    result = await ledger_store.execute(lookup, authorisation=None, now=NOW, timeout_ms=TIMEOUT_MS)
    assert result.outcome.value == "original_not_found"
    assert await balance(owner_conn, customer.checking) == 100_000


async def test_a_transfer_redirected_to_another_customer_is_refused(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the HSM's word for the request, but the destination changed on the way to the
    ledger: the ledger builds the postings itself, and refuses a destination the card may not
    pay into (the policy admits no transfer between customers here)."""
    world = World()
    await world.load(owner_conn, 2)
    alice, bob = world.customers
    item = ledger_store._item  # a fault injected on purpose: a caller that is not the switch

    def redirected(*args: object) -> object:
        built = item(*args)  # type: ignore[arg-type]
        return built._replace(to_type=None, to_account=bob.checking)

    monkeypatch.setattr(ledger_store, "_item", redirected)
    request = Transfer(alice.pan, key(world.terminals[0]), AUDIT, "20", 1_000, "EUR", to_type="10")
    lookup = await ledger_store.lookup(request, timeout_ms=TIMEOUT_MS)
    with pytest.raises(LedgerError, match="not one this card may pay into"):
        await ledger_store.execute(
            lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
        )
    assert await balance(owner_conn, bob.checking) == 100_000
    assert await balance(owner_conn, alice.checking) == 100_000


@pytest.mark.parametrize("attack", ["copied", "under-another-tmk", "made-up"])
async def test_another_terminals_keys_cannot_be_copied(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, attack: str
) -> None:
    """What a stolen switch login would try: give terminal B the session keys of terminal A
    (whose keys it knows, say from a rogue terminal A), with A's word, with a word for B asked
    of the HSM under A's TMK, or with none. Each is refused; B keeps its keys."""
    world = World()
    await world.load(owner_conn, 0, terminals=2)
    a, b = world.terminals
    tpk, tak = f"TPK-{a}", f"TAK-{a}"
    a_word = authorisation.development_session_keys_token(a, f"TMK-{a}", tpk, tak)
    await ledger_store.set_terminal_keys(
        a, tpk=tpk, tak=tak, authorisation=a_word, timeout_ms=TIMEOUT_MS
    )
    word = {
        "copied": a_word,
        "under-another-tmk": authorisation.development_session_keys_token(b, f"TMK-{a}", tpk, tak),
        "made-up": bytes(16),
    }[attack]
    with pytest.raises(LedgerError, match=r"42501.*no valid word from the HSM for these session"):
        await ledger_store.set_terminal_keys(
            b, tpk=tpk, tak=tak, authorisation=word, timeout_ms=TIMEOUT_MS
        )
    keys = await ledger_store.terminal_keys(b, timeout_ms=TIMEOUT_MS)
    assert keys is not None
    assert (keys.tpk, keys.tak) == (None, None)

"""A debit needs the HSM's word: a stolen switch login that calls the ledger's functions with no
token, a made-up one, or one for another request or amount moves no money."""

from __future__ import annotations

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
    assert authorisation.check_value(hsm_key) == hsm_authorisation.check_value(hsm_key)


def vars_of(request: Withdrawal) -> tuple[str, str, str, str]:
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


async def test_a_reversal_moves_money_back_without_a_pin(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    """Reversals carry no PIN (the terminal's MAC is their proof): no word is asked of them."""
    world = World()
    await world.load(owner_conn, 1)
    customer, terminal = world.customers[0], world.terminals[0]
    original = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 5_000, "EUR")
    lookup = await ledger_store.lookup(original, timeout_ms=TIMEOUT_MS)
    await ledger_store.execute(
        lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
    )
    reversal = Reversal(customer.pan, key(terminal, "0420"), AUDIT, original.key)
    lookup = await ledger_store.lookup(reversal, timeout_ms=TIMEOUT_MS)
    result = await ledger_store.execute(lookup, authorisation=None, now=NOW, timeout_ms=TIMEOUT_MS)
    assert result.outcome.value == "approved"
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

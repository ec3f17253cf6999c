"""Chip cards in the ledger: the EMV profile loaded with the card, and the last ATC, checked and
moved forward in the posting's own transaction, so one ATC never succeeds twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from ledger import rules
from ledger.authorisation import development_chip_token
from ledger.codec import WriteItem
from ledger.errors import LedgerError
from ledger.fixtures import EntryError, check_fixtures, load_fixtures
from ledger.model import EmvProfile, Outcome, Withdrawal
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY, LedgerSettings
from ledger.store import LedgerStore, Lookup, open_store
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import TIMEOUT_MS, authorised, balance, chip_authorised, run
from tests.ledger.test_rules import CARD, snapshot_with

START_MINOR = 100_000
PROFILE: dict[str, Any] = {
    "imk_ac": "D0144E0TX00E0300...",
    "psn": "01",
    "scheme": "visa",
    "cvn": 18,
}


async def chip_world(conn: asyncpg.Connection, customers: int = 1, **profile: Any) -> World:
    world = World()
    await world.load(conn, customers, card={"emv": {**PROFILE, **profile}, "daily_count": 100})
    return world


async def last_atc(conn: asyncpg.Connection, customer_id: int) -> int | None:
    value: int | None = await conn.fetchval(
        "SELECT emv_last_atc FROM ledger.cards WHERE customer_id = $1", customer_id
    )
    return value


def withdrawal(world: World, atc: int | None, amount_minor: int = 1_000) -> Withdrawal:
    pan = world.customers[0].pan
    return Withdrawal(pan, key(world.terminals[0]), AUDIT, "20", amount_minor, "EUR", atc)


@pytest.fixture
async def second_store(ledger_settings: LedgerSettings) -> AsyncIterator[LedgerStore]:
    """Another switch process: its own pool and batches, so its writes race the first's."""
    store = await open_store(ledger_settings, timeout_ms=30_000)
    try:
        yield store
    finally:
        await store.close(timeout_ms=10_000)


async def test_the_profile_comes_with_the_card(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await chip_world(owner_conn, fallback_allowed=True)
    lookup = await ledger_store.lookup(withdrawal(world, None), timeout_ms=TIMEOUT_MS)
    assert lookup.card is not None
    assert lookup.card.emv == EmvProfile(PROFILE["imk_ac"], "01", "visa", 18, True)
    assert lookup.card.last_atc is None
    plain = World()
    await plain.load(owner_conn, 1)
    lookup = await ledger_store.lookup(withdrawal(plain, None), timeout_ms=TIMEOUT_MS)
    assert lookup.card is not None
    assert lookup.card.emv is None


async def test_each_verified_atc_moves_the_last_forward_and_a_replay_is_declined(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await chip_world(owner_conn)
    customer = world.customers[0]
    assert (await run(ledger_store, withdrawal(world, 7))).outcome is Outcome.APPROVED
    assert await last_atc(owner_conn, customer.customer_id) == 7
    # A decline after the cryptogram verified spends its ATC too: replayed once the limit or
    # the funds allow it, it must not be approved.
    too_much = withdrawal(world, 9, amount_minor=60_000)  # the card's limit: 50,000
    assert (await run(ledger_store, too_much)).outcome is Outcome.EXCEEDS_AMOUNT_LIMIT
    assert await last_atc(owner_conn, customer.customer_id) == 9
    for replayed in (9, 8, 7):
        result = await run(ledger_store, withdrawal(world, replayed))
        assert result.outcome is Outcome.SECURITY_VIOLATION
    assert await last_atc(owner_conn, customer.customer_id) == 9
    assert (await run(ledger_store, withdrawal(world, 10))).outcome is Outcome.APPROVED
    assert await balance(owner_conn, customer.checking) == START_MINOR - 2_000
    codes = await owner_conn.fetch(
        "SELECT response_code FROM ledger.transactions WHERE customer_id = $1"
        " AND kind = 'withdrawal' ORDER BY transaction_id",
        customer.customer_id,
    )
    assert [row[0] for row in codes] == ["00", "61", "63", "63", "63", "00"]


async def test_a_wrong_pin_spends_the_atc_too(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await chip_world(owner_conn)
    lookup = await ledger_store.lookup(withdrawal(world, 3), timeout_ms=TIMEOUT_MS)
    failed = await ledger_store.record_pin_failure(
        lookup, chip_authorisation=chip_authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
    )
    assert failed.outcome is Outcome.INCORRECT_PIN
    assert await last_atc(owner_conn, world.customers[0].customer_id) == 3
    lookup = await ledger_store.lookup(withdrawal(world, 3), timeout_ms=TIMEOUT_MS)
    again = await ledger_store.record_pin_failure(
        lookup, chip_authorisation=chip_authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
    )
    assert again.outcome is Outcome.SECURITY_VIOLATION  # a replay never counts as a PIN try


async def test_two_switches_racing_one_atc_never_both_succeed(
    ledger_store: LedgerStore, second_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    """Both read the card before either writes: both see the ATC as fresh, both decide to
    approve. The ledger lets one through; the other finds the card changed under the customer's
    lock, is decided again, and is declined as a replay."""
    world = await chip_world(owner_conn)
    customer = world.customers[0]
    rounds = 10
    for atc in range(1, rounds + 1):
        first, second = withdrawal(world, atc), withdrawal(world, atc)
        lookups = await asyncio.gather(
            ledger_store.lookup(first, timeout_ms=TIMEOUT_MS),
            second_store.lookup(second, timeout_ms=TIMEOUT_MS),
        )
        assert all(lookup.card is not None for lookup in lookups)
        results = await asyncio.gather(
            *(
                store.execute(
                    lookup,
                    authorisation=authorised(lookup),
                    chip_authorisation=chip_authorised(lookup),
                    now=NOW,
                    timeout_ms=TIMEOUT_MS,
                )
                for store, lookup in zip((ledger_store, second_store), lookups, strict=True)
            ),
        )
        outcomes = sorted(result.outcome for result in results)
        assert outcomes == sorted([Outcome.APPROVED, Outcome.SECURITY_VIOLATION])
        assert await last_atc(owner_conn, customer.customer_id) == atc
    assert await balance(owner_conn, customer.checking) == START_MINOR - rounds * 1_000


async def test_one_switch_with_both_in_its_queue_approves_one(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await chip_world(owner_conn)
    lookups = await asyncio.gather(
        *(ledger_store.lookup(withdrawal(world, 5), timeout_ms=TIMEOUT_MS) for _ in range(4))
    )
    results = await asyncio.gather(
        *(
            ledger_store.execute(
                lookup,
                authorisation=authorised(lookup),
                chip_authorisation=chip_authorised(lookup),
                now=NOW,
                timeout_ms=TIMEOUT_MS,
            )
            for lookup in lookups
        )
    )
    assert sorted(r.outcome for r in results) == sorted(
        [Outcome.APPROVED] + [Outcome.SECURITY_VIOLATION] * 3
    )
    assert await balance(owner_conn, world.customers[0].checking) == START_MINOR - 1_000


async def test_the_database_refuses_an_atc_the_rules_would_decline(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a stolen switch login would try: an approval carrying an ATC already used, decided
    on the card as it is now (so not stale), or an ATC for a card with no EMV profile."""
    world = await chip_world(owner_conn)
    plain = World()
    await plain.load(owner_conn, 1)
    assert (await run(ledger_store, withdrawal(world, 20))).outcome is Outcome.APPROVED
    item = ledger_store._item  # the write tampered with on purpose

    def replaying(lookup: Lookup, *args: Any) -> WriteItem:
        # With the HSM's word for ATC 20 (a switch that kept the word of the first request).
        word = development_chip_token(lookup.request, lookup.pan_hash, 20)
        return item(lookup, *args)._replace(atc=20, chip_authorisation=word)

    monkeypatch.setattr(ledger_store, "_item", replaying)
    for target in (withdrawal(world, 21), withdrawal(plain, None)):
        with pytest.raises(LedgerError, match=r"42501.*ATC not above the card's last"):
            await run(ledger_store, target)
    assert await balance(owner_conn, world.customers[0].checking) == START_MINOR - 1_000
    assert await balance(owner_conn, plain.customers[0].checking) == START_MINOR
    assert await last_atc(owner_conn, world.customers[0].customer_id) == 20


async def test_a_reload_keeps_the_last_atc_and_can_change_the_profile(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = await chip_world(owner_conn)
    assert (await run(ledger_store, withdrawal(world, 30))).outcome is Outcome.APPROVED
    customer = world.customers[0]
    card = {"pan": customer.pan, "expiry": "2812", "currency": "EUR", "max_per_txn_minor": 50_000,
            "daily_amount_minor": 100_000, "daily_count": 5,
            "emv": {**PROFILE, "cvn": 10, "fallback_allowed": True}}  # fmt: skip
    data = {"customers": [{"id": customer.customer_id, "name": "Reloaded", "cards": [card]}]}
    await load_fixtures(
        owner_conn, data, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=TIMEOUT_MS
    )
    row = await owner_conn.fetchrow(
        "SELECT emv_cvn, emv_fallback_allowed, emv_last_atc FROM ledger.cards"
        " WHERE customer_id = $1",
        customer.customer_id,
    )
    assert row is not None
    assert tuple(row) == (10, True, 30)


@pytest.mark.parametrize(
    ("emv", "problem"),
    [
        ({"psn": "01", "scheme": "visa"}, "field 'emv.imk_ac' is missing"),
        ({**PROFILE, "psn": "1"}, "field 'emv.psn' must be two digits"),
        ({**PROFILE, "psn": 1}, "field 'emv.psn' must be a string"),
        ({**PROFILE, "scheme": "amex"}, "field 'emv.scheme' must be one of visa, mastercard"),
        ({**PROFILE, "cvn": 0}, "field 'emv.cvn' must be a cryptogram version from 1 to 255"),
        ({**PROFILE, "cvn": True}, "field 'emv.cvn' must be an integer"),
        ({**PROFILE, "fallback_allowed": 1}, "field 'emv.fallback_allowed' must be a boolean"),
        ({**PROFILE, "imk": "x"}, "unknown field 'emv.imk'"),
    ],
)
def test_a_bad_profile_is_named(emv: dict[str, Any], problem: str) -> None:
    data = World().fixtures(1, card={"emv": emv})
    with pytest.raises(EntryError, match=problem):
        check_fixtures(data)


CHIP_CARD = replace(CARD, emv=EmvProfile("IMK", "01", "visa", None, False), last_atc=12)


@pytest.mark.parametrize(
    ("atc", "replayed"), [(None, False), (13, False), (12, True), (1, True), (40_000, False)]
)
def test_replay_rule(atc: int | None, replayed: bool) -> None:
    assert rules.atc_replayed(CHIP_CARD, atc) is replayed
    assert rules.atc_replayed(replace(CHIP_CARD, last_atc=None), atc) is False


def test_a_pin_failure_spends_the_atc_of_a_chip_card_only() -> None:
    chip = rules.decide_pin_failure(snapshot_with(CHIP_CARD), rules.Policy(), atc=13)
    assert (chip.outcome, chip.atc) == (Outcome.INCORRECT_PIN, 13)
    stripe = rules.decide_pin_failure(snapshot_with(CARD), rules.Policy(), atc=13)
    assert (stripe.outcome, stripe.atc) == (Outcome.INCORRECT_PIN, None)
    replay = rules.decide_pin_failure(snapshot_with(CHIP_CARD), rules.Policy(), atc=12)
    assert (replay.outcome, replay.card_update, replay.atc) == (
        Outcome.SECURITY_VIOLATION,
        None,
        None,
    )


@pytest.mark.parametrize("word", ["none", "made-up", "another-atc"])
async def test_an_atc_moves_only_with_the_hsms_word(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, word: str
) -> None:
    """What a stolen switch login would try: spend a card's counter (or approve a chip request)
    without a cryptogram the HSM verified: the ledger refuses, and nothing moves."""
    world = await chip_world(owner_conn)
    lookup = await ledger_store.lookup(withdrawal(world, 9), timeout_ms=TIMEOUT_MS)
    chip_word = {
        "none": None,
        "made-up": bytes(16),
        "another-atc": development_chip_token(lookup.request, lookup.pan_hash, 8),
    }[word]
    with pytest.raises(LedgerError, match=r"42501.*no valid word from the HSM \(a cryptogram"):
        await ledger_store.execute(
            lookup,
            authorisation=authorised(lookup),
            chip_authorisation=chip_word,
            now=NOW,
            timeout_ms=TIMEOUT_MS,
        )
    assert await last_atc(owner_conn, world.customers[0].customer_id) is None
    assert await balance(owner_conn, world.customers[0].checking) == START_MINOR


@pytest.mark.parametrize(("fallback_allowed", "approved"), [(False, False), (True, True)])
async def test_a_chip_card_is_approved_without_its_chip_only_where_fallback_is_allowed(
    ledger_store: LedgerStore,
    owner_conn: asyncpg.Connection,
    fallback_allowed: bool,
    approved: bool,
) -> None:
    """A switch that drops the chip data (a stolen login, or a terminal's stripe read) cannot
    approve a chip card whose profile allows no fallback: the database says no too."""
    world = await chip_world(owner_conn, fallback_allowed=fallback_allowed)
    if approved:
        assert (await run(ledger_store, withdrawal(world, None))).outcome is Outcome.APPROVED
        return
    with pytest.raises(LedgerError, match=r"42501.*approved only by its chip"):
        await run(ledger_store, withdrawal(world, None))
    assert await balance(owner_conn, world.customers[0].checking) == START_MINOR

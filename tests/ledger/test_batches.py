"""Requests that wait for a busy store go to the database together, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from ledger.codec import WriteItem
from ledger.errors import LedgerError
from ledger.model import Outcome, Withdrawal
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, Lookup, open_store
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import TIMEOUT_MS, authorised, balance, postings, run

START_MINOR = 100_000


@pytest.fixture
async def one_call_store(ledger_settings: LedgerSettings) -> AsyncIterator[LedgerStore]:
    """One read and one write at the database at a time: whatever arrives meanwhile waits."""
    store = await open_store(replace(ledger_settings, calls_in_flight_max=1), timeout_ms=30_000)
    try:
        yield store
    finally:
        await store.close(timeout_ms=10_000)


async def test_waiting_reads_go_together_and_each_gets_its_own(
    one_call_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 20)
    requests = [
        Withdrawal(c.pan, key(world.terminals[0]), AUDIT, "20", 1_000, "EUR")
        for c in world.customers
    ]
    lookups = await asyncio.gather(
        *(one_call_store.lookup(r, timeout_ms=TIMEOUT_MS) for r in requests)
    )
    # The first read went alone; the 19 that arrived while it ran went in one call.
    figures = one_call_store.batch_figures()
    assert (figures.read_calls, figures.reads, figures.write_calls, figures.writes) == (2, 20, 0, 0)
    # The 19 waited for the first call; each call took some time; no write was made.
    assert figures.read_wait_s > 0
    assert figures.read_call_s > 0
    assert (figures.write_wait_s, figures.write_call_s) == (0.0, 0.0)
    assert [lookup.snapshot.customer_id for lookup in lookups] == [
        c.customer_id for c in world.customers
    ]


async def test_writes_of_one_customer_never_share_a_call(
    one_call_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    customer = world.customers[0]
    requests = [
        Withdrawal(customer.pan, key(world.terminals[0]), AUDIT, "20", 5_000, "EUR")
        for _ in range(5)
    ]
    results = await asyncio.gather(*(run(one_call_store, r) for r in requests))
    assert [r.outcome for r in results] == [Outcome.APPROVED] * 5
    figures = one_call_store.batch_figures()
    # In one call all but the first would have found the customer changed.
    assert figures.write_calls == figures.writes
    # The ones decided on an old balance were decided again, each an extra write, and once at
    # the most: the second decision is made on state read under the customer's lock.
    assert 1 <= figures.decided_again <= 4
    assert figures.writes == 5 + figures.decided_again
    assert await balance(owner_conn, customer.checking) == START_MINOR - 5 * 5_000


async def test_an_item_that_fails_fails_alone(
    one_call_store: LedgerStore, owner_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    await world.load(owner_conn, 6)
    victim, other = world.customers[3], world.customers[0]
    item = one_call_store._item  # a fault injected on purpose

    def over_the_limit(lookup: Lookup, *args: Any) -> WriteItem:
        built = item(lookup, *args)
        if lookup.snapshot.customer_id == victim.customer_id:
            # A bug that would approve more than the card's limit: the database refuses it.
            return built._replace(amount_minor=built.amount_minor + 1_000_000)
        return built

    monkeypatch.setattr(one_call_store, "_item", over_the_limit)
    requests = [
        Withdrawal(c.pan, key(world.terminals[0]), AUDIT, "20", 2_000, "EUR")
        for c in world.customers
    ]
    lookups = await asyncio.gather(
        *(one_call_store.lookup(r, timeout_ms=TIMEOUT_MS) for r in requests)
    )
    # The first write goes alone; the other five wait and go in one call with the victim's.
    results = await asyncio.gather(
        *(
            one_call_store.execute(
                lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=TIMEOUT_MS
            )
            for lookup in lookups
        ),
        return_exceptions=True,
    )
    failed = results[3]
    assert isinstance(failed, LedgerError)
    assert "42501" in str(failed)
    assert [r.outcome for i, r in enumerate(results) if i != 3] == [Outcome.APPROVED] * 5  # type: ignore[union-attr]
    for i, customer in enumerate(world.customers):
        expected = START_MINOR if i == 3 else START_MINOR - 2_000
        assert await balance(owner_conn, customer.checking) == expected
    assert await balance(owner_conn, other.savings) == START_MINOR
    assert await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE customer_id = $1 AND kind <> 'opening'",
        victim.customer_id,
    ) == 0  # fmt: skip
    # The first alone, the five together (refused whole), then each of the five alone.
    assert one_call_store.batch_figures().write_calls == 7


async def test_a_batch_of_500_requests(
    ledger_settings: LedgerSettings, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 500)
    settings = replace(ledger_settings, calls_in_flight_max=1, batch_size_max=500)
    store = await open_store(settings, timeout_ms=30_000)
    try:
        # An unknown card's request goes first and alone, in its read and in its write (a
        # decline: it locks no customer); the 500 that arrive meanwhile go in one call each.
        first = Withdrawal("4000009999999999", key(world.terminals[0]), AUDIT, "20", 1_000, "EUR")
        requests = [first] + [
            Withdrawal(c.pan, key(world.terminals[0]), AUDIT, "20", 1_000, "EUR")
            for c in world.customers
        ]
        lookups = await asyncio.gather(*(store.lookup(r, timeout_ms=TIMEOUT_MS) for r in requests))
        results = await asyncio.gather(
            *(
                store.execute(
                    lookup,
                    authorisation=authorised(lookup),
                    now=NOW,
                    timeout_ms=TIMEOUT_MS,
                )
                for lookup in lookups
            )
        )
        figures = store.batch_figures()
    finally:
        await store.close(timeout_ms=10_000)
    assert results[0].outcome is not Outcome.APPROVED
    assert [r.outcome for r in results[1:]] == [Outcome.APPROVED] * 500
    assert (figures.read_calls, figures.reads) == (2, 501)
    assert (figures.write_calls, figures.writes, figures.decided_again) == (2, 501, 0)
    assert {await balance(owner_conn, c.checking) for c in world.customers} == {START_MINOR - 1_000}
    assert len({r.entry_id for r in results[1:]}) == 500
    block_sizes = await owner_conn.fetch(
        "SELECT b.transactions FROM ledger.audit_blocks b"
        " WHERE (b.lane, b.seq) IN (SELECT lane, block_seq FROM ledger.transactions"
        "                             WHERE transaction_id = ANY ($1::bigint[]))",
        [r.entry_id for r in results[1:]],
    )
    assert [row["transactions"] for row in block_sizes] == [500]


async def test_200_requests_of_one_customer_at_once_lose_no_update_and_overdraw_nothing(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    limits = {"daily_count": 1_000, "daily_amount_minor": 10**9}
    await world.load(owner_conn, 1, 4, balance_minor=100_000, floor_minor=0, card=limits)
    customer = world.customers[0]
    requests = [
        Withdrawal(customer.pan, key(world.terminals[i % 4]), AUDIT, "20", 1_000, "EUR")
        for i in range(200)
    ]
    results = await asyncio.gather(*(run(ledger_store, r, NOW) for r in requests))
    outcomes = Counter(r.outcome for r in results)
    # Exactly what the balance allows, each approval posted once: none lost, none twice.
    assert outcomes == {Outcome.APPROVED: 100, Outcome.INSUFFICIENT_FUNDS: 100}
    assert await balance(owner_conn, customer.checking) == 0
    assert await postings(owner_conn, customer.checking) == 1 + 100  # the opening balance too
    approved_balances = sorted(r.ledger_balance_minor or 0 for r in results if r.entry_id)
    assert approved_balances == list(range(0, 100_000, 1_000))

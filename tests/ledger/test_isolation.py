"""Per-customer isolation: authorization, row-level security, and concurrency."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import asyncpg
import pytest

from ledger import audit
from ledger.errors import LedgerUnavailable
from ledger.model import Outcome, Request, Reversal, Transfer, Withdrawal
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store
from tests.conftest import PgCluster
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import TIMEOUT_MS, authorised, balance, cross_customer_policy, run


async def test_card_reaches_only_its_own_customer(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 2)
    alice, bob = world.customers
    terminal = world.terminals[0]
    bobs = Withdrawal(bob.pan, key(terminal), AUDIT, "20", 5_000, "EUR")
    assert (await run(ledger_store, bobs)).outcome is Outcome.APPROVED
    # Alice's card cannot reverse Bob's withdrawal, nor pay from or into Bob's accounts.
    steal = Reversal(alice.pan, key(terminal, "0420"), AUDIT, bobs.key)
    assert (await run(ledger_store, steal)).outcome is Outcome.ORIGINAL_NOT_FOUND
    push = Transfer(alice.pan, key(terminal), AUDIT, "20", 1_000, "EUR", to_account=bob.savings)
    assert (await run(ledger_store, push)).outcome is Outcome.NOT_PERMITTED_TO_CARDHOLDER
    lookup = await ledger_store.lookup(push, timeout_ms=TIMEOUT_MS)
    owners = {a.customer_id for a in lookup.snapshot.accounts.values()}
    assert owners == {alice.customer_id, 0}
    assert await balance(owner_conn, bob.checking) == 95_000
    assert await balance(owner_conn, alice.checking) == 100_000


async def test_switch_role_cannot_bypass_row_level_security(pg_cluster: PgCluster) -> None:
    conn = await asyncpg.connect(pg_cluster.switch_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert row is not None
        assert (row["rolsuper"], row["rolbypassrls"]) == (False, False)
        owner = await conn.fetchval(
            "SELECT tableowner FROM pg_tables"
            " WHERE schemaname = 'ledger' AND tablename = 'accounts'"
        )
        assert owner != "ledger_switch"
    finally:
        await conn.close()


# What a stolen switch login would try: every statement is refused, whatever it sets first.
SWITCH_ROLE_REFUSED = [
    "SELECT count(*) FROM ledger.accounts",
    "SELECT count(*) FROM ledger.cards",
    "SELECT count(*) FROM ledger.customers",
    "SELECT count(*) FROM ledger.transactions",
    "SELECT count(*) FROM ledger.postings",
    "SELECT tmk FROM ledger.terminals",
    "SELECT * FROM ledger.policy",
    "UPDATE ledger.accounts SET balance_minor = 100250000",
    "UPDATE ledger.cards SET status = 'active', pin_tries = 0",
    "UPDATE ledger.terminals SET tmk = 'copied'",
    "UPDATE ledger.policy SET cross_customer_transfers = true",
    "INSERT INTO ledger.postings VALUES (1, 1, 1, 1, 'EUR')",
    "INSERT INTO ledger.audit_blocks VALUES (0, 99, now(), 1, ''::bytea, ''::bytea)",
    "DELETE FROM ledger.audit_heads",
    "SELECT nextval('ledger.transaction_ids')",
    "SELECT ledger.post_opening(1, 100, now())",
    "SELECT ledger.open_block()",
    "SELECT ledger.state_of(''::bytea, 'T', 't', 's', 'm', NULL, NULL, NULL, NULL)",
]


@pytest.mark.parametrize("statement", SWITCH_ROLE_REFUSED)
async def test_the_switch_role_only_calls_functions(
    pg_cluster: PgCluster, owner_conn: asyncpg.Connection, statement: str
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    conn = await asyncpg.connect(pg_cluster.switch_dsn)
    try:
        async with conn.transaction():
            # Row-level security's setting, forged: it opens nothing to a role without grants.
            await conn.execute(
                "SELECT set_config('app.customer_ids', $1, true)",
                "{" + ",".join(str(i) for i in range(0, 5_000)) + "}",
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
    assert await balance(owner_conn, world.customers[0].checking) == 100_000


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.transactions SET outcome = outcome",
        "DELETE FROM ledger.transactions",
        "TRUNCATE ledger.transactions CASCADE",
        "UPDATE ledger.postings SET amount_minor = amount_minor",
        "DELETE FROM ledger.postings",
        "UPDATE ledger.audit_blocks SET hash = hash",
        "DELETE FROM ledger.audit_blocks",
        "TRUNCATE ledger.audit_blocks",
    ],
)
async def test_append_only_even_for_the_owner(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, statement: str
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    w = Withdrawal(world.customers[0].pan, key(world.terminals[0]), AUDIT, "20", 1_000, "EUR")
    await run(ledger_store, w)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused"):
        await owner_conn.execute(statement)


async def test_customers_lock_separately(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    world = World()
    await world.load(owner_conn, 2, terminals=2)
    alice, bob = world.customers
    locker = await asyncpg.connect(pg_cluster.owner_dsn)
    try:
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM ledger.customers WHERE customer_id = $1 FOR UPDATE",
                alice.customer_id,
            )
            bobs = Withdrawal(bob.pan, key(world.terminals[1]), AUDIT, "20", 1_000, "EUR")
            assert (await run(ledger_store, bobs)).outcome is Outcome.APPROVED
            alices = Withdrawal(alice.pan, key(world.terminals[0]), AUDIT, "20", 1_000, "EUR")
            lookup = await ledger_store.lookup(alices, timeout_ms=TIMEOUT_MS)
            with pytest.raises(LedgerUnavailable):
                await ledger_store.execute(
                    lookup, authorisation=authorised(lookup), now=NOW, timeout_ms=300
                )
    finally:
        await locker.close()
    assert await balance(owner_conn, alice.checking) == 100_000


def _random_request(rng: random.Random, world: World, done: list[Request]) -> Request:
    customer = rng.choice(world.customers)
    terminal = rng.choice(world.terminals)
    choice = rng.random()
    if choice < 0.15 and done:
        original = rng.choice(done)
        dispensed = rng.choice([0, 0, 500]) if isinstance(original, Withdrawal) else 0
        return Reversal(original.pan, key(terminal, "0420"), AUDIT, original.key, dispensed)
    amount_minor = rng.choice([500, 5_000, 20_000, 45_000])
    if choice < 0.55:
        return Withdrawal(customer.pan, key(terminal), AUDIT, rng.choice(["20", "10"]),
                          amount_minor, "EUR")  # fmt: skip
    if choice < 0.8:
        source, target = rng.sample(["20", "10"], 2)
        return Transfer(customer.pan, key(terminal), AUDIT, source, amount_minor, "EUR",
                        to_type=target)  # fmt: skip
    other = rng.choice(world.customers)
    return Transfer(customer.pan, key(terminal), AUDIT, rng.choice(["20", "10"]), amount_minor,
                    "EUR", to_account=other.checking)  # fmt: skip


@pytest.mark.slow
async def test_concurrent_customers_conserve_money(
    ledger_settings: LedgerSettings, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 10, terminals=4, floor_minor=-10_000,
                     card={"daily_count": 6, "daily_amount_minor": 90_000})  # fmt: skip
    settings = replace(ledger_settings, cross_customer_transfers=True, pool_size_max=20)
    async with cross_customer_policy(owner_conn):
        store = await open_store(settings, timeout_ms=TIMEOUT_MS)
        rng = random.Random(4)
        done: list[Request] = []

        async def task(seed: int) -> list[Outcome]:
            local = random.Random(seed)
            outcomes = []
            for _ in range(5):
                request = _random_request(local, world, done)
                outcomes.append(
                    (
                        await store.process(
                            request, authorise=authorised, now=NOW, timeout_ms=60_000
                        )
                    ).outcome
                )
                done.append(request)
            return outcomes

        try:
            results = await asyncio.gather(*(task(rng.randrange(1 << 30)) for _ in range(100)))
        finally:
            await store.close()
    outcomes = [o for r in results for o in r]
    assert len(outcomes) == 500
    assert outcomes.count(Outcome.APPROVED) > 100
    totals = await owner_conn.fetch(
        "SELECT currency, sum(balance_minor) AS total FROM ledger.accounts GROUP BY currency"
    )
    assert all(r["total"] == 0 for r in totals)
    below = await owner_conn.fetchval(
        "SELECT count(*) FROM ledger.accounts WHERE balance_minor < floor_minor"
    )
    assert below == 0
    ids = [c.customer_id for c in world.customers]
    cards = await owner_conn.fetch(
        "SELECT c.usage_count, c.usage_amount_minor, (SELECT count(*) FROM ledger.transactions t"
        "  WHERE t.customer_id = c.customer_id AND t.outcome = 'approved'"
        "    AND t.kind = 'withdrawal') AS approved"
        " FROM ledger.cards c WHERE c.customer_id = ANY($1)",
        ids,
    )
    for card in cards:
        assert card["usage_count"] == card["approved"] <= 6
        assert 0 <= card["usage_amount_minor"] <= 90_000
    report = await audit.verify(owner_conn, timeout_ms=60_000)
    assert report.books == []
    assert report.damage == []


async def test_a_stale_decision_is_made_again(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(
        owner_conn, 1, card={"max_per_txn_minor": 90_000, "daily_amount_minor": 500_000}
    )
    customer, terminal = world.customers[0], world.terminals[0]
    first, second = (
        Withdrawal(customer.pan, key(terminal), AUDIT, "20", 60_000, "EUR") for _ in range(2)
    )
    # Both read 100,000; the second must not be approved on that stale snapshot.
    lookups = [await ledger_store.lookup(r, timeout_ms=TIMEOUT_MS) for r in (first, second)]
    results = [
        await ledger_store.execute(lk, authorisation=authorised(lk), now=NOW, timeout_ms=TIMEOUT_MS)
        for lk in lookups
    ]
    assert [r.outcome for r in results] == [Outcome.APPROVED, Outcome.INSUFFICIENT_FUNDS]
    assert results[1].ledger_balance_minor == 40_000
    assert await balance(owner_conn, customer.checking) == 40_000


async def test_a_broken_connection_is_reported_then_recovered(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    request = Withdrawal(world.customers[0].pan, key(world.terminals[0]), AUDIT, "20", 100, "EUR")
    await ledger_store.lookup(request, timeout_ms=TIMEOUT_MS)
    killer = await asyncpg.connect(pg_cluster.superuser_dsn)
    try:
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ledger_switch'"
        )
    finally:
        await killer.close()
    outcomes: list[object] = []
    for _ in range(20):
        try:
            outcomes.append((await run(ledger_store, request)).outcome)
        except LedgerUnavailable:
            outcomes.append("unavailable")
    assert outcomes[-1] is Outcome.APPROVED
    assert set(outcomes) <= {"unavailable", Outcome.APPROVED}
    assert await balance(owner_conn, world.customers[0].checking) == 99_900


async def test_unknown_terminal_is_declined(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    request = Withdrawal(world.customers[0].pan, key("NOSUCH01"), AUDIT, "20", 100, "EUR")
    assert (await run(ledger_store, request)).outcome is Outcome.NOT_PERMITTED_TO_TERMINAL

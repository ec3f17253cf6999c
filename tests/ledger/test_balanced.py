"""The database itself refuses a transaction whose postings do not sum to zero per currency."""

from __future__ import annotations

import asyncpg
import pytest

from tests.ledger.factory import World

# Legs as (account index, amount_minor, currency); accounts 0 and 1 are a customer's checking
# and savings, 2 is a terminal's cash account, 3 another customer's checking. The statements of
# a case run in one database transaction; None means it commits, else the error names the
# ledger transaction.
CASES = [
    pytest.param([[(0, -500, "EUR"), (2, 500, "EUR")]], None, id="two-legs"),
    pytest.param([[(0, -500, "EUR"), (1, 200, "EUR"), (2, 300, "EUR")]], None, id="three-legs"),
    pytest.param(
        [[(0, -500, "EUR")], [(2, 500, "EUR")]], "does not sum to zero", id="legs-in-two-statements"
    ),
    pytest.param([[(0, -500, "EUR"), (2, 499, "EUR")]], "does not sum to zero", id="off-by-one"),
    pytest.param(
        [[(0, -500, "EUR"), (2, 500, "USD")]], "does not sum to zero", id="two-currencies"
    ),
    pytest.param(
        [[(0, -500, "EUR"), (2, 500, "EUR")], [(1, 7, "EUR"), (3, -7, "EUR")]],
        None,
        id="later-legs-balanced",
    ),
]


@pytest.mark.parametrize(("statements", "error"), CASES)
async def test_entry_balance_is_enforced(
    owner_conn: asyncpg.Connection, statements: list[list[tuple[int, int, str]]], error: str | None
) -> None:
    world = World()
    await world.load(owner_conn, 2)
    first, second = world.customers
    select = "SELECT account_id, customer_id FROM ledger.accounts WHERE "
    found = [
        await owner_conn.fetchrow(select + "account_number = $1", first.checking),
        await owner_conn.fetchrow(select + "account_number = $1", first.savings),
        await owner_conn.fetchrow(select + "type_code = 'cash' LIMIT 1"),
        await owner_conn.fetchrow(select + "account_number = $1", second.checking),
    ]
    legs_of = [row for row in found if row is not None]
    assert len(legs_of) == len(found)
    entry = await owner_conn.fetchval("SELECT nextval('ledger.transaction_ids')")

    async def write() -> None:
        async with owner_conn.transaction():
            # A bare row (its leaf is not the real one): only the postings are under test.
            await owner_conn.execute(
                "INSERT INTO ledger.transactions (transaction_id, customer_id, terminal_id,"
                " transmission_time, stan, message_class, kind, outcome, response_code,"
                " amount_minor, currency, requested_minor, requested_currency, business_date,"
                " recorded_at, pan_masked, mti, processing_code, rrn, lane, block_seq, leaf)"
                " VALUES ($1::bigint, $2, '', '', $1::bigint::text, 'test', 'opening', 'approved',"
                " '00', 0, 'EUR', 0, 'EUR', '2026-11-23', now(), '', '', '', '', 0, 0,"
                " sha256(''::bytea))",
                entry, legs_of[0]["customer_id"],
            )  # fmt: skip
            for legs in statements:
                await owner_conn.execute(
                    "INSERT INTO ledger.postings SELECT $1, a, c, m, cur"
                    " FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::text[])"
                    " AS x(a, c, m, cur)",
                    entry,
                    [legs_of[i]["account_id"] for i, _, _ in legs],
                    [legs_of[i]["customer_id"] for i, _, _ in legs],
                    [amount for _, amount, _ in legs],
                    [currency for _, _, currency in legs],
                )

    # Rolled back in the end: the legs written here move no balance, and other tests check
    # that balances and postings agree.
    outer = owner_conn.transaction()
    await outer.start()
    try:
        if error is None:
            await write()
            total = await owner_conn.fetchval(
                "SELECT sum(amount_minor) FROM ledger.postings WHERE transaction_id = $1", entry
            )
            assert total == 0
        else:
            with pytest.raises(asyncpg.CheckViolationError, match=f"transaction {entry} {error}"):
                await write()
            assert await owner_conn.fetchval(
                "SELECT count(*) FROM ledger.postings WHERE transaction_id = $1", entry
            ) == 0  # fmt: skip
    finally:
        await outer.rollback()

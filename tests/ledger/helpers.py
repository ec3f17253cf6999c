"""Small helpers shared by the ledger tests."""

from __future__ import annotations

from datetime import datetime

from ledger.migrations import Connection
from ledger.model import Request, Result
from ledger.store import LedgerStore
from tests.ledger.factory import NOW

TIMEOUT_MS = 15_000


async def run(store: LedgerStore, request: Request, now: datetime = NOW) -> Result:
    return await store.process(request, now=now, timeout_ms=TIMEOUT_MS)


async def balance(conn: Connection, account_number: str) -> int:
    value = await conn.fetchval(
        "SELECT balance_minor FROM ledger.accounts WHERE account_number = $1", account_number
    )
    assert isinstance(value, int)
    return value


async def postings(conn: Connection, account_number: str) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM ledger.postings JOIN ledger.accounts USING (account_id)"
        " WHERE account_number = $1",
        account_number,
    )
    assert isinstance(value, int)
    return value

"""Small helpers shared by the ledger tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from ledger.authorisation import (
    development_chip_token,
    development_reversal_token,
    development_token,
)
from ledger.codec import atc_of
from ledger.migrations import Connection
from ledger.model import Request, Result, Reversal
from ledger.store import LedgerStore, Lookup
from tests.ledger.factory import NOW

TIMEOUT_MS = 15_000


def authorised(lookup: Lookup) -> bytes | None:
    """The HSM's word for the request, as a development HSM gives it for a right PIN (for a
    reversal: for its MAC, over the original's amount; None when it has no original)."""
    request, original = lookup.request, lookup.snapshot.original
    if not isinstance(request, Reversal):
        return development_token(request, lookup.pan_hash)
    if original is None:
        return None
    amount_minor = int(original["result"]["amount_minor"])
    return development_reversal_token(request, lookup.pan_hash, amount_minor)


def chip_authorised(lookup: Lookup) -> bytes | None:
    """The HSM's word for a chip request's ATC, as a development HSM gives it for a verified
    ARQC; None for a request with no ATC."""
    atc = atc_of(lookup.request)
    return None if atc is None else development_chip_token(lookup.request, lookup.pan_hash, atc)


async def run(store: LedgerStore, request: Request, now: datetime = NOW) -> Result:
    return await store.process(
        request,
        authorise=authorised,
        authorise_chip=chip_authorised,
        now=now,
        timeout_ms=TIMEOUT_MS,
    )


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


@contextlib.asynccontextmanager
async def cross_customer_policy(conn: Connection) -> AsyncIterator[None]:
    """The ledger's policy admits transfers between customers for the duration (the tests share
    one cluster, so it is set back after)."""
    await conn.execute("UPDATE ledger.policy SET cross_customer_transfers = true")
    try:
        yield
    finally:
        await conn.execute("UPDATE ledger.policy SET cross_customer_transfers = false")

"""The switch role's connection pool: created with its per-session setup, checked against the
schema and the policy before it is used, and warmed up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import time
from typing import Any

import asyncpg

from ledger import codec
from ledger.codec import ReadItem, WriteItem
from ledger.deadline import Deadline
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.migrations import Connection, require_current
from ledger.settings import LedgerSettings

# What connecting can fail with before any request: a server that is not there or refuses us.
_CONNECT_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


async def open_pool(dsn: str, settings: LedgerSettings, deadline: Deadline) -> asyncpg.Pool:
    """The pool, once the schema is current and the database's policy is the settings' (raises
    SchemaTooOld when `python -m ledger migrate` has not been run for this code)."""
    pool = await _create_pool(
        dsn,
        min_size=settings.pool_size_min,
        max_size=settings.pool_size_max,
        init=_init_connection,
        reset=_keep_session,
        timeout=min(deadline.remaining_s(), settings.connect_timeout_ms / 1000),
        server_settings={
            "statement_timeout": str(settings.statement_timeout_ms),
            # The ledger's statements are primary-key lookups: a generic plan is always
            # right, and re-planning each call was a large share of the server's CPU.
            "plan_cache_mode": "force_generic_plan",
        },
    )
    try:
        async with pool.acquire(timeout=deadline.remaining_s()) as conn:
            await require_current(conn, timeout_ms=deadline.remaining_ms())
            await _require_same_policy(conn, settings, timeout_ms=deadline.remaining_ms())
    except BaseException:
        # Closed before the caller stops its cluster, if it started one: an open pool would try
        # to restore its minimum of connections to a server shutting down, and log each failure
        # with a traceback.
        pool.terminate()
        raise
    return pool


async def _create_pool(dsn: str, **options: Any) -> asyncpg.Pool:
    """The pool, or LedgerUnavailable saying why the database cannot be reached (the DSN is
    not repeated: it may hold a password)."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(dsn, **options)
    except _CONNECT_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise LedgerUnavailable(f"cannot connect to the database: {reason}") from None
    return pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset, so no extra round trip per call.

    The store sets no session state, and an open transaction is rolled back by the pool before
    this hook runs.
    """


async def _require_same_policy(
    conn: Connection, settings: LedgerSettings, *, timeout_ms: int
) -> None:
    """The database enforces its own policy: a switch deciding by another would see its
    decisions refused, so it does not start."""
    row = await conn.fetchrow("SELECT * FROM ledger.current_policy()", timeout=timeout_ms / 1000)
    assert row is not None
    names = ("pin_tries_max", "cross_customer_transfers", "business_day_cutover")
    ours = [getattr(settings, name) for name in names]
    theirs = [row[name] for name in names]
    if ours != theirs:
        raise LedgerError(
            f"the ledger's policy ({_policy_text(names, theirs)}) differs from the switch's"
            f" settings ({_policy_text(names, ours)}): set them alike (`python -m ledger policy`)"
        )


def _policy_text(names: Sequence[str], values: Sequence[object]) -> str:
    shown = (
        f"{value:%H:%M}" if isinstance(value, time) else str(value).lower() for value in values
    )
    return ", ".join(f"{name} = {text}" for name, text in zip(names, shown, strict=True))


async def warm_up(pool: asyncpg.Pool, connections: int, timeout_s: float) -> None:
    """Run both batch functions on an empty batch on `connections` connections at once: a
    connection's first call of each compiles it and plans its statements (20-80 ms measured),
    which would otherwise fall on the first requests after a start. Best effort: a failure here
    shows again, and is reported, in the call that meets it."""

    async def warm(conn: Connection) -> None:
        await conn.fetch(codec.READ_SQL, *codec.empty_columns(ReadItem), timeout=timeout_s)
        await conn.fetch(codec.WRITE_SQL, *codec.empty_columns(WriteItem), timeout=timeout_s)

    with contextlib.suppress(Exception):
        async with contextlib.AsyncExitStack() as held:
            opened = [
                await held.enter_async_context(pool.acquire(timeout=timeout_s))
                for _ in range(connections)
            ]
            await asyncio.gather(*(warm(conn) for conn in opened))

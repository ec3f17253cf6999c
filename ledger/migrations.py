"""The ledger's schema: versioned table migrations (ledger/sql/NNNN_name.sql, recorded in
ledger.schema_migrations) and one repeatable functions file (ledger/sql/functions.sql),
re-applied by every `migrate` and recorded by its SHA-256 in ledger.schema_functions."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger import authorisation
from ledger.errors import SchemaTooOld

Connection = asyncpg.Connection | PoolConnectionProxy

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
FUNCTIONS_FILE = "functions.sql"
# Serialises concurrent `migrate` runs; the number is arbitrary but fixed.
_ADVISORY_LOCK_KEY = 7_401_883_114


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> tuple[Migration, ...]:
    """The packaged migrations in version order (versions are 1, 2, 3... without gaps)."""
    found = []
    for entry in resources.files("ledger.sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    assert [m.version for m in found] == list(range(1, len(found) + 1)), "migration gap"
    return tuple(found)


def functions_sql() -> str:
    return resources.files("ledger.sql").joinpath(FUNCTIONS_FILE).read_text(encoding="utf-8")


def functions_sha256() -> str:
    return hashlib.sha256(functions_sql().encode()).hexdigest()


def required_version() -> int:
    return len(available())


async def applied_version(conn: Connection, *, timeout_ms: int) -> int:
    """The highest applied migration, 0 for an empty database."""
    exists = await conn.fetchval(
        "SELECT to_regclass('ledger.schema_migrations') IS NOT NULL", timeout=timeout_ms / 1000
    )
    if not exists:
        return 0
    version = await conn.fetchval(
        "SELECT coalesce(max(version), 0) FROM ledger.schema_migrations",
        timeout=timeout_ms / 1000,
    )
    assert isinstance(version, int)
    return version


async def migrate(conn: Connection, *, timeout_ms: int = 60_000) -> list[Migration]:
    """Apply every pending migration, each in its own transaction, then the functions file in
    one more; returns the migrations applied. Concurrent runs wait for each other."""
    timeout_s = timeout_ms / 1000
    done = []
    await conn.execute(f"SELECT pg_advisory_lock({_ADVISORY_LOCK_KEY})", timeout=timeout_s)
    try:
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS ledger;"
            "CREATE TABLE IF NOT EXISTS ledger.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now());"
            "CREATE TABLE IF NOT EXISTS ledger.schema_functions ("
            " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
            " sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
            timeout=timeout_s,
        )
        current = await applied_version(conn, timeout_ms=timeout_ms)
        await _require_same_history(conn, timeout_s=timeout_s)
        for migration in available():
            if migration.version <= current:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql, timeout=timeout_s)
                await conn.execute(
                    "INSERT INTO ledger.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                    timeout=timeout_s,
                )
            done.append(migration)
        async with conn.transaction():
            await conn.execute(functions_sql(), timeout=timeout_s)
            await conn.execute(
                "INSERT INTO ledger.schema_functions (sha256) VALUES ($1)"
                " ON CONFLICT (singleton) DO UPDATE SET sha256 = EXCLUDED.sha256,"
                " applied_at = now()",
                functions_sha256(),
                timeout=timeout_s,
            )
            # Development only: production replaces it, and a switch whose HSM derives another
            # key refuses to start (see ledger/authorisation.py).
            await authorisation.install(
                conn, authorisation.DEVELOPMENT_AUTHORISATION_KEY, replace=False,
                timeout_ms=timeout_ms,
            )  # fmt: skip
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({_ADVISORY_LOCK_KEY})", timeout=timeout_s)
    return done


async def _require_same_history(conn: Connection, *, timeout_s: float) -> None:
    """Each applied version must be this code's migration of that version: a database made by
    an earlier history (before the migrations were squashed into one baseline) cannot be
    brought forward, and is refused by name rather than half-migrated."""
    names = {m.version: m.name for m in available()}
    for row in await conn.fetch(
        "SELECT version, name FROM ledger.schema_migrations ORDER BY version", timeout=timeout_s
    ):
        if names.get(row["version"]) != row["name"]:
            raise SchemaTooOld(
                row["version"], required_version(),
                problem=f"this database's migration {row['version']} is {row['name']!r}, not"
                " this code's: it predates the squashed baseline; make a new one (for the"
                " private cluster, remove its data directory)",
            )  # fmt: skip


async def require_current(conn: Connection, *, timeout_ms: int) -> None:
    """Refuse to run on a schema older than this code (its tables or its functions)."""
    exists = await conn.fetchval(
        "SELECT to_regprocedure('ledger.schema_state()') IS NOT NULL", timeout=timeout_ms / 1000
    )
    applied, digest = 0, None
    if exists:
        row = await conn.fetchrow("SELECT * FROM ledger.schema_state()", timeout=timeout_ms / 1000)
        assert row is not None
        applied, digest = row["version"], row["functions_sha256"]
    if applied < required_version() or digest != functions_sha256():
        raise SchemaTooOld(applied, required_version())

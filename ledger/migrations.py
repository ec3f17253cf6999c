"""Versioned SQL migrations from ledger/sql/NNNN_name.sql, recorded in ledger.schema_migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.errors import SchemaTooOld

Connection = asyncpg.Connection | PoolConnectionProxy

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
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
    """Apply every pending migration, each in its own transaction; returns those applied."""
    timeout_s = timeout_ms / 1000
    done = []
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})", timeout=timeout_s)
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS ledger;"
            "CREATE TABLE IF NOT EXISTS ledger.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())",
            timeout=timeout_s,
        )
        current = await applied_version(conn, timeout_ms=timeout_ms)
        for migration in available():
            if migration.version <= current:
                continue
            await conn.execute(migration.sql, timeout=timeout_s)
            await conn.execute(
                "INSERT INTO ledger.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
                timeout=timeout_s,
            )
            done.append(migration)
    return done


async def require_current(conn: Connection, *, timeout_ms: int) -> None:
    """Refuse to run on a schema older than this code."""
    applied = await applied_version(conn, timeout_ms=timeout_ms)
    if applied < required_version():
        raise SchemaTooOld(applied, required_version())

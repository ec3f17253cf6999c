"""Provisioning and migrations: the private cluster, the schema version gate."""

from __future__ import annotations

from dataclasses import replace
from datetime import time
from pathlib import Path

import asyncpg
import pytest

from ledger import postgres
from ledger.errors import LedgerError, ProvisioningError, SchemaTooOld
from ledger.migrations import (
    applied_version,
    functions_sha256,
    migrate,
    required_version,
)
from ledger.settings import LedgerSettings
from ledger.store import open_store
from tests.conftest import PgCluster


async def test_migrations_are_recorded_and_idempotent(owner_conn: asyncpg.Connection) -> None:
    assert await applied_version(owner_conn, timeout_ms=5_000) == required_version()
    assert await migrate(owner_conn, timeout_ms=60_000) == []
    names = [r[0] for r in await owner_conn.fetch(
        "SELECT name FROM ledger.schema_migrations ORDER BY version")]  # fmt: skip
    assert names == [
        "baseline", "terminal_events", "emv", "cash", "journal_without_foreign_keys",
        "chip_traffic", "balancing",
    ]  # fmt: skip
    digest = await owner_conn.fetchval("SELECT sha256 FROM ledger.schema_functions")
    assert digest == functions_sha256()


async def test_switch_refuses_an_old_schema(
    pg_cluster: PgCluster, ledger_settings: LedgerSettings
) -> None:
    cluster = postgres.LocalCluster(pg_cluster.data_dir)
    cluster.info = pg_cluster.info
    dsn = cluster.create_database("empty_schema")
    with pytest.raises(SchemaTooOld, match="python -m ledger migrate"):
        await open_store(replace(ledger_settings, dsn=dsn), timeout_ms=10_000)


def test_missing_binaries_name_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.postgres.glob.glob", lambda _pattern: [])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ProvisioningError, match="apt-get install postgresql"):
        postgres.find_binary("initdb")


def test_a_running_cluster_is_reused_not_stopped(pg_cluster: PgCluster) -> None:
    again = postgres.LocalCluster(Path(pg_cluster.data_dir))
    info = again.start(timeout_ms=30_000)
    assert info.port == pg_cluster.info.port
    again.stop(timeout_ms=30_000)
    assert (pg_cluster.data_dir / "postmaster.pid").exists()


async def test_an_older_schema_is_refused_by_name(
    pg_cluster: PgCluster, ledger_settings: LedgerSettings
) -> None:
    """A database whose recorded schema is older than the code's is refused, not used."""
    cluster = postgres.LocalCluster(pg_cluster.data_dir)
    cluster.info = pg_cluster.info
    dsn = cluster.create_database("older_schema")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, timeout_ms=60_000)
        await conn.execute(
            "DELETE FROM ledger.schema_migrations WHERE version = $1", required_version()
        )
    finally:
        await conn.close()
    with pytest.raises(SchemaTooOld, match="python -m ledger migrate"):
        await open_store(replace(ledger_settings, dsn=dsn), timeout_ms=10_000)


async def test_functions_older_than_the_code_are_refused(
    pg_cluster: PgCluster, ledger_settings: LedgerSettings
) -> None:
    """Tables current but functions from another version of functions.sql: refused by name."""
    cluster = postgres.LocalCluster(pg_cluster.data_dir)
    cluster.info = pg_cluster.info
    dsn = cluster.create_database("older_functions")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, timeout_ms=60_000)
        await conn.execute("UPDATE ledger.schema_functions SET sha256 = 'older'")
    finally:
        await conn.close()
    with pytest.raises(SchemaTooOld, match="functions differ from this code's"):
        await open_store(replace(ledger_settings, dsn=dsn), timeout_ms=10_000)


async def test_a_switch_deciding_by_another_policy_does_not_start(
    ledger_settings: LedgerSettings,
) -> None:
    for differing, expected in [
        (replace(ledger_settings, pin_tries_max=5), "pin_tries_max = 5"),
        (replace(ledger_settings, business_day_cutover=time(22, 0)), "cutover = 22:00"),
    ]:
        with pytest.raises(LedgerError) as refused:
            await open_store(differing, timeout_ms=10_000)
        message = str(refused.value)
        assert message.startswith(
            "the ledger's policy (pin_tries_max = 3, cross_customer_transfers = false,"
            " business_day_cutover = 00:00) differs from the switch's settings ("
        ), message
        assert expected in message


async def test_a_database_of_an_earlier_history_is_refused_by_name(
    pg_cluster: PgCluster,
) -> None:
    cluster = postgres.LocalCluster(pg_cluster.data_dir)
    cluster.info = pg_cluster.info
    conn = await asyncpg.connect(cluster.create_database("earlier_history"))
    try:
        await conn.execute(
            "CREATE SCHEMA ledger; CREATE TABLE ledger.schema_migrations (version integer"
            " PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
            " INSERT INTO ledger.schema_migrations (version, name) VALUES (1, 'tables')"
        )
        with pytest.raises(SchemaTooOld, match="migration 1 is 'tables', not this code's"):
            await migrate(conn, timeout_ms=60_000)
    finally:
        await conn.close()

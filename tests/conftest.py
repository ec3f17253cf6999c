"""Shared fixtures: one private PostgreSQL cluster per test session, started only on demand.

`pg_cluster` starts it (initdb into a temporary directory, migrations applied) the first time a
test asks for it and stops it at the end of the session, also when tests fail. Tests share the
cluster, so each creates its own customers, cards and terminals with fresh ids (see
tests/ledger/factory.py) instead of truncating: the audit journal cannot be truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from ledger.ha import HaCluster
from ledger.migrations import migrate
from ledger.postgres import ClusterInfo, LocalCluster
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store


@dataclass(frozen=True, slots=True)
class PgCluster:
    info: ClusterInfo
    data_dir: Path
    superuser_dsn: str
    owner_dsn: str  # schema owner: migrations, fixtures, auditors
    switch_dsn: str  # the switch role: subject to row-level security


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, timeout_ms=60_000)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    # Short path under /tmp: the unix socket lives in it (108-byte limit) and the unprivileged
    # server user must be able to reach it.
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    cluster = LocalCluster(data_dir)
    try:
        info = cluster.start(timeout_ms=120_000)
        asyncio.run(_migrate(info.owner_dsn))
        yield PgCluster(info, data_dir, info.superuser_dsn, info.owner_dsn, info.switch_dsn)
    finally:
        cluster.stop(timeout_ms=60_000)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def ledger_settings(pg_cluster: PgCluster) -> LedgerSettings:
    return LedgerSettings(
        dsn=pg_cluster.switch_dsn, owner_dsn=pg_cluster.owner_dsn, pool_size_max=8
    )


@pytest.fixture
async def ledger_store(ledger_settings: LedgerSettings) -> AsyncIterator[LedgerStore]:
    store = await open_store(ledger_settings, timeout_ms=30_000)
    try:
        yield store
    finally:
        await store.close(timeout_ms=10_000)


@pytest.fixture
async def owner_conn(pg_cluster: PgCluster) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_cluster.owner_dsn)
    try:
        yield conn
    finally:
        await conn.close()


needs_pg_auto_failover = pytest.mark.skipif(
    shutil.which("pg_autoctl") is None,
    reason="pg_auto_failover is not installed (Debian: apt-get install"
    " postgresql-15-auto-failover pg-auto-failover-cli)",
)


@pytest.fixture
def ha_root() -> Iterator[Path]:
    """A directory for a pg_auto_failover formation, on a short path the server's OS user
    reaches; whatever runs in it is stopped after, and it is removed."""
    path = Path(tempfile.mkdtemp(prefix="ledger-ha-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        with contextlib.suppress(Exception):
            HaCluster(path).stop(timeout_ms=60_000)
        shutil.rmtree(path, ignore_errors=True)

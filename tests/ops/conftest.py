"""A fresh ledger database per operations test, copied from a migrated template.

Alerts, terminal events and traffic are fleet-wide: sharing the session's database with other
tests would let their terminals raise alerts here (and their journal be tampered with by the
journal check's test). A copy of a migrated template costs a fraction of a migration.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from hsm.devkeys import DevKeys, make_dev_keys
from ledger.migrations import migrate
from ledger.postgres import OWNER_ROLE, SWITCH_ROLE
from tests.conftest import PgCluster
from tests.e2e.conftest import LMK

TEMPLATE = "ops_template"
_databases = itertools.count(1)


@dataclass(frozen=True, slots=True)
class OpsDatabase:
    name: str
    port: int
    owner_dsn: str
    superuser_dsn: str

    def tcp_dsn(self, port: int, role: str = SWITCH_ROLE) -> str:
        """Over TCP to `port` (a proxy in front of the cluster, which trusts local users)."""
        return f"postgresql://{role}@127.0.0.1:{port}/{self.name}"


async def _make_template(cluster: PgCluster) -> None:
    conn = await asyncpg.connect(cluster.superuser_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE} OWNER {OWNER_ROLE}")
    finally:
        await conn.close()
    owner = await asyncpg.connect(cluster.info.dsn(OWNER_ROLE, TEMPLATE))
    try:
        await migrate(owner, timeout_ms=60_000)
    finally:
        await owner.close()


@pytest.fixture(scope="session")
def ops_template(pg_cluster: PgCluster) -> str:
    asyncio.run(_make_template(pg_cluster))
    return TEMPLATE


@pytest.fixture
async def ops_db(pg_cluster: PgCluster, ops_template: str) -> AsyncIterator[OpsDatabase]:
    name = f"ops_{os.getpid()}_{next(_databases)}"
    conn = await asyncpg.connect(pg_cluster.superuser_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {ops_template} OWNER {OWNER_ROLE}")
        yield OpsDatabase(
            name,
            pg_cluster.info.port,
            pg_cluster.info.dsn(OWNER_ROLE, name),
            pg_cluster.info.dsn("postgres", name),
        )
    finally:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


@pytest.fixture(scope="session")
def dev_keys() -> DevKeys:
    return make_dev_keys(LMK, seed=b"operations tests")

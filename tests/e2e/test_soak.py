"""Fast versions of `make soak`: the same scenarios, fewer faults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kiosk_sim.soak import (
    LedgerDsns,
    backup_and_restore,
    crash_safety,
    database_outages,
    decoder_fuzz,
    failovers,
    ha_ledger,
    missing_ha_tools,
    private_ledger,
    worker_crashes,
)
from ledger import backup
from tests.conftest import PgCluster


async def test_switch_killed_under_load_loses_and_doubles_nothing(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    row = await crash_safety(
        LedgerDsns(pg_cluster.owner_dsn, pg_cluster.switch_dsn), tmp_path, kills=2, seed=31
    )
    # The load ran through the kills (about 300 answers on an idle machine; a loaded one, whose
    # restarts take seconds, leaves far fewer): what is asserted is nothing lost or doubled.
    assert row.requests > 20
    assert (row.lost, row.doubled, row.leaked, row.other_failures) == (0, 0, 0, 0), row


async def test_a_worker_killed_under_load_loses_and_doubles_nothing(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    # Each killed worker's kiosks must be answered again by another (the row counts those that
    # were not as other failures), and the parent must drain both and exit 0.
    row = await worker_crashes(
        LedgerDsns(pg_cluster.owner_dsn, pg_cluster.switch_dsn), tmp_path, kills=1, seed=37
    )
    assert row.requests > 100
    assert (row.lost, row.doubled, row.leaked, row.other_failures) == (0, 0, 0, 0), row


def test_decoder_fuzz_raises_only_decode_errors() -> None:
    row = decoder_fuzz(20_000, seed=1)
    assert row.other_failures == 0, row.note


def test_database_outages_leave_nothing_half_posted(tmp_path: Path) -> None:
    with private_ledger() as (cluster, dsns):
        row = asyncio.run(database_outages(cluster, dsns, tmp_path, outages=2, seed=41))
    assert row.requests > 50
    assert (row.lost, row.doubled, row.leaked, row.other_failures) == (0, 0, 0, 0), row


@pytest.mark.slow
@pytest.mark.skipif(missing_ha_tools() is not None, reason=str(missing_ha_tools()))
def test_failover_then_a_restore_past_it_lose_and_double_nothing(tmp_path: Path) -> None:
    """A full backup, the primary killed under load, then a restore to a point after the
    failover: the archive spans both timelines."""
    with ha_ledger() as (cluster, dsns):
        repo = cluster.root / "pgbackrest"
        backup.backup_formation(cluster.root, repo, "full", timeout_ms=120_000)
        failed_over = asyncio.run(failovers(cluster, dsns, tmp_path, failovers=1, seed=43))
        restored = asyncio.run(backup_and_restore(cluster, dsns, tmp_path, repo=repo, seed=47))
    for row in (failed_over, restored):
        assert row.requests > 20, row
        assert (row.lost, row.doubled, row.leaked, row.other_failures) == (0, 0, 0, 0), row

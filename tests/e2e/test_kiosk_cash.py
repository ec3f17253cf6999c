"""Simulated kiosks with cash against the whole switch: the notes they pay, their jams and
rejects, and the host counting the same notes out."""

from __future__ import annotations

import asyncpg

from kiosk_sim import load
from kiosk_sim.population import LedgerView, Population, build, provision
from tests.conftest import PgCluster
from tests.e2e.conftest import StackFactory

CASH_MIX = {
    "withdrawal": 4,
    "partial": 1,
    "duplicate": 1,
    "reversal": 1,
    "balance": 1,
    "transfer": 1,
    "chip_withdrawal": 1,
}


async def _dispensed_by_host(owner_dsn: str, population: Population) -> dict[str, list[int]]:
    conn = await asyncpg.connect(owner_dsn)
    try:
        rows = await conn.fetch(
            "SELECT terminal_id, dispensed_notes FROM ledger.cassettes"
            " WHERE terminal_id = ANY($1::text[]) ORDER BY terminal_id, cassette_no",
            [t.terminal_id for t in population.terminals],
        )
    finally:
        await conn.close()
    counted: dict[str, list[int]] = {}
    for row in rows:
        counted.setdefault(row["terminal_id"], []).append(row["dispensed_notes"])
    return counted


def _dispensed_by_kiosks(population: Population) -> dict[str, list[int]]:
    return {
        terminal_id: [cassette.dispensed for cassette in cash.cassettes]
        for terminal_id, cash in population.cash.items()
    }


async def test_jams_pay_part_and_the_host_counts_the_notes_that_came_out(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=31, customers=9, terminals=3, cash=True)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(
        terminals=3,
        seed=31,
        duration_s=None,
        count=90,
        mix=CASH_MIX,
        faults={"jam": 0.3, "reject": 0.1},
    )
    view = LedgerView(pg_cluster.owner_dsn)

    first = await load.run(plan, population, "127.0.0.1", stack.server.port, ledger=view)
    assert first.differences == []
    # Every partial reversal's F95 is one the host can explain with the original's notes
    # (a 13 would say it cannot).
    assert set(first.response_codes) == {"00"}
    assert first.errors["fault_jam"] > 0
    assert first.cash["partial_dispenses"] > first.errors["fault_jam"]  # with the sessions'
    assert first.cash["notes_rejected"] > 0
    assert await _dispensed_by_host(pg_cluster.owner_dsn, population) == _dispensed_by_kiosks(
        population
    )
    # The same seed jams and rejects the same way (the kiosks go on from their counters).
    second = await load.run(plan, population, "127.0.0.1", stack.server.port, ledger=view)
    assert second.differences == []
    assert (second.cash, second.errors) == (first.cash, first.errors)
    assert await _dispensed_by_host(pg_cluster.owner_dsn, population) == _dispensed_by_kiosks(
        population
    )

"""Simulated kiosks with cash against the whole switch: the notes they pay, their jams and
rejects, and the host counting the same notes out."""

from __future__ import annotations

from dataclasses import replace

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


Counters = dict[str, list[tuple[int, int]]]  # per terminal, per cassette: dispensed, rejected


async def _host_counters(owner_dsn: str, population: Population) -> Counters:
    conn = await asyncpg.connect(owner_dsn)
    try:
        rows = await conn.fetch(
            "SELECT terminal_id, dispensed_notes, rejected_notes FROM ledger.cassettes"
            " WHERE terminal_id = ANY($1::text[]) ORDER BY terminal_id, cassette_no",
            [t.terminal_id for t in population.terminals],
        )
    finally:
        await conn.close()
    counted: Counters = {}
    for row in rows:
        counted.setdefault(row["terminal_id"], []).append(
            (row["dispensed_notes"], row["rejected_notes"])
        )
    return counted


def _kiosk_counters(population: Population) -> Counters:
    return {
        terminal_id: [(c.dispensed, c.rejected) for c in cash.cassettes]
        for terminal_id, cash in population.cash.items()
    }


def _dispensed(counters: Counters) -> dict[str, list[int]]:
    return {terminal_id: [d for d, _ in counts] for terminal_id, counts in counters.items()}


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
    # The host learns of rejected notes only from an 0500: the notes out are the same.
    host = await _host_counters(pg_cluster.owner_dsn, population)
    assert _dispensed(host) == _dispensed(_kiosk_counters(population))
    # Another run of the population: its kiosks go on from their counters. (Another seed: the
    # same one would send the same STANs, which within the same second are repeats.)
    again = replace(plan, seed=131)
    second = await load.run(again, population, "127.0.0.1", stack.server.port, ledger=view)
    assert second.differences == []
    assert second.cash["partial_dispenses"] > 0
    host = await _host_counters(pg_cluster.owner_dsn, population)
    assert _dispensed(host) == _dispensed(_kiosk_counters(population))


async def test_a_day_of_traffic_then_every_kiosk_balances(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=32, customers=9, terminals=3, cash=True)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(
        terminals=3,
        seed=32,
        duration_s=None,
        count=90,
        mix=CASH_MIX,
        faults={"jam": 0.2, "reject": 0.1},
        balance=True,
    )
    view = LedgerView(pg_cluster.owner_dsn)

    report = await load.run(plan, population, "127.0.0.1", stack.server.port, ledger=view)
    assert report.differences == []
    assert report.balancing is not None
    assert {r.terminal_id for r in report.balancing} == {
        t.terminal_id for t in population.terminals
    }
    assert [r.code for r in report.balancing] == ["00"] * len(report.balancing)
    assert report.cash["notes_rejected"] > 0
    # The host learnt of the rejected notes from F124, and counted the same notes out.
    host = await _host_counters(pg_cluster.owner_dsn, population)
    assert host == _kiosk_counters(population)
    assert "3 0500s from 3 kiosks: 3 balanced (00), 0 not" in report.to_text()


async def test_the_miscounting_kiosk_and_only_it_is_answered_95(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=33, customers=12, terminals=4, cash=True)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(
        terminals=4,
        seed=33,
        duration_s=None,
        count=60,
        mix={"withdrawal": 3, "balance": 1},
        faults={"miscount": 1},
        balance=True,
    )
    view = LedgerView(pg_cluster.owner_dsn)

    report = await load.run(plan, population, "127.0.0.1", stack.server.port, ledger=view)
    assert report.differences == []
    assert report.balancing is not None
    miscounting = report.miscounting
    assert miscounting in {t.terminal_id for t in population.terminals}
    not_balanced = [r for r in report.balancing if not r.balanced]
    assert [r.terminal_id for r in not_balanced] == [miscounting]
    (imbalance,) = not_balanced
    assert imbalance.code == "95"
    first = population.cash[miscounting].cassettes[0]
    # One note too many said dispensed: the host's own counts come back in the 0510's F124.
    assert imbalance.differences == (
        ("F124 slot 1 dispensed", str(first.dispensed + 1), str(first.dispensed)),
        ("F124 slot 1 remaining", str(first.remaining - 1), str(first.remaining)),
    )
    assert f"0510 {imbalance.describe()}" in report.to_text()

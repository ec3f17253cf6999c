"""The load generator against the whole switch: every session kind, end state checked."""

from __future__ import annotations

from collections import Counter

import pytest

from kiosk_sim import load
from kiosk_sim.population import LedgerView, build, provision
from tests.conftest import PgCluster
from tests.e2e.conftest import StackFactory
from tests.switch.scraped import by_label, value


async def test_closed_loop_every_session_kind_and_no_end_state_difference(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=11, customers=8, terminals=4)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(terminals=4, seed=11, duration_s=None, count=120)

    report = await load.run(
        plan, population, "127.0.0.1", stack.server.port, ledger=LedgerView(pg_cluster.owner_dsn)
    )
    assert sum(report.kinds.values()) == 120
    # Every kind of the default mix; the chip sessions have theirs in tests/e2e/test_chip.py.
    assert set(report.kinds) == set(load.DEFAULT_MIX)
    assert report.differences == []
    assert report.timeouts == 0
    assert not report.errors
    assert report.response_codes["55"] == report.kinds["wrong_pin"]
    assert set(report.response_codes) <= {"00", "55"}
    # What the simulator counted is what the switch says it answered.
    switch_counts: Counter[str] = Counter()
    metrics = stack.monitor.metrics
    requests = by_label(metrics, "switch_requests_total", "mti", "response_code")
    for (mti, code), count in requests.items():
        if mti != "0800":
            switch_counts[code] += int(count)
    assert switch_counts == report.response_codes
    # Each pipeline step is timed once per request that reached it: all pass the MAC check and
    # the look-up; a duplicate's second copy is answered there; reversals verify no PIN; a wrong
    # PIN ends at the PIN check.
    steps = {
        step: int(count)
        for (step,), count in by_label(metrics, "switch_step_latency_seconds_count", "step").items()
    }
    reversals = sum(count for (mti, _code), count in requests.items() if mti.startswith("04"))
    financial = sum(switch_counts.values())
    # A reversal's MAC is checked by the step that also gets the HSM's reversal word.
    assert steps["check_mac"] + steps["check_reversal_mac"] == steps["look_up"] == financial
    assert steps["check_reversal_mac"] == reversals
    assert value(metrics, "switch_financial_latency_seconds_count") == financial
    assert steps["verify_pin"] == financial - reversals - report.kinds["duplicate"]
    assert steps["post"] == steps["verify_pin"] - report.kinds["wrong_pin"] + reversals


async def test_joint_accounts_at_several_kiosks_at_once_keep_every_cent(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    # Two customers with four cards each, dealt to eight kiosks: each customer's accounts are
    # drawn on from four kiosks at the same time.
    population = build(seed=14, customers=2, terminals=8, cards=8)
    await provision(pg_cluster.owner_dsn, population)
    mix = {"withdrawal": 3, "transfer": 1, "balance": 1, "partial": 1}
    plan = load.Plan(terminals=8, seed=14, duration_s=None, count=160, mix=mix)

    report = await load.run(
        plan, population, "127.0.0.1", stack.server.port, ledger=LedgerView(pg_cluster.owner_dsn)
    )
    assert report.differences == []
    assert (report.timeouts, dict(report.errors)) == (0, {})
    assert set(report.response_codes) == {"00"}
    # Writes read before another kiosk's posting for the same customer were decided again on
    # the new balances (that is how nothing above was lost), each once at the most.
    decided_again = stack.store.batch_figures().decided_again
    posts = value(stack.monitor.metrics, "switch_step_latency_seconds_count", step="post")
    assert 1 <= decided_again <= posts


async def test_the_same_seed_gives_the_same_sessions(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=12, customers=4, terminals=2)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(terminals=2, seed=12, duration_s=None, count=40)
    first = await load.run(plan, population, "127.0.0.1", stack.server.port)
    second = await load.run(plan, population, "127.0.0.1", stack.server.port)
    assert first.kinds == second.kinds
    assert first.response_codes == second.response_codes


async def test_open_loop_holds_the_rate(make_stack: StackFactory, pg_cluster: PgCluster) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=13, customers=4, terminals=2)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(terminals=2, seed=13, duration_s=2.0, rate_per_s=40, mix={"balance": 1})
    report = await load.run(plan, population, "127.0.0.1", stack.server.port)
    assert 60 <= report.answered <= 82
    assert report.response_codes == {"00": report.answered}


async def test_faults_leave_no_end_state_difference(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1)
    population = build(seed=14, customers=8, terminals=4)
    await provision(pg_cluster.owner_dsn, population)
    faults = {"drop": 0.08, "no_read": 0.08, "garbage": 0.05, "slow": 0.08}
    plan = load.Plan(
        terminals=4, seed=14, duration_s=None, count=160, faults=faults, timeout_ms=3_000
    )

    report = await load.run(
        plan, population, "127.0.0.1", stack.server.port, ledger=LedgerView(pg_cluster.owner_dsn)
    )
    assert report.differences == []
    assert all(report.errors[f"fault_{name}"] > 0 for name in load.FAULTS)
    assert report.errors["reconnects"] > 0
    assert report.response_codes["00"] > 100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cash=1", "unknown session 'cash'"),
        ("balance=x", "whole number"),
        ("balance=0", "at least one"),
    ],
)
def test_bad_mix_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(load.MixError, match=message):
        load.parse_mix(text)


def test_mix_parses() -> None:
    assert load.parse_mix("withdrawal=5, balance=2")["withdrawal"] == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [("fire=0.1", "unknown fault 'fire'"), ("drop=x", "a number"), ("drop=2", "from 0 to 1")],
)
def test_bad_faults_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(load.MixError, match=message):
        load.parse_faults(text)


async def test_an_idle_kiosk_echoes(
    make_stack: StackFactory, pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "ECHO_IDLE_S", 0.1)
    stack = await make_stack(customers=1)
    population = build(seed=15, customers=1, terminals=1)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(
        terminals=1, seed=15, duration_s=None, count=3, rate_per_s=2.0, mix={"balance": 1}
    )
    report = await load.run(plan, population, "127.0.0.1", stack.server.port)
    assert report.idle_echoes >= 2
    echoes = value(stack.monitor.metrics, "switch_requests_total", mti="0800", response_code="00")
    assert echoes >= 2 + report.idle_echoes

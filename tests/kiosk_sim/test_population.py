"""The seeded population: cards per customer, joint accounts, and the CLI's checks of both."""

from __future__ import annotations

import asyncpg
import pytest

from kiosk_sim.__main__ import main
from kiosk_sim.chip import CVNS
from kiosk_sim.demo import free_port
from kiosk_sim.population import build, fixtures, provision
from ledger.errors import SchemaTooOld
from ledger.pan import luhn_valid, pan_hash
from ledger.postgres import SUPERUSER
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY
from tests.conftest import PgCluster


@pytest.mark.parametrize(
    ("cards", "per_customer"), [(None, [1] * 4), (4, [1] * 4), (6, [2, 2, 1, 1]), (40, [10] * 4)]
)
async def test_cards_are_dealt_to_customers_in_turn_and_share_their_accounts(
    cards: int | None, per_customer: list[int]
) -> None:
    population = build(seed=3, customers=4, terminals=2, cards=cards)
    pans = [card.pan for card in population.cards]
    assert len(set(pans)) == len(pans) == sum(per_customer)
    assert all(luhn_valid(pan) and len(pan) == 16 for pan in pans)
    # Each customer's first card (and PIN) is the one a population without extra cards has.
    assert population.cards[:4] == build(seed=3, customers=4, terminals=2).cards
    assert len(population.accounts) == 2 * 4
    data = await fixtures(population)
    # Each card with its chip twin, on the same accounts.
    assert [len(customer["cards"]) for customer in data["customers"]] == [
        2 * n for n in per_customer
    ]
    chip_pans = [card.chip.pan for card in population.cards]
    assert len(set(chip_pans + pans)) == 2 * len(pans)
    assert all(luhn_valid(pan) for pan in chip_pans)
    for customer in data["customers"]:
        numbers = {account["number"] for account in customer["accounts"]}
        assert all(set(card["accounts"].values()) == numbers for card in customer["cards"])


@pytest.mark.parametrize("cards", [3, 41])
def test_cards_per_customer_are_bounded(cards: int) -> None:
    with pytest.raises(AssertionError, match="cards per customer"):
        build(seed=3, customers=4, terminals=2, cards=cards)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--customers", "4", "--cards", "3"], "--cards must be 4 to 40 for 4 customers"),
        (["--customers", "4", "--cards", "41"], "--cards must be 4 to 40 for 4 customers"),
        (["--customers", "0"], "--customers must be 1 to 9999, not 0"),
        (["--customers", "10000"], "--customers must be 1 to 9999, not 10000"),
        (["--terminals", "5", "--customers", "4"], "--terminals 5 needs at least as many cards"),
    ],
)
def test_run_refuses_a_population_it_cannot_build(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--terminals", "2", *argv]) == 2
    assert message in capsys.readouterr().err


def test_run_without_a_switch_says_so_before_provisioning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    # The DSN leads nowhere: the switch is checked first, so it is never used.
    argv = ["run", "--port", str(port), "--terminals", "2", "--dsn", "postgresql://nowhere/x"]
    assert main(argv) == 2
    assert f"kiosk_sim: no switch at 127.0.0.1:{port}" in capsys.readouterr().err


async def test_provisioning_an_unmigrated_ledger_names_the_fix(pg_cluster: PgCluster) -> None:
    conn = await asyncpg.connect(pg_cluster.superuser_dsn)
    try:
        await conn.execute("DROP DATABASE IF EXISTS unmigrated")
        await conn.execute("CREATE DATABASE unmigrated")
    finally:
        await conn.close()
    with pytest.raises(SchemaTooOld, match="run `python -m ledger migrate`"):
        await provision(pg_cluster.info.dsn(SUPERUSER, "unmigrated"), build(3, 4, 2))


def test_chip_twins_cover_every_cryptogram_version_and_both_fallback_rules() -> None:
    population = build(seed=3, customers=14, terminals=2)
    chips = [card.chip for card in population.cards]
    assert {chip.profile.cvn for chip in chips} == set(CVNS)
    assert {(chip.profile.cvn, chip.fallback_allowed) for chip in chips} == {
        (cvn, allowed) for cvn in CVNS for allowed in (False, True)
    }
    # Visa's on 17 digits (ICC master key option B), Mastercard's on 16.
    assert {len(chip.pan) for chip in chips if chip.profile.scheme == "visa"} == {17}
    assert {len(chip.pan) for chip in chips if chip.profile.scheme == "mastercard"} == {16}
    assert set(population.chips) == {chip.pan for chip in chips}


async def test_provisioning_again_resumes_each_chip_counter(pg_cluster: PgCluster) -> None:
    population = build(seed=4, customers=2, terminals=1)
    await provision(pg_cluster.owner_dsn, population)
    chip = population.cards[0].chip
    conn = await asyncpg.connect(pg_cluster.owner_dsn)
    try:
        await conn.execute(
            "UPDATE ledger.cards SET emv_last_atc = 41 WHERE pan_hash = $1",
            pan_hash(chip.pan, DEVELOPMENT_PAN_HASH_KEY),
        )
    finally:
        await conn.close()
    again = build(seed=4, customers=2, terminals=1)
    await provision(pg_cluster.owner_dsn, again)
    assert again.chips[chip.pan].last_atc == 41
    assert again.chips[population.cards[1].chip.pan].last_atc == 0

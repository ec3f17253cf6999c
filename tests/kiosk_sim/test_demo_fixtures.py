"""The demo fixtures hold what the README and the demo promise: these PINs, these TMKs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hsm import emv
from hsm.api import Ibm3624Method, VisaPvvMethod
from hsm.crypto import Algorithm, key_check_value
from hsm.keys import DEVELOPMENT_LMK, KeyRole, Lmk, StoredKey
from hsm.local import LocalHSM
from kiosk_sim import demo

FIXTURES = tomllib.loads((Path(__file__).parents[2] / "config" / "demo-fixtures.toml").read_text())
CARDS = {c["pan"]: c for customer in FIXTURES["customers"] for c in customer["cards"]}
PINS = {
    demo.ADA_CARD: demo.ADA_PIN,
    demo.BOB_CARD: demo.BOB_PIN,
    demo.CHEN_CARD: demo.CHEN_PIN,
    demo.BLOCKED_CARD: demo.BLOCKED_PIN,
    demo.CHIP_CARD: demo.CHIP_PIN,
}


@pytest.mark.parametrize(("pan", "pin"), sorted(PINS.items()))
async def test_each_demo_pin_matches_its_stored_verification_data(pan: str, pin: str) -> None:
    data = CARDS[pan]["pin"]
    hsm = LocalHSM(Lmk(DEVELOPMENT_LMK))
    pvk = StoredKey.from_text(data["pvk"])
    if data["method"] == "ibm3624":
        assert (
            await hsm.derive_pin_verification_data(pvk, pan, pin, Ibm3624Method()) == data["offset"]
        )
    else:
        assert (
            await hsm.derive_pin_verification_data(pvk, pan, pin, VisaPvvMethod(data["pvki"]))
            == data["pvv"]
        )


@pytest.mark.parametrize("terminal", FIXTURES["terminals"], ids=lambda t: t["id"])
def test_each_demo_terminal_tmk_is_the_one_its_epp_holds(terminal: dict[str, str]) -> None:
    stored = StoredKey.from_text(terminal["tmk"])
    assert stored.role is KeyRole.TMK
    clear = demo.demo_tmk(terminal["id"])
    assert stored.kcv == key_check_value(Algorithm.TDES, clear).hex().upper()
    assert Lmk(DEVELOPMENT_LMK).unwrap(stored, (KeyRole.TMK,)) == clear


def test_the_demo_chip_card_is_personalised_from_the_imk_ac_the_ledger_holds() -> None:
    profile = CARDS[demo.CHIP_CARD]["emv"]
    stored = StoredKey.from_text(profile["imk_ac"])
    assert stored.role is KeyRole.IMK_AC
    imk = Lmk(DEVELOPMENT_LMK).unwrap(stored, (KeyRole.IMK_AC,))
    card = demo.demo_chip_card().profile
    assert (profile["psn"], profile["scheme"], card.scheme) == (demo.CHIP_PSN, "visa", "visa")
    version = emv.cryptogram_version(demo.CHIP_CVN)
    assert card.icc_mk == emv.icc_master_key(imk, demo.CHIP_CARD, demo.CHIP_PSN, version.master_key)
    assert profile["fallback_allowed"] is False


def test_readme_lists_the_demo_credentials() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert demo.demo_tmk("KIOSK001").hex().upper() in readme
    for pan in (demo.ADA_CARD, demo.BOB_CARD, demo.BLOCKED_CARD, demo.CHIP_CARD):
        assert f"`{pan}` | `{PINS[pan]}`" in readme


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        # A calendar month: 8 lines, shown whole (as the terminal report is).
        (["calendar", "2026", "11"], 8),
        # A whole year: its last OUTPUT_LINES_MAX lines only.
        (["calendar", "2026"], demo.OUTPUT_LINES_MAX),
    ],
)
def test_a_step_shows_its_command_then_the_end_of_its_output(args: list[str], shown: int) -> None:
    said: list[str] = []
    output = demo.run_step(said.append, "calendar", args)
    assert said[0] == f"$ python -m {' '.join(args)}"
    assert said[1:] == [f"    {line}" for line in output.splitlines()[-shown:]]
    assert len(said) == 1 + shown

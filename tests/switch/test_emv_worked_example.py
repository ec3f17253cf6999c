"""docs/emv.md's worked example of one ARQC and its ARPC, recomputed from the page itself: every
value it shows, by the functions it names, by the HSM, and against the published vector it
comes from. A value changed on the page, or in the code, fails here."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from hsm import emv
from hsm.crypto import Algorithm
from hsm.keys import DEVELOPMENT_LMK, KeyRole, Lmk
from hsm.local import LocalHSM
from switch import chip
from switch.chip import IccData
from switch.iso8583 import Dialect, Message, tlv
from switch.iso8583.codec import encode
from switch.iso8583.response_codes import ResponseCode
from switch.iso8583.spec import BINARY_FIELD_ENCODINGS, BinaryFieldEncoding

ROOT = Path(__file__).parents[2]
HEADING = "### Worked example: one ARQC and its ARPC"
STEPS = (
    "IMK-AC",
    "PAN",
    "PSN",
    "ICC MK",
    "R",
    "session key",
    "ARQC data",
    "ARQC",
    "ARC",
    "ARPC",
    "0210 F55",
    "on the wire",
    "ARC 0010 ARPC",
    "declined 51",
)


def _section() -> str:
    return (ROOT / "docs" / "emv.md").read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]


def _blocks() -> tuple[str, str]:
    """The F55 of the 0200 and the issuer's steps: the section's two code blocks."""
    parts = _section().split("```\n")
    return parts[1], parts[3]


def _icc_rows() -> list[tuple[str, str, str]]:
    return [
        (tag, length, value) for tag, length, value, *_ in map(str.split, _blocks()[0].splitlines())
    ]


def _steps() -> dict[str, tuple[bytes, str]]:
    """Each step's value (hex, spaces dropped) and its comment."""
    steps = {}
    for line in _blocks()[1].splitlines():
        label, value, comment = re.split(r" {2,}", line, maxsplit=2)
        steps[label] = (bytes.fromhex(value.replace(" ", "")), comment)
    return steps


@pytest.fixture(scope="module")
def steps() -> Mapping[str, bytes]:
    return {label: value for label, (value, _) in _steps().items()}


@pytest.fixture(scope="module")
def icc() -> IccData:
    data = tlv.encode((int(tag, 16), bytes.fromhex(value)) for tag, _, value in _icc_rows())
    assert f"{len(data)} bytes:" in _section()
    return IccData(tlv.decode(data))


def test_the_page_shows_each_step_once_and_each_f55_length_is_its_values() -> None:
    assert tuple(_steps()) == STEPS
    assert all(int(length, 16) == len(bytes.fromhex(value)) for _, length, value in _icc_rows())


def test_the_0200s_f55_is_an_authorisation_the_switch_reads(
    icc: IccData, steps: Mapping[str, bytes]
) -> None:
    assert set(chip.REQUIRED_TAGS) <= set(icc.tags)
    assert icc.tags[chip.TAG_PAN].hex() == steps["PAN"].hex()
    assert icc.tags[chip.TAG_PSN] == steps["PSN"]
    assert emv.select_cryptogram_version(emv.Scheme.MASTERCARD, icc.iad).cvn == 20


def test_each_step_is_what_the_function_it_names_computes(
    icc: IccData, steps: Mapping[str, bytes]
) -> None:
    version = emv.cryptogram_version(20)
    pan, psn = steps["PAN"].hex(), steps["PSN"].hex()
    icc_mk = emv.icc_master_key(steps["IMK-AC"], pan, psn, version.master_key)
    assert icc_mk == steps["ICC MK"]
    assert icc_mk == emv.icc_master_key_option_a(steps["IMK-AC"], pan, psn)
    assert f"Y = {(pan + psn)[-16:]}" in _steps()["ICC MK"][1]
    assert emv.common_session_key_r(icc.atc_bytes) == steps["R"]
    session_key = emv.common_session_key(icc_mk, steps["R"])
    assert session_key == steps["session key"]
    data = emv.cryptogram_data(version, icc.atc_bytes, icc.cryptogram_tags())
    assert data == steps["ARQC data"]
    arqc = emv.application_cryptogram(session_key, data, version.padding)
    assert arqc == steps["ARQC"] == icc.arqc
    assert chip.arpc_response(version, ResponseCode.APPROVED) == emv.Arc(steps["ARC"])
    arpc = emv.arpc_method_1(session_key, arqc, steps["ARC"])
    assert arpc == steps["ARPC"]
    field = chip.issuer_authentication_field(arpc + steps["ARC"])
    assert bytes.fromhex(field) == steps["0210 F55"]
    assert emv.arpc_method_1(session_key, arqc, bytes.fromhex("0010")) == steps["ARC 0010 ARPC"]


def test_the_example_is_the_published_vector(icc: IccData, steps: Mapping[str, bytes]) -> None:
    vectors = json.loads((ROOT / "tests" / "vectors" / "emv.json").read_text())["cvn"]
    cvn20 = vectors["mastercard"]["cvn20"]
    assert (steps["IMK-AC"].hex().upper(), steps["PAN"].hex(), steps["PSN"].hex()) == (
        vectors["imk_ac"],
        vectors["pan"],
        vectors["psn"],
    )
    assert icc.atc_bytes.hex().upper() == vectors["atc"]
    assert all(
        icc.tags[int(tag, 16)].hex().upper() == value
        for tag, value in vectors["mastercard"]["tags"].items()
    )
    assert icc.iad[2:8].hex().upper() == vectors["mastercard"]["cvr"]
    assert steps["ARQC"].hex().upper() == cvn20["arqc"]
    assert steps["ARC 0010 ARPC"].hex().upper() == cvn20["arpc_method_1_session_key"]


@pytest.mark.parametrize(
    ("code", "step"),
    [(ResponseCode.APPROVED, "0210 F55"), (ResponseCode.INSUFFICIENT_FUNDS, "declined 51")],
)
async def test_the_hsm_verifies_the_arqc_and_answers_the_pages_tag_91(
    icc: IccData, steps: Mapping[str, bytes], code: ResponseCode, step: str
) -> None:
    lmk = Lmk(DEVELOPMENT_LMK)
    imk = lmk.wrap(KeyRole.IMK_AC, Algorithm.TDES, steps["IMK-AC"])
    version = emv.cryptogram_version(20)
    result = await LocalHSM(lmk).verify_arqc(
        imk, steps["PAN"].hex(), steps["PSN"].hex(), icc.atc_bytes, icc.arqc, cvn=20,
        tags=icc.cryptogram_tags(), response=chip.arpc_response(version, code),
    )  # fmt: skip
    assert result.verified
    assert result.issuer_authentication_data is not None
    field = chip.issuer_authentication_field(result.issuer_authentication_data)
    assert bytes.fromhex(field) == steps[step]


@pytest.mark.parametrize("binary_fields", BINARY_FIELD_ENCODINGS)
def test_the_0210_carries_f55_as_the_page_shows(
    steps: Mapping[str, bytes], binary_fields: BinaryFieldEncoding
) -> None:
    field = steps["0210 F55"].hex().upper()
    fields = {3: "010000", 4: "000000009999", 7: "1201101500", 11: "000001", 39: "00"}
    message = Message("0210", {**fields, 41: "KIOSK001", 49: "124", 55: field})
    wire = encode(message, Dialect(binary_fields=binary_fields))
    # The page: LLL "012" and the bytes; with hex binary fields "024" and 24 characters.
    shown = steps["on the wire"] if binary_fields == "raw" else b"024" + field.encode()
    assert wire.endswith(shown)

"""The simulator's chip card and the HSM agree, on every cryptogram version, whatever the data:
the card's ARQC verifies at the HSM, and the card verifies the HSM's ARPC and reads its verdict."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import emv
from hsm.crypto import Algorithm
from hsm.keys import DEVELOPMENT_LMK, KeyRole, Lmk
from hsm.local import LocalHSM
from kiosk_sim.chip import CVNS, ChipCard, ChipProfile, TerminalData
from switch import chip
from switch.chip import IccData
from switch.iso8583 import tlv
from switch.iso8583.response_codes import ResponseCode

LMK = Lmk(DEVELOPMENT_LMK)
IMK_CLEAR = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
IMK = LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, IMK_CLEAR)
HSM = LocalHSM(LMK)

terminal_data = st.builds(
    TerminalData,
    amount_minor=st.integers(0, 10**12 - 1),
    currency_numeric=st.from_regex(r"[0-9]{3}", fullmatch=True),
    transaction_type=st.sampled_from(["00", "01", "31", "40"]),
    date=st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)),
    unpredictable_number=st.binary(min_size=4, max_size=4),
    tvr=st.binary(min_size=5, max_size=5),
    country=st.sampled_from([bytes.fromhex(c) for c in ("0276", "0840", "0124", "0826")]),
)


@pytest.mark.parametrize("cvn", CVNS)
@settings(max_examples=40, deadline=None)
@given(
    terminal=terminal_data,
    pan=st.from_regex(r"[0-9]{12,19}", fullmatch=True),
    psn=st.from_regex(r"[0-9]{2}", fullmatch=True),
    last_atc=st.integers(0, 0xFFFE),
    code=st.sampled_from([ResponseCode.APPROVED, ResponseCode.INSUFFICIENT_FUNDS]),
)
def test_the_card_and_the_hsm_agree(
    cvn: int, *, terminal: TerminalData, pan: str, psn: str, last_atc: int, code: ResponseCode
) -> None:
    card = ChipCard(ChipProfile.personalise(IMK_CLEAR, pan, psn, cvn), last_atc=last_atc)
    sent = card.generate_arqc(terminal)
    assert sent.atc == last_atc + 1 == card.last_atc
    # What the switch reads of the card's F55 is what the card put in it.
    icc = IccData(tlv.decode(bytes.fromhex(sent.field_55())))
    version = emv.cryptogram_version(cvn)
    result = asyncio.run(
        HSM.verify_arqc(
            IMK, pan, psn, icc.atc_bytes, icc.arqc, cvn=cvn, tags=icc.cryptogram_tags(),
            response=chip.arpc_response(version, code),
        )
    )  # fmt: skip
    assert result.verified
    assert result.issuer_authentication_data is not None
    answer = chip.issuer_authentication_field(result.issuer_authentication_data)
    verdict = card.authenticate_issuer(sent, answer)
    assert verdict.arpc_verified
    assert verdict.issuer_approves is (code is ResponseCode.APPROVED)
    # One bit off anywhere in the ARPC, and the card refuses it.
    data = result.issuer_authentication_data
    garbled = chip.issuer_authentication_field(bytes([data[0] ^ 0x04]) + data[1:])
    assert not card.authenticate_issuer(sent, garbled).arpc_verified


@pytest.mark.parametrize("cvn", CVNS)
def test_a_card_personalised_from_another_imk_fails_at_the_hsm(cvn: int) -> None:
    other = ChipCard(ChipProfile.personalise(bytes(range(16)), "4761739001010010", "01", cvn))
    when = datetime(2026, 11, 23)
    sent = other.generate_arqc(TerminalData(2_000, "978", "01", when, bytes(4)))
    icc = IccData(sent.tags)
    result = asyncio.run(
        HSM.verify_arqc(
            IMK, "4761739001010010", "01", icc.atc_bytes, icc.arqc, cvn=cvn,
            tags=icc.cryptogram_tags(),
            response=chip.arpc_response(emv.cryptogram_version(cvn), ResponseCode.APPROVED),
        )
    )  # fmt: skip
    assert not result.verified


def test_the_aac_of_a_declined_approval_is_well_formed_and_keeps_the_atc() -> None:
    card = ChipCard(ChipProfile.personalise(IMK_CLEAR, "4761739001010010", "01", 18))
    sent = card.generate_arqc(TerminalData(2_000, "978", "01", datetime(2026, 11, 23), bytes(4)))
    declined = card.decline(sent)
    assert (declined.atc, declined.tags[0x9F27], card.last_atc) == (sent.atc, b"\x00", 1)
    assert declined.arqc != sent.arqc
    assert tlv.decode(bytes.fromhex(declined.field_55()))[0x95] == bytes.fromhex("0000000040")
    assert not card.authenticate_issuer(sent, None).approve  # no tag 91: the card declines
    assert card.profile.icc_mk.hex() not in repr(card).lower()  # a card's key is never shown

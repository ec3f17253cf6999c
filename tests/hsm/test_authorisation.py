"""The HSM's word for the ledger: a token over the request when the PIN is right, none when it is
wrong; the same bytes locally and over the wire, and a known answer for auditors to check."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from hsm import authorisation, crypto, emv, pinblock
from hsm.api import HSM, Ibm3624Method, Ibm3624Offset
from hsm.authorisation import Authorisation
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys
from hsm.engine import SoftHsm
from hsm.errors import KeyMaterialError
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole
from hsm.local import LocalHSM
from hsm.pinblock import PinBlockFormat
from hsm.server import HsmServer, ServerConfig
from kiosk_sim.chip import CVNS, ChipCard, ChipProfile, TerminalData
from switch import chip
from switch.chip import IccData
from switch.iso8583 import tlv
from switch.iso8583.response_codes import ResponseCode

from .support import LMK
from .test_pan_hash import DEV_CONFIG_PHK, KNOWN_ANSWER, PAN

REQUEST = Authorisation("KIOSK001", "1123100000", "000042", "0200", 2_000, "EUR")
TPK_CLEAR = crypto.with_odd_parity(bytes(range(16, 32)))
TPK = LMK.wrap(KeyRole.TPK, Algorithm.TDES, TPK_CLEAR)
IMK_CLEAR = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
IMK = LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, IMK_CLEAR)


@pytest.fixture(params=["local", "network"])
async def authorising(request: pytest.FixtureRequest) -> AsyncIterator[HSM]:
    if request.param == "local":
        yield LocalHSM(LMK, pan_hash_key=DEV_CONFIG_PHK)
        return
    server = HsmServer(
        SoftHsm(LMK, pan_hash_key=DEV_CONFIG_PHK), ServerConfig(host="127.0.0.1", port=0)
    )
    await server.start()
    client = NetworkHSM([("127.0.0.1", server.port)], timeout_ms=2000)
    yield client
    await client.close()
    await server.close()


async def _card(hsm: HSM, dev_keys: DevKeys) -> Ibm3624Offset:
    offset = await hsm.derive_pin_verification_data(dev_keys.pvk, PAN, "1234", Ibm3624Method())
    return Ibm3624Offset(dev_keys.pvk, offset)


def _block(pin: str) -> bytes:
    return pinblock.encrypt_pin_block(TPK_CLEAR, pin, PAN, PinBlockFormat.ISO0)


async def test_a_right_pin_gets_the_token_and_a_wrong_one_none(
    authorising: HSM, dev_keys: DevKeys
) -> None:
    card = await _card(authorising, dev_keys)
    args = (PAN, TPK, PinBlockFormat.ISO0, card)
    token = await authorising.verify_pin_for(_block("1234"), *args, request=REQUEST)
    key = authorisation.authorisation_key(DEVELOPMENT_PAN_HASH_KEY)
    assert token == authorisation.token(key, REQUEST.message(KNOWN_ANSWER))
    assert await authorising.verify_pin_for(_block("4321"), *args, request=REQUEST) is None
    assert await authorising.authorisation_check_value() == authorisation.check_value(key)


def test_the_token_is_an_hmac_an_auditor_can_recompute() -> None:
    key = bytes(range(32))
    text = b"kiosk-switch authorisation v1\nKIOSK001\n1123100000\n000042\n0200\n" + (
        KNOWN_ANSWER.hex().encode() + b"\n2000\nEUR"
    )
    expected = hmac.new(key, text, hashlib.sha256).digest()[:16]
    assert authorisation.token(key, REQUEST.message(KNOWN_ANSWER)) == expected


async def test_no_token_without_the_pan_hash_key(dev_keys: DevKeys) -> None:
    hsm = LocalHSM(LMK)
    card = await _card(hsm, dev_keys)
    with pytest.raises(KeyMaterialError):
        await hsm.verify_pin_for(
            _block("1234"), PAN, TPK, PinBlockFormat.ISO0, card, request=REQUEST
        )


def test_the_three_words_never_stand_for_one_another() -> None:
    """Each word's text starts with its own line: a PIN's word is no chip word or key word."""
    key = bytes(range(32))
    words = {
        authorisation.token(key, REQUEST.message(KNOWN_ANSWER)),
        authorisation.token(key, REQUEST.chip_message(KNOWN_ANSWER, 7)),
        authorisation.token(key, authorisation.session_keys_message("KIOSK001", "M", "P", "A")),
    }
    assert len(words) == 3
    assert REQUEST.chip_message(KNOWN_ANSWER, 7) == (
        b"kiosk-switch chip authorisation v1\nKIOSK001\n1123100000\n000042\n0200\n"
        + KNOWN_ANSWER.hex().encode()
        + b"\n2000\nEUR\n7"
    )


def _chip_request(cvn: int, amount_minor: int) -> tuple[IccData, emv.CryptogramVersion]:
    card = ChipCard(ChipProfile.personalise(IMK_CLEAR, PAN, "01", cvn), last_atc=41)
    sent = card.generate_arqc(
        TerminalData(amount_minor, "978", "01", datetime(2026, 12, 1), bytes(4))
    )
    return IccData(tlv.decode(bytes.fromhex(sent.field_55()))), emv.cryptogram_version(cvn)


@pytest.mark.parametrize("cvn", CVNS)
@pytest.mark.parametrize(
    ("case", "expected"),
    [("verified", "word"), ("wrong-arqc", "none"), ("other-amount", "none")],
)
async def test_the_chip_word_comes_only_with_a_verified_arqc_for_the_amount(
    authorising: HSM, cvn: int, case: str, expected: str
) -> None:
    icc, version = _chip_request(cvn, 2_000 if case != "other-amount" else 2_001)
    arqc = icc.arqc if case != "wrong-arqc" else bytes(8)
    authorised = await authorising.verify_arqc_for(
        IMK, PAN, "01", icc.atc_bytes, arqc, cvn=cvn, tags=icc.cryptogram_tags(),
        response=chip.arpc_response(version, ResponseCode.APPROVED), request=REQUEST,
    )  # fmt: skip
    assert authorised.result.verified is (case != "wrong-arqc")
    if expected == "none":
        assert authorised.authorisation is None
        return
    key = authorisation.authorisation_key(DEVELOPMENT_PAN_HASH_KEY)
    assert authorised.authorisation == authorisation.token(
        key, REQUEST.chip_message(KNOWN_ANSWER, 42)
    )


async def test_session_keys_come_with_their_terminals_word(
    authorising: HSM, dev_keys: DevKeys
) -> None:
    keys = await authorising.generate_session_keys(dev_keys.tmk, terminal_id="KIOSK001")
    message = authorisation.session_keys_message(
        "KIOSK001", dev_keys.tmk.to_text(), keys.tpk.stored.to_text(), keys.tak.stored.to_text()
    )
    key = authorisation.authorisation_key(DEVELOPMENT_PAN_HASH_KEY)
    assert keys.authorisation == authorisation.token(key, message)

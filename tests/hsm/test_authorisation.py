"""The HSM's word for the ledger: a token over the request when the PIN is right, none when it is
wrong; the same bytes locally and over the wire, and a known answer for auditors to check."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator

import pytest

from hsm import authorisation, crypto, pinblock
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

from .support import LMK
from .test_pan_hash import DEV_CONFIG_PHK, KNOWN_ANSWER, PAN

REQUEST = Authorisation("KIOSK001", "1123100000", "000042", "0200", 2_000, "EUR")
TPK_CLEAR = crypto.with_odd_parity(bytes(range(16, 32)))
TPK = LMK.wrap(KeyRole.TPK, Algorithm.TDES, TPK_CLEAR)


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
    assert token == authorisation.token(key, KNOWN_ANSWER, REQUEST)
    assert await authorising.verify_pin_for(_block("4321"), *args, request=REQUEST) is None
    assert await authorising.authorisation_check_value() == authorisation.check_value(key)


def test_the_token_is_an_hmac_an_auditor_can_recompute() -> None:
    key = bytes(range(32))
    text = b"kiosk-switch authorisation v1\nKIOSK001\n1123100000\n000042\n0200\n" + (
        KNOWN_ANSWER.hex().encode() + b"\n2000\nEUR"
    )
    expected = hmac.new(key, text, hashlib.sha256).digest()[:16]
    assert authorisation.token(key, KNOWN_ANSWER, REQUEST) == expected


async def test_no_token_without_the_pan_hash_key(dev_keys: DevKeys) -> None:
    hsm = LocalHSM(LMK)
    card = await _card(hsm, dev_keys)
    with pytest.raises(KeyMaterialError):
        await hsm.verify_pin_for(
            _block("1234"), PAN, TPK, PinBlockFormat.ISO0, card, request=REQUEST
        )

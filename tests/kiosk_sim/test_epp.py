"""The simulated terminal's EPP against the HSM that issues its keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsm import crypto, dukpt
from hsm.api import Ibm3624Method, Ibm3624Offset
from hsm.crypto import Algorithm
from hsm.keys import KeyRole, Lmk
from hsm.local import LocalHSM
from hsm.pinblock import PinBlockFormat
from kiosk_sim.epp import Epp, KeyCheckError
from switch.iso8583.elements import KeyChangeData

PAN = "4761739001010119"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "payment_crypto.json"


LMK = Lmk(bytes(range(32)))


async def test_key_change_installs_keys_the_hsm_can_use() -> None:
    hsm = LocalHSM(LMK, pan_hash_key=LMK.wrap(KeyRole.PHK, Algorithm.HMAC, bytes(range(32))))
    tmk_clear = crypto.with_odd_parity(bytes(range(16)))
    tmk = LMK.wrap(KeyRole.TMK, Algorithm.TDES, tmk_clear)
    keys = await hsm.generate_session_keys(tmk, terminal_id="KIOSK001")
    delivered = KeyChangeData(keys.tpk.under_tmk, keys.tpk.kcv, keys.tak.under_tmk, keys.tak.kcv)
    epp = Epp(tmk_clear).install_session_keys(KeyChangeData.parse(delivered.encode()))

    pvk = await hsm.generate_key(KeyRole.PVK)
    offset = await hsm.derive_pin_verification_data(pvk, PAN, "1234", Ibm3624Method())
    card = Ibm3624Offset(pvk, offset)
    tpk = keys.tpk.stored
    assert await hsm.verify_pin(epp.pin_block("1234", PAN), PAN, tpk, PinBlockFormat.ISO0, card)
    assert not await hsm.verify_pin(epp.pin_block("4321", PAN), PAN, tpk, PinBlockFormat.ISO0, card)

    request, answer = b"0200 message bytes", b"0210 message bytes"  # the HSM MACs answers only
    assert await hsm.verify_mac(keys.tak.stored, request, epp.mac(request))
    assert epp.verify_mac(answer, await hsm.generate_mac(keys.tak.stored, answer))


def test_a_wrong_check_value_is_refused() -> None:
    epp = Epp(bytes(16))
    with pytest.raises(KeyCheckError, match="TPK"):
        epp.install_session_keys(KeyChangeData("00" * 16, "000000", "00" * 16, "000000"))


def test_repr_shows_no_key() -> None:
    assert (
        repr(Epp(bytes.fromhex("0123456789ABCDEF" * 2)))
        == "Epp(algorithm=TDES, session_keys=False)"
    )


def test_dukpt_pin_pad_matches_the_published_x9_24_vectors() -> None:
    vectors = json.loads(VECTORS.read_text())["tdes_dukpt_x9_24_1"]
    bdk, initial_ksn = bytes.fromhex(vectors["bdk"]), bytes.fromhex(vectors["initial_ksn"])
    epp = Epp(bytes(16), ipek=dukpt.tdes_ipek(bdk, initial_ksn), initial_ksn=initial_ksn)
    for counter, transaction in enumerate(vectors["transactions"], start=1):
        block, ksn = epp.dukpt_pin_block(vectors["pin"], vectors["pan"], counter)
        assert ksn.hex().upper() == transaction["ksn"]
        assert block.hex().upper() == transaction["encrypted_pin_block"]

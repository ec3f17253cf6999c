"""The HSM operation suite, run against LocalHSM and against the networked HSM over loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from hsm import crypto, dukpt, mac, pinblock
from hsm.api import (
    HSM,
    Dukpt,
    Ibm3624Method,
    Ibm3624Offset,
    SessionKeys,
    Verification,
    VisaPvv,
    VisaPvvMethod,
)
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys
from hsm.errors import (
    HsmError,
    KeyBlockError,
    KeyUsageError,
    PanError,
    PinBlockFormatError,
    PinFormatError,
)
from hsm.keys import KeyRole, StoredKey
from hsm.pinblock import PinBlockFormat as F

from .support import LMK

h = bytes.fromhex
PAN = "4012345678909"
PIN = "1234"


async def session(hsm: HSM, dev_keys: DevKeys) -> tuple[SessionKeys, bytes, bytes]:
    """Generate session keys and open them as the terminal does, with its clear TMK."""
    keys = await hsm.generate_session_keys(dev_keys.tmk, terminal_id="KIOSK001")
    tmk = h(dev_keys.tmk_clear_hex)
    tpk = crypto.tdes_ecb_decrypt(tmk, h(keys.tpk.under_tmk))
    tak = crypto.tdes_ecb_decrypt(tmk, h(keys.tak.under_tmk))
    return keys, tpk, tak


async def test_session_keys_reach_the_terminal(hsm: HSM, dev_keys: DevKeys) -> None:
    keys, tpk, tak = await session(hsm, dev_keys)
    assert len(keys.tpk.under_tmk) == 32
    assert len(keys.tak.under_tmk) == 32
    assert crypto.kcv_tdes(tpk).hex().upper() == keys.tpk.kcv
    assert crypto.kcv_tdes(tak).hex().upper() == keys.tak.kcv
    assert (keys.tpk.stored.role, keys.tak.stored.role) == (KeyRole.TPK, KeyRole.TAK)
    assert await hsm.key_check_value(keys.tpk.stored) == keys.tpk.kcv
    assert StoredKey.from_text(keys.tak.stored.to_text()) == keys.tak.stored
    assert tpk == crypto.with_odd_parity(tpk)


@pytest.mark.parametrize("fmt", [F.ISO0, F.ISO1, F.ISO3])
@pytest.mark.parametrize("method", ["ibm", "visa"])
async def test_verify_pin(hsm: HSM, dev_keys: DevKeys, fmt: F, method: str) -> None:
    keys, tpk, _ = await session(hsm, dev_keys)
    verification: Verification
    if method == "ibm":
        offset = await hsm.derive_pin_verification_data(dev_keys.pvk, PAN, PIN, Ibm3624Method())
        verification = Ibm3624Offset(dev_keys.pvk, offset)
    else:
        pvv = await hsm.derive_pin_verification_data(dev_keys.pvk, PAN, PIN, VisaPvvMethod("1"))
        verification = VisaPvv(dev_keys.pvk, "1", pvv)
    good = pinblock.encrypt_pin_block(tpk, PIN, PAN, fmt)
    bad = pinblock.encrypt_pin_block(tpk, "4321", PAN, fmt)
    assert await hsm.verify_pin(good, PAN, keys.tpk.stored, fmt, verification)
    assert not await hsm.verify_pin(bad, PAN, keys.tpk.stored, fmt, verification)


async def test_verify_pin_tdes_dukpt(hsm: HSM, dev_keys: DevKeys) -> None:
    bdk = h("0123456789ABCDEFFEDCBA9876543210")  # the X9.24-1 example BDK
    stored_bdk = LMK.wrap(KeyRole.BDK, Algorithm.TDES, bdk)
    pvv = await hsm.derive_pin_verification_data(dev_keys.pvk, PAN, PIN, VisaPvvMethod("1"))
    ksn = h("FFFF9876543210E00002")
    block = h("10A01C8D02C69107")  # X9.24-1 Annex A.4, PIN 1234
    verification = VisaPvv(dev_keys.pvk, "1", pvv)
    assert await hsm.verify_pin(block, PAN, Dukpt(stored_bdk, ksn), F.ISO0, verification)
    wrong_pvv = VisaPvv(dev_keys.pvk, "1", f"{(int(pvv) + 1) % 10000:04d}")
    assert not await hsm.verify_pin(block, PAN, Dukpt(stored_bdk, ksn), F.ISO0, wrong_pvv)


async def test_verify_pin_aes_dukpt_format4(hsm: HSM, dev_keys: DevKeys) -> None:
    bdk = h("FEDCBA9876543210F1F1F1F1F1F1F1F1")
    stored_bdk = LMK.wrap(KeyRole.BDK, Algorithm.AES, bdk)
    ksn = h("123456789012345600000007")
    pek = dukpt.aes_working_key(bdk, ksn, dukpt.AesKeyUsage.PIN_ENCRYPTION)
    block = pinblock.encrypt_pin_block(pek, PIN, PAN, F.ISO4)
    offset = await hsm.derive_pin_verification_data(dev_keys.pvk, PAN, PIN, Ibm3624Method())
    verification = Ibm3624Offset(dev_keys.pvk, offset)
    assert await hsm.verify_pin(block, PAN, Dukpt(stored_bdk, ksn), F.ISO4, verification)


async def test_translate_pin(hsm: HSM, dev_keys: DevKeys) -> None:
    keys, tpk, _ = await session(hsm, dev_keys)
    zpk_clear = crypto.with_odd_parity(bytes(range(16)))
    zpk = LMK.wrap(KeyRole.ZPK, Algorithm.TDES, zpk_clear)
    block = pinblock.encrypt_pin_block(tpk, PIN, PAN, F.ISO0)
    out = await hsm.translate_pin(
        block,
        PAN,
        source=keys.tpk.stored,
        source_format=F.ISO0,
        destination=zpk,
        destination_format=F.ISO3,
    )
    assert pinblock.decrypt_pin_block(zpk_clear, out, PAN, F.ISO3) == PIN


@pytest.mark.parametrize("algorithm", [Algorithm.TDES, Algorithm.AES])
async def test_mac(hsm: HSM, dev_keys: DevKeys, algorithm: Algorithm) -> None:
    data = b"0210\x00\x01 some ISO 8583 answer"  # the HSM MACs no request (test_reversal_word)
    if algorithm is Algorithm.TDES:
        keys, _, tak = await session(hsm, dev_keys)
        stored, expected = keys.tak.stored, mac.iso9797_alg3(tak, data)
    else:
        tak = bytes(range(16))
        stored = LMK.wrap(KeyRole.TAK, Algorithm.AES, tak)
        expected = crypto.aes_cmac(tak, data)[:8]
    assert await hsm.generate_mac(stored, data) == expected
    assert await hsm.verify_mac(stored, data, expected)
    assert not await hsm.verify_mac(stored, data + b"!", expected)
    assert not await hsm.verify_mac(stored, data, bytes(8))


async def test_generate_key_and_kcv(hsm: HSM) -> None:
    for role, algorithm, length in [
        (KeyRole.ZPK, Algorithm.TDES, 24),
        (KeyRole.PVK, Algorithm.TDES, 16),
        (KeyRole.TAK, Algorithm.AES, 32),
        (KeyRole.IMK_AC, Algorithm.TDES, 16),
    ]:
        key = await hsm.generate_key(role, algorithm, length)
        assert (key.role, key.algorithm) == (role, algorithm)
        assert await hsm.key_check_value(key) == key.kcv


async def test_export_import_round_trip(hsm: HSM, dev_keys: DevKeys) -> None:
    keys, _, _ = await session(hsm, dev_keys)
    block = await hsm.export_key(keys.tpk.stored, dev_keys.tmk, "B")
    assert block[:1] + block[5:7] == "BP0"
    imported = await hsm.import_key(block, dev_keys.tmk, KeyRole.TPK)
    assert imported.kcv == keys.tpk.kcv
    assert imported.role is KeyRole.TPK
    with pytest.raises(KeyUsageError):
        await hsm.import_key(block, dev_keys.tmk, KeyRole.TAK)


def _tampered(key: StoredKey) -> StoredKey:
    text = key.to_text()
    last = "0" if text[-1] != "0" else "1"
    return StoredKey.from_text(text[:-1] + last)


async def test_negative_table(hsm: HSM, dev_keys: DevKeys) -> None:
    """Each bad input raises its typed error; no message carries the PIN or a key."""
    keys, tpk, _ = await session(hsm, dev_keys)
    block = pinblock.encrypt_pin_block(tpk, PIN, PAN, F.ISO0)
    pvv = await hsm.derive_pin_verification_data(dev_keys.pvk, PAN, PIN, VisaPvvMethod("1"))
    good = VisaPvv(dev_keys.pvk, "1", pvv)
    other_tpk = LMK.wrap(KeyRole.TPK, Algorithm.TDES, crypto.with_odd_parity(bytes(16)))
    cases: list[tuple[str, Callable[[], Awaitable[object]], type[HsmError]]] = [
        (
            "wrong PAN",
            lambda: hsm.verify_pin(block, "4012345678917", keys.tpk.stored, F.ISO0, good),
            PinBlockFormatError,
        ),
        (
            "PAN non-digit",
            lambda: hsm.verify_pin(block, "40123456789O9", keys.tpk.stored, F.ISO0, good),
            PanError,
        ),
        (
            "wrong key",
            lambda: hsm.verify_pin(block, PAN, other_tpk, F.ISO0, good),
            PinBlockFormatError,
        ),
        (
            "TAK as TPK",
            lambda: hsm.verify_pin(block, PAN, keys.tak.stored, F.ISO0, good),
            KeyUsageError,
        ),
        (
            "TPK as PVK",
            lambda: hsm.verify_pin(
                block, PAN, keys.tpk.stored, F.ISO0, VisaPvv(keys.tpk.stored, "1", pvv)
            ),
            KeyUsageError,
        ),
        (
            "format 4 under TDES",
            lambda: hsm.verify_pin(bytes(16), PAN, keys.tpk.stored, F.ISO4, good),
            KeyUsageError,
        ),
        (
            "short block",
            lambda: hsm.verify_pin(block[:7], PAN, keys.tpk.stored, F.ISO0, good),
            PinBlockFormatError,
        ),
        (
            "format mismatch",
            lambda: hsm.verify_pin(block, PAN, keys.tpk.stored, F.ISO3, good),
            PinBlockFormatError,
        ),
        (
            "tampered TPK",
            lambda: hsm.verify_pin(block, PAN, _tampered(keys.tpk.stored), F.ISO0, good),
            KeyBlockError,
        ),
        ("TPK as TAK", lambda: hsm.generate_mac(keys.tpk.stored, b"x"), KeyUsageError),
        (
            "TAK as TMK",
            lambda: hsm.generate_session_keys(keys.tak.stored, terminal_id="KIOSK001"),
            KeyUsageError,
        ),
        (
            "PIN too short",
            lambda: hsm.derive_pin_verification_data(dev_keys.pvk, PAN, "123", VisaPvvMethod("1")),
            PinFormatError,
        ),
        (
            "PIN too long",
            lambda: hsm.derive_pin_verification_data(
                dev_keys.pvk, PAN, "1234567890123", Ibm3624Method()
            ),
            PinFormatError,
        ),
        (
            "PIN non-digit",
            lambda: hsm.derive_pin_verification_data(dev_keys.pvk, PAN, "12a4", Ibm3624Method()),
            PinFormatError,
        ),
    ]
    for name, call, error in cases:
        with pytest.raises(error) as info:
            await call()
        message = str(info.value)
        assert PIN not in message, name
        assert "12a4" not in message, name
        assert tpk.hex().upper() not in message.upper(), name


async def test_translate_pin_from_dukpt(hsm: HSM) -> None:
    bdk = h("0123456789ABCDEFFEDCBA9876543210")
    source = Dukpt(LMK.wrap(KeyRole.BDK, Algorithm.TDES, bdk), h("FFFF9876543210E00001"))
    zpk_clear = crypto.with_odd_parity(bytes(range(16, 32)))
    zpk = LMK.wrap(KeyRole.ZPK, Algorithm.TDES, zpk_clear)
    out = await hsm.translate_pin(
        h("1B9C1845EB993A7A"),  # X9.24-1 Annex A.4, PIN 1234, first transaction
        PAN,
        source=source,
        source_format=F.ISO0,
        destination=zpk,
        destination_format=F.ISO0,
    )
    assert pinblock.decrypt_pin_block(zpk_clear, out, PAN, F.ISO0) == PIN

"""Known-answer tests: every vector in tests/vectors/payment_crypto.json (sources in each entry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hsm import crypto, dukpt, mac, pinblock, pinverify, tr31
from hsm.pinblock import PinBlockFormat

VECTORS_PATH = Path(__file__).parents[1] / "vectors" / "payment_crypto.json"


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


VECTORS = _load()
h = bytes.fromhex


def _hex(data: bytes) -> str:
    return data.hex().upper()


@pytest.mark.parametrize("v", VECTORS["iso9564_format0"])
def test_iso9564_format0(v: dict[str, str]) -> None:
    block = pinblock.encode_pin_block(v["pin"], v["pan"], PinBlockFormat.ISO0)
    assert _hex(block) == v["clear_pin_block"]
    assert pinblock.decode_pin_block(block, v["pan"], PinBlockFormat.ISO0) == v["pin"]


@pytest.mark.parametrize("v", VECTORS["key_check_value"])
def test_key_check_value(v: dict[str, str]) -> None:
    assert _hex(crypto.kcv_tdes(h(v["key"]))) == v["kcv"]


@pytest.mark.parametrize("v", VECTORS["ibm3624_offset"])
def test_ibm3624_offset(v: dict[str, Any]) -> None:
    pvk, data = h(v["pvk"]), h(v["validation_data"])
    assert _hex(crypto.tdes_ecb_encrypt(pvk, data)) == v["encrypted_validation_data"]
    table, length = v["decimalization_table"], v["pin_length"]
    assert pinverify.ibm3624_natural_pin(pvk, data, table, length) == v["natural_pin"]
    assert pinverify.ibm3624_offset(pvk, data, table, v["pin"]) == v["offset"]
    assert pinverify.ibm3624_verify(pvk, data, table, v["pin"], v["offset"])


@pytest.mark.parametrize("v", VECTORS["visa_pvv"])
def test_visa_pvv(v: dict[str, str]) -> None:
    assert pinverify.visa_pvv(h(v["pvk"]), v["pan"], v["pvki"], v["pin"]) == v["pvv"]
    assert pinverify.visa_pvv_verify(h(v["pvk"]), v["pan"], v["pvki"], v["pin"], v["pvv"])


@pytest.mark.parametrize("v", VECTORS["iso9797_1_alg3_retail_mac"])
def test_retail_mac(v: dict[str, Any]) -> None:
    data = v["data_ascii"].encode("ascii")
    assert _hex(mac.iso9797_alg3(h(v["key"]), data, v["padding_method"])) == v["mac"]


def test_tdes_dukpt_ipek() -> None:
    v = VECTORS["tdes_dukpt_x9_24_1"]
    assert _hex(dukpt.tdes_ipek(h(v["bdk"]), h(v["initial_ksn"]))) == v["ipek"]


@pytest.mark.parametrize("t", VECTORS["tdes_dukpt_x9_24_1"]["transactions"])
def test_tdes_dukpt_transactions(t: dict[str, str]) -> None:
    v = VECTORS["tdes_dukpt_x9_24_1"]
    bdk, ksn = h(v["bdk"]), h(t["ksn"])
    assert _hex(dukpt.tdes_transaction_key(bdk, ksn)) == t["transaction_key"]
    assert _hex(dukpt.tdes_transaction_key_from_ipek(h(v["ipek"]), ksn)) == t["transaction_key"]
    pin_key = dukpt.tdes_working_key(bdk, ksn, dukpt.TdesVariant.PIN)
    block = pinblock.encrypt_pin_block(pin_key, v["pin"], v["pan"], PinBlockFormat.ISO0)
    assert _hex(block) == t["encrypted_pin_block"]
    assert pinblock.decrypt_pin_block(pin_key, block, v["pan"], PinBlockFormat.ISO0) == v["pin"]


def test_aes_dukpt_initial_key() -> None:
    v = VECTORS["aes_dukpt_x9_24_3"]
    assert _hex(dukpt.aes_initial_key(h(v["bdk"]), h(v["initial_key_id"]))) == v["initial_key"]


@pytest.mark.parametrize("t", VECTORS["aes_dukpt_x9_24_3"]["transactions"])
def test_aes_dukpt_transactions(t: dict[str, str]) -> None:
    v = VECTORS["aes_dukpt_x9_24_3"]
    bdk, ksn = h(v["bdk"]), h(t["ksn"])
    assert _hex(dukpt.aes_transaction_key(bdk, ksn)) == t["transaction_key"]
    assert (
        _hex(dukpt.aes_transaction_key_from_initial(h(v["initial_key"]), ksn))
        == (t["transaction_key"])
    )
    pek = dukpt.aes_working_key(bdk, ksn, dukpt.AesKeyUsage.PIN_ENCRYPTION)
    assert _hex(pek) == t["pin_encryption_key"]


@pytest.mark.parametrize("v", VECTORS["tr31_key_block"])
def test_tr31_unwrap(v: dict[str, str]) -> None:
    header, key = tr31.unwrap(h(v["kbpk"]), v["key_block"])
    assert _hex(key) == v["key"]
    assert header.encode(len(v["key_block"])) == v["key_block"][: len(header.encode(0))]

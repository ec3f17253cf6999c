"""PIN verification data and MACs: exact values, refusals, and properties."""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hsm import crypto, mac, pinverify
from hsm.crypto import Algorithm
from hsm.errors import KeyLengthError, PanError, PinFormatError, RequestError

PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
AES_TAK = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
PAN = "4012345678909"


@pytest.mark.parametrize(
    ("template", "pan", "expected_hex"),
    [
        ("0000NNNNNNNNNNNN", PAN, "0000401234567890"),
        ("1234567890123445", PAN, "1234567890123445"),
        ("NNNNNFFFFFFFFFFF", "5555666677778888", "77888FFFFFFFFFFF"),
    ],
)
def test_validation_block(template: str, pan: str, expected_hex: str) -> None:
    assert pinverify.validation_block(template, pan).hex().upper() == expected_hex


@pytest.mark.parametrize(
    ("template", "pan", "error"),
    [
        ("0000NNNNNNNNNNN", PAN, RequestError),  # 15 characters
        ("NN00NNNNNNNNNNNN", "4012345678901234567", RequestError),  # N not contiguous
        ("000GNNNNNNNNNNNN", PAN, RequestError),  # not hex
        ("0000NNNNNNNNNNNN", "40123456789", PanError),  # too few PAN digits
        ("0000NNNNNNNNNNNN", "4012345678A09", PanError),
    ],
)
def test_validation_block_refuses(template: str, pan: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        pinverify.validation_block(template, pan)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (
            lambda: pinverify.ibm3624_offset(PVK, bytes(8), "0123456789012345", "123"),
            PinFormatError,
        ),
        (lambda: pinverify.ibm3624_offset(PVK, bytes(8), "012345678901234", "1234"), RequestError),
        (lambda: pinverify.ibm3624_offset(PVK, bytes(8), "01234567890123AB", "1234"), RequestError),
        (lambda: pinverify.visa_pvv(PVK, PAN, "12", "1234"), RequestError),
        (lambda: pinverify.visa_pvv(PVK, "40123456789", "1", "1234"), PanError),
        (lambda: pinverify.visa_pvv(PVK, PAN, "1", "12x4"), PinFormatError),
    ],
)
def test_pin_data_refuses(call: object, error: type[Exception]) -> None:
    assert callable(call)
    with pytest.raises(error):
        call()


def test_ibm3624_verify_wrong_length_offset_is_false() -> None:
    block = pinverify.validation_block("0000NNNNNNNNNNNN", PAN)
    offset = pinverify.ibm3624_offset(PVK, block, "0123456789012345", "1234")
    assert not pinverify.ibm3624_verify(PVK, block, "0123456789012345", "12345", offset)


pins = st.text("0123456789", min_size=4, max_size=12)


@settings(max_examples=50, deadline=None)
@given(pin=pins, other=pins, pan=st.text("0123456789", min_size=13, max_size=19))
def test_offset_verifies_same_pin_only(pin: str, other: str, pan: str) -> None:
    block = pinverify.validation_block("0000NNNNNNNNNNNN", pan)
    offset = pinverify.ibm3624_offset(PVK, block, "0123456789012345", pin)
    assert pinverify.ibm3624_verify(PVK, block, "0123456789012345", pin, offset)
    assume(other != pin)
    assert not pinverify.ibm3624_verify(PVK, block, "0123456789012345", other, offset)


@settings(max_examples=50, deadline=None)
@given(pin=pins, other=pins, pvki=st.sampled_from("0123456"))
def test_pvv_verifies_same_pin_only(pin: str, other: str, pvki: str) -> None:
    pvv = pinverify.visa_pvv(PVK, PAN, pvki, pin)
    assert len(pvv) == 4
    assert pvv.isdigit()
    assert pinverify.visa_pvv_verify(PVK, PAN, pvki, pin, pvv)
    # the PVV covers the first four PIN digits only (by definition of the method)
    assume(other[:4] != pin[:4])
    assert not pinverify.visa_pvv_verify(PVK, PAN, pvki, other, pvv)


# --- MACs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "method", "padded_hex"),
    [
        (b"", 1, "0000000000000000"),
        (b"\x01", 1, "0100000000000000"),
        (bytes(8), 1, "0000000000000000"),
        (b"", 2, "8000000000000000"),
        (bytes(8), 2, "0000000000000000" + "8000000000000000"),
    ],
)
def test_padding(data: bytes, method: int, padded_hex: str) -> None:
    assert mac.pad_iso9797(data, method).hex().upper() == padded_hex


def test_padding_refuses_unknown_method() -> None:
    with pytest.raises(RequestError):
        mac.pad_iso9797(b"", 3)


def test_alg1_single_block_is_tdes_encrypt() -> None:
    data = b"8 bytes!"
    assert mac.iso9797_alg1(TAK, data) == crypto.tdes_ecb_encrypt(TAK, data)


def test_alg3_equals_alg1_when_halves_are_equal() -> None:
    single = bytes.fromhex("0123456789ABCDEF")
    data = b"Now is the time for all "
    assert mac.iso9797_alg3(single * 2, data) == mac.iso9797_alg1(single, data)


def test_retail_mac_needs_double_length_key() -> None:
    with pytest.raises(KeyLengthError):
        mac.iso9797_alg3(TAK[:8], b"data")


def test_aes_cmac_rfc4493_example() -> None:
    # RFC 4493 example 2 (16-byte message)
    data = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")
    assert crypto.aes_cmac(AES_TAK, data).hex().upper() == "070A16B46B4D4144F79BDD9DD04A287C"


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=24, max_size=24), data=st.binary(max_size=40))
def test_tdes_cmac_matches_openssl(key: bytes, data: bytes) -> None:
    reference = cmac.CMAC(TripleDES(key))
    reference.update(data)
    assert crypto.tdes_cmac(key, data) == reference.finalize()


@pytest.mark.parametrize("length", [3, 9, 16])
def test_verify_refuses_bad_mac_length(length: int) -> None:
    with pytest.raises(RequestError):
        mac.verify_mac(Algorithm.TDES, TAK, b"data", bytes(length))


def flip(data: bytes, bit: int) -> bytes:
    return (int.from_bytes(data, "big") ^ (1 << bit)).to_bytes(len(data), "big")


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=200),
    algorithm=st.sampled_from([Algorithm.TDES, Algorithm.AES]),
    pick=st.integers(min_value=0),
)
def test_mac_refuses_any_single_bit_change(data: bytes, algorithm: Algorithm, pick: int) -> None:
    key = TAK if algorithm is Algorithm.TDES else AES_TAK
    tag = mac.generate_mac(algorithm, key, data)
    assert len(tag) == 8
    assert mac.verify_mac(algorithm, key, data, tag)
    assert not mac.verify_mac(algorithm, key, flip(data, pick % (8 * len(data))), tag)
    assert not mac.verify_mac(algorithm, key, data, flip(tag, pick % 64))


@settings(max_examples=200)
@given(
    key=st.sampled_from([TAK, TAK[:8], bytes(range(24))]),
    calls=st.lists(
        st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 12)), min_size=1, max_size=6
    ),
    transient=st.booleans(),
    seed=st.binary(min_size=1, max_size=96),
)
def test_cbc_encryption_reusing_its_encryptor_equals_a_fresh_one(
    key: bytes, calls: list[tuple[bytes, int]], transient: bool, seed: bytes
) -> None:
    """The kept encryptor carries its chaining value from call to call; each call's output is
    still exactly a fresh encryptor's from that call's IV."""
    for iv, blocks in calls:
        data = (seed * 96)[: 8 * blocks]
        fresh = Cipher(TripleDES(crypto.expand_tdes_key(key)), modes.CBC(iv)).encryptor()
        expected = fresh.update(data) + fresh.finalize()
        assert crypto.tdes_cbc_encrypt(key, iv, data, transient=transient) == expected

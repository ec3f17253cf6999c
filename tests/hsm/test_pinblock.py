"""ISO 9564 PIN blocks: exact encodings, refusals, and round-trips for every format."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import crypto, pinblock
from hsm.errors import PanError, PinBlockFormatError, PinFormatError
from hsm.pinblock import PinBlockFormat as F

TDES_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
AES_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
PAN = "4012345678909"


def zeros(n: int) -> bytes:
    return bytes(n)


@pytest.mark.parametrize(
    ("pin", "pan", "fmt", "clear_hex"),
    [
        ("1234", PAN, F.ISO0, "041274EDCBA9876F"),
        ("123456789012", "5555666677778888", F.ISO0, "0C1262301FE76A77"),
        ("1234", "", F.ISO1, "1412340000000000"),  # zero rng: fill digits 0
        ("1234", PAN, F.ISO3, "341274B89EFCD23A"),  # zero rng: fill nibbles A
    ],
)
def test_encode_exact(pin: str, pan: str, fmt: F, clear_hex: str) -> None:
    block = pinblock.encode_pin_block(pin, pan, fmt, rng=zeros)
    assert block.hex().upper() == clear_hex
    assert pinblock.decode_pin_block(block, pan, fmt) == pin


@pytest.mark.parametrize(
    ("pin", "pan", "fmt", "error"),
    [
        ("123", PAN, F.ISO0, PinFormatError),
        ("1234567890123", PAN, F.ISO0, PinFormatError),
        ("12a4", PAN, F.ISO0, PinFormatError),
        ("١٢٣٤", PAN, F.ISO0, PinFormatError),  # non-ASCII digits
        ("1234", "401234567890", F.ISO0, PanError),  # 12 digits: no room for the check digit
        ("1234", "40123456789012345678", F.ISO3, PanError),
        ("1234", "40123456789O9", F.ISO0, PanError),
        ("1234", "40123456789", F.ISO4, PanError),
    ],
)
def test_encrypt_refuses(pin: str, pan: str, fmt: F, error: type[Exception]) -> None:
    key = AES_KEY if fmt is F.ISO4 else TDES_KEY
    with pytest.raises(error) as info:
        pinblock.encrypt_pin_block(key, pin, pan, fmt)
    assert pin not in str(info.value)


@pytest.mark.parametrize(
    ("clear_hex", "fmt"),
    [
        ("141234FFFFFFFFFF", F.ISO0),  # wrong control nibble
        ("031234FFFFFFFFFF", F.ISO0),  # PIN length 3
        ("0D1234FFFFFFFFFF", F.ISO0),  # PIN length 13
        ("0412A4FFFFFFFFFF", F.ISO0),  # non-digit in the PIN
        ("041234FFFFFFFF0F", F.ISO0),  # fill not F
        ("341234FFFFFFF1FF", F.ISO3),  # fill outside A-F
        ("0412340000000000", F.ISO1),  # control nibble of format 0
    ],
)
def test_decode_refuses_malformed(clear_hex: str, fmt: F) -> None:
    pan_field = bytes.fromhex("0000401234567890") if fmt.uses_pan else bytes(8)
    block = crypto.xor(bytes.fromhex(clear_hex), pan_field)
    with pytest.raises(PinBlockFormatError) as info:
        pinblock.decode_pin_block(block, PAN, fmt)
    assert "1234" not in str(info.value)


@pytest.mark.parametrize(("fmt", "length"), [(F.ISO0, 7), (F.ISO0, 16), (F.ISO4, 8)])
def test_decrypt_refuses_wrong_block_length(fmt: F, length: int) -> None:
    key = AES_KEY if fmt is F.ISO4 else TDES_KEY
    with pytest.raises(PinBlockFormatError):
        pinblock.decrypt_pin_block(key, bytes(length), PAN, fmt)


@pytest.mark.parametrize("fmt", [F.ISO0, F.ISO3, F.ISO4])
def test_wrong_pan_or_key_does_not_yield_the_pin(fmt: F) -> None:
    key = AES_KEY if fmt is F.ISO4 else TDES_KEY
    other_key = bytes(b ^ 0x0F for b in key)
    block = pinblock.encrypt_pin_block(key, "1234", PAN, fmt)
    for k, pan in ((key, "5012345678909"), (other_key, PAN)):
        with contextlib.suppress(PinBlockFormatError):
            assert pinblock.decrypt_pin_block(k, block, pan, fmt) != "1234"


def test_format4_round_trip_exact_pan_field() -> None:
    block = pinblock.encrypt_pin_block(AES_KEY, "1234", "1234567890123456789", F.ISO4, rng=zeros)
    assert len(block) == 16
    assert pinblock.decrypt_pin_block(AES_KEY, block, "1234567890123456789", F.ISO4) == "1234"


pins = st.text("0123456789", min_size=4, max_size=12)
pans = st.text("0123456789", min_size=13, max_size=19)


@settings(max_examples=60, deadline=None)
@given(pin=pins, pan=pans, fmt=st.sampled_from(list(F)), seed=st.binary(min_size=8, max_size=8))
def test_round_trip_every_format(pin: str, pan: str, fmt: F, seed: bytes) -> None:
    key = AES_KEY if fmt is F.ISO4 else TDES_KEY

    def rng(n: int) -> bytes:
        return (seed * 2)[:n]

    block = pinblock.encrypt_pin_block(key, pin, pan, fmt, rng=rng)
    assert pinblock.decrypt_pin_block(key, block, pan, fmt) == pin
    if fmt is not F.ISO4:
        clear = pinblock.encode_pin_block(pin, pan, fmt, rng=rng)
        assert pinblock.decode_pin_block(clear, pan, fmt) == pin

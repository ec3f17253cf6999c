"""ISO 9564-1 PIN blocks: formats 0, 1 and 3 (64-bit, TDES) and format 4 (128-bit, AES).

Encoding takes randomness from an injected ``rng`` (``os.urandom`` by default) so tests can be
deterministic. Errors name what was wrong, never the PIN or the block.
"""

from __future__ import annotations

import os
from enum import Enum

from hsm import crypto
from hsm.crypto import Algorithm
from hsm.errors import PanError, PinBlockFormatError, PinFormatError

PIN_LENGTH_MIN = 4
PIN_LENGTH_MAX = 12
PAN_LENGTH_MAX = 19
_PAN_LENGTH_MIN_FORMAT_0_3 = 13  # 12 digits left of the check digit are needed
_PAN_LENGTH_MIN_FORMAT_4 = 12

Rng = crypto.Rng


class PinBlockFormat(Enum):
    ISO0 = 0
    ISO1 = 1
    ISO3 = 3
    ISO4 = 4

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm.AES if self is PinBlockFormat.ISO4 else Algorithm.TDES

    @property
    def uses_pan(self) -> bool:
        return self is not PinBlockFormat.ISO1


def check_pin(pin: str) -> None:
    if not (PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX):
        raise PinFormatError(f"PIN length must be {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX}")
    if not (pin.isascii() and pin.isdigit()):
        raise PinFormatError("PIN must hold decimal digits only")


def check_pan(pan: str, fmt: PinBlockFormat) -> None:
    if not fmt.uses_pan:
        return
    low = _PAN_LENGTH_MIN_FORMAT_4 if fmt is PinBlockFormat.ISO4 else _PAN_LENGTH_MIN_FORMAT_0_3
    if not (low <= len(pan) <= PAN_LENGTH_MAX):
        raise PanError(f"PAN length must be {low}..{PAN_LENGTH_MAX} for format {fmt.value}")
    if not (pan.isascii() and pan.isdigit()):
        raise PanError("PAN must hold decimal digits only")


def _random_nibbles(rng: Rng, count: int, alphabet: str) -> str:
    raw = rng(count)
    assert len(raw) == count, "rng returned the wrong number of bytes"
    return "".join(alphabet[b % len(alphabet)] for b in raw)


def _pan_field_64(pan: str) -> bytes:
    """Formats 0 and 3: 0000 + the 12 rightmost PAN digits left of the check digit."""
    return bytes.fromhex("0000" + pan[-13:-1])


def encode_pin_block(pin: str, pan: str, fmt: PinBlockFormat, *, rng: Rng = os.urandom) -> bytes:
    """Return the clear 8-byte PIN block of format 0, 1 or 3."""
    check_pin(pin)
    check_pan(pan, fmt)
    head = f"{fmt.value}{len(pin):X}{pin}"
    fill_count = 16 - len(head)
    if fmt is PinBlockFormat.ISO0:
        return crypto.xor(bytes.fromhex(head + "F" * fill_count), _pan_field_64(pan))
    if fmt is PinBlockFormat.ISO1:
        return bytes.fromhex(head + _random_nibbles(rng, fill_count, "0123456789ABCDEF"))
    if fmt is PinBlockFormat.ISO3:
        field = head + _random_nibbles(rng, fill_count, "ABCDEF")
        return crypto.xor(bytes.fromhex(field), _pan_field_64(pan))
    raise PinBlockFormatError("format 4 PIN blocks exist only enciphered; use encrypt_pin_block")


def _split_pin_field(field_hex: str, fmt: PinBlockFormat, fill_alphabet: str) -> str:
    if field_hex[0] != str(fmt.value):
        raise PinBlockFormatError(f"PIN block control field is not format {fmt.value}")
    length = int(field_hex[1], 16)
    if not (PIN_LENGTH_MIN <= length <= PIN_LENGTH_MAX):
        raise PinBlockFormatError("PIN block holds an invalid PIN length")
    pin = field_hex[2 : 2 + length]
    if not pin.isdigit():
        raise PinBlockFormatError("PIN block holds non-decimal PIN digits")
    if any(c not in fill_alphabet for c in field_hex[2 + length : 16]):
        raise PinBlockFormatError(f"PIN block fill is invalid for format {fmt.value}")
    return pin


def decode_pin_block(block: bytes, pan: str, fmt: PinBlockFormat) -> str:
    """Return the PIN of a clear 8-byte PIN block of format 0, 1 or 3."""
    if len(block) != crypto.TDES_BLOCK:
        raise PinBlockFormatError("a format 0/1/3 PIN block is 8 bytes")
    check_pan(pan, fmt)
    if fmt is PinBlockFormat.ISO1:
        return _split_pin_field(block.hex().upper(), fmt, "0123456789ABCDEF")
    if fmt is PinBlockFormat.ISO4:
        raise PinBlockFormatError(
            "format 4 PIN blocks exist only enciphered; use decrypt_pin_block"
        )
    field = crypto.xor(block, _pan_field_64(pan)).hex().upper()
    return _split_pin_field(field, fmt, "F" if fmt is PinBlockFormat.ISO0 else "ABCDEF")


def _pan_field_128(pan: str) -> bytes:
    return bytes.fromhex(f"{len(pan) - 12:X}{pan}".ljust(32, "0"))


def _encrypt_iso4(key: bytes, pin: str, pan: str, rng: Rng) -> bytes:
    pin_field = bytes.fromhex(f"4{len(pin):X}{pin}".ljust(16, "A")) + rng(8)
    assert len(pin_field) == crypto.AES_BLOCK, "rng returned the wrong number of bytes"
    inner = crypto.aes_ecb_encrypt(key, pin_field)
    return crypto.aes_ecb_encrypt(key, crypto.xor(inner, _pan_field_128(pan)))


def _decrypt_iso4(key: bytes, block: bytes, pan: str) -> str:
    if len(block) != crypto.AES_BLOCK:
        raise PinBlockFormatError("a format 4 PIN block is 16 bytes")
    inner = crypto.xor(crypto.aes_ecb_decrypt(key, block), _pan_field_128(pan))
    field = crypto.aes_ecb_decrypt(key, inner)[:8].hex().upper()
    return _split_pin_field(field, PinBlockFormat.ISO4, "A")


def encrypt_pin_block(
    key: bytes, pin: str, pan: str, fmt: PinBlockFormat, *, rng: Rng = os.urandom
) -> bytes:
    """Build and encipher a PIN block: TDES-ECB for formats 0/1/3, the format 4 AES scheme."""
    if fmt is PinBlockFormat.ISO4:
        check_pin(pin)
        check_pan(pan, fmt)
        return _encrypt_iso4(key, pin, pan, rng)
    return crypto.tdes_ecb_encrypt(key, encode_pin_block(pin, pan, fmt, rng=rng))


def decrypt_pin_block(key: bytes, block: bytes, pan: str, fmt: PinBlockFormat) -> str:
    """Decipher a PIN block and return its PIN; PinBlockFormatError if it does not decode."""
    if fmt is PinBlockFormat.ISO4:
        check_pan(pan, fmt)
        return _decrypt_iso4(key, block, pan)
    if len(block) != crypto.TDES_BLOCK:
        raise PinBlockFormatError("a format 0/1/3 PIN block is 8 bytes")
    return decode_pin_block(crypto.tdes_ecb_decrypt(key, block), pan, fmt)

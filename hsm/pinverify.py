"""PIN verification data: IBM 3624 natural PIN and offset, VISA PVV.

Pure functions over clear keys. The HSM calls them after it has unwrapped the PVK; the clear
PIN never leaves the HSM, only the offset or PVV does.
"""

from __future__ import annotations

import hmac

from hsm import crypto
from hsm.errors import PanError, PinFormatError, RequestError
from hsm.pinblock import PIN_LENGTH_MAX, PIN_LENGTH_MIN, check_pin

DEFAULT_DECIMALIZATION_TABLE = "0123456789012345"
# Twelve PAN digits left of the check digit, left-padded with zeros to 16 hex characters.
DEFAULT_VALIDATION_DATA = "0000NNNNNNNNNNNN"
_PVV_LENGTH = 4
_PVV_PAN_DIGITS = 11


def _check_pan_digits(pan: str, needed: int) -> None:
    if not (pan.isascii() and pan.isdigit()) or len(pan) < needed + 1:
        raise PanError(f"PAN must hold at least {needed + 1} decimal digits")


def validation_block(template: str, pan: str) -> bytes:
    """Resolve an IBM 3624 validation-data template to its 8-byte block.

    The template is 16 characters of hex and 'N'; the run of 'N' takes as many of the PAN's
    rightmost digits left of the check digit. With no 'N' the template is used literally.
    """
    if len(template) != 16:
        raise RequestError("validation data must be 16 characters")
    count = template.count("N")
    if count:
        _check_pan_digits(pan, count)
        start = template.index("N")
        if template[start : start + count] != "N" * count:
            raise RequestError("validation data 'N' characters must be contiguous")
        template = template[:start] + pan[-count - 1 : -1] + template[start + count :]
    try:
        return bytes.fromhex(template)
    except ValueError:
        raise RequestError("validation data must be hex apart from 'N'") from None


def _check_dec_table(table: str) -> None:
    if len(table) != 16 or not (table.isascii() and table.isdigit()):
        raise RequestError("decimalisation table must be 16 decimal digits")


def _check_pin_length(pin_length: int) -> None:
    if not (PIN_LENGTH_MIN <= pin_length <= PIN_LENGTH_MAX):
        raise PinFormatError(f"PIN length must be {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX}")


def ibm3624_natural_pin(pvk: bytes, validation_data: bytes, dec_table: str, pin_length: int) -> str:
    _check_dec_table(dec_table)
    _check_pin_length(pin_length)
    enciphered = crypto.tdes_ecb_encrypt(pvk, validation_data).hex().upper()
    return "".join(dec_table[int(c, 16)] for c in enciphered[:pin_length])


def _digitwise(a: str, b: str, sign: int) -> str:
    return "".join(str((int(x) + sign * int(y)) % 10) for x, y in zip(a, b, strict=True))


def ibm3624_offset(pvk: bytes, validation_data: bytes, dec_table: str, pin: str) -> str:
    """Offset = customer PIN minus natural PIN, digit by digit modulo 10."""
    check_pin(pin)
    natural = ibm3624_natural_pin(pvk, validation_data, dec_table, len(pin))
    return _digitwise(pin, natural, -1)


def ibm3624_verify(
    pvk: bytes, validation_data: bytes, dec_table: str, pin: str, offset: str
) -> bool:
    _check_pin_length(len(offset))
    if len(pin) != len(offset) or not offset.isdigit():
        return False
    natural = ibm3624_natural_pin(pvk, validation_data, dec_table, len(offset))
    return hmac.compare_digest(_digitwise(natural, offset, 1), pin)


def _check_pvki(pvki: str) -> None:
    if len(pvki) != 1 or not pvki.isdigit():
        raise RequestError("PVKI must be one decimal digit")


def visa_pvv(pvk: bytes, pan: str, pvki: str, pin: str) -> str:
    """VISA PVV: encipher PAN(11) + PVKI + PIN(4), then decimalise (digits, then A-F minus 10)."""
    check_pin(pin)
    _check_pvki(pvki)
    _check_pan_digits(pan, _PVV_PAN_DIGITS)
    tsp = pan[-_PVV_PAN_DIGITS - 1 : -1] + pvki + pin[:4]
    enciphered = crypto.tdes_ecb_encrypt(pvk, bytes.fromhex(tsp)).hex().upper()
    digits = [c for c in enciphered if c.isdigit()]
    digits += [str(int(c, 16) - 10) for c in enciphered if not c.isdigit()]
    return "".join(digits[:_PVV_LENGTH])


def visa_pvv_verify(pvk: bytes, pan: str, pvki: str, pin: str, pvv: str) -> bool:
    return hmac.compare_digest(visa_pvv(pvk, pan, pvki, pin), pvv)

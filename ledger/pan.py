"""Card numbers: the ledger keeps only a keyed hash and the masked form, never the PAN."""

from __future__ import annotations

import hashlib
import hmac


def pan_hash(pan: str, key: bytes) -> bytes:
    """HMAC-SHA256 of the PAN under the configured key: a lookup key that cannot be reversed."""
    return hmac.new(key, pan.encode("ascii", errors="replace"), hashlib.sha256).digest()


def is_plausible_pan(pan: str) -> bool:
    return pan.isdigit() and 12 <= len(pan) <= 19


def mask_pan(pan: str) -> str:
    """First six and last four digits; anything not shaped like a PAN masks to nothing."""
    if not is_plausible_pan(pan):
        return ""
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def luhn_valid(pan: str) -> bool:
    if not pan.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(pan)):
        digit = int(char) * (2 if index % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0

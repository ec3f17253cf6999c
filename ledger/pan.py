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


def remask(shown: str) -> str:
    """A stored masked PAN shown again with only its first six and last four characters, whatever
    the middle holds: an export never prints more, even of a row written by hand."""
    if len(shown) < 12 or not (shown[:6] + shown[-4:]).isdigit():
        return ""
    return shown[:6] + "*" * (len(shown) - 10) + shown[-4:]


def _luhn_sum(digits: str, *, double_first: bool) -> int:
    """The Luhn sum of `digits` read from the right, doubling every other digit."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if (index % 2 == 0) == double_first else 1)
        total += digit - 9 if digit > 9 else digit
    return total


def luhn_valid(pan: str) -> bool:
    return pan.isdigit() and _luhn_sum(pan, double_first=False) % 10 == 0


def luhn_complete(body: str) -> str:
    """`body` with the check digit that makes it pass the Luhn check (test and demo cards)."""
    assert body.isdigit(), "a card number body is digits"
    return body + str(-_luhn_sum(body, double_first=True) % 10)

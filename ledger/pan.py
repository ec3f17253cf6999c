"""Card numbers: the ledger keeps only a keyed hash and the masked form, never the PAN."""

from __future__ import annotations

import hashlib
import hmac


def pan_hash(pan: str, key: bytes) -> bytes:
    """HMAC-SHA256 of the PAN under the configured key: a lookup key that cannot be reversed."""
    return hmac.new(key, pan.encode("ascii", errors="replace"), hashlib.sha256).digest()


PAN_DIGITS_MIN = 12


def is_plausible_pan(pan: str) -> bool:
    return pan.isdigit() and PAN_DIGITS_MIN <= len(pan) <= 19


def mask_pan(text: str) -> str:
    """The first six and last four characters of a card number, the rest starred; anything
    shorter than a card number starred whole. For every place one might be shown: logs, messages
    and exports."""
    if len(text) < PAN_DIGITS_MIN:
        return "*" * len(text)
    return text[:6] + "*" * (len(text) - 10) + text[-4:]


def stored_mask(pan: str) -> str:
    """The masked form the ledger stores: a card number's mask, or nothing when it is not one."""
    return mask_pan(pan) if is_plausible_pan(pan) else ""


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

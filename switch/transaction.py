"""From a decoded financial request to a typed, validated transaction. Pure.

`parse_transaction` is the pipeline's first step: it either returns a `Transaction` whose fields
are all present and well-formed, or the response code that refuses the request (30 format
error, 12 invalid transaction, 13 invalid amount, 14 invalid card).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from ledger.pan import luhn_valid
from switch.iso8583.elements import (
    CURRENCY_ALPHA,
    ElementFormatError,
    OriginalData,
    ReplacementAmounts,
)
from switch.iso8583.message import Message, ProcessingCode
from switch.iso8583.response_codes import ResponseCode


class Kind(StrEnum):
    WITHDRAWAL = "withdrawal"
    BALANCE_INQUIRY = "balance_inquiry"
    TRANSFER = "transfer"
    REVERSAL = "reversal"


# Field 3 transaction type digits of an 0200.
KIND_BY_TRANSACTION_TYPE: Mapping[str, Kind] = MappingProxyType(
    {"01": Kind.WITHDRAWAL, "31": Kind.BALANCE_INQUIRY, "40": Kind.TRANSFER}
)
# Account type digits: 00 default (the card's primary account), 10 savings, 20 checking, 30 credit.
ACCOUNT_TYPES = frozenset({"00", "10", "20", "30"})
REQUIRED_FIELDS: Mapping[Kind, tuple[int, ...]] = MappingProxyType(
    {
        Kind.WITHDRAWAL: (2, 3, 4, 7, 11, 41, 49),
        Kind.BALANCE_INQUIRY: (2, 3, 7, 11, 41),
        Kind.TRANSFER: (2, 3, 4, 7, 11, 41, 49),
        Kind.REVERSAL: (2, 3, 4, 7, 11, 41, 49, 90),
    }
)
PIN_KINDS = frozenset({Kind.WITHDRAWAL, Kind.BALANCE_INQUIRY, Kind.TRANSFER})
# F52 holds an 8-byte (TDES) PIN block. A 16-byte ISO format 4 block (AES terminals) does not
# fit it, so it travels in private field 120 as 32 hex characters instead.
AES_PIN_BLOCK_FIELD = 120
_AES_PIN_BLOCK = re.compile(r"[0-9A-Fa-f]{32}")
_PAN_DIGITS = range(12, 20)
_KSN = re.compile(r"[0-9A-Fa-f]{20}|[0-9A-Fa-f]{24}")


@dataclass(frozen=True, slots=True)
class Transaction:
    kind: Kind
    request: Message
    terminal_id: str
    stan: str
    transmission_time: str
    pan: str
    from_account_type: str
    to_account_type: str
    amount_minor: int
    # ISO 4217 alphabetic; None only for a balance inquiry without field 49.
    currency: str | None
    pin_block: bytes | None
    original: OriginalData | None = None
    # For a partial reversal: the amount the terminal actually dispensed.
    dispensed_minor: int | None = None
    # A DUKPT terminal's key serial number (F53): 10 bytes for TDES DUKPT, 12 for AES.
    ksn: bytes | None = None

    def __repr__(self) -> str:
        return f"Transaction({self.kind}, terminal={self.terminal_id}, stan={self.stan})"


@dataclass(frozen=True, slots=True)
class Refusal:
    code: ResponseCode
    reason: str


def valid_transmission_time(text: str) -> bool:
    """Field 7, MMDDhhmmss: a month and day that exist in a leap year, and a time of day."""
    if len(text) != 10 or not text.isdigit():
        return False
    month, day, hour, minute, second = (int(text[i : i + 2]) for i in range(0, 10, 2))
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return False
    return 1 <= day <= calendar.monthrange(2000, month)[1]


def kind_of(request: Message, code: ProcessingCode | None) -> Kind | None:
    """What `request` asks for; `code`, its processing code (parsed once per request)."""
    if request.message_class == "042":
        return Kind.REVERSAL
    if request.mti != "0200" or code is None:
        return None
    return KIND_BY_TRANSACTION_TYPE.get(code.transaction_type)


def parse_transaction(request: Message) -> Transaction | Refusal:
    code = request.processing_code
    kind = kind_of(request, code)
    if kind is None:
        return Refusal(
            ResponseCode.INVALID_TRANSACTION, f"{request.mti} {request.get(3)} not handled"
        )
    missing = [n for n in REQUIRED_FIELDS[kind] if n not in request]
    if missing:
        return Refusal(ResponseCode.FORMAT_ERROR, f"missing fields {missing}")
    pin_block = _pin_block(request, kind)
    if isinstance(pin_block, Refusal):
        return pin_block
    assert code is not None, "field 3 is required for every kind"
    if code.from_account_type not in ACCOUNT_TYPES or code.to_account_type not in ACCOUNT_TYPES:
        return Refusal(ResponseCode.INVALID_TRANSACTION, f"account types in {code}")
    if not valid_transmission_time(request.transmission_time or ""):
        return Refusal(ResponseCode.FORMAT_ERROR, "field 7 is not a date and time MMDDhhmmss")
    pan = request.pan or ""
    if len(pan) not in _PAN_DIGITS or not luhn_valid(pan):
        return Refusal(ResponseCode.INVALID_CARD, "PAN fails length or check digit")
    amount = _amount(request, kind)
    if isinstance(amount, Refusal):
        return amount
    numeric_currency = request.get(49)
    currency = CURRENCY_ALPHA.get(numeric_currency) if numeric_currency else None
    if numeric_currency is not None and currency is None:
        return Refusal(ResponseCode.INVALID_AMOUNT, f"currency {numeric_currency} not supported")
    try:
        original = OriginalData.parse(request.fields[90]) if kind is Kind.REVERSAL else None
        replacement = ReplacementAmounts.parse(request.fields[95]) if 95 in request else None
    except ElementFormatError as exc:
        return Refusal(ResponseCode.FORMAT_ERROR, str(exc))
    dispensed = replacement.actual_amount_minor if replacement else None
    ksn_hex = request.get(53)
    if ksn_hex is not None and not _KSN.fullmatch(ksn_hex):
        return Refusal(ResponseCode.FORMAT_ERROR, "field 53 is a KSN of 20 or 24 hex digits")
    if dispensed is not None and dispensed > amount:
        return Refusal(ResponseCode.INVALID_AMOUNT, "dispensed more than the original amount")
    return Transaction(
        kind=kind,
        request=request,
        terminal_id=request.terminal_id or "",
        stan=request.stan or "",
        transmission_time=request.transmission_time or "",
        pan=pan,
        from_account_type=code.from_account_type,
        to_account_type=code.to_account_type,
        amount_minor=amount,
        currency=currency,
        pin_block=pin_block,
        original=original,
        dispensed_minor=dispensed,
        ksn=bytes.fromhex(ksn_hex) if ksn_hex else None,
    )


def _pin_block(request: Message, kind: Kind) -> bytes | Refusal | None:
    """The PIN block from F52 (8 bytes) or F120 (16 bytes, hex); exactly one where a PIN is due."""
    aes_block = request.get(AES_PIN_BLOCK_FIELD)
    if kind not in PIN_KINDS:
        return None
    if (52 in request) == (aes_block is not None):
        return Refusal(ResponseCode.FORMAT_ERROR, "a PIN block in F52 or F120, one of them")
    if aes_block is None:
        return request.pin_block
    if not _AES_PIN_BLOCK.fullmatch(aes_block):
        return Refusal(ResponseCode.FORMAT_ERROR, "F120 is a 16-byte PIN block in hex")
    return bytes.fromhex(aes_block)


def _amount(request: Message, kind: Kind) -> int | Refusal:
    amount = request.amount_minor or 0
    if kind is Kind.BALANCE_INQUIRY:
        return 0
    if amount <= 0:
        return Refusal(ResponseCode.INVALID_AMOUNT, "amount must be above zero")
    return amount

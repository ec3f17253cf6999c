"""Parsing financial requests into typed transactions: a table of accepted and refused ones."""

from __future__ import annotations

import pytest

from switch.iso8583 import Message
from switch.iso8583.elements import OriginalData, ReplacementAmounts
from switch.iso8583.response_codes import ResponseCode
from switch.transaction import Kind, Refusal, Transaction, parse_transaction

PAN = "4761739001010119"
BASE = {2: PAN, 7: "1123101500", 11: "000042", 41: "KIOSK001", 52: "0123456789ABCDEF"}
WITHDRAWAL = Message("0200", {**BASE, 3: "012000", 4: "000000002000", 49: "978"})
BALANCE = Message("0200", {**BASE, 3: "311000"})
TRANSFER = Message("0200", {**BASE, 3: "402010", 4: "000000005000", 49: "978"})
ORIGINAL = OriginalData("0200", "000041", "1123101400")
REVERSAL = Message(
    "0420",
    {
        2: PAN,
        3: "012000",
        4: "000000002000",
        7: "1123101600",
        11: "000043",
        41: "KIOSK001",
        49: "978",
        90: ORIGINAL.encode(),
    },
)


@pytest.mark.parametrize(
    ("request_", "kind", "amount", "accounts", "currency"),
    [
        (WITHDRAWAL, Kind.WITHDRAWAL, 2000, ("20", "00"), "EUR"),
        (BALANCE, Kind.BALANCE_INQUIRY, 0, ("10", "00"), None),
        (TRANSFER, Kind.TRANSFER, 5000, ("20", "10"), "EUR"),
        (REVERSAL, Kind.REVERSAL, 2000, ("20", "00"), "EUR"),
        (Message("0421", REVERSAL.fields), Kind.REVERSAL, 2000, ("20", "00"), "EUR"),
        (WITHDRAWAL.replace({49: "840"}), Kind.WITHDRAWAL, 2000, ("20", "00"), "USD"),
    ],
)
def test_accepted(
    request_: Message, kind: Kind, amount: int, accounts: tuple[str, str], currency: str | None
) -> None:
    parsed = parse_transaction(request_)
    assert isinstance(parsed, Transaction)
    assert (parsed.kind, parsed.amount_minor, parsed.currency) == (kind, amount, currency)
    assert (parsed.from_account_type, parsed.to_account_type) == accounts
    assert (parsed.terminal_id, parsed.pan) == ("KIOSK001", PAN)


def test_an_aes_pin_block_comes_in_f120() -> None:
    parsed = parse_transaction(WITHDRAWAL.replace({120: "AB" * 16}, drop=[52]))
    assert isinstance(parsed, Transaction)
    assert parsed.pin_block == bytes.fromhex("AB" * 16)


def test_reversal_carries_original_and_dispensed_amount() -> None:
    parsed = parse_transaction(REVERSAL.replace({95: ReplacementAmounts(500).encode()}))
    assert isinstance(parsed, Transaction)
    assert parsed.original == ORIGINAL
    assert parsed.dispensed_minor == 500


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (WITHDRAWAL.replace(drop=[52]), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace({120: "00" * 16}), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace({120: "00" * 15}, drop=[52]), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace(drop=[4]), ResponseCode.FORMAT_ERROR),
        (BALANCE.replace(drop=[2]), ResponseCode.FORMAT_ERROR),
        (REVERSAL.replace(drop=[90]), ResponseCode.FORMAT_ERROR),
        (REVERSAL.replace({90: "0" * 41 + "X"}), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace({7: "1323101500"}), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace({7: "0230101500"}), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace({7: "1123246000"}), ResponseCode.FORMAT_ERROR),
        (WITHDRAWAL.replace({3: "990000"}), ResponseCode.INVALID_TRANSACTION),
        (WITHDRAWAL.replace({3: "014000"}), ResponseCode.INVALID_TRANSACTION),
        (Message("0100", WITHDRAWAL.fields), ResponseCode.INVALID_TRANSACTION),
        (WITHDRAWAL.replace({2: "4761739001010118"}), ResponseCode.INVALID_CARD),
        (WITHDRAWAL.replace({2: "47617390"}), ResponseCode.INVALID_CARD),
        (WITHDRAWAL.replace({4: "000000000000"}), ResponseCode.INVALID_AMOUNT),
        (WITHDRAWAL.replace({49: "999"}), ResponseCode.INVALID_AMOUNT),
        (REVERSAL.replace({95: ReplacementAmounts(2001).encode()}), ResponseCode.INVALID_AMOUNT),
    ],
)
def test_refused(request_: Message, code: ResponseCode) -> None:
    parsed = parse_transaction(request_)
    assert isinstance(parsed, Refusal)
    assert parsed.code is code
    assert PAN not in parsed.reason


def test_transaction_repr_hides_the_pan() -> None:
    parsed = parse_transaction(WITHDRAWAL)
    assert PAN not in repr(parsed)

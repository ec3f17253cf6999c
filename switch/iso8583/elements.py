"""Composite data elements: the fixed layouts inside fields 48, 54, 90, 95, 97, 121 and 124.
Pure."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

from ledger.balancing import CassetteCounter

# ISO 4217 numeric (field 49) to alphabetic codes for the currencies the switch is set up for.
CURRENCY_ALPHA: Mapping[str, str] = MappingProxyType(
    {"978": "EUR", "840": "USD", "826": "GBP", "756": "CHF", "752": "SEK", "985": "PLN"}
)
CURRENCY_NUMERIC: Mapping[str, str] = MappingProxyType({a: n for n, a in CURRENCY_ALPHA.items()})

# Field 54 amount types.
LEDGER_BALANCE = "01"
AVAILABLE_BALANCE = "02"
_AMOUNT_DIGITS = 12
_F54_ENTRY = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{3})([CD])([0-9]{12})")


class ElementFormatError(ValueError):
    """A composite field's content does not follow its layout (answered with format error 30)."""


@dataclass(frozen=True, slots=True)
class AdditionalAmount:
    """One 20-character field 54 entry: account type, amount type, currency, sign, amount."""

    account_type: str
    amount_type: str
    currency_numeric: str
    amount_minor: int

    def encode(self) -> str:
        sign = "C" if self.amount_minor >= 0 else "D"
        magnitude = abs(self.amount_minor)
        assert magnitude < 10**_AMOUNT_DIGITS, "amount does not fit field 54"
        return f"{self.account_type}{self.amount_type}{self.currency_numeric}{sign}{magnitude:012d}"


def encode_additional_amounts(amounts: Sequence[AdditionalAmount]) -> str:
    assert 0 < len(amounts) <= 6, "field 54 holds one to six amounts"
    return "".join(a.encode() for a in amounts)


def decode_additional_amounts(text: str) -> list[AdditionalAmount]:
    if not text or len(text) % 20:
        raise ElementFormatError("field 54 is a multiple of 20 characters")
    amounts = []
    for start in range(0, len(text), 20):
        match = _F54_ENTRY.fullmatch(text[start : start + 20])
        if match is None:
            raise ElementFormatError(f"field 54 entry at character {start} is malformed")
        account, kind, currency, sign, amount = match.groups()
        value = int(amount) * (1 if sign == "C" else -1)
        amounts.append(AdditionalAmount(account, kind, currency, value))
    return amounts


@dataclass(frozen=True, slots=True)
class OriginalData:
    """Field 90: the original request a reversal refers to."""

    mti: str
    stan: str
    transmission_time: str
    acquirer_id: str = "0" * 11
    forwarder_id: str = "0" * 11

    @classmethod
    def parse(cls, text: str) -> OriginalData:
        if len(text) != 42 or not text.isdigit():
            raise ElementFormatError("field 90 is 42 digits")
        return cls(text[0:4], text[4:10], text[10:20], text[20:31], text[31:42])

    def encode(self) -> str:
        text = self.mti + self.stan + self.transmission_time + self.acquirer_id + self.forwarder_id
        assert len(text) == 42, "field 90 is 42 digits"
        return text


@dataclass(frozen=True, slots=True)
class ReplacementAmounts:
    """Field 95: for a partial reversal, the amount actually dispensed (field 95's first part)."""

    actual_amount_minor: int

    @classmethod
    def parse(cls, text: str) -> ReplacementAmounts:
        if len(text) != 42 or not text[:24].isdigit():
            raise ElementFormatError("field 95 is 42 characters starting with two 12-digit amounts")
        return cls(int(text[0:12]))

    def encode(self) -> str:
        assert 0 <= self.actual_amount_minor < 10**_AMOUNT_DIGITS
        amount = f"{self.actual_amount_minor:012d}"
        return amount + amount + "C00000000" + "C00000000"


@dataclass(frozen=True, slots=True)
class KeyChangeData:
    """Field 48 of an 0810 key change: each session key under the terminal's TMK, with its KCV.

    Layout: TPK under TMK (32 hex) + TPK KCV (6 hex) + TAK under TMK (32 hex) + TAK KCV (6 hex).
    """

    tpk_under_tmk: str
    tpk_kcv: str
    tak_under_tmk: str
    tak_kcv: str

    def encode(self) -> str:
        text = self.tpk_under_tmk + self.tpk_kcv + self.tak_under_tmk + self.tak_kcv
        assert re.fullmatch(r"[0-9A-F]{76}", text), "field 48 key change is 76 upper-case hex"
        return text

    @classmethod
    def parse(cls, text: str) -> KeyChangeData:
        if not re.fullmatch(r"[0-9A-Fa-f]{76}", text):
            raise ElementFormatError("field 48 key change is 76 hex characters")
        text = text.upper()
        return cls(text[0:32], text[32:38], text[38:70], text[70:76])


# Field 121 (private use) of an approved withdrawal's 0210: the notes to dispense (docs/cash.md).
NOTE_MIX_FIELD = 121
_NOTE_ENTRY = re.compile(r"([0-9]{2})([0-9]{12})([0-9]{3})")
_NOTE_ENTRY_CHARS = 17
_NOTE_ENTRIES_MAX = 8


@dataclass(frozen=True, slots=True)
class NoteEntry:
    """One 17-character field 121 entry: cassette number (2 digits), its denomination in minor
    units (12 digits, as the amount fields) and the notes to take from it (3 digits)."""

    cassette_no: int
    denomination_minor: int
    notes: int

    def encode(self) -> str:
        assert 1 <= self.cassette_no <= 99, self.cassette_no
        assert 0 < self.denomination_minor < 10**_AMOUNT_DIGITS, self.denomination_minor
        assert 0 < self.notes <= 999, self.notes
        return f"{self.cassette_no:02d}{self.denomination_minor:012d}{self.notes:03d}"


def encode_note_mix(entries: Sequence[NoteEntry]) -> str:
    assert 0 < len(entries) <= _NOTE_ENTRIES_MAX, "field 121 holds one to eight cassettes"
    return "".join(entry.encode() for entry in entries)


def decode_note_mix(text: str) -> list[NoteEntry]:
    entries = len(text) // _NOTE_ENTRY_CHARS
    if not text or len(text) % _NOTE_ENTRY_CHARS or entries > _NOTE_ENTRIES_MAX:
        raise ElementFormatError("field 121 is one to eight entries of 17 digits")
    decoded = []
    for start in range(0, len(text), _NOTE_ENTRY_CHARS):
        match = _NOTE_ENTRY.fullmatch(text[start : start + _NOTE_ENTRY_CHARS])
        if match is None:
            raise ElementFormatError(f"field 121 entry at character {start} is not 17 digits")
        cassette, denomination, notes = (int(group) for group in match.groups())
        if not cassette or not denomination or not notes:
            raise ElementFormatError(f"field 121 entry at character {start} has a zero")
        decoded.append(NoteEntry(cassette, denomination, notes))
    return decoded


# An 0500's day totals, by field: counts (n10) and amounts in minor units (n16), named and
# ordered as the ledger's DayFigures; then their net (F97) and the cassette counters (F124).
BALANCING_TOTALS: Mapping[int, tuple[str, int]] = MappingProxyType(
    {
        74: ("credits", 10),
        75: ("credit_reversals", 10),
        76: ("debits", 10),
        77: ("debit_reversals", 10),
        78: ("transfers", 10),
        79: ("transfer_reversals", 10),
        80: ("inquiries", 10),
        86: ("credits_minor", 16),
        87: ("credit_reversals_minor", 16),
        88: ("debits_minor", 16),
        89: ("debit_reversals_minor", 16),
    }
)
NET_FIELD = 97
COUNTERS_FIELD = 124


def business_date_of(mmdd: str, today: date) -> date | None:
    """F15's date: of the years around today's, the one that puts it nearest to today; None
    when it is not a date at all."""
    if len(mmdd) != 4 or not mmdd.isdigit():
        return None
    month, day = int(mmdd[:2]), int(mmdd[2:])
    candidates = [
        date(year, month, day)
        for year in (today.year - 1, today.year, today.year + 1)
        if 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
    ]
    return min(candidates, key=lambda d: abs(d - today)) if candidates else None


# Field 97 (xn 17): `D` and 16 digits for a net amount paid out (or nil), `C` for one paid in.
_NET_AMOUNT = re.compile(r"([CD])([0-9]{16})")
_COUNTER_ENTRY = re.compile(r"([0-9]{2})([0-9]{12})([0-9]{5})([0-9]{5})([0-9]{5})")
_COUNTER_ENTRY_CHARS = 29
_COUNT_MAX = 99_999


def encode_net_amount(net_minor: int) -> str:
    assert abs(net_minor) < 10**16, "net amount does not fit field 97"
    return f"{'D' if net_minor >= 0 else 'C'}{abs(net_minor):016d}"


def decode_net_amount(text: str) -> int:
    match = _NET_AMOUNT.fullmatch(text)
    if match is None:
        raise ElementFormatError("field 97 is C or D and 16 digits")
    sign, digits = match.groups()
    return int(digits) * (1 if sign == "D" else -1)


def encode_cassette_counters(counters: Sequence[CassetteCounter]) -> str:
    """Field 124 of 0500/0510: one 29-digit entry per cassette, in slot order: slot (2),
    denomination in minor units (12), notes dispensed, rejected and remaining (5 each)."""
    assert len(counters) <= _NOTE_ENTRIES_MAX, "field 124 holds at most eight cassettes"
    for c in counters:
        assert 1 <= c.cassette_no <= 99, c
        assert 0 < c.denomination_minor < 10**_AMOUNT_DIGITS, c
        assert all(0 <= n <= _COUNT_MAX for n in (c.dispensed, c.rejected, c.remaining)), c
    return "".join(
        f"{c.cassette_no:02d}{c.denomination_minor:012d}{c.dispensed:05d}{c.rejected:05d}"
        f"{c.remaining:05d}"
        for c in counters
    )


def decode_cassette_counters(text: str) -> tuple[CassetteCounter, ...]:
    entries = len(text) // _COUNTER_ENTRY_CHARS
    if len(text) % _COUNTER_ENTRY_CHARS or entries > _NOTE_ENTRIES_MAX:
        raise ElementFormatError("field 124 is zero to eight entries of 29 digits")
    decoded: list[CassetteCounter] = []
    for start in range(0, len(text), _COUNTER_ENTRY_CHARS):
        match = _COUNTER_ENTRY.fullmatch(text[start : start + _COUNTER_ENTRY_CHARS])
        if match is None:
            raise ElementFormatError(f"field 124 entry at character {start} is not 29 digits")
        counter = CassetteCounter(*(int(group) for group in match.groups()))
        if not counter.cassette_no or not counter.denomination_minor:
            raise ElementFormatError(f"field 124 entry at character {start} has a zero")
        if decoded and counter.cassette_no <= decoded[-1].cassette_no:
            raise ElementFormatError("field 124 entries are in ascending slot order")
        decoded.append(counter)
    return tuple(decoded)

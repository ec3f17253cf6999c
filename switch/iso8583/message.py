"""The typed, immutable ISO 8583 message the switch works with.

Field values are text: numeric and alphanumeric fields as sent, binary fields (52, 64, 128…) as
upper-case hex whatever the wire dialect. Typed accessors turn them into what the switch needs.
`repr` never shows a full PAN or any PIN, track or ICC data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ledger.pan import mask_pan
from switch.iso8583.spec import FIELDS, MAC_FIELDS, PAN_FIELD, SENSITIVE_FIELDS

_MTI = re.compile(r"[0-9]{4}")


@dataclass(frozen=True, slots=True)
class ProcessingCode:
    """Field 3: transaction type (2 digits), from-account type, to-account type."""

    transaction_type: str
    from_account_type: str
    to_account_type: str

    @classmethod
    def parse(cls, text: str) -> ProcessingCode:
        assert len(text) == 6, "field 3 is validated by the codec"
        assert text.isdigit(), "field 3 is validated by the codec"
        return cls(text[0:2], text[2:4], text[4:6])

    def __str__(self) -> str:
        return self.transaction_type + self.from_account_type + self.to_account_type


@dataclass(frozen=True, slots=True, repr=False)
class Message:
    """One ISO 8583 message: MTI, data elements 2..128, and the TPDU when the dialect has one."""

    mti: str
    fields: Mapping[int, str] = field(default_factory=dict)
    tpdu: str | None = None
    # The encoded payload this message was decoded from (or encoded to): reused for its MAC and
    # for sending, so it is never encoded twice. Any change (`replace`) drops it.
    wire: bytes | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        assert _MTI.fullmatch(self.mti), f"MTI must be 4 digits, got {self.mti!r}"
        unknown = [n for n in self.fields if n not in FIELDS]
        assert not unknown, f"no such data element: {unknown}"
        # Frozen means frozen: keep our own read-only copy, never the caller's dict.
        object.__setattr__(self, "fields", MappingProxyType(dict(sorted(self.fields.items()))))

    @classmethod
    def of_sorted(
        cls, mti: str, fields: dict[int, str], tpdu: str | None = None, wire: bytes | None = None
    ) -> Message:
        """The codec's constructor: `fields` are known data elements in ascending order, in a
        dict the caller made for this message and never touches again, so it is kept as it is
        (the checks and the sorted copy of `Message(...)` were a good part of a request's
        cost)."""
        message = object.__new__(cls)
        object.__setattr__(message, "mti", mti)
        object.__setattr__(message, "fields", MappingProxyType(fields))
        object.__setattr__(message, "tpdu", tpdu)
        object.__setattr__(message, "wire", wire)
        return message

    def __repr__(self) -> str:
        shown = {n: _redacted(n, v) for n, v in self.fields.items()}
        return f"Message(mti={self.mti!r}, fields={shown!r})"

    def __contains__(self, number: int) -> bool:
        return number in self.fields

    def get(self, number: int) -> str | None:
        return self.fields.get(number)

    def replace(
        self, set_fields: Mapping[int, str] | None = None, drop: Iterable[int] = ()
    ) -> Message:
        """A copy with `set_fields` set and `drop` removed; this message is untouched."""
        dropped = set(drop)
        merged = {n: v for n, v in self.fields.items() if n not in dropped}
        merged.update(set_fields or {})
        return Message(self.mti, merged, self.tpdu)

    # Typed accessors. Each returns None when the field is absent.
    @property
    def message_class(self) -> str:
        """The first three MTI digits without the function's 'repeat' nuance: 080, 020, 042…"""
        return self.mti[:3]

    @property
    def stan(self) -> str | None:
        return self.fields.get(11)

    @property
    def transmission_time(self) -> str | None:
        return self.fields.get(7)

    @property
    def terminal_id(self) -> str | None:
        value = self.fields.get(41)
        return None if value is None else value.rstrip()

    @property
    def network_code(self) -> str | None:
        return self.fields.get(70)

    @property
    def response_code(self) -> str | None:
        return self.fields.get(39)

    @property
    def pan(self) -> str | None:
        return self.fields.get(PAN_FIELD)

    @property
    def masked_pan(self) -> str | None:
        pan = self.fields.get(PAN_FIELD)
        return None if pan is None else mask_pan(pan)

    @property
    def processing_code(self) -> ProcessingCode | None:
        value = self.fields.get(3)
        return None if value is None else ProcessingCode.parse(value)

    @property
    def amount_minor(self) -> int | None:
        value = self.fields.get(4)
        return None if value is None else int(value)

    @property
    def pin_block(self) -> bytes | None:
        value = self.fields.get(52)
        return None if value is None else bytes.fromhex(value)

    @property
    def mac_field(self) -> int:
        """Where this message's MAC goes: F128 when a secondary bitmap is needed, else F64."""
        # Fields are in ascending order: the highest that is not a MAC decides.
        for number in reversed(tuple(self.fields)):
            if number not in MAC_FIELDS:
                return MAC_FIELDS[1] if number > 64 else MAC_FIELDS[0]
        return MAC_FIELDS[0]

    @property
    def mac(self) -> bytes | None:
        value = self.fields.get(self.mac_field)
        return None if value is None else bytes.fromhex(value)


def _redacted(number: int, value: str) -> str:
    if number == PAN_FIELD:
        return mask_pan(value)
    if number in SENSITIVE_FIELDS:
        return "<redacted>"
    return value

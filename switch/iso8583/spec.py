"""ISO 8583:1987 field definitions as data, and the per-listener dialect that shapes them.

The table below is the standard's field list. `build_spec` turns it into the spec dict that
pyiso8583 encodes and decodes with; a dialect changes encodings, never the field list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, Literal

BitmapEncoding = Literal["binary", "hex"]
BinaryFieldEncoding = Literal["raw", "hex"]
LengthHeaderKind = Literal["2b", "4b", "2a", "4a"]

BITMAP_ENCODINGS: tuple[BitmapEncoding, ...] = ("binary", "hex")
BINARY_FIELD_ENCODINGS: tuple[BinaryFieldEncoding, ...] = ("raw", "hex")
LENGTH_HEADER_KINDS: tuple[LengthHeaderKind, ...] = ("2b", "4b", "2a", "4a")
TPDU_BYTES = 5


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one listener's terminals put fields on the wire.

    Default: ASCII MTI and fields, binary bitmaps, raw binary fields, 2-byte binary length header,
    no TPDU — the common host format.
    """

    bitmap: BitmapEncoding = "binary"
    binary_fields: BinaryFieldEncoding = "raw"
    length_header: LengthHeaderKind = "2b"
    tpdu: bool = False

    def __post_init__(self) -> None:
        assert self.bitmap in BITMAP_ENCODINGS, self.bitmap
        assert self.binary_fields in BINARY_FIELD_ENCODINGS, self.binary_fields
        assert self.length_header in LENGTH_HEADER_KINDS, self.length_header


@dataclass(frozen=True, slots=True)
class FieldDef:
    """One data element: its ISO content class, length type (0 fixed, 2 LLVAR, 3 LLLVAR) and
    maximum length in characters (bytes for binary fields)."""

    content: Literal["n", "an", "ans", "z", "b", "xn"]
    len_type: Literal[0, 2, 3]
    max_len: int
    desc: str


def _fixed(content: Literal["n", "an", "ans", "b", "xn"], size: int, desc: str) -> FieldDef:
    return FieldDef(content, 0, size, desc)


def _llvar(content: Literal["n", "an", "ans", "z"], size: int, desc: str) -> FieldDef:
    return FieldDef(content, 2, size, desc)


def _lllvar(content: Literal["n", "an", "ans", "b"], size: int, desc: str) -> FieldDef:
    return FieldDef(content, 3, size, desc)


_RESERVED = "Reserved"

# ISO 8583:1987 data elements. "xn" is a C/D sign followed by digits. Field 1 (secondary bitmap)
# is handled by the codec; field 65 (extended bitmap) is refused, since no terminal sends it and
# pyiso8583 would read it as a tertiary bitmap.
FIELDS: Mapping[int, FieldDef] = MappingProxyType(
    {
        2: _llvar("n", 19, "Primary account number"),
        3: _fixed("n", 6, "Processing code"),
        4: _fixed("n", 12, "Amount, transaction"),
        5: _fixed("n", 12, "Amount, settlement"),
        6: _fixed("n", 12, "Amount, cardholder billing"),
        7: _fixed("n", 10, "Transmission date and time MMDDhhmmss"),
        8: _fixed("n", 8, "Amount, cardholder billing fee"),
        9: _fixed("n", 8, "Conversion rate, settlement"),
        10: _fixed("n", 8, "Conversion rate, cardholder billing"),
        11: _fixed("n", 6, "System trace audit number"),
        12: _fixed("n", 6, "Time, local transaction hhmmss"),
        13: _fixed("n", 4, "Date, local transaction MMDD"),
        14: _fixed("n", 4, "Date, expiration YYMM"),
        15: _fixed("n", 4, "Date, settlement MMDD"),
        16: _fixed("n", 4, "Date, conversion MMDD"),
        17: _fixed("n", 4, "Date, capture MMDD"),
        18: _fixed("n", 4, "Merchant type"),
        19: _fixed("n", 3, "Acquiring institution country code"),
        20: _fixed("n", 3, "PAN extended, country code"),
        21: _fixed("n", 3, "Forwarding institution country code"),
        22: _fixed("n", 3, "Point of service entry mode"),
        23: _fixed("n", 3, "Card sequence number"),
        24: _fixed("n", 3, "Network international identifier"),
        25: _fixed("n", 2, "Point of service condition code"),
        26: _fixed("n", 2, "Point of service capture code"),
        27: _fixed("n", 1, "Authorizing identification response length"),
        28: _fixed("xn", 9, "Amount, transaction fee"),
        29: _fixed("xn", 9, "Amount, settlement fee"),
        30: _fixed("xn", 9, "Amount, transaction processing fee"),
        31: _fixed("xn", 9, "Amount, settlement processing fee"),
        32: _llvar("n", 11, "Acquiring institution identification code"),
        33: _llvar("n", 11, "Forwarding institution identification code"),
        34: _llvar("ans", 28, "Primary account number, extended"),
        35: _llvar("z", 37, "Track 2 data"),
        36: _lllvar("n", 104, "Track 3 data"),
        37: _fixed("an", 12, "Retrieval reference number"),
        38: _fixed("an", 6, "Authorization identification response"),
        39: _fixed("an", 2, "Response code"),
        40: _fixed("an", 3, "Service restriction code"),
        41: _fixed("ans", 8, "Card acceptor terminal identification"),
        42: _fixed("ans", 15, "Card acceptor identification code"),
        43: _fixed("ans", 40, "Card acceptor name/location"),
        44: _llvar("ans", 25, "Additional response data"),
        45: _llvar("ans", 76, "Track 1 data"),
        46: _lllvar("ans", 999, "Additional data - ISO"),
        47: _lllvar("ans", 999, "Additional data - national"),
        48: _lllvar("ans", 999, "Additional data - private"),
        49: _fixed("an", 3, "Currency code, transaction"),
        50: _fixed("an", 3, "Currency code, settlement"),
        51: _fixed("an", 3, "Currency code, cardholder billing"),
        52: _fixed("b", 8, "Personal identification number data"),
        # 1987 makes F53 n16; a DUKPT KSN is 20 (TDES) or 24 (AES) hex digits, so here it is an
        # LLVAR of up to 48 characters holding the KSN in hex.
        53: _llvar("ans", 48, "Security related control information (DUKPT KSN, hex)"),
        54: _lllvar("an", 120, "Additional amounts"),
        # BER-TLV (EMV 4.3 Book 3 Annex B; switch/iso8583/tlv.py), on ICC_DATA_MTIS only.
        55: _lllvar("b", 255, "ICC data"),
        56: _lllvar("ans", 999, _RESERVED),
        **{n: _lllvar("ans", 999, _RESERVED) for n in range(57, 64)},
        64: _fixed("b", 8, "Message authentication code"),
        66: _fixed("n", 1, "Settlement code"),
        67: _fixed("n", 2, "Extended payment code"),
        68: _fixed("n", 3, "Receiving institution country code"),
        69: _fixed("n", 3, "Settlement institution country code"),
        70: _fixed("n", 3, "Network management information code"),
        71: _fixed("n", 4, "Message number"),
        72: _fixed("n", 4, "Message number, last"),
        73: _fixed("n", 6, "Date, action YYMMDD"),
        74: _fixed("n", 10, "Credits, number"),
        75: _fixed("n", 10, "Credits, reversal number"),
        76: _fixed("n", 10, "Debits, number"),
        77: _fixed("n", 10, "Debits, reversal number"),
        78: _fixed("n", 10, "Transfer, number"),
        79: _fixed("n", 10, "Transfer, reversal number"),
        80: _fixed("n", 10, "Inquiries, number"),
        81: _fixed("n", 10, "Authorizations, number"),
        82: _fixed("n", 12, "Credits, processing fee amount"),
        83: _fixed("n", 12, "Credits, transaction fee amount"),
        84: _fixed("n", 12, "Debits, processing fee amount"),
        85: _fixed("n", 12, "Debits, transaction fee amount"),
        86: _fixed("n", 16, "Credits, amount"),
        87: _fixed("n", 16, "Credits, reversal amount"),
        88: _fixed("n", 16, "Debits, amount"),
        89: _fixed("n", 16, "Debits, reversal amount"),
        90: _fixed("n", 42, "Original data elements"),
        91: _fixed("an", 1, "File update code"),
        92: _fixed("an", 2, "File security code"),
        93: _fixed("an", 5, "Response indicator"),
        94: _fixed("an", 7, "Service indicator"),
        95: _fixed("an", 42, "Replacement amounts"),
        96: _fixed("b", 8, "Message security code"),
        97: _fixed("xn", 17, "Amount, net settlement"),
        98: _fixed("ans", 25, "Payee"),
        99: _llvar("n", 11, "Settlement institution identification code"),
        100: _llvar("n", 11, "Receiving institution identification code"),
        101: _llvar("ans", 17, "File name"),
        102: _llvar("ans", 28, "Account identification 1"),
        103: _llvar("ans", 28, "Account identification 2"),
        104: _lllvar("ans", 100, "Transaction description"),
        **{n: _lllvar("ans", 999, _RESERVED) for n in range(105, 128)},
        128: _fixed("b", 8, "Message authentication code"),
    }
)

BINARY_FIELDS: frozenset[int] = frozenset(n for n, f in FIELDS.items() if f.content == "b")
# Fields that carry cardholder secrets: never logged, never stored. 2 is masked, not dropped.
SENSITIVE_FIELDS: frozenset[int] = frozenset({35, 36, 45, 52, 55})
PAN_FIELD = 2
MAC_FIELDS: tuple[int, int] = (64, 128)
ICC_DATA_FIELD = 55
# The requests that carry the chip's data in F55 (an authorisation's ARQC, a reversal's second
# cryptogram), and the response that carries the issuer's back (tag 91).
ICC_DATA_MTIS: frozenset[str] = frozenset({"0200", "0420", "0421", "0210"})


def _field_spec(field: FieldDef, dialect: Dialect) -> dict[str, Any]:
    binary = field.content == "b"
    raw = binary and dialect.binary_fields == "raw"
    return {
        "data_enc": "b" if raw else "ascii",
        "len_enc": "ascii",
        "len_type": field.len_type,
        # A hex-encoded binary field takes two characters per byte.
        "max_len": field.max_len if raw or not binary else field.max_len * 2,
        "desc": field.desc,
    }


def _bitmap_spec(dialect: Dialect, desc: str) -> dict[str, Any]:
    binary = dialect.bitmap == "binary"
    return {
        "data_enc": "b" if binary else "ascii",
        "len_enc": "ascii",
        "len_type": 0,
        "max_len": 8 if binary else 16,
        "desc": desc,
    }


@cache
def build_spec(dialect: Dialect) -> Mapping[str, Mapping[str, Any]]:
    """The pyiso8583 spec dict for `dialect`, built once per dialect and never mutated."""
    spec: dict[str, Mapping[str, Any]] = {
        "h": {
            "data_enc": "b",
            "len_enc": "ascii",
            "len_type": 0,
            "max_len": TPDU_BYTES if dialect.tpdu else 0,
            "desc": "TPDU",
        },
        "t": {
            "data_enc": "ascii",
            "len_enc": "ascii",
            "len_type": 0,
            "max_len": 4,
            "desc": "Message type indicator",
        },
        "p": _bitmap_spec(dialect, "Bitmap, primary"),
        "1": _bitmap_spec(dialect, "Bitmap, secondary"),
    }
    for number, field in FIELDS.items():
        spec[str(number)] = MappingProxyType(_field_spec(field, dialect))
    return MappingProxyType(spec)

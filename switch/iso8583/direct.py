"""The codec's direct path: a well-formed message to bytes and back without pyiso8583.

pyiso8583 builds two dicts per message and walks every bitmap bit in Python; per request that
was the switch's largest single cost and the simulator's. This path reads the same field table
(`spec.FIELDS`), compiled once per dialect to a tuple per field, and handles what a terminal
sends every day. Whatever it does not recognise as well-formed, it leaves alone (`None`): the
codec then runs pyiso8583, which stays the reference for the bytes and the only source of
errors, so an error names the same field and offset either way.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from switch.iso8583.message import Message
from switch.iso8583.spec import BINARY_FIELDS, FIELDS, TPDU_BYTES, Dialect

MTI_BYTES = 4
SECONDARY_BITMAP_FIELD = 1
TERTIARY_BITMAP_FIELD = 65  # pyiso8583 reads bit 65 so; no dialect here has it

# One data element on the wire in one dialect: its length prefix digits (0 for fixed); its
# length in bytes (exact for fixed, the most its spec and its prefix allow for variable);
# whether it travels as raw bytes (a binary field in a raw dialect, given as hex in the
# Message); the content its text must match; whether the Message holds it in upper case.
FieldWire = tuple[int, int, bool, re.Pattern[str], bool]

CONTENT_PATTERNS: Mapping[str, re.Pattern[str]] = MappingProxyType(
    {
        "n": re.compile(r"[0-9]*"),
        "xn": re.compile(r"[CD][0-9]*"),
        "z": re.compile(r"[0-9=D]*"),
        "b": re.compile(r"[0-9A-Fa-f]*"),
        "an": re.compile(r"[\x20-\x7e]*"),
        "ans": re.compile(r"[\x20-\x7e]*"),
    }
)
_HEX_BITMAP = re.compile(rb"[0-9A-Fa-f]{16}")
# For each byte value, the bits set in it as 1-based positions from its high bit.
_BITS_SET: tuple[tuple[int, ...], ...] = tuple(
    tuple(bit for bit in range(1, 9) if value >> (8 - bit) & 1) for value in range(256)
)


@cache
def field_wires(dialect: Dialect) -> Mapping[int, FieldWire]:
    """Every data element's `FieldWire` in `dialect`, built once per dialect."""
    wires: dict[int, FieldWire] = {}
    for number, field in FIELDS.items():
        raw = field.content == "b" and dialect.binary_fields == "raw"
        hex_text = field.content == "b" and not raw
        size = field.max_len * 2 if hex_text else field.max_len
        if field.len_type:
            size = min(size, 10**field.len_type - 1)
        upper = number in BINARY_FIELDS
        wires[number] = (field.len_type, size, raw, CONTENT_PATTERNS[field.content], upper)
    return MappingProxyType(wires)


def encode(message: Message, tpdu: str | None, dialect: Dialect) -> bytes | None:
    """`message`'s bytes as pyiso8583 encodes them (with `tpdu` where the dialect has one), or
    None to let pyiso8583 decide."""
    fields = message.fields
    if SECONDARY_BITMAP_FIELD in fields or TERTIARY_BITMAP_FIELD in fields:
        return None
    wires = field_wires(dialect)
    parts: list[bytes] = []
    if dialect.tpdu:
        tpdu_bytes = _unhex(tpdu or "")
        if tpdu_bytes is None or len(tpdu_bytes) != TPDU_BYTES:
            return None
        parts.append(tpdu_bytes)
    if len(message.mti) != MTI_BYTES or not message.mti.isascii():
        return None
    parts.append(message.mti.encode("ascii"))
    bits = 0
    body: list[bytes] = []
    for number, value in fields.items():
        wire = wires.get(number)
        encoded = None if wire is None else _encode_field(value, wire)
        if encoded is None:
            return None
        body.append(encoded)
        bits |= 1 << (128 - number)
    secondary = bits & ((1 << 64) - 1)
    if secondary:
        bits |= 1 << 127
    bitmap = bits.to_bytes(16, "big") if secondary else (bits >> 64).to_bytes(8, "big")
    if dialect.bitmap == "hex":
        bitmap = bitmap.hex().upper().encode("ascii")
    parts.append(bitmap)
    parts += body
    return b"".join(parts)


def decode(frame: bytes, dialect: Dialect) -> Message | None:
    """The message in `frame` as the checked pyiso8583 decode gives it, or None when the frame
    is anything but well-formed (pyiso8583 then names the error)."""
    position = 0
    tpdu = None
    if dialect.tpdu:
        if len(frame) < TPDU_BYTES:
            return None
        tpdu = frame[:TPDU_BYTES].hex().upper()
        position = TPDU_BYTES
    mti_bytes = frame[position : position + MTI_BYTES]
    if len(mti_bytes) != MTI_BYTES or not mti_bytes.isdigit():
        return None
    position += MTI_BYTES
    numbers = _bitmap_numbers(frame, position, dialect)
    if numbers is None:
        return None
    position, present = numbers
    wires = field_wires(dialect)
    fields: dict[int, str] = {}
    for number in present:
        wire = wires.get(number)
        read = None if wire is None else _decode_field(frame, position, wire)
        if read is None:
            return None
        fields[number], position = read
    if position != len(frame):
        return None
    return Message.of_sorted(mti_bytes.decode("ascii"), fields, tpdu, bytes(frame))


def _encode_field(value: str, wire: FieldWire) -> bytes | None:
    """One field's length prefix and data, or None when pyiso8583 would refuse the value."""
    len_type, size, raw, _, _ = wire
    if raw:
        data = _unhex(value)
        if data is None:
            return None
    elif value.isascii():
        data = value.encode("ascii")
    else:
        return None
    if len_type == 0:
        return data if len(data) == size else None
    if len(data) > size:
        return None
    return b"%0*d" % (len_type, len(data)) + data


def _decode_field(frame: bytes, position: int, wire: FieldWire) -> tuple[str, int] | None:
    """The field at `position` as the Message holds it and where the next starts, or None when
    it is not well-formed."""
    len_type, size, raw, content, upper = wire
    length = size
    if len_type:
        prefix = frame[position : position + len_type]
        if len(prefix) != len_type or not prefix.isdigit():
            return None
        length = int(prefix)
        if length > size:
            return None
        position += len_type
    data = frame[position : position + length]
    if len(data) != length:
        return None
    position += length
    if raw:
        return data.hex().upper(), position
    if not data.isascii():
        return None
    text = data.decode("ascii")
    if not content.fullmatch(text):
        return None
    return (text.upper() if upper else text), position


def _bitmap_numbers(frame: bytes, position: int, dialect: Dialect) -> tuple[int, list[int]] | None:
    """Where the fields start, and the data elements the bitmaps say are present, in order."""
    primary = _bitmap(frame, position, dialect)
    if primary is None:
        return None
    bitmap, position = primary
    if bitmap[0] & 0x80:
        secondary = _bitmap(frame, position, dialect)
        if secondary is None or secondary[0][0] & 0x80:
            return None  # bit 65: pyiso8583 refuses it with its own error
        bitmap, position = bitmap + secondary[0], secondary[1]
    numbers = [
        index * 8 + bit for index, value in enumerate(bitmap) if value for bit in _BITS_SET[value]
    ]
    return position, numbers[1:] if bitmap[0] & 0x80 else numbers


def _bitmap(frame: bytes, position: int, dialect: Dialect) -> tuple[bytes, int] | None:
    if dialect.bitmap == "binary":
        bitmap = frame[position : position + 8]
        return (bitmap, position + 8) if len(bitmap) == 8 else None
    text = frame[position : position + 16]
    if not _HEX_BITMAP.fullmatch(text):
        return None
    return binascii.a2b_hex(text), position + 16


def _unhex(text: str) -> bytes | None:
    try:
        return binascii.a2b_hex(text)
    except (binascii.Error, ValueError):
        return None

"""BER-TLV as field 55 (ICC data) carries it: EMV 4.3 Book 3 Annex B. Sans-I/O, bounded, pure.

`decode` reads the flat list of data objects a terminal puts in F55 and raises only `TlvError`,
which names the tag (when one was read) and the byte offset. It refuses rather than guesses:

- a tag, length or value cut off by the end of the field (truncated), or a value that would run
  past it;
- an overlong encoding: a tag of more than three bytes or with a zero-padded number, a length in
  more than two bytes, the indefinite form, or a length not written in its shortest form (two
  encodings of one object would let two parties read one field differently);
- a tag that appears twice (which copy would count?);
- an unknown critical tag: a tag in the space EMV and ISO/IEC 7816 allocate (universal and
  application class, context-specific outside the payment systems' range) that is not in
  `KNOWN_TAGS`. Data whose meaning EMV fixes and the switch does not know is not skipped. Tags in
  the proprietary spaces (private class, e.g. `DF01`; payment-system tags `9F50`–`9F7F` and
  `BF50`–`BF7F`) are kept and not interpreted.

`encode` writes objects in the shortest form, for the switch's tag 91 and for simulated cards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

# F55's own maximum (spec.FIELDS[55]); also bounds the work of one decode.
ICC_DATA_BYTES_MAX = 255
TAG_BYTES_MAX = 3
LENGTH_BYTES_MAX = 2  # after the 0x81 / 0x82 prefix: values up to 65,535 bytes
OBJECTS_MAX = 64

_CLASS_MASK = 0xC0
_UNIVERSAL, _APPLICATION, _CONTEXT, _PRIVATE = 0x00, 0x40, 0x80, 0xC0
_CONSTRUCTED = 0x20
_MORE_TAG_BYTES = 0x1F  # low five bits all set: the tag number continues
_CONTINUES = 0x80  # in a subsequent tag byte: another byte follows
_LONG_LENGTH = 0x80
_INDEFINITE = 0x80
_PAYMENT_SYSTEM_RANGE = range(0x50, 0x80)  # second byte of 9F50..9F7F, BF50..BF7F

# The data objects a terminal may send in an authorisation or reversal (EMV 4.3 Book 3 Annex A,
# Book 4), with their names for logs and docs.
KNOWN_TAGS: Mapping[int, str] = MappingProxyType(
    {
        0x4F: "Application Identifier (AID), card",
        0x50: "Application Label",
        0x57: "Track 2 Equivalent Data",
        0x5A: "Application PAN",
        0x5F20: "Cardholder Name",
        0x5F24: "Application Expiration Date",
        0x5F25: "Application Effective Date",
        0x5F28: "Issuer Country Code",
        0x5F2A: "Transaction Currency Code",
        0x5F2D: "Language Preference",
        0x5F30: "Service Code",
        0x5F34: "PAN Sequence Number",
        0x82: "Application Interchange Profile",
        0x84: "Dedicated File Name",
        0x8A: "Authorisation Response Code",
        0x8E: "CVM List",
        0x91: "Issuer Authentication Data",
        0x95: "Terminal Verification Results",
        0x9A: "Transaction Date",
        0x9B: "Transaction Status Information",
        0x9C: "Transaction Type",
        0x9F01: "Acquirer Identifier",
        0x9F02: "Amount, Authorised",
        0x9F03: "Amount, Other",
        0x9F06: "Application Identifier (AID), terminal",
        0x9F07: "Application Usage Control",
        0x9F08: "Application Version Number, card",
        0x9F09: "Application Version Number, terminal",
        0x9F0D: "Issuer Action Code, Default",
        0x9F0E: "Issuer Action Code, Denial",
        0x9F0F: "Issuer Action Code, Online",
        0x9F10: "Issuer Application Data",
        0x9F11: "Issuer Code Table Index",
        0x9F12: "Application Preferred Name",
        0x9F15: "Merchant Category Code",
        0x9F16: "Merchant Identifier",
        0x9F1A: "Terminal Country Code",
        0x9F1B: "Terminal Floor Limit",
        0x9F1C: "Terminal Identification",
        0x9F1E: "Interface Device Serial Number",
        0x9F21: "Transaction Time",
        0x9F26: "Application Cryptogram",
        0x9F27: "Cryptogram Information Data",
        0x9F33: "Terminal Capabilities",
        0x9F34: "CVM Results",
        0x9F35: "Terminal Type",
        0x9F36: "Application Transaction Counter",
        0x9F37: "Unpredictable Number",
        0x9F39: "Point-of-Service Entry Mode",
        0x9F40: "Additional Terminal Capabilities",
        0x9F41: "Transaction Sequence Counter",
        0x9F42: "Application Currency Code",
        0x9F44: "Application Currency Exponent",
        0x9F45: "Data Authentication Code",
        0x9F4C: "ICC Dynamic Number",
        0x9F4E: "Merchant Name and Location",
    }
)


class TlvError(Exception):
    """F55 is not well-formed BER-TLV as the switch accepts it (answered with format error 30).
    `tag` is the tag being read when it went wrong (None before a whole tag was read)."""

    def __init__(self, reason: str, *, tag: int | None, offset: int) -> None:
        self.reason = reason
        self.tag = tag
        self.offset = offset
        where = f"tag {tag_name(tag)}, byte {offset}" if tag is not None else f"byte {offset}"
        super().__init__(f"{reason} ({where})")


def tag_name(tag: int) -> str:
    """The tag as EMV writes it: upper-case hex of its bytes, `9F26`."""
    return tag.to_bytes(_tag_length(tag), "big").hex().upper()


def is_proprietary(tag: int) -> bool:
    """Private class, or the payment systems' context-specific range (9F50-9F7F, BF50-BF7F)."""
    first = tag.to_bytes(_tag_length(tag), "big")
    if first[0] & _CLASS_MASK == _PRIVATE:
        return True
    return len(first) == 2 and first[0] in (0x9F, 0xBF) and first[1] in _PAYMENT_SYSTEM_RANGE


def decode(data: bytes) -> Mapping[int, bytes]:
    """The data objects of one F55, by tag, in the order sent (constructed ones as their raw
    value). Raises `TlvError` only."""
    if len(data) > ICC_DATA_BYTES_MAX:
        raise TlvError(f"ICC data over {ICC_DATA_BYTES_MAX} bytes", tag=None, offset=0)
    objects: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        if len(objects) == OBJECTS_MAX:
            raise TlvError(f"more than {OBJECTS_MAX} data objects", tag=None, offset=offset)
        start = offset
        tag, offset = _read_tag(data, offset)
        length, offset = _read_length(data, offset, tag)
        if offset + length > len(data):
            raise TlvError(
                f"value of {length} bytes runs past the field's end", tag=tag, offset=offset
            )
        if tag in objects:
            raise TlvError("tag appears twice", tag=tag, offset=start)
        _check_known(tag, start)
        objects[tag] = bytes(data[offset : offset + length])
        offset += length
    return MappingProxyType(objects)


def encode(objects: Iterable[tuple[int, bytes]]) -> bytes:
    """Tag, shortest length and value for each object, in order."""
    out = bytearray()
    for tag, value in objects:
        assert len(value) < 1 << (8 * LENGTH_BYTES_MAX), "a value fits a two-byte length"
        out += tag.to_bytes(_tag_length(tag), "big")
        out += _length_bytes(len(value))
        out += value
    return bytes(out)


def _tag_length(tag: int) -> int:
    assert 0 <= tag < 1 << (8 * TAG_BYTES_MAX), "a tag is one to three bytes"
    return max(1, (tag.bit_length() + 7) // 8)


def _length_bytes(length: int) -> bytes:
    if length < _LONG_LENGTH:
        return bytes([length])
    size = (length.bit_length() + 7) // 8
    return bytes([_LONG_LENGTH | size]) + length.to_bytes(size, "big")


def _read_tag(data: bytes, offset: int) -> tuple[int, int]:
    """The tag at `offset` and the offset after it."""
    start = offset
    first = data[offset]
    offset += 1
    tag = first
    if first & _MORE_TAG_BYTES == _MORE_TAG_BYTES:
        while True:
            if offset == len(data):
                raise TlvError("tag cut off by the field's end", tag=None, offset=start)
            following = data[offset]
            if offset == start + 1 and following == _CONTINUES:
                raise TlvError("tag number padded with a zero byte", tag=None, offset=start)
            tag = tag << 8 | following
            offset += 1
            if not following & _CONTINUES:
                break
            if offset - start == TAG_BYTES_MAX:
                raise TlvError(f"tag longer than {TAG_BYTES_MAX} bytes", tag=None, offset=start)
    return tag, offset


def _read_length(data: bytes, offset: int, tag: int) -> tuple[int, int]:
    """The value length after `tag` and the offset of its value."""
    if offset == len(data):
        raise TlvError("length cut off by the field's end", tag=tag, offset=offset)
    first = data[offset]
    if first < _LONG_LENGTH:
        return first, offset + 1
    size = first & ~_LONG_LENGTH
    if first == _INDEFINITE:
        raise TlvError("indefinite length", tag=tag, offset=offset)
    if size > LENGTH_BYTES_MAX:
        raise TlvError(f"length in more than {LENGTH_BYTES_MAX} bytes", tag=tag, offset=offset)
    if offset + 1 + size > len(data):
        raise TlvError("length cut off by the field's end", tag=tag, offset=offset)
    length = int.from_bytes(data[offset + 1 : offset + 1 + size], "big")
    if len(_length_bytes(length)) != 1 + size:
        raise TlvError("length not in its shortest form", tag=tag, offset=offset)
    return length, offset + 1 + size


def _check_known(tag: int, offset: int) -> None:
    if tag in KNOWN_TAGS or is_proprietary(tag):
        return
    first = tag.to_bytes(_tag_length(tag), "big")[0]
    kind = "constructed " if first & _CONSTRUCTED else ""
    raise TlvError(f"unknown critical {kind}tag", tag=tag, offset=offset)

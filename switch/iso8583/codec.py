"""Bytes to `Message` and back, for one dialect. Pure functions; inputs are never mutated.

`decode` raises only `DecodeError`, which names the field and the byte offset and carries what
could be read (MTI, echo fields) so the caller can answer with a format error.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import iso8583

from switch.iso8583 import direct
from switch.iso8583.direct import CONTENT_PATTERNS
from switch.iso8583.message import Message
from switch.iso8583.spec import BINARY_FIELDS, FIELDS, MAC_FIELDS, TPDU_BYTES, Dialect, build_spec

# Fields a format-error response may echo when the request could be read that far.
ECHO_FIELDS: tuple[int, ...] = (7, 11, 41)
DEFAULT_TPDU = "6000000000"
MAC_BYTES = 8

_FIELD_NAMES: Mapping[str, str] = MappingProxyType(
    {"h": "TPDU", "t": "MTI", "p": "primary bitmap", "1": "secondary bitmap"}
)


class DecodeError(Exception):
    """The bytes are not a message in this dialect. Names the field and the byte offset."""

    def __init__(
        self,
        reason: str,
        *,
        field: str,
        offset: int,
        mti: str | None = None,
        echo: Mapping[int, str] | None = None,
        tpdu: str | None = None,
    ) -> None:
        self.reason = reason
        self.field = field
        self.offset = offset
        self.mti = mti
        self.tpdu = tpdu
        self.echo: Mapping[int, str] = MappingProxyType(dict(echo or {}))
        name = _FIELD_NAMES.get(field, f"field {field}")
        super().__init__(f"{reason} ({name}, byte {offset})")


class EncodeError(Exception):
    """A message could not be put on the wire in this dialect (a value too long or malformed)."""


def decode(frame: bytes, dialect: Dialect) -> Message:
    """One frame's payload (without the length header) to a Message."""
    decoded = direct.decode(frame, dialect)
    return decoded if decoded is not None else pyiso8583_decode(frame, dialect)


def pyiso8583_decode(frame: bytes, dialect: Dialect) -> Message:
    """`decode` by pyiso8583 alone: the reference, and the path of every frame in error."""
    spec = build_spec(dialect)
    try:
        doc_dec, doc_enc = iso8583.decode(bytes(frame), spec)
    except iso8583.DecodeError as exc:
        raise DecodeError(
            exc.msg,
            field=exc.field,
            offset=exc.pos,
            mti=_readable_mti(exc.doc_dec),
            echo=_echo(exc.doc_dec),
            tpdu=exc.doc_dec.get("h") if dialect.tpdu else None,
        ) from None
    except KeyError as exc:
        # pyiso8583 reads bit 65 as "a tertiary bitmap follows"; ISO 8583:1987 has none.
        mti_offset = TPDU_BYTES if dialect.tpdu else 0
        raise DecodeError(
            f"data element {exc.args[0]} is not defined",
            field="1",
            offset=mti_offset + 4,
            mti=_readable_mti({"t": frame[mti_offset : mti_offset + 4].decode("latin-1")}),
        ) from None
    _check_contents(doc_dec, doc_enc, dialect)
    fields = {int(k): _canonical(int(k), v) for k, v in doc_dec.items() if k.isdigit() and k != "1"}
    return Message(doc_dec["t"], fields, doc_dec.get("h") if dialect.tpdu else None, bytes(frame))


def encode(message: Message, dialect: Dialect) -> bytes:
    """A Message to one frame's payload (the caller adds the length header)."""
    tpdu = (message.tpdu or DEFAULT_TPDU) if dialect.tpdu else None
    encoded = direct.encode(message, tpdu, dialect)
    return encoded if encoded is not None else pyiso8583_encode(message, dialect)


def pyiso8583_encode(message: Message, dialect: Dialect) -> bytes:
    """`encode` by pyiso8583 alone: the reference, and the path of every message in error."""
    tpdu = (message.tpdu or DEFAULT_TPDU) if dialect.tpdu else None
    doc: dict[str, Any] = {"t": message.mti}
    if tpdu is not None:
        doc["h"] = tpdu
    doc.update((str(n), v) for n, v in message.fields.items())
    try:
        encoded, _ = iso8583.encode(doc, build_spec(dialect))
    except iso8583.EncodeError as exc:
        raise EncodeError(f"{exc.msg} (field {exc.field})") from None
    return bytes(encoded)


def response_tpdu(tpdu: str | None) -> str | None:
    """A response's TPDU: the request's with destination and source addresses swapped."""
    if tpdu is None:
        return None
    assert len(tpdu) == TPDU_BYTES * 2
    return tpdu[0:2] + tpdu[6:10] + tpdu[2:6]


def mac_input(message: Message, dialect: Dialect) -> bytes:
    """The bytes a MAC covers: the encoded message from the MTI up to, not including, the MAC
    field, with the MAC field's bitmap bit set. Any MAC the message carries is ignored.

    A message that carries its MAC and its wire bytes (a decoded request) is not re-encoded:
    the MAC covers exactly the bytes that were received."""
    if message.wire is None or message.mac_field not in message.fields:
        message = prepared_for_mac(message, dialect)
    assert message.wire is not None
    start = TPDU_BYTES if dialect.tpdu else 0
    return message.wire[start : -_mac_wire_bytes(dialect)]


def prepared_for_mac(message: Message, dialect: Dialect) -> Message:
    """`message` with a zero MAC in its MAC field, encoded once: `mac_input` reads its bytes and
    `with_mac` splices the real MAC into them."""
    mac_field = message.mac_field
    fields = {n: v for n, v in message.fields.items() if n not in MAC_FIELDS}
    # The MAC field is the message's last: F64 when no field above 64 is present, else F128.
    fields[mac_field] = "00" * MAC_BYTES
    placeholder = Message.of_sorted(message.mti, fields, message.tpdu)
    return Message.of_sorted(message.mti, fields, message.tpdu, encode(placeholder, dialect))


def with_mac(prepared: Message, mac: bytes, dialect: Dialect) -> Message:
    """A message from `prepared_for_mac` with its MAC set, in its fields and in its bytes."""
    assert prepared.wire is not None, "from prepared_for_mac"
    assert len(mac) == MAC_BYTES
    on_wire = mac if dialect.binary_fields == "raw" else mac.hex().upper().encode("ascii")
    fields = {**prepared.fields, prepared.mac_field: mac.hex().upper()}  # the last, as it was
    wire = prepared.wire[: -len(on_wire)] + on_wire
    return Message.of_sorted(prepared.mti, fields, prepared.tpdu, wire)


def wire_of(message: Message, dialect: Dialect) -> bytes:
    """What to send: the bytes a message already carries, else its encoding."""
    return message.wire if message.wire is not None else encode(message, dialect)


def _mac_wire_bytes(dialect: Dialect) -> int:
    return MAC_BYTES if dialect.binary_fields == "raw" else MAC_BYTES * 2


def _canonical(number: int, value: str) -> str:
    return value.upper() if number in BINARY_FIELDS else value


def _check_contents(
    doc_dec: Mapping[str, str], doc_enc: Mapping[str, Mapping[str, bytes]], dialect: Dialect
) -> None:
    """pyiso8583 checks lengths; this checks that each field holds what its ISO class allows."""
    offset = 0
    for key, parts in doc_enc.items():
        offset += len(parts["len"])
        if key == "t" and _readable_mti(doc_dec) is None:
            raise DecodeError("MTI must be 4 digits", field=key, offset=offset)
        if key.isdigit() and key != "1":
            definition = FIELDS[int(key)]
            if not CONTENT_PATTERNS[definition.content].fullmatch(doc_dec[key]):
                raise DecodeError(
                    f"content is not of class {definition.content}",
                    field=key,
                    offset=offset,
                    mti=doc_dec["t"],
                    echo=_echo(doc_dec),
                    tpdu=doc_dec.get("h") if dialect.tpdu else None,
                )
        offset += len(parts["data"])


def _readable_mti(doc_dec: Mapping[str, str]) -> str | None:
    mti = doc_dec.get("t")
    return mti if mti is not None and len(mti) == 4 and mti.isdigit() else None


def _echo(doc_dec: Mapping[str, str]) -> dict[int, str]:
    echo: dict[int, str] = {}
    for number in ECHO_FIELDS:
        value = doc_dec.get(str(number))
        if value is not None and CONTENT_PATTERNS[FIELDS[number].content].fullmatch(value):
            echo[number] = value
    return echo

"""The networked HSM's host-command message format. Sans-I/O: bytes in, messages out.

A frame is a 2-byte big-endian length followed by that many payload bytes:

    command     2 bytes   ASCII, e.g. b"PV" (the reply echoes it)
    request_id  4 bytes   unsigned big-endian, echoed in the reply
    error       2 bytes   ASCII digits, "00" in requests and in successful replies
    count       1 byte    number of fields
    fields      count x (2-byte big-endian length + UTF-8 text)

Binary values (PIN blocks, MAC data, MACs, KSNs) travel as upper-case hex text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hsm.errors import RequestError

LENGTH_HEADER = 2
FRAME_MAX = 0xFFFF
FIELDS_MAX = 32
REQUEST_ID_MAX = 0xFFFFFFFF
OK = "00"
_HEAD = struct.Struct(">2sI2sB")
_FIELD_LENGTH = struct.Struct(">H")


@dataclass(frozen=True)
class Message:
    command: str
    request_id: int
    error: str = OK
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ok = (
            len(self.command) == 2
            and self.command.isascii()
            and self.command.isalpha()
            and 0 <= self.request_id <= REQUEST_ID_MAX
            and len(self.error) == 2
            and self.error.isdigit()
            and len(self.fields) <= FIELDS_MAX
        )
        if not ok:
            raise RequestError("malformed host-command message header")


def encode(message: Message) -> bytes:
    """Return the whole frame, length header included."""
    body = [
        _HEAD.pack(
            message.command.encode("ascii"),
            message.request_id,
            message.error.encode("ascii"),
            len(message.fields),
        )
    ]
    for text in message.fields:
        raw = text.encode("utf-8")
        body.append(_FIELD_LENGTH.pack(len(raw)) + raw)
    payload = b"".join(body)
    if len(payload) > FRAME_MAX:
        raise RequestError("host-command message exceeds the frame size limit")
    return len(payload).to_bytes(LENGTH_HEADER, "big") + payload


def decode(payload: bytes) -> Message:
    """Decode one payload (without its length header); RequestError if malformed."""
    if len(payload) < _HEAD.size:
        raise RequestError("host-command message is shorter than its header")
    command, request_id, error, count = _HEAD.unpack_from(payload)
    pos, fields = _HEAD.size, []
    for _ in range(count):
        if pos + _FIELD_LENGTH.size > len(payload):
            raise RequestError("host-command field overruns the message")
        (length,) = _FIELD_LENGTH.unpack_from(payload, pos)
        pos += _FIELD_LENGTH.size
        if pos + length > len(payload):
            raise RequestError("host-command field overruns the message")
        fields.append(_text(payload[pos : pos + length]))
        pos += length
    if pos != len(payload):
        raise RequestError("host-command message has trailing bytes")
    return Message(_text(command), request_id, _text(error), tuple(fields))


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("host-command field is not UTF-8") from None


def frame_length(header: bytes) -> int:
    assert len(header) == LENGTH_HEADER, "length header is two bytes"
    return int.from_bytes(header, "big")

"""The ISO 8583 wire layer: field spec as data, codec, framing. No I/O anywhere in here."""

from ledger.pan import mask_pan
from switch.iso8583.codec import (
    DecodeError,
    EncodeError,
    decode,
    encode,
    mac_input,
    prepared_for_mac,
    response_tpdu,
    wire_of,
    with_mac,
)
from switch.iso8583.framing import FrameBuffer, FramingError, LengthHeader, frame
from switch.iso8583.message import Message, ProcessingCode
from switch.iso8583.spec import Dialect

__all__ = [
    "DecodeError",
    "Dialect",
    "EncodeError",
    "FrameBuffer",
    "FramingError",
    "LengthHeader",
    "Message",
    "ProcessingCode",
    "decode",
    "encode",
    "frame",
    "mac_input",
    "mask_pan",
    "prepared_for_mac",
    "response_tpdu",
    "wire_of",
    "with_mac",
]

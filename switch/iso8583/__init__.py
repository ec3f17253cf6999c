"""The ISO 8583 wire layer: field spec as data, codec, framing. No I/O anywhere in here."""

from switch.iso8583.codec import DecodeError, EncodeError, decode, encode, mac_input, response_tpdu
from switch.iso8583.framing import FrameBuffer, FramingError, LengthHeader, frame
from switch.iso8583.message import Message, ProcessingCode, mask_pan
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
    "response_tpdu",
]

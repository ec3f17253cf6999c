"""What the HSM reads from a terminal's MACed message: whether it is a request, and what a
reversal reverses. Pure; the engine verifies the MAC over the same bytes.

The bytes are a MAC input as the switch computes it (switch.iso8583.codec.mac_input): the
message from its MTI up to, not including, its MAC field, with the MAC field's bitmap bit set;
no TPDU, no length header. They are decoded by the switch's own codec, with the listener's
dialect (how bitmaps and binary fields are encoded), after a placeholder MAC of that dialect's
width: one parser, so the HSM reads exactly what the switch does. The codec is pure (no I/O),
so the HSM depends on it rather than on a second parser of its own.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from hsm.authorisation import ReversalAuthorisation
from hsm.errors import MessageTypeError
from switch.iso8583.codec import MAC_BYTES, DecodeError, decode
from switch.iso8583.elements import ElementFormatError, OriginalData, ReplacementAmounts
from switch.iso8583.spec import Dialect

REVERSAL_MTIS = ("0420", "0421")
# F2 names the card (its PAN hash goes into the word); F95 is optional (a partial reversal).
_REVERSAL_FIELDS = (2, 4, 7, 11, 41, 90)
_MTI_BYTES = 4
# ISO 8583's third MTI digit is the message's function: 0 request, 2 advice, 4 notification,
# 6 instruction (what a terminal initiates); odd digits answer them.
_INITIATING_FUNCTIONS = frozenset(b"02468")
_PLACEHOLDERS = MappingProxyType({"raw": bytes(MAC_BYTES), "hex": b"0" * (2 * MAC_BYTES)})


def is_initiating(mac_input: bytes) -> bool:
    """Whether the bytes start with the MTI of a message a terminal initiates (0200, 0420,
    0421, 0800, 0500...): the switch only answers, so it never needs a MAC over one."""
    mti = mac_input[:_MTI_BYTES]
    return len(mti) == _MTI_BYTES and mti.isdigit() and mti[2] in _INITIATING_FUNCTIONS


def read_reversal(mac_input: bytes, dialect: Dialect) -> tuple[ReversalAuthorisation, str]:
    """What a reversal's word covers, and its PAN (for its hash), read from its MAC input;
    MessageTypeError for bytes that are not a complete 0420 or 0421 in this dialect."""
    try:
        message = decode(
            mac_input + _PLACEHOLDERS[dialect.binary_fields], replace(dialect, tpdu=False)
        )
    except DecodeError as exc:
        raise MessageTypeError(f"not a message in this dialect: {exc}") from None
    if message.mti not in REVERSAL_MTIS:
        raise MessageTypeError(f"a reversal word is for an 0420 or 0421, not an {message.mti}")
    missing = [number for number in _REVERSAL_FIELDS if number not in message]
    if missing:
        raise MessageTypeError(f"a reversal without fields {missing}")
    try:
        original = OriginalData.parse(message.fields[90])
        replacement = message.get(95)
        dispensed = None if replacement is None else ReplacementAmounts.parse(replacement)
    except ElementFormatError as exc:
        raise MessageTypeError(str(exc)) from None
    reversal = ReversalAuthorisation(
        terminal_id=message.terminal_id or "",
        transmission_time=message.fields[7],
        stan=message.fields[11],
        message_class=message.mti[:3] + "0",
        original_transmission_time=original.transmission_time,
        original_stan=original.stan,
        original_message_class=original.mti[:3] + "0",
        original_amount_minor=int(message.fields[4]),
        dispensed_minor=0 if dispensed is None else dispensed.actual_amount_minor,
    )
    return reversal, message.fields[2]

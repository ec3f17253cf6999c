"""Building a response from its request: MTI, echoed fields, response code. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from switch.iso8583.codec import response_tpdu
from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode

# Request fields a response repeats so the terminal can match and reconcile it. Card data
# (PAN, track, PIN block, ICC) and the request's MAC are never echoed.
ECHOED_FIELDS: tuple[int, ...] = (3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 70, 90, 95, 102, 103)


def is_request_mti(mti: str) -> bool:
    """Requests (x0), advices (x20) and repeats (x1) have an even third digit."""
    return int(mti[2]) % 2 == 0


def response_mti(mti: str) -> str:
    """0800→0810, 0200→0210, 0420 and 0421→0430: function digit +1, repeat flag cleared."""
    assert is_request_mti(mti), mti
    return mti[:2] + str(int(mti[2]) + 1) + "0"


def respond(
    request: Message, code: ResponseCode, extra: Mapping[int, str] | None = None
) -> Message:
    fields = {n: request.fields[n] for n in ECHOED_FIELDS if n in request.fields}
    fields[39] = code.value
    fields.update(extra or {})
    return Message(response_mti(request.mti), fields, response_tpdu(request.tpdu))


def format_error(mti: str, echo: Mapping[int, str], tpdu: str | None) -> Message:
    """The answer to a request that could not be decoded past its MTI."""
    fields = dict(echo)
    fields[39] = ResponseCode.FORMAT_ERROR.value
    return Message(response_mti(mti), fields, response_tpdu(tpdu))

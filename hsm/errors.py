"""Typed HSM errors. Each carries a two-digit wire code so the networked HSM can carry it.

Messages never hold a clear PIN, a PIN block or key material: callers build them from
lengths, formats and key usages only.
"""

from __future__ import annotations


class HsmError(Exception):
    """Base of every HSM error."""

    code = "99"


class KeyMaterialError(HsmError):
    """Base of key-related errors."""

    code = "10"


class KeyUsageError(KeyMaterialError):
    """A key was given to an operation its usage or mode of use does not allow."""

    code = "11"


class KeyBlockError(KeyMaterialError):
    """A stored key or TR-31 block is malformed or failed its integrity check."""

    code = "12"


class KeyLengthError(KeyMaterialError):
    """A key has a length its algorithm does not allow."""

    code = "13"


class DevelopmentLmkError(KeyMaterialError):
    """The development LMK was loaded in production mode."""

    code = "14"


class DevelopmentKeyError(KeyMaterialError):
    """A development key (public, in the source tree) was given to a production HSM."""

    code = "15"


class PinError(HsmError):
    """Base of PIN-related errors."""

    code = "20"


class PinBlockFormatError(PinError):
    """A PIN block does not decode under its format (or was enciphered under another key)."""

    code = "21"


class PinFormatError(PinError):
    """A clear PIN has the wrong length or holds non-digits."""

    code = "22"


class PanError(PinError):
    """A PAN has the wrong length or holds non-digits."""

    code = "23"


class DukptError(HsmError):
    """A KSN is malformed or its counter is invalid."""

    code = "30"


class EmvError(HsmError):
    """Base of EMV chip errors (cryptogram versions and their data)."""

    code = "60"


class UnknownCvnError(EmvError):
    """A cryptogram version number is not in the table, or not of the card's scheme."""

    code = "61"


class EmvDataError(EmvError):
    """An EMV data element is missing or has the wrong length (ATC, ARQC, a tag, the IAD)."""

    code = "62"


class RequestError(HsmError):
    """A request is malformed (wrong field count, bad hex, unknown option)."""

    code = "40"


class UnknownCommandError(RequestError):
    code = "41"


class MessageTypeError(RequestError):
    """The MACed bytes are not a message this command serves: a MAC generated over a terminal's
    request (a switch answers, it never asks), or a reversal word for what is not a reversal."""

    code = "42"


class AccessError(HsmError):
    """Base of refusals by the HSM's access policy: the request was well formed, and would have
    worked, but this caller may not have it now."""

    code = "50"


class CommandNotPermittedError(AccessError):
    """The client's profile does not enable this command (or the client is not configured)."""

    code = "51"


class PinRateLimitError(AccessError):
    """Too many PIN verifications for this card within the last minute. Not a ``PinError``: the
    PIN was never checked, so it must not count as a wrong PIN."""

    code = "52"


class HsmUnavailable(HsmError):
    """No HSM answered (connection refused, reset, or every address down)."""

    code = "90"


class HsmTimeout(HsmUnavailable):
    """No answer within the call's deadline."""

    code = "91"


ERRORS_BY_CODE: dict[str, type[HsmError]] = {
    cls.code: cls
    for cls in (
        HsmError,
        KeyMaterialError,
        KeyUsageError,
        KeyBlockError,
        KeyLengthError,
        DevelopmentLmkError,
        DevelopmentKeyError,
        PinError,
        PinBlockFormatError,
        PinFormatError,
        PanError,
        DukptError,
        EmvError,
        UnknownCvnError,
        EmvDataError,
        RequestError,
        UnknownCommandError,
        MessageTypeError,
        AccessError,
        CommandNotPermittedError,
        PinRateLimitError,
        HsmUnavailable,
        HsmTimeout,
    )
}

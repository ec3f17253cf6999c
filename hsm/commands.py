"""Host commands: how each HSM operation maps to wire fields, for both sides.

The client side turns typed arguments into text fields (``*_fields``) and reply fields back into
typed results; the server side (``execute``) turns fields into a ``SoftHsm`` call. Both live
here so a command's layout is defined once. The layout table is in docs/hsm.md; EMV's is
in docs/emv.md.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from hsm import emv
from hsm.api import (
    AuthorisedArqc,
    DeliveredKey,
    Dukpt,
    Ibm3624Method,
    Ibm3624Offset,
    PinKey,
    PinMethod,
    SessionKeys,
    Verification,
    VisaPvv,
    VisaPvvMethod,
)
from hsm.authorisation import Authorisation
from hsm.crypto import Algorithm
from hsm.emv import Arc, ArpcResponse, ArqcResult, Csu, EmvTags
from hsm.engine import SoftHsm
from hsm.errors import HsmError, RequestError, UnknownCommandError
from hsm.keys import KeyRole, StoredKey
from hsm.pinblock import PinBlockFormat
from hsm.wire import Message
from switch.iso8583.spec import (
    BINARY_FIELD_ENCODINGS,
    BITMAP_ENCODINGS,
    BinaryFieldEncoding,
    BitmapEncoding,
    Dialect,
)

log = structlog.get_logger("hsm.commands")

HEALTH = "NO"
VERIFY_PIN = "PV"
DERIVE_PIN_DATA = "PD"
TRANSLATE_PIN = "PT"
GENERATE_MAC = "MG"
VERIFY_MAC = "MV"
SESSION_KEYS = "SK"
GENERATE_KEY = "GK"
CHECK_VALUE = "KC"
IMPORT_KEY = "KI"
EXPORT_KEY = "KE"
PAN_HASH = "PH"
VERIFY_PIN_FOR = "PA"
AUTHORISATION_CHECK = "AC"
VERIFY_ARQC = "AQ"
VERIFY_ARQC_FOR = "AA"
REVERSAL_WORD = "RW"

Fields = tuple[str, ...]
_TAGS_MAX = 16  # a CVN reads at most 11 tags; the field is bounded before it is split
_TAG_HEX_LENGTHS = (2, 4, 6)


def hex_of(data: bytes) -> str:
    return data.hex().upper()


def bytes_of(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise RequestError("a binary field is not hex") from None


def yes_no(value: bool) -> Fields:
    return ("Y" if value else "N",)


def is_yes(fields: Fields) -> bool:
    return fields == ("Y",)


# --- typed values <-> fields ----------------------------------------------------------------


def pin_key_fields(key: PinKey) -> Fields:
    if isinstance(key, Dukpt):
        return ("D", key.bdk.to_text(), hex_of(key.ksn))
    return ("K", key.to_text(), "")


def _pin_key(kind: str, text: str, ksn: str) -> PinKey:
    if kind == "D":
        return Dukpt(StoredKey.from_text(text), bytes_of(ksn))
    if kind == "K":
        return StoredKey.from_text(text)
    raise RequestError("PIN key kind must be K or D")


def verification_fields(v: Verification) -> Fields:
    if isinstance(v, VisaPvv):
        return ("V", v.pvk.to_text(), v.pvki, v.pvv, "", "")
    tail = (v.offset, v.decimalization_table, v.validation_data, str(v.pin_length))
    return ("I", v.pvk.to_text(), *tail)


def _verification(f: Fields) -> Verification:
    kind, pvk = f[0], StoredKey.from_text(f[1])
    if kind == "V":
        return VisaPvv(pvk, f[2], f[3])
    if kind == "I" and f[5].isascii() and f[5].isdigit():
        return Ibm3624Offset(pvk, f[2], f[3], f[4], int(f[5]))
    raise RequestError("verification kind must be I or V, with a decimal PIN length")


def method_fields(method: PinMethod) -> Fields:
    if isinstance(method, VisaPvvMethod):
        return ("V", method.pvki, "")
    return ("I", method.decimalization_table, method.validation_data)


def _method(f: Fields) -> PinMethod:
    if f[0] == "V":
        return VisaPvvMethod(f[1])
    if f[0] == "I":
        return Ibm3624Method(f[1], f[2])
    raise RequestError("method kind must be I or V")


def _format(text: str) -> PinBlockFormat:
    try:
        return PinBlockFormat(int(text))
    except ValueError:
        raise RequestError("PIN block format must be 0, 1, 3 or 4") from None


def session_keys_of(f: Fields) -> SessionKeys:
    tpk = DeliveredKey(StoredKey.from_text(f[0]), f[1], f[2])
    tak = DeliveredKey(StoredKey.from_text(f[3]), f[4], f[5])
    return SessionKeys(tpk, tak, bytes_of(f[6]))


def _session_key_fields(keys: SessionKeys) -> Fields:
    delivered = tuple(
        text for d in (keys.tpk, keys.tak) for text in (d.stored.to_text(), d.under_tmk, d.kcv)
    )
    return (*delivered, hex_of(keys.authorisation))


def tags_field(version: emv.CryptogramVersion, tags: EmvTags) -> str:
    """The tags the version reads, as ``TAG=HEX`` items joined by commas (tag order kept)."""
    wanted = emv.cryptogram_tags(version)
    return ",".join(f"{tag:X}={hex_of(tags[tag])}" for tag in wanted if tag in tags)


def _tags(text: str) -> dict[int, bytes]:
    items = text.split(",", _TAGS_MAX) if text else []
    if len(items) > _TAGS_MAX:
        raise RequestError(f"at most {_TAGS_MAX} EMV tags")
    tags: dict[int, bytes] = {}
    for item in items:
        tag, _, value = item.partition("=")
        if len(tag) not in _TAG_HEX_LENGTHS or not all(c in "0123456789ABCDEF" for c in tag):
            raise RequestError("an EMV tag is 2, 4 or 6 upper-case hex digits")
        if int(tag, 16) in tags:
            raise RequestError(f"EMV tag {tag} appears twice")
        tags[int(tag, 16)] = bytes_of(value)
    return tags


def response_fields(response: ArpcResponse) -> Fields:
    if isinstance(response, Arc):
        return ("1", hex_of(response.code), "")
    return ("2", hex_of(response.csu), hex_of(response.proprietary))


def _response(f: Fields) -> ArpcResponse:
    if f[0] == "1" and not f[2]:
        return Arc(bytes_of(f[1]))
    if f[0] == "2":
        return Csu(bytes_of(f[1]), bytes_of(f[2]))
    raise RequestError("ARPC method must be 1 (ARC, no proprietary data) or 2 (CSU)")


def arqc_result_of(f: Fields) -> ArqcResult:
    match f:
        case ("N", "", ""):
            return ArqcResult(verified=False)
        case ("Y", arpc, issuer_authentication_data):
            return ArqcResult(True, bytes_of(arpc), bytes_of(issuer_authentication_data))
    raise RequestError("an ARQC reply is Y, ARPC, tag 91 data or N, empty, empty")


def authorised_arqc_of(f: Fields) -> AuthorisedArqc:
    if len(f) != 4:
        raise RequestError("an authorised ARQC reply is an ARQC reply and a token")
    return AuthorisedArqc(arqc_result_of(f[:3]), bytes_of(f[3]) if f[3] else None)


def _arqc_result_fields(result: ArqcResult) -> Fields:
    if result.arpc is None or result.issuer_authentication_data is None:
        return ("N", "", "")
    return ("Y", hex_of(result.arpc), hex_of(result.issuer_authentication_data))


def _role(text: str) -> KeyRole:
    if text not in KeyRole.__members__:
        raise RequestError("unknown key role")
    return KeyRole[text]


def _algorithm(text: str) -> Algorithm:
    try:
        return Algorithm(text)
    except ValueError:
        raise RequestError("algorithm must be T, A or H") from None


def dialect_fields(dialect: Dialect) -> Fields:
    """How the MACed bytes encode bitmaps and binary fields (all a MAC input's parse needs)."""
    return (dialect.bitmap, dialect.binary_fields)


_BITMAPS: dict[str, BitmapEncoding] = {encoding: encoding for encoding in BITMAP_ENCODINGS}
_BINARY_FIELDS: dict[str, BinaryFieldEncoding] = {e: e for e in BINARY_FIELD_ENCODINGS}


def _dialect(f: Fields) -> Dialect:
    # Looked up here: Dialect asserts, and a bad request is the client's error, not a bug.
    bitmap, binary_fields = _BITMAPS.get(f[0]), _BINARY_FIELDS.get(f[1])
    if bitmap is None or binary_fields is None:
        raise RequestError("a dialect's bitmap is binary or hex, its binary fields raw or hex")
    return Dialect(bitmap=bitmap, binary_fields=binary_fields)


# --- server side ----------------------------------------------------------------------------

Handler = Callable[[SoftHsm, Fields], Fields]


def _verify_pin(hsm: SoftHsm, f: Fields) -> Fields:
    key = _pin_key(f[3], f[4], f[5])
    return yes_no(hsm.verify_pin(bytes_of(f[0]), f[1], key, _format(f[2]), _verification(f[6:])))


def authorisation_fields(request: Authorisation) -> Fields:
    return (
        request.terminal_id, request.transmission_time, request.stan, request.message_class,
        str(request.amount_minor), request.currency,
    )  # fmt: skip


def _authorisation(f: Fields) -> Authorisation:
    if not (f[4].isascii() and f[4].isdigit()):
        raise RequestError("an amount is decimal digits")
    return Authorisation(f[0], f[1], f[2], f[3], int(f[4]), f[5])


def _verify_pin_for(hsm: SoftHsm, f: Fields) -> Fields:
    key = _pin_key(f[9], f[10], f[11])
    verification = _verification(f[12:])
    token = hsm.verify_pin_for(
        bytes_of(f[6]), f[7], key, _format(f[8]), verification, request=_authorisation(f[:6])
    )
    return ("" if token is None else hex_of(token),)


def _derive(hsm: SoftHsm, f: Fields) -> Fields:
    return (hsm.derive_pin_verification_data(StoredKey(f[0]), f[1], f[2], _method(f[3:])),)


def _translate(hsm: SoftHsm, f: Fields) -> Fields:
    source = _pin_key(f[3], f[4], f[5])
    out = hsm.translate_pin(
        bytes_of(f[0]),
        f[1],
        source=source,
        source_format=_format(f[2]),
        destination=StoredKey(f[6]),
        destination_format=_format(f[7]),
    )
    return (hex_of(out),)


def _verify_arqc(hsm: SoftHsm, f: Fields) -> Fields:
    result = hsm.verify_arqc(
        StoredKey.from_text(f[0]),
        f[1],
        f[2],
        bytes_of(f[3]),
        bytes_of(f[4]),
        cvn=_int(f[5]),
        tags=_tags(f[6]),
        response=_response(f[7:]),
    )
    return _arqc_result_fields(result)


def _verify_arqc_for(hsm: SoftHsm, f: Fields) -> Fields:
    authorised = hsm.verify_arqc_for(
        StoredKey.from_text(f[6]),
        f[7],
        f[8],
        bytes_of(f[9]),
        bytes_of(f[10]),
        cvn=_int(f[11]),
        tags=_tags(f[12]),
        response=_response(f[13:]),
        request=_authorisation(f[:6]),
    )
    token = authorised.authorisation
    return (*_arqc_result_fields(authorised.result), "" if token is None else hex_of(token))


def _reversal_word(hsm: SoftHsm, f: Fields) -> Fields:
    word = hsm.reversal_word(
        StoredKey(f[0]), bytes_of(f[1]), bytes_of(f[2]), dialect=_dialect(f[3:])
    )
    return ("" if word is None else hex_of(word),)


# Command code -> (request field count, handler).
COMMANDS: dict[str, tuple[int, Handler]] = {
    HEALTH: (0, lambda hsm, f: (hsm.lmk_kcv,)),
    VERIFY_PIN: (12, _verify_pin),
    DERIVE_PIN_DATA: (6, _derive),
    TRANSLATE_PIN: (8, _translate),
    GENERATE_MAC: (2, lambda hsm, f: (hex_of(hsm.generate_mac(StoredKey(f[0]), bytes_of(f[1]))),)),
    VERIFY_MAC: (
        3,
        lambda hsm, f: yes_no(hsm.verify_mac(StoredKey(f[0]), bytes_of(f[1]), bytes_of(f[2]))),
    ),
    SESSION_KEYS: (
        2,
        lambda hsm, f: _session_key_fields(
            hsm.generate_session_keys(StoredKey(f[0]), terminal_id=f[1])
        ),
    ),
    GENERATE_KEY: (
        3,
        lambda hsm, f: (hsm.generate_key(_role(f[0]), _algorithm(f[1]), _int(f[2])).to_text(),),
    ),
    CHECK_VALUE: (1, lambda hsm, f: (hsm.key_check_value(StoredKey(f[0])),)),
    IMPORT_KEY: (3, lambda hsm, f: (hsm.import_key(f[0], StoredKey(f[1]), _role(f[2])).to_text(),)),
    EXPORT_KEY: (3, lambda hsm, f: (hsm.export_key(StoredKey(f[0]), StoredKey(f[1]), f[2]),)),
    PAN_HASH: (1, lambda hsm, f: (hex_of(hsm.pan_hash(f[0])),)),
    VERIFY_PIN_FOR: (18, _verify_pin_for),
    AUTHORISATION_CHECK: (0, lambda hsm, _f: (hsm.authorisation_check_value(),)),
    VERIFY_ARQC: (10, _verify_arqc),
    VERIFY_ARQC_FOR: (16, _verify_arqc_for),
    REVERSAL_WORD: (5, _reversal_word),
}


def _int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # isdigit alone admits "²"
        raise RequestError("a numeric field is not decimal")
    return int(text)


def error_reply(request: Message, exc: HsmError) -> Message:
    return Message(request.command, request.request_id, exc.code, (str(exc),))


def execute(hsm: SoftHsm, request: Message) -> Message:
    """Run one request; every failure becomes an error reply with a safe message. Whether the
    client may run it at all is ``access.answer``'s decision, taken before this."""
    try:
        if request.command not in COMMANDS:
            raise UnknownCommandError(f"unknown command {request.command}")
        count, handler = COMMANDS[request.command]
        if len(request.fields) != count:
            raise RequestError(f"command {request.command} takes {count} fields")
        return Message(request.command, request.request_id, fields=handler(hsm, request.fields))
    except HsmError as exc:
        return error_reply(request, exc)
    except Exception as exc:  # a bug must not kill the connection; tracebacks may hold keys
        log.error("hsm_command_failed", command=request.command, exc_type=type(exc).__name__)
        return Message(request.command, request.request_id, HsmError.code, ("internal error",))

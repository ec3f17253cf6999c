"""EMV chip online authorisation, issuer side (EMV 4.3 Book 2): ICC master keys, session keys,
application cryptograms (ARQC), ARPCs, and the cryptogram versions (CVNs) as data.

Pure functions over bytes, no I/O. TDES goes through ``hsm.crypto`` (keys expanded, so no
deprecation warning) and the MACs through ``hsm.mac``; card and session keys, each used for one
transaction, take the ciphers' transient cache. The functions that take a clear key are called
by the HSM engine, with a key it has just unwrapped, and by tests and card simulators.

A cryptogram version is one row of ``CRYPTOGRAM_VERSIONS``: which ICC master key option, which
session key, which MAC padding, which data elements in which order, and which ARPC method under
which key. A new CVN is a new row, not new code.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from hsm import crypto, mac
from hsm.errors import EmvDataError, KeyLengthError, PanError, UnknownCvnError

EmvTags = Mapping[int, bytes]
"""EMV data elements by tag number (``0x9F02``: Amount, Authorised), values as on the card."""

TAG_AMOUNT_AUTHORISED = 0x9F02
TAG_AMOUNT_OTHER = 0x9F03
TAG_TERMINAL_COUNTRY = 0x9F1A
TAG_TVR = 0x95
TAG_CURRENCY = 0x5F2A
TAG_DATE = 0x9A
TAG_TRANSACTION_TYPE = 0x9C
TAG_UNPREDICTABLE_NUMBER = 0x9F37
TAG_AIP = 0x82
TAG_ATC = 0x9F36
TAG_IAD = 0x9F10

# Lengths in bytes of the elements a cryptogram reads (EMV 4.3 Book 3 Annex A).
TAG_LENGTHS: Mapping[int, int] = MappingProxyType(
    {
        TAG_AMOUNT_AUTHORISED: 6,
        TAG_AMOUNT_OTHER: 6,
        TAG_TERMINAL_COUNTRY: 2,
        TAG_TVR: 5,
        TAG_CURRENCY: 2,
        TAG_DATE: 3,
        TAG_TRANSACTION_TYPE: 1,
        TAG_UNPREDICTABLE_NUMBER: 4,
        TAG_AIP: 2,
        TAG_ATC: 2,
    }
)
IAD_LENGTH_MAX = 32
ARQC_LENGTH = 8
ARC_LENGTH = 2
CSU_LENGTH = 4
PROPRIETARY_LENGTH_MAX = 8
ARPC_METHOD_2_LENGTH = 4
PSN_LENGTH = 2
PAN_LENGTH_MIN, PAN_LENGTH_MAX = 12, 19
_OPTION_A_DIGITS = 16
_KEY_LENGTH = 16
_BLOCK = crypto.TDES_BLOCK


class Scheme(Enum):
    VISA = "V"
    MASTERCARD = "M"


class MasterKeyOption(Enum):
    """How the ICC master key comes from the issuer master key (Book 2 Annex A1.4)."""

    A = "A"  # A1.4.1: the 16 rightmost digits of PAN || PSN
    B = "B"  # A1.4.2: as A up to 16 PAN digits; beyond, SHA-1 of PAN || PSN, decimalised


class SessionKeyMethod(Enum):
    NONE = "none"  # the ICC master key itself (Visa CVN 10)
    COMMON = "common"  # A1.3.1 with R = ATC || 00 00 00 00 00 00
    MASTERCARD = "mastercard"  # A1.3.1 with R = ATC || 00 00 || unpredictable number


class ArpcMethod(Enum):
    METHOD_1 = 1  # Book 2 8.2.1: TDES of ARQC xor (ARC || 00..), 8 bytes
    METHOD_2 = 2  # Book 2 8.2.2: MAC of ARQC || CSU || proprietary data, 4 bytes


class ArpcKey(Enum):
    ICC_MASTER_KEY = "icc master key"
    SESSION_KEY = "session key"


@dataclass(frozen=True)
class IadPart:
    """Bytes ``start`` up to ``stop`` (``None``: the end) of the issuer application data."""

    name: str
    start: int
    stop: int | None = None

    @property
    def length_min(self) -> int:
        return self.stop if self.stop is not None else self.start + 1


Element = int | IadPart
"""One piece of a cryptogram's input: a tag's value, or a part of the IAD (9F10)."""

VISA_CVR = IadPart("Visa CVR", 3, 7)  # IAD format 0/1: length 06, DKI, CVN, CVR (4 bytes)
MASTERCARD_CVR = IadPart("M/Chip CVR", 2, 8)  # DKI, CVN, CVR (6 bytes), DAC, counters
MASTERCARD_COUNTERS = IadPart("M/Chip counters", 10, 18)  # plaintext or encrypted counters
WHOLE_IAD = IadPart("IAD", 0)

# The data every version here starts with (Book 2 8.1.1, the recommended minimum set).
MINIMUM_DATA: tuple[Element, ...] = (
    TAG_AMOUNT_AUTHORISED,
    TAG_AMOUNT_OTHER,
    TAG_TERMINAL_COUNTRY,
    TAG_TVR,
    TAG_CURRENCY,
    TAG_DATE,
    TAG_TRANSACTION_TYPE,
    TAG_UNPREDICTABLE_NUMBER,
    TAG_AIP,
    TAG_ATC,
)


@dataclass(frozen=True)
class CryptogramVersion:
    """One cryptogram version. ``cvn`` is the number as its scheme names it; ``iad_value`` is
    the byte the card puts in 9F10 (Visa's CVN '22' is the byte 0x22, its CVN 18 the byte 0x12)."""

    cvn: int
    scheme: Scheme
    iad_value: int
    master_key: MasterKeyOption
    session_key: SessionKeyMethod
    padding: int  # ISO/IEC 9797-1 padding method of the ARQC's MAC
    elements: tuple[Element, ...]
    arpc_method: ArpcMethod
    arpc_key: ArpcKey


_V, _M = Scheme.VISA, Scheme.MASTERCARD
_A, _B = MasterKeyOption.A, MasterKeyOption.B
_NONE, _COMMON, _MC = SessionKeyMethod.NONE, SessionKeyMethod.COMMON, SessionKeyMethod.MASTERCARD
_ARPC_1_MK = (ArpcMethod.METHOD_1, ArpcKey.ICC_MASTER_KEY)
_ARPC_1_SK = (ArpcMethod.METHOD_1, ArpcKey.SESSION_KEY)
_ARPC_2_SK = (ArpcMethod.METHOD_2, ArpcKey.SESSION_KEY)
_VISA_10 = (*MINIMUM_DATA, VISA_CVR)
_VISA_IAD = (*MINIMUM_DATA, WHOLE_IAD)
_MC_CVR = (*MINIMUM_DATA, MASTERCARD_CVR)
_MC_COUNTERS = (*MINIMUM_DATA, MASTERCARD_CVR, MASTERCARD_COUNTERS)

# Visa CVN 10 predates the session key and option B: its ICC master key MACs directly. For
# M/Chip, bits 3-2 of the CVN byte pick the session key and bit 1 adds the IAD's counters.
CRYPTOGRAM_VERSIONS: Mapping[int, CryptogramVersion] = MappingProxyType(
    {
        v.cvn: v
        for v in (
            # cvn, scheme, IAD byte, master key, session key, padding, data, ARPC method and key
            CryptogramVersion(10, _V, 0x0A, _A, _NONE, 1, _VISA_10, *_ARPC_1_MK),
            CryptogramVersion(18, _V, 0x12, _B, _COMMON, 2, _VISA_IAD, *_ARPC_2_SK),
            CryptogramVersion(22, _V, 0x22, _B, _COMMON, 2, _VISA_IAD, *_ARPC_2_SK),
            CryptogramVersion(16, _M, 0x10, _B, _MC, 2, _MC_CVR, *_ARPC_1_MK),
            CryptogramVersion(17, _M, 0x11, _B, _MC, 2, _MC_COUNTERS, *_ARPC_1_MK),
            CryptogramVersion(20, _M, 0x14, _B, _COMMON, 2, _MC_CVR, *_ARPC_1_SK),
            CryptogramVersion(21, _M, 0x15, _B, _COMMON, 2, _MC_COUNTERS, *_ARPC_1_SK),
        )
    }
)
_BY_IAD_VALUE = {(v.scheme, v.iad_value): v for v in CRYPTOGRAM_VERSIONS.values()}
_VISA_IAD_FORMAT_0_1 = 0x06  # byte 1: length of the Visa discretionary data; CVN in byte 3
_VISA_IAD_FORMAT_2_UP = 0x1F  # byte 1: length 31; CVN in byte 2, its high nibble the format


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arc:
    """ARPC method 1 input: the 2-byte authorisation response code (e.g. ``b"00"``)."""

    code: bytes

    def __post_init__(self) -> None:
        if len(self.code) != ARC_LENGTH:
            raise EmvDataError(f"an ARC is {ARC_LENGTH} bytes")


@dataclass(frozen=True)
class Csu:
    """ARPC method 2 input: the card status update and optional proprietary data."""

    csu: bytes
    proprietary: bytes = b""

    def __post_init__(self) -> None:
        if len(self.csu) != CSU_LENGTH:
            raise EmvDataError(f"a CSU is {CSU_LENGTH} bytes")
        if len(self.proprietary) > PROPRIETARY_LENGTH_MAX:
            raise EmvDataError(f"proprietary authentication data is 0..{PROPRIETARY_LENGTH_MAX}")


ArpcResponse = Arc | Csu


@dataclass(frozen=True)
class ArqcResult:
    """The verdict; when verified, the ARPC and the issuer authentication data (tag 91's value:
    ARPC || ARC for method 1, ARPC || CSU || proprietary data for method 2). A failed ARQC gets
    no ARPC: an HSM that answered one would encrypt chosen blocks under the card's key."""

    verified: bool
    arpc: bytes | None = None
    issuer_authentication_data: bytes | None = None

    def __post_init__(self) -> None:
        has_arpc = self.arpc is not None and self.issuer_authentication_data is not None
        assert has_arpc == self.verified, "an ARPC comes with, and only with, a verified ARQC"


# --- key derivation (Book 2 Annex A1.3, A1.4) ------------------------------------------------


def _decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()  # isdigit alone admits "²" and other scripts


def _check_card(pan: str, psn: str) -> None:
    if not (PAN_LENGTH_MIN <= len(pan) <= PAN_LENGTH_MAX) or not _decimal(pan):
        raise PanError(f"PAN must be {PAN_LENGTH_MIN}..{PAN_LENGTH_MAX} decimal digits")
    if len(psn) != PSN_LENGTH or not _decimal(psn):
        raise EmvDataError(f"PAN sequence number must be {PSN_LENGTH} digits (00 if absent)")


def _master_key_from_block(imk: bytes, y: bytes) -> bytes:
    """ZL || ZR = TDES(IMK)[Y] || TDES(IMK)[Y xor FF..FF], with odd parity."""
    assert len(y) == _BLOCK, "the derivation block Y is 8 bytes"
    if len(imk) != _KEY_LENGTH:
        raise KeyLengthError("an issuer master key is double-length TDES")
    z = crypto.tdes_ecb_encrypt(imk, y + crypto.xor(y, b"\xff" * _BLOCK))
    return crypto.with_odd_parity(z)


def icc_master_key_option_a(imk: bytes, pan: str, psn: str) -> bytes:
    """A1.4.1: Y is the 16 rightmost digits of PAN || PSN, zero-padded on the left."""
    _check_card(pan, psn)
    digits = (pan + psn)[-_OPTION_A_DIGITS:].rjust(_OPTION_A_DIGITS, "0")
    return _master_key_from_block(imk, bytes.fromhex(digits))


def icc_master_key_option_b(imk: bytes, pan: str, psn: str) -> bytes:
    """A1.4.2: option A for PANs of up to 16 digits. Beyond, Y is the first 16 decimal digits
    of SHA-1(PAN || PSN as BCD, a 0 prepended to an odd count), then hex letters A..F as 0..5."""
    _check_card(pan, psn)
    if len(pan) <= _OPTION_A_DIGITS:
        return icc_master_key_option_a(imk, pan, psn)
    digits = pan + psn
    packed = bytes.fromhex(digits.rjust(len(digits) + len(digits) % 2, "0"))
    # EMV fixes SHA-1 here: it only spreads the long PAN into 16 digits, no collision matters.
    digest = hashlib.sha1(packed, usedforsecurity=False).hexdigest().upper()
    decimal = [c for c in digest if c.isdigit()]
    letters = [str("ABCDEF".index(c)) for c in digest if not c.isdigit()]
    chosen = "".join((decimal + letters)[:_OPTION_A_DIGITS])
    assert len(chosen) == _OPTION_A_DIGITS, "a SHA-1 digest holds 40 hex digits"
    return _master_key_from_block(imk, bytes.fromhex(chosen))


def icc_master_key(imk: bytes, pan: str, psn: str, option: MasterKeyOption) -> bytes:
    if option is MasterKeyOption.A:
        return icc_master_key_option_a(imk, pan, psn)
    return icc_master_key_option_b(imk, pan, psn)


def common_session_key(icc_mk: bytes, r: bytes) -> bytes:
    """A1.3.1: TDES(MK)[R with byte 3 = F0] || TDES(MK)[R with byte 3 = 0F], odd parity."""
    assert len(r) == _BLOCK, "the diversification value R is 8 bytes"
    left, right = r[:2] + b"\xf0" + r[3:], r[:2] + b"\x0f" + r[3:]
    key = crypto.tdes_ecb_encrypt(icc_mk, left + right, transient=True)
    return crypto.with_odd_parity(key)


def common_session_key_r(atc: bytes) -> bytes:
    return atc + bytes(6)


def mastercard_session_key_r(atc: bytes, unpredictable_number: bytes) -> bytes:
    return atc + bytes(2) + unpredictable_number


# --- cryptograms (Book 2 8.1, 8.2) -----------------------------------------------------------


def application_cryptogram(key: bytes, data: bytes, padding: int) -> bytes:
    """ARQC, TC or AAC: ISO/IEC 9797-1 MAC algorithm 3 (retail MAC), 8 bytes."""
    return mac.iso9797_alg3(key, data, padding, transient=True)


def arpc_method_1(key: bytes, arqc: bytes, arc: bytes) -> bytes:
    assert len(arqc) == ARQC_LENGTH, "the ARQC's length is checked on input"
    assert len(arc) == ARC_LENGTH, "the ARC's length is checked on input"
    block = crypto.xor(arqc, arc + bytes(_BLOCK - ARC_LENGTH))
    return crypto.tdes_ecb_encrypt(key, block, transient=True)


def arpc_method_2(key: bytes, arqc: bytes, csu: bytes, proprietary: bytes = b"") -> bytes:
    assert len(arqc) == ARQC_LENGTH, "the ARQC's length is checked on input"
    assert len(csu) == CSU_LENGTH, "the CSU's length is checked on input"
    data = arqc + csu + proprietary
    return mac.iso9797_alg3(key, data, 2, transient=True)[:ARPC_METHOD_2_LENGTH]


# --- cryptogram versions ---------------------------------------------------------------------


def cryptogram_version(cvn: int) -> CryptogramVersion:
    version = CRYPTOGRAM_VERSIONS.get(cvn)
    if version is None:
        raise UnknownCvnError(f"cryptogram version {cvn} is not supported")
    return version


def cvn_in_iad(scheme: Scheme, iad: bytes) -> CryptogramVersion:
    """The version a card names in its IAD: Visa formats 0/1 in byte 3, formats 2 and up
    (length 1F) in byte 2; M/Chip in byte 2 after the derivation key index."""
    index = 1
    if scheme is Scheme.VISA:
        formats = {_VISA_IAD_FORMAT_0_1: 2, _VISA_IAD_FORMAT_2_UP: 1}
        if not iad or iad[0] not in formats:
            raise UnknownCvnError("the Visa IAD has no known format (length byte 06 or 1F)")
        index = formats[iad[0]]
    if len(iad) <= index:
        raise UnknownCvnError("the IAD is too short to hold a cryptogram version")
    version = _BY_IAD_VALUE.get((scheme, iad[index]))
    if version is None:
        raise UnknownCvnError(f"{scheme.name} cryptogram version byte {iad[index]:02X} unknown")
    return version


def select_cryptogram_version(
    scheme: Scheme, iad: bytes, *, profile_cvn: int | None = None
) -> CryptogramVersion:
    """The card profile's CVN when it names one (cards whose IAD is not the scheme's standard
    layout), else the CVN the IAD names. Either must be of the card's scheme."""
    if profile_cvn is None:
        return cvn_in_iad(scheme, iad)
    version = cryptogram_version(profile_cvn)
    if version.scheme is not scheme:
        raise UnknownCvnError(f"cryptogram version {profile_cvn} is not a {scheme.name} one")
    return version


def cryptogram_tags(version: CryptogramVersion) -> tuple[int, ...]:
    """The tags ``version`` reads, in order (9F10 once if any part of it is read)."""
    tags = [e if isinstance(e, int) else TAG_IAD for e in version.elements]
    return tuple(dict.fromkeys(tags))


# --- cryptogram input ------------------------------------------------------------------------


def _tag_value(tags: EmvTags, tag: int) -> bytes:
    value = tags.get(tag)
    if value is None:
        raise EmvDataError(f"tag {tag:X} is missing")
    if len(value) != TAG_LENGTHS[tag]:
        raise EmvDataError(f"tag {tag:X} must be {TAG_LENGTHS[tag]} bytes")
    return value


def _iad_part(tags: EmvTags, part: IadPart) -> bytes:
    iad = tags.get(TAG_IAD)
    if iad is None:
        raise EmvDataError("tag 9F10 (issuer application data) is missing")
    if not (part.length_min <= len(iad) <= IAD_LENGTH_MAX):
        raise EmvDataError(f"the IAD must be {part.length_min}..{IAD_LENGTH_MAX} bytes")
    return iad[part.start : part.stop]


def cryptogram_data(version: CryptogramVersion, atc: bytes, tags: EmvTags) -> bytes:
    """The bytes the ARQC is a MAC of. The ATC is the caller's; a 9F36 in ``tags`` must match."""
    if len(atc) != TAG_LENGTHS[TAG_ATC]:
        raise EmvDataError(f"the ATC is {TAG_LENGTHS[TAG_ATC]} bytes")
    if tags.get(TAG_ATC, atc) != atc:
        raise EmvDataError("tag 9F36 differs from the ATC")
    values = {**tags, TAG_ATC: atc}
    return b"".join(
        _iad_part(values, e) if isinstance(e, IadPart) else _tag_value(values, e)
        for e in version.elements
    )


@dataclass(frozen=True, repr=False)
class CardKeys:
    """The keys of one transaction: the ARQC's and the ARPC's (clear; never logged)."""

    application_cryptogram: bytes
    arpc: bytes


def card_keys(version: CryptogramVersion, icc_mk: bytes, atc: bytes, tags: EmvTags) -> CardKeys:
    if version.session_key is SessionKeyMethod.NONE:
        session_key = icc_mk
    elif version.session_key is SessionKeyMethod.COMMON:
        session_key = common_session_key(icc_mk, common_session_key_r(atc))
    else:
        un = _tag_value(tags, TAG_UNPREDICTABLE_NUMBER)
        session_key = common_session_key(icc_mk, mastercard_session_key_r(atc, un))
    arpc_key = icc_mk if version.arpc_key is ArpcKey.ICC_MASTER_KEY else session_key
    return CardKeys(session_key, arpc_key)


def generate_arqc(version: CryptogramVersion, icc_mk: bytes, atc: bytes, tags: EmvTags) -> bytes:
    """The card's side, for tests and simulated cards: the ARQC under the ICC master key."""
    data = cryptogram_data(version, atc, tags)
    key = card_keys(version, icc_mk, atc, tags).application_cryptogram
    return application_cryptogram(key, data, version.padding)


def _arpc(key: bytes, arqc: bytes, response: ArpcResponse) -> bytes:
    if isinstance(response, Arc):
        return arpc_method_1(key, arqc, response.code)
    return arpc_method_2(key, arqc, response.csu, response.proprietary)


def _check_response(version: CryptogramVersion, response: ArpcResponse) -> None:
    wanted = Arc if version.arpc_method is ArpcMethod.METHOD_1 else Csu
    if not isinstance(response, wanted):
        raise EmvDataError(
            f"CVN {version.cvn} answers with ARPC method {version.arpc_method.value}, "
            f"which takes {'an ARC' if wanted is Arc else 'a CSU'}"
        )


def verify_arqc(
    imk: bytes,
    pan: str,
    psn: str,
    atc: bytes,
    arqc: bytes,
    *,
    version: CryptogramVersion,
    tags: EmvTags,
    response: ArpcResponse,
) -> ArqcResult:
    """Derive the card's keys from the issuer master key, recompute the ARQC, and when it
    matches, compute the ARPC over the card's ARQC and ``response``."""
    if len(arqc) != ARQC_LENGTH:
        raise EmvDataError(f"an ARQC is {ARQC_LENGTH} bytes")
    _check_response(version, response)
    data = cryptogram_data(version, atc, tags)
    keys = card_keys(version, icc_master_key(imk, pan, psn, version.master_key), atc, tags)
    expected = application_cryptogram(keys.application_cryptogram, data, version.padding)
    if not hmac.compare_digest(expected, arqc):
        return ArqcResult(verified=False)
    arpc = _arpc(keys.arpc, arqc, response)
    tail = response.code if isinstance(response, Arc) else response.csu + response.proprietary
    return ArqcResult(True, arpc, arpc + tail)

"""EMV chip requests, the part without I/O: how the card was read (F22, F35, F55), the checks on
the chip's data before authorisation, and tag 91 of the answer.

Entry mode (F22 positions 1-2): `05` (contact chip) and `07` (contactless chip) are chip reads
and must carry F55; anything else, or no F22, is a read of the card's stripe (or its number),
which must not. A chip card read other than by its chip is a fallback, refused unless the card's
EMV profile allows it. A card is a chip card when its issuer profiled it (an EMV profile in the
ledger) or when its service code (track 2, F35) starts with 2 or 6.

Response codes (ISO 8583:1987): malformed ICC data, a missing or wrongly sized tag, F55 without
a chip entry mode or a chip entry mode without F55: `30`. A cryptogram that is not an ARQC (the
card declined offline, or already approved): `12`. The chip's amount or currency not the
request's: `13`. A fallback the profile does not allow: `57`. Chip data for a card with no EMV
profile: `05`. A replayed ATC or an ARQC that does not verify: `63` (security violation). The
chip's own copy of the card number (5A, 57) not F2's: `30`, as F35 not F2's; its PAN sequence
number (5F34) not the profile's: `14` (see `card_number_refusal` and `psn_mismatch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from hsm import emv
from hsm.emv import ArpcMethod, ArpcResponse, CryptogramVersion, Scheme
from ledger.model import Card, EmvProfile
from ledger.model import Outcome as LedgerOutcome
from switch.iso8583 import tlv
from switch.iso8583.response_codes import ResponseCode
from switch.iso8583.spec import ICC_DATA_FIELD, ICC_DATA_MTIS
from switch.transaction import Kind, Transaction

CHIP_ENTRY_MODES = frozenset({"05", "07"})
CHIP_SERVICE_CODES = frozenset("26")  # service code digit 1: 2 or 6, an ICC is present
TRACK_2_FIELD = 35
ENTRY_MODE_FIELD = 22

TAG_ARQC = 0x9F26
TAG_CID = 0x9F27
TAG_ISSUER_AUTHENTICATION_DATA = 0x91
TAG_PAN = 0x5A
TAG_TRACK_2_EQUIVALENT = 0x57
TAG_PSN = 0x5F34
# What an authorisation's F55 must hold.
REQUIRED_TAGS: tuple[int, ...] = (
    TAG_ARQC,
    TAG_CID,
    emv.TAG_IAD,
    emv.TAG_ATC,
    emv.TAG_UNPREDICTABLE_NUMBER,
    emv.TAG_TVR,
    emv.TAG_DATE,
    emv.TAG_TRANSACTION_TYPE,
    emv.TAG_AMOUNT_AUTHORISED,
    emv.TAG_CURRENCY,
    emv.TAG_AIP,
    emv.TAG_TERMINAL_COUNTRY,
)
# The sizes of what the switch reads (EMV 4.3 Book 3 Annex A); 9F10 from 1 to 32 bytes.
TAG_LENGTHS: Mapping[int, int] = MappingProxyType(
    {**emv.TAG_LENGTHS, TAG_ARQC: emv.ARQC_LENGTH, TAG_CID: 1}
)
IAD_LENGTHS = range(1, emv.IAD_LENGTH_MAX + 1)
# Cryptogram information data, bits 8-7: the type of the cryptogram in 9F26.
CID_TYPE_MASK = 0xC0
CID_ARQC = 0x80
# An ATM asks for no cashback; a terminal that leaves out 9F03 computed the ARQC over zeros.
AMOUNT_OTHER_NONE = bytes(emv.TAG_LENGTHS[emv.TAG_AMOUNT_OTHER])
# CSU byte 2, bit 8: "issuer approves online transaction" (EMV CCD, Visa VIS 1.6).
_CSU_APPROVED = bytes([0x00, 0x80, 0x00, 0x00])
_CSU_DECLINED = bytes(4)
# The kinds of the ledger's rows that its own rules decided (ledger.rules): for a chip request,
# only ever after its ARQC verified. A decline before that is recorded as a "decline".
ARQC_DECIDED_KINDS = frozenset({"inquiry", "withdrawal", "transfer", "pin"})
_SCHEMES: Mapping[str, Scheme] = MappingProxyType(
    {"visa": Scheme.VISA, "mastercard": Scheme.MASTERCARD}
)


@dataclass(frozen=True, slots=True, repr=False)
class IccData:
    """The data objects of F55 by tag. Card data: never logged, so no repr of its values."""

    tags: Mapping[int, bytes]

    def __repr__(self) -> str:
        return f"IccData({len(self.tags)} tags)"

    @property
    def atc_bytes(self) -> bytes:
        return self.tags[emv.TAG_ATC]

    @property
    def atc(self) -> int:
        return int.from_bytes(self.atc_bytes, "big")

    @property
    def arqc(self) -> bytes:
        return self.tags[TAG_ARQC]

    @property
    def iad(self) -> bytes:
        return self.tags[emv.TAG_IAD]

    def cryptogram_tags(self) -> dict[int, bytes]:
        """What a cryptogram may read: the minimum data set and the IAD (the HSM's client sends
        only the tags the CVN reads)."""
        wanted = (*emv.TAG_LENGTHS, emv.TAG_IAD)
        tags = {tag: self.tags[tag] for tag in wanted if tag in self.tags}
        tags.setdefault(emv.TAG_AMOUNT_OTHER, AMOUNT_OTHER_NONE)
        return tags


@dataclass(frozen=True, slots=True)
class CardRead:
    """How the terminal read the card: by its chip (with its data), or otherwise."""

    chip: bool
    service_code: str | None = None
    icc: IccData | None = None


@dataclass(frozen=True, slots=True)
class ChipRefusal:
    """A request refused for its chip data before the card's record is read (not journalled:
    as other format errors). `tag` names the data object at fault, for the log."""

    code: ResponseCode
    reason: str
    tag: str | None = None


class AtcCheck(Enum):
    FRESH = "fresh"
    JUMP = "jump"  # fresh, but far above the last: logged (a card used offline a lot, or cloned)
    REPLAY = "replay"


def read_card(transaction: Transaction) -> CardRead | ChipRefusal:
    """F22, F35 and F55 of a financial request, checked for form. An authorisation read by the
    chip must carry an ARQC with every tag `REQUIRED_TAGS` names; a reversal's F55 (the card's
    second cryptogram, after it declined the host's approval) need only be well-formed."""
    request = transaction.request
    entry = request.get(ENTRY_MODE_FIELD)
    chip = entry is not None and entry[:2] in CHIP_ENTRY_MODES
    service_code = _service_code(transaction)
    if isinstance(service_code, ChipRefusal):
        return service_code
    icc_hex = request.get(ICC_DATA_FIELD)
    if icc_hex is None:
        if chip and transaction.kind is not Kind.REVERSAL:
            return ChipRefusal(ResponseCode.FORMAT_ERROR, f"entry mode {entry} without F55")
        return CardRead(chip, service_code)
    if request.mti not in ICC_DATA_MTIS or not chip:
        return ChipRefusal(
            ResponseCode.FORMAT_ERROR, f"F55 with entry mode {entry} in {request.mti}"
        )
    try:
        icc = IccData(tlv.decode(bytes.fromhex(icc_hex)))
    except tlv.TlvError as exc:
        tag = None if exc.tag is None else tlv.tag_name(exc.tag)
        return ChipRefusal(ResponseCode.FORMAT_ERROR, f"F55: {exc}", tag)
    if transaction.kind is not Kind.REVERSAL:
        refusal = _authorisation_refusal(icc) or card_number_refusal(transaction, icc)
        if refusal is not None:
            return refusal
    return CardRead(chip, service_code, icc)


def authorisation_atc(transaction: Transaction, read: CardRead | None) -> int | None:
    """The ATC an authorisation read by the chip spends; a reversal's F55 spends none (its
    cryptogram is the original's second, at the original's ATC, and need not carry 9F36)."""
    if read is None or read.icc is None or transaction.kind is Kind.REVERSAL:
        return None
    return read.icc.atc


def repeat_carries_arpc(answered_kind: str, atc: int | None, last_atc: int | None) -> bool:
    """Whether a repeated chip authorisation's first answer carried tag 91, so that its repeat
    must too. It did when its ARQC verified; the ledger then decided the request by its own
    rules (`ARQC_DECIDED_KINDS`, approved or declined) and spent its ATC, which is still the
    card's last. A stored answer of another kind was a decline before the ARQC verified (a
    replay, a forged ARQC, a wrong amount: no tag 91). A repeat whose ATC is not the card's last
    is not a retransmission of that request (a retransmission's F55 is the same), or the card
    has been used since: no tag 91, and the card declines by itself."""
    return answered_kind in ARQC_DECIDED_KINDS and atc is not None and atc == last_atc


def _service_code(transaction: Transaction) -> str | ChipRefusal | None:
    """The service code in track 2 (F35: PAN, separator, YYMM, service code, ...)."""
    track = transaction.request.get(TRACK_2_FIELD)
    if track is None:
        return None
    pan, separator, rest = track.replace("D", "=").partition("=")
    if not separator or len(rest) < 7 or not rest[:7].isdigit():
        return ChipRefusal(ResponseCode.FORMAT_ERROR, "F35 is not track 2 data")
    if pan != transaction.pan:
        return ChipRefusal(ResponseCode.FORMAT_ERROR, "F35's card number is not F2's")
    return rest[4:7]


def _authorisation_refusal(icc: IccData) -> ChipRefusal | None:
    for tag in REQUIRED_TAGS:
        value = icc.tags.get(tag)
        name = tlv.tag_name(tag)
        if value is None:
            return ChipRefusal(ResponseCode.FORMAT_ERROR, f"F55 without tag {name}", name)
        if len(value) not in (IAD_LENGTHS if tag == emv.TAG_IAD else (TAG_LENGTHS[tag],)):
            return ChipRefusal(ResponseCode.FORMAT_ERROR, f"tag {name} of {len(value)} bytes", name)
    other = icc.tags.get(emv.TAG_AMOUNT_OTHER)
    if other is not None and len(other) != len(AMOUNT_OTHER_NONE):
        return ChipRefusal(ResponseCode.FORMAT_ERROR, f"tag 9F03 of {len(other)} bytes", "9F03")
    if icc.tags[TAG_CID][0] & CID_TYPE_MASK != CID_ARQC:
        cid = icc.tags[TAG_CID].hex().upper()
        return ChipRefusal(ResponseCode.INVALID_TRANSACTION, f"9F27 {cid} is not an ARQC", "9F27")
    return None


def card_number_refusal(transaction: Transaction, icc: IccData) -> ChipRefusal | None:
    """The chip's own copies of the card number, when F55 carries them: 5A (application PAN) and
    57 (track 2 equivalent data) must hold F2's, and 5F34 must be one PSN byte.

    `30`, as for an F35 that is not F2's: the message contradicts itself about which card it is
    for, so no account can be declined on its behalf; it is the terminal's fault (or a tampered
    message's), and the ARQC, verified under F2's card keys, does not cover 5A or 57. A
    reversal is not checked: it is applied by its original's key whatever its chip data says.
    """
    for tag, card_number in ((TAG_PAN, _application_pan), (TAG_TRACK_2_EQUIVALENT, _track_2_pan)):
        value = icc.tags.get(tag)
        if value is None:
            continue
        name = tlv.tag_name(tag)
        pan = card_number(value)
        if pan is None:
            return ChipRefusal(ResponseCode.FORMAT_ERROR, f"tag {name} holds no card number", name)
        if pan != transaction.pan:
            return ChipRefusal(
                ResponseCode.FORMAT_ERROR, f"tag {name}'s card number is not F2's", name
            )
    psn = icc.tags.get(TAG_PSN)
    if psn is not None and (len(psn) != 1 or not psn.hex().isdigit()):
        return ChipRefusal(ResponseCode.FORMAT_ERROR, "tag 5F34 is not one BCD byte", "5F34")
    return None


def _application_pan(value: bytes) -> str | None:
    """5A, compressed numeric: the digits, then F to whole bytes."""
    digits = value.hex().upper().rstrip("F")
    return digits if digits.isdigit() else None


def _track_2_pan(value: bytes) -> str | None:
    """57: the PAN, separator D, expiry YYMM, service code, discretionary data, F to a whole
    byte."""
    pan, separator, rest = value.hex().upper().removesuffix("F").partition("D")
    if not separator or not pan.isdigit() or len(rest) < 7 or not rest[:7].isdigit():
        return None
    return pan


def psn_mismatch(icc: IccData, profile: EmvProfile) -> bool:
    """Whether the chip's PAN sequence number (5F34, when sent) is not the one the issuer
    profiled. The PSN tells apart the issues of one card number, and the card's keys derive from
    PAN and PSN: a chip of another PSN is a card the issuer does not hold under that number (one
    replaced, or a copy), so `14` (invalid card), recorded, rather than a `63` from an ARQC that
    could never verify."""
    psn = icc.tags.get(TAG_PSN)
    return psn is not None and psn.hex() != profile.psn


def icc_mismatch(transaction: Transaction, icc: IccData) -> str | None:
    """Why the chip's amount or currency (what its ARQC covers) is not the request's, if so:
    the ARQC would prove an amount other than the one posted."""
    amount = icc.tags[emv.TAG_AMOUNT_AUTHORISED].hex()
    if not amount.isdigit() or int(amount) != transaction.amount_minor:
        return "9F02 is not F4"
    currency = transaction.request.get(49)  # a balance inquiry may leave it out
    if currency is not None and icc.tags[emv.TAG_CURRENCY].hex() != "0" + currency:
        return "5F2A is not F49"
    return None


def fallback_refusal(read: CardRead, card: Card | None) -> tuple[LedgerOutcome, str] | None:
    """A chip read of a card with no EMV profile (nothing to verify its ARQC with), or a chip
    card read otherwise than by its chip when its profile does not allow fallback."""
    if card is None:
        return None  # the ledger's decision declines it as an invalid card
    if read.chip:
        if card.emv is None:
            return LedgerOutcome.DO_NOT_HONOUR, "chip data for a card with no EMV profile"
        return None
    if is_fallback(read, card) and not (card.emv is not None and card.emv.fallback_allowed):
        return LedgerOutcome.NOT_PERMITTED_TO_CARDHOLDER, "chip card read without its chip"
    return None


def is_fallback(read: CardRead, card: Card) -> bool:
    """A chip card (profiled, or a service code that says so) read other than by its chip."""
    chip_card = card.emv is not None or (
        read.service_code is not None and read.service_code[0] in CHIP_SERVICE_CODES
    )
    return chip_card and not read.chip


def check_atc(atc: int, last_atc: int | None, jump_logged: int) -> AtcCheck:
    """The card's counter against the last one it used in a verified request."""
    if last_atc is None:
        return AtcCheck.FRESH
    if atc <= last_atc:
        return AtcCheck.REPLAY
    return AtcCheck.JUMP if atc - last_atc >= jump_logged else AtcCheck.FRESH


def scheme(name: str) -> Scheme:
    """The ledger's scheme name ("visa", "mastercard") as the HSM's."""
    return _SCHEMES[name]


def arpc_response(version: CryptogramVersion, code: ResponseCode) -> ArpcResponse:
    """What the ARPC carries to the card: for method 1 the response code as its ARC (ASCII, as
    8A), for method 2 a CSU that approves only an approval."""
    if version.arpc_method is ArpcMethod.METHOD_1:
        return emv.Arc(code.value.encode("ascii"))
    return emv.Csu(_CSU_APPROVED if code is ResponseCode.APPROVED else _CSU_DECLINED)


def issuer_authentication_field(data: bytes) -> str:
    """F55 of the answer: tag 91, the ARPC and its ARC or CSU, as the message holds it (hex)."""
    return tlv.encode([(TAG_ISSUER_AUTHENTICATION_DATA, data)]).hex().upper()

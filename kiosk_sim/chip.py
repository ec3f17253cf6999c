"""A simulated EMV chip card: the card's side of online authorisation (EMV 4.3 Book 2 8.1, 8.2).

Personalised as a bureau would: its ICC master key is derived from its issuer's IMK-AC (the
issuer keeps only the IMK, under its LMK), with its PAN sequence number and its cryptogram
version (CVN). Each GENERATE AC counts the card's ATC up. The first answers an ARQC over the
terminal's data, which the kiosk sends in F55; the card then checks the ARPC in the answer's tag
91 under its own keys, as a real card does, and only a host approval whose ARPC verifies is
approved (a TC). Anything else is declined (an AAC), and after a host approval the kiosk reverses
the transaction with that second cryptogram in the 0420's F55.

Built on the HSM's pure primitives (`hsm.emv`) and the switch's TLV codec, nothing else of the
switch. The card's keys are clear here, as they are inside a card; they are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from hsm import emv
from hsm.emv import ArpcMethod, CryptogramVersion
from switch.iso8583 import tlv

ATC_MAX = 0xFFFF
TAG_ARQC = 0x9F26
TAG_CID = 0x9F27
TAG_PSN = 0x5F34
TAG_PAN = 0x5A
TAG_ISSUER_AUTHENTICATION_DATA = 0x91
CID_ARQC, CID_TC, CID_AAC = 0x80, 0x40, 0x00
# An ATM in Germany: terminal country 276; the AIP of a card with SDA, DDA, cardholder
# verification and terminal risk management.
TERMINAL_COUNTRY = bytes.fromhex("0276")
AIP = bytes.fromhex("3900")
TVR_CLEAN = bytes(5)
# TVR byte 5 bit 7: issuer authentication failed (the ARPC did not verify).
TVR_ISSUER_AUTHENTICATION_FAILED = bytes.fromhex("0000000040")
CSU_APPROVES = 0x80  # CSU byte 2 bit 8: issuer approves online transaction
ARC_APPROVED = b"00"

# Each cryptogram version's issuer application data as its card writes it (9F10): Visa formats
# 0/1 (length 06, DKI, CVN, CVR) and 2 (length 1F, CVN, DKI, ...), M/Chip (DKI, CVN, CVR, DAC,
# counters).
IAD_BY_CVN: Mapping[int, bytes] = MappingProxyType(
    {
        10: bytes.fromhex("06010A03A00000"),
        18: bytes.fromhex("06011203A00000"),
        22: bytes.fromhex("1F220103" + "00" * 28),
        16: bytes.fromhex("0110A00003220000" + "00" * 10),
        17: bytes.fromhex("0111A00003220000" + "00" * 10),
        20: bytes.fromhex("0114A00003220000" + "00" * 10),
        21: bytes.fromhex("0115A00003220000" + "00" * 10),
    }
)
CVNS: tuple[int, ...] = tuple(IAD_BY_CVN)


class AtcExhausted(Exception):
    """The card's 2-byte counter reached its end: a real card then refuses every transaction."""


@dataclass(frozen=True, slots=True, repr=False)
class ChipProfile:
    """What personalisation put on the card. `icc_mk` is the card's own key (never logged)."""

    pan: str
    psn: str
    cvn: int
    icc_mk: bytes

    def __repr__(self) -> str:
        return f"ChipProfile(cvn={self.cvn})"

    @classmethod
    def personalise(cls, imk_ac: bytes, pan: str, psn: str, cvn: int) -> ChipProfile:
        version = emv.cryptogram_version(cvn)
        return cls(pan, psn, cvn, emv.icc_master_key(imk_ac, pan, psn, version.master_key))

    @property
    def version(self) -> CryptogramVersion:
        return emv.cryptogram_version(self.cvn)

    @property
    def scheme(self) -> str:
        return "visa" if self.version.scheme is emv.Scheme.VISA else "mastercard"


@dataclass(frozen=True, slots=True)
class TerminalData:
    """What the kiosk gives the card for its cryptogram."""

    amount_minor: int
    currency_numeric: str  # F49, "978"
    transaction_type: str  # F3's first two digits, "01"
    date: datetime
    unpredictable_number: bytes
    tvr: bytes = TVR_CLEAN
    country: bytes = TERMINAL_COUNTRY


@dataclass(frozen=True, slots=True, repr=False)
class Cryptogram:
    """One GENERATE AC's answer: the data objects the kiosk sends in F55."""

    profile: ChipProfile
    tags: Mapping[int, bytes]

    def __repr__(self) -> str:
        return f"Cryptogram(atc={self.atc})"

    @property
    def atc(self) -> int:
        return int.from_bytes(self.tags[emv.TAG_ATC], "big")

    @property
    def arqc(self) -> bytes:
        return self.tags[TAG_ARQC]

    def field_55(self) -> str:
        """The data objects as F55 holds them (hex, as the switch's messages keep binary)."""
        return tlv.encode(self.tags.items()).hex().upper()

    def with_arqc(self, arqc: bytes) -> Cryptogram:
        """The same data with another cryptogram: what a forger without the card's key sends."""
        return Cryptogram(self.profile, MappingProxyType({**self.tags, TAG_ARQC: arqc}))


@dataclass(frozen=True, slots=True)
class IssuerAuthentication:
    """What the card makes of tag 91: did the ARPC verify, and did the issuer approve."""

    arpc_verified: bool
    issuer_approves: bool

    @property
    def approve(self) -> bool:
        return self.arpc_verified and self.issuer_approves


class ChipCard:
    """One card and its counter; `last_atc` is the ATC of its last GENERATE AC."""

    def __init__(self, profile: ChipProfile, *, last_atc: int = 0) -> None:
        self.profile = profile
        self.last_atc = last_atc

    def __repr__(self) -> str:
        return f"ChipCard({self.profile!r}, last_atc={self.last_atc})"

    def generate_arqc(self, terminal: TerminalData) -> Cryptogram:
        """First GENERATE AC asking to go online: the counter moves on, then the ARQC."""
        if self.last_atc >= ATC_MAX:
            raise AtcExhausted(f"ATC {self.last_atc}")
        self.last_atc += 1
        return self.cryptogram_at(self.last_atc, terminal)

    def cryptogram_at(self, atc: int, terminal: TerminalData) -> Cryptogram:
        """An ARQC at a given counter, without moving the card's: what a clone or a replay
        sends."""
        tags = _terminal_tags(terminal) | {
            emv.TAG_ATC: atc.to_bytes(2, "big"),
            emv.TAG_IAD: IAD_BY_CVN[self.profile.cvn],
            emv.TAG_AIP: AIP,
            TAG_PAN: _compressed_numeric(self.profile.pan),
            TAG_PSN: bytes.fromhex(self.profile.psn),
        }
        arqc = self._cryptogram(tags)
        return Cryptogram(
            self.profile, MappingProxyType({TAG_ARQC: arqc, TAG_CID: bytes([CID_ARQC]), **tags})
        )

    def authenticate_issuer(self, sent: Cryptogram, field_55: str | None) -> IssuerAuthentication:
        """Tag 91 of the answer checked under the card's own ARPC key."""
        data = _issuer_authentication_data(field_55)
        if data is None:
            return IssuerAuthentication(arpc_verified=False, issuer_approves=False)
        version = self.profile.version
        keys = emv.card_keys(version, self.profile.icc_mk, sent.tags[emv.TAG_ATC], sent.tags)
        if version.arpc_method is ArpcMethod.METHOD_1:
            arpc, arc = data[:8], data[8:]
            if len(arc) != emv.ARC_LENGTH:
                return IssuerAuthentication(arpc_verified=False, issuer_approves=False)
            expected = emv.arpc_method_1(keys.arpc, sent.arqc, arc)
            approves = arc == ARC_APPROVED
        else:
            arpc, csu, proprietary = data[:4], data[4:8], data[8:]
            if len(csu) != emv.CSU_LENGTH or len(proprietary) > emv.PROPRIETARY_LENGTH_MAX:
                return IssuerAuthentication(arpc_verified=False, issuer_approves=False)
            expected = emv.arpc_method_2(keys.arpc, sent.arqc, csu, proprietary)
            approves = bool(csu[1] & CSU_APPROVES)
        return IssuerAuthentication(hmac.compare_digest(expected, arpc), approves)

    def decline(self, sent: Cryptogram) -> Cryptogram:
        """Second GENERATE AC refusing the host's approval (its ARPC did not verify): an AAC,
        the TVR saying issuer authentication failed. What the reversal carries in F55."""
        tags = {**sent.tags, emv.TAG_TVR: TVR_ISSUER_AUTHENTICATION_FAILED}
        del tags[TAG_ARQC], tags[TAG_CID]
        aac = self._cryptogram(tags)
        return Cryptogram(
            self.profile, MappingProxyType({TAG_ARQC: aac, TAG_CID: bytes([CID_AAC]), **tags})
        )

    def _cryptogram(self, tags: Mapping[int, bytes]) -> bytes:
        atc = tags[emv.TAG_ATC]
        return emv.generate_arqc(self.profile.version, self.profile.icc_mk, atc, tags)


def _terminal_tags(terminal: TerminalData) -> dict[int, bytes]:
    return {
        emv.TAG_AMOUNT_AUTHORISED: bytes.fromhex(f"{terminal.amount_minor:012d}"),
        emv.TAG_AMOUNT_OTHER: bytes(6),
        emv.TAG_TERMINAL_COUNTRY: terminal.country,
        emv.TAG_TVR: terminal.tvr,
        emv.TAG_CURRENCY: bytes.fromhex("0" + terminal.currency_numeric),
        emv.TAG_DATE: bytes.fromhex(terminal.date.strftime("%y%m%d")),
        emv.TAG_TRANSACTION_TYPE: bytes.fromhex(terminal.transaction_type),
        emv.TAG_UNPREDICTABLE_NUMBER: terminal.unpredictable_number,
    }


def _issuer_authentication_data(field_55: str | None) -> bytes | None:
    if field_55 is None:
        return None
    try:
        return tlv.decode(bytes.fromhex(field_55)).get(TAG_ISSUER_AUTHENTICATION_DATA)
    except (ValueError, tlv.TlvError):
        return None


def _compressed_numeric(digits: str) -> bytes:
    """EMV's `cn` format (5A): the digits as nibbles, then F to a whole byte."""
    return bytes.fromhex(digits + "F" * (len(digits) % 2))

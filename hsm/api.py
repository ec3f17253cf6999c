"""The HSM interface the switch programs against, and the values that cross it.

Every operation is async and takes a keyword-only ``timeout_ms``. Keys cross as ``StoredKey``
(LMK cryptograms); a clear key or PIN never comes back, except the clear PIN an operator hands
to ``derive_pin_verification_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hsm.authorisation import Authorisation
from hsm.crypto import Algorithm
from hsm.emv import ArpcResponse, ArqcResult, EmvTags
from hsm.keys import KeyRole, StoredKey
from hsm.pinblock import PinBlockFormat
from hsm.pinverify import DEFAULT_DECIMALIZATION_TABLE, DEFAULT_VALIDATION_DATA
from switch.iso8583.spec import Dialect

DEFAULT_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class Dukpt:
    """A DUKPT PIN key: the BDK (as stored) and the transaction's KSN (10 bytes TDES, 12 AES)."""

    bdk: StoredKey
    ksn: bytes


PinKey = StoredKey | Dukpt


@dataclass(frozen=True)
class Ibm3624Method:
    decimalization_table: str = DEFAULT_DECIMALIZATION_TABLE
    validation_data: str = DEFAULT_VALIDATION_DATA


@dataclass(frozen=True)
class VisaPvvMethod:
    pvki: str = "1"


PinMethod = Ibm3624Method | VisaPvvMethod


@dataclass(frozen=True)
class Ibm3624Offset:
    """Card data for IBM 3624 offset verification (see ``pinverify.validation_block``)."""

    pvk: StoredKey
    offset: str
    decimalization_table: str = DEFAULT_DECIMALIZATION_TABLE
    validation_data: str = DEFAULT_VALIDATION_DATA
    pin_length: int = 4


@dataclass(frozen=True)
class VisaPvv:
    pvk: StoredKey
    pvki: str
    pvv: str


Verification = Ibm3624Offset | VisaPvv


@dataclass(frozen=True)
class DeliveredKey:
    """A generated session key: ``stored`` for the ledger, ``under_tmk`` (hex) for the terminal."""

    stored: StoredKey
    under_tmk: str
    kcv: str


@dataclass(frozen=True)
class SessionKeys:
    tpk: DeliveredKey
    tak: DeliveredKey
    authorisation: bytes  # the ledger's word that they are this terminal's (hsm/authorisation.py)


@dataclass(frozen=True)
class AuthorisedArqc:
    """An ARQC's verdict, with the ledger's word for its ATC when it verified for the request."""

    result: ArqcResult
    authorisation: bytes | None


class HSM(Protocol):
    async def verify_pin(
        self,
        pin_block: bytes,
        pan: str,
        key: PinKey,
        pin_block_format: PinBlockFormat,
        verification: Verification,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> bool:
        """True if the PIN matches; False for a wrong PIN; typed error for a bad block or key."""
        ...

    async def verify_pin_for(
        self,
        pin_block: bytes,
        pan: str,
        key: PinKey,
        pin_block_format: PinBlockFormat,
        verification: Verification,
        *,
        request: Authorisation,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> bytes | None:
        """As verify_pin; a right PIN returns the ledger's token for `request` (see
        hsm.authorisation), a wrong one None. Needs the PAN-hash key."""
        ...

    async def authorisation_check_value(self, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str:
        """The check value of the authorisation key, to compare with the ledger's."""
        ...

    async def derive_pin_verification_data(
        self,
        pvk: StoredKey,
        pan: str,
        clear_pin: str,
        method: PinMethod,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> str:
        """IBM 3624 offset or VISA PVV for a PIN an operator sets."""
        ...

    async def translate_pin(
        self,
        pin_block: bytes,
        pan: str,
        *,
        source: PinKey,
        source_format: PinBlockFormat,
        destination: StoredKey,
        destination_format: PinBlockFormat,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> bytes: ...

    async def generate_mac(
        self, tak: StoredKey, data: bytes, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> bytes: ...

    async def verify_mac(
        self, tak: StoredKey, data: bytes, mac: bytes, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> bool: ...

    async def reversal_word(
        self,
        tak: StoredKey,
        data: bytes,
        mac: bytes,
        *,
        dialect: Dialect,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> bytes | None:
        """``verify_mac`` over a terminal's 0420 or 0421 (its MAC input, in `dialect`), with the
        ledger's word for what it reverses, read from those bytes (hsm/authorisation.py); None
        when the MAC does not verify. A ``MessageTypeError`` for bytes that are no reversal."""
        ...

    async def generate_session_keys(
        self, tmk: StoredKey, *, terminal_id: str, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> SessionKeys: ...

    async def verify_arqc(
        self,
        imk: StoredKey,
        pan: str,
        psn: str,
        atc: bytes,
        arqc: bytes,
        *,
        cvn: int,
        tags: EmvTags,
        response: ArpcResponse,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> ArqcResult:
        """Verify a chip card's ARQC under its IMK-AC, by the CVN's row in the cryptogram
        version table; a verified ARQC comes back with its ARPC (``Arc`` for method 1, ``Csu``
        for method 2). A wrong ARQC is ``verified=False``; bad data a typed ``EmvError``."""
        ...

    async def verify_arqc_for(
        self,
        imk: StoredKey,
        pan: str,
        psn: str,
        atc: bytes,
        arqc: bytes,
        *,
        cvn: int,
        tags: EmvTags,
        response: ArpcResponse,
        request: Authorisation,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> AuthorisedArqc:
        """``verify_arqc``, with the ledger's word for `request`'s ATC (hsm/authorisation.py)
        when the ARQC verified and its amount (9F02) is the request's; None otherwise."""
        ...

    async def generate_key(
        self,
        role: KeyRole,
        algorithm: Algorithm = Algorithm.TDES,
        length: int = 16,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> StoredKey: ...

    async def key_check_value(
        self, key: StoredKey, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> str: ...

    async def import_key(
        self,
        key_block: str,
        kbpk: StoredKey,
        role: KeyRole,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> StoredKey: ...

    async def export_key(
        self,
        key: StoredKey,
        kbpk: StoredKey,
        version: str = "B",
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> str: ...

    async def pan_hash(self, pan: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> bytes:
        """HMAC-SHA256 of the PAN under the HSM's PAN-hash key (a ``PHK`` it is configured
        with): the ledger's card look-up key, which the database alone cannot reverse."""
        ...

    async def close(self) -> None: ...

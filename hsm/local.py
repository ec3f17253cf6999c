"""``LocalHSM``: the HSM interface served in-process by ``SoftHsm``.

The operations are microseconds of CPU with no I/O, so they run inline on the event loop;
``timeout_ms`` is accepted for interface parity and cannot be exceeded by a blocking wait.
"""

from __future__ import annotations

import os
import time

from hsm import crypto
from hsm.api import (
    DEFAULT_TIMEOUT_MS,
    AuthorisedArqc,
    PinKey,
    PinMethod,
    SessionKeys,
    Verification,
)
from hsm.authorisation import Authorisation
from hsm.crypto import Algorithm
from hsm.emv import ArpcResponse, ArqcResult, EmvTags
from hsm.engine import SoftHsm
from hsm.keys import KeyRole, Lmk, StoredKey
from hsm.pinblock import PinBlockFormat
from hsm.ratelimit import Clock, PinRateLimit
from switch.iso8583.spec import Dialect


class LocalHSM:
    """``production`` refuses the development LMK and PAN-hash key and turns the PIN rate limit
    on (``PinRateLimit()`` unless one is given); see ``SoftHsm``."""

    def __init__(
        self,
        lmk: Lmk,
        *,
        production: bool = False,
        pan_hash_key: StoredKey | None = None,
        pin_rate_limit: PinRateLimit | None = None,
        rng: crypto.Rng = os.urandom,
        clock: Clock = time.monotonic,
    ) -> None:
        self._core = SoftHsm(
            lmk,
            production=production,
            pan_hash_key=pan_hash_key,
            pin_rate_limit=pin_rate_limit,
            rng=rng,
            clock=clock,
        )

    @property
    def lmk_kcv(self) -> str:
        return self._core.lmk_kcv

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
        return self._core.verify_pin(pin_block, pan, key, pin_block_format, verification)

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
        return self._core.verify_pin_for(
            pin_block, pan, key, pin_block_format, verification, request=request
        )

    async def authorisation_check_value(self, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str:
        return self._core.authorisation_check_value()

    async def derive_pin_verification_data(
        self,
        pvk: StoredKey,
        pan: str,
        clear_pin: str,
        method: PinMethod,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> str:
        return self._core.derive_pin_verification_data(pvk, pan, clear_pin, method)

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
    ) -> bytes:
        return self._core.translate_pin(
            pin_block,
            pan,
            source=source,
            source_format=source_format,
            destination=destination,
            destination_format=destination_format,
        )

    async def generate_mac(
        self, tak: StoredKey, data: bytes, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> bytes:
        return self._core.generate_mac(tak, data)

    async def verify_mac(
        self, tak: StoredKey, data: bytes, mac: bytes, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> bool:
        return self._core.verify_mac(tak, data, mac)

    async def reversal_word(
        self,
        tak: StoredKey,
        data: bytes,
        mac: bytes,
        *,
        dialect: Dialect,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> bytes | None:
        return self._core.reversal_word(tak, data, mac, dialect=dialect)

    async def generate_session_keys(
        self, tmk: StoredKey, *, terminal_id: str, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> SessionKeys:
        return self._core.generate_session_keys(tmk, terminal_id=terminal_id)

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
        return self._core.verify_arqc(
            imk, pan, psn, atc, arqc, cvn=cvn, tags=tags, response=response
        )

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
        return self._core.verify_arqc_for(
            imk, pan, psn, atc, arqc, cvn=cvn, tags=tags, response=response, request=request
        )

    async def generate_key(
        self,
        role: KeyRole,
        algorithm: Algorithm = Algorithm.TDES,
        length: int = 16,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> StoredKey:
        return self._core.generate_key(role, algorithm, length)

    async def key_check_value(self, key: StoredKey, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str:
        return self._core.key_check_value(key)

    async def import_key(
        self,
        key_block: str,
        kbpk: StoredKey,
        role: KeyRole,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> StoredKey:
        return self._core.import_key(key_block, kbpk, role)

    async def export_key(
        self,
        key: StoredKey,
        kbpk: StoredKey,
        version: str = "B",
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> str:
        return self._core.export_key(key, kbpk, version)

    async def pan_hash(self, pan: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> bytes:
        return self._core.pan_hash(pan)

    async def close(self) -> None:
        return None

"""The software HSM: every operation as a synchronous function of the LMK and its arguments.

No I/O. ``LocalHSM`` calls it in-process; the networked server calls it per command. Each
operation unwraps the keys it is given (refusing a wrong role, usage or mode of use), works on
clear values in local variables only, and returns cryptograms, check values or verdicts.

Two things are configured rather than passed per call: the PAN-hash key (a caller who could
choose the key could hash under one it knows) and the PIN-verification rate limit (see
``ratelimit``). In production the rate limit is always on; in development only when given,
because the demo, the load tests and the benchmarks verify a few cards many times a second.
"""

from __future__ import annotations

import hmac
import os
import time

from hsm import authorisation, crypto, dukpt, emv, mac, pinblock, pinverify, reversal, tr31
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
)
from hsm.authorisation import Authorisation
from hsm.crypto import Algorithm
from hsm.emv import ArpcResponse, ArqcResult, EmvTags
from hsm.errors import (
    DevelopmentKeyError,
    DevelopmentLmkError,
    KeyLengthError,
    KeyMaterialError,
    KeyUsageError,
    MessageTypeError,
    PanError,
    RequestError,
)
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, ROLE_SPECS, KeyRole, Lmk, StoredKey, kcv_hex
from hsm.pinblock import PAN_LENGTH_MAX, PinBlockFormat
from hsm.ratelimit import Clock, PinRateLimit, PinRateLimiter
from switch.iso8583.spec import Dialect

_PIN_KEY_ROLES = (KeyRole.TPK, KeyRole.ZPK)
_MAC_KEY_ROLES = (KeyRole.TAK, KeyRole.ZAK)
_KEK_ROLES = (KeyRole.TMK, KeyRole.ZMK)
# HMAC-SHA256 keys are generated at the hash's output size (NIST SP 800-107).
_KEY_LENGTHS = {Algorithm.TDES: (16, 24), Algorithm.AES: (16, 24, 32), Algorithm.HMAC: (32,)}
_SESSION_KEY_LENGTH = 16
_MAC_USAGE = {"M3": Algorithm.TDES, "M6": Algorithm.AES}
_PVK_USAGES_IBM, _PVK_USAGES_VISA = ("V0", "V1"), ("V0", "V2")
_PAN_HASH_KEY_LENGTH_MIN = 16
_PAN_LENGTH_MIN = 12
_IMK_LENGTH = 16


class SoftHsm:
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
        if production and lmk.is_development:
            raise DevelopmentLmkError("the development LMK is refused in production")
        self._lmk = lmk
        self._rng = rng
        # Unwrapped (and the authorisation key derived) once, here, not per request: both are
        # used by every financial request, and a wrong key stops start-up.
        self._pan_hash_key_clear: bytes | None = None
        self._authorisation_key_clear: bytes | None = None
        if pan_hash_key is not None:
            clear = self._pan_hash_clear(pan_hash_key)
            if production and hmac.compare_digest(clear, DEVELOPMENT_PAN_HASH_KEY):
                raise DevelopmentKeyError("the development PAN-hash key is refused in production")
            self._pan_hash_key_clear = clear
            self._authorisation_key_clear = authorisation.authorisation_key(clear)
        if production and pin_rate_limit is None:
            pin_rate_limit = PinRateLimit()
        self._pin_limiter: PinRateLimiter | None = None
        if pin_rate_limit is not None:
            self._pin_limiter = PinRateLimiter(pin_rate_limit, clock=clock, rng=rng)

    @property
    def lmk_kcv(self) -> str:
        return self._lmk.kcv

    # --- PIN -------------------------------------------------------------------------------

    def _pin_key(self, key: PinKey, fmt: PinBlockFormat) -> bytes:
        if isinstance(key, Dukpt):
            return self._dukpt_pin_key(key, fmt)
        clear = self._lmk.unwrap(key, _PIN_KEY_ROLES)
        if key.algorithm is not fmt.algorithm:
            raise KeyUsageError(f"PIN block format {fmt.value} needs a {fmt.algorithm.name} key")
        return clear

    def _dukpt_pin_key(self, key: Dukpt, fmt: PinBlockFormat) -> bytes:
        bdk = self._lmk.unwrap(key.bdk, (KeyRole.BDK,))
        if key.bdk.algorithm is Algorithm.TDES:
            if fmt.algorithm is not Algorithm.TDES:
                raise KeyUsageError("a TDES BDK cannot protect an AES PIN block")
            return dukpt.tdes_working_key(bdk, key.ksn, dukpt.TdesVariant.PIN)
        kind = dukpt.AesDukptKeyType.AES128
        if fmt.algorithm is Algorithm.TDES:
            kind = dukpt.AesDukptKeyType.TDES2
        return dukpt.aes_working_key(bdk, key.ksn, dukpt.AesKeyUsage.PIN_ENCRYPTION, kind)

    def _pvk(self, pvk: StoredKey, usages: tuple[str, ...]) -> bytes:
        clear = self._lmk.unwrap(pvk, (KeyRole.PVK,))
        if pvk.usage not in usages or pvk.algorithm is not Algorithm.TDES:
            raise KeyUsageError(f"PVK usage {pvk.usage} does not allow this method")
        return clear

    def verify_pin(
        self,
        pin_block: bytes,
        pan: str,
        key: PinKey,
        pin_block_format: PinBlockFormat,
        verification: Verification,
    ) -> bool:
        if self._pin_limiter is not None:  # before any key is opened: a refusal costs nothing
            self._pin_limiter.admit(pan)
        clear_key = self._pin_key(key, pin_block_format)
        pin = pinblock.decrypt_pin_block(clear_key, pin_block, pan, pin_block_format)
        if isinstance(verification, VisaPvv):
            pvk = self._pvk(verification.pvk, _PVK_USAGES_VISA)
            return pinverify.visa_pvv_verify(pvk, pan, verification.pvki, pin, verification.pvv)
        return self._verify_ibm(verification, pan, pin)

    def verify_pin_for(
        self,
        pin_block: bytes,
        pan: str,
        key: PinKey,
        pin_block_format: PinBlockFormat,
        verification: Verification,
        *,
        request: Authorisation,
    ) -> bytes | None:
        """The ledger's token for `request` when the PIN is right; None when it is wrong."""
        if not self.verify_pin(pin_block, pan, key, pin_block_format, verification):
            return None
        return authorisation.token(
            self._held_authorisation_key(), request.message(self.pan_hash(pan))
        )

    def authorisation_check_value(self) -> str:
        return authorisation.check_value(self._held_authorisation_key())

    def _held_authorisation_key(self) -> bytes:
        if self._authorisation_key_clear is None:
            raise KeyMaterialError("this HSM holds no PAN-hash key (configure pan_hash_key)")
        return self._authorisation_key_clear

    def _verify_ibm(self, verification: Ibm3624Offset, pan: str, pin: str) -> bool:
        pvk = self._pvk(verification.pvk, _PVK_USAGES_IBM)
        block = pinverify.validation_block(verification.validation_data, pan)
        if len(verification.offset) != verification.pin_length:
            raise RequestError("IBM 3624 offset length differs from the PIN length")
        table = verification.decimalization_table
        return pinverify.ibm3624_verify(pvk, block, table, pin, verification.offset)

    def derive_pin_verification_data(
        self, pvk: StoredKey, pan: str, clear_pin: str, method: PinMethod
    ) -> str:
        if isinstance(method, Ibm3624Method):
            clear = self._pvk(pvk, _PVK_USAGES_IBM)
            block = pinverify.validation_block(method.validation_data, pan)
            return pinverify.ibm3624_offset(clear, block, method.decimalization_table, clear_pin)
        clear = self._pvk(pvk, _PVK_USAGES_VISA)
        return pinverify.visa_pvv(clear, pan, method.pvki, clear_pin)

    def translate_pin(
        self,
        pin_block: bytes,
        pan: str,
        *,
        source: PinKey,
        source_format: PinBlockFormat,
        destination: StoredKey,
        destination_format: PinBlockFormat,
    ) -> bytes:
        pin = pinblock.decrypt_pin_block(
            self._pin_key(source, source_format), pin_block, pan, source_format
        )
        out_key = self._pin_key(destination, destination_format)
        return pinblock.encrypt_pin_block(out_key, pin, pan, destination_format, rng=self._rng)

    # --- MAC -------------------------------------------------------------------------------

    def _mac_key(self, tak: StoredKey, modes: str) -> bytes:
        clear = self._lmk.unwrap(tak, _MAC_KEY_ROLES, modes)
        if _MAC_USAGE.get(tak.usage) is not tak.algorithm:
            raise KeyUsageError(f"MAC key usage {tak.usage} does not fit its algorithm")
        if tak.algorithm is Algorithm.TDES and len(clear) != _SESSION_KEY_LENGTH:
            raise KeyLengthError("a retail MAC key is double-length TDES")
        return clear

    def generate_mac(self, tak: StoredKey, data: bytes) -> bytes:
        """A MAC for the switch's answer. Never over a message a terminal initiates: the
        switch's certificate may generate MACs under a terminal's TAK, and one over a forged
        0420 would get it a reversal word."""
        if reversal.is_initiating(data):
            raise MessageTypeError("no MAC is generated over a request: only a terminal sends one")
        return mac.generate_mac(tak.algorithm, self._mac_key(tak, "CG"), data)

    def verify_mac(self, tak: StoredKey, data: bytes, mac_value: bytes) -> bool:
        return mac.verify_mac(tak.algorithm, self._mac_key(tak, "CV"), data, mac_value)

    def reversal_word(
        self, tak: StoredKey, data: bytes, mac_value: bytes, *, dialect: Dialect
    ) -> bytes | None:
        """The ledger's word for the reversal in `data` (an 0420 or 0421's MAC input in
        `dialect`) when its MAC verifies under the terminal's TAK; None when it does not. What
        the word covers is read from the bytes the MAC covers, never from the caller."""
        reversed_, pan = reversal.read_reversal(data, dialect)
        if not self.verify_mac(tak, data, mac_value):
            return None
        message = reversed_.message(self.pan_hash(pan))
        return authorisation.token(self._held_authorisation_key(), message)

    # --- PAN hash --------------------------------------------------------------------------

    def _pan_hash_clear(self, key: StoredKey) -> bytes:
        clear = self._lmk.unwrap(key, (KeyRole.PHK,), "G")
        if len(clear) < _PAN_HASH_KEY_LENGTH_MIN:
            raise KeyLengthError(f"a PAN-hash key is at least {_PAN_HASH_KEY_LENGTH_MIN} bytes")
        return clear

    def pan_hash(self, pan: str) -> bytes:
        """HMAC-SHA256 of the PAN under the configured PAN-hash key."""
        if self._pan_hash_key_clear is None:
            raise KeyMaterialError("this HSM holds no PAN-hash key (configure pan_hash_key)")
        if not (pan.isascii() and pan.isdigit() and _PAN_LENGTH_MIN <= len(pan) <= PAN_LENGTH_MAX):
            raise PanError(f"a PAN is {_PAN_LENGTH_MIN}..{PAN_LENGTH_MAX} decimal digits")
        return hmac.digest(self._pan_hash_key_clear, pan.encode("ascii"), "sha256")

    # --- EMV -------------------------------------------------------------------------------

    def _imk(self, imk: StoredKey) -> bytes:
        clear = self._lmk.unwrap(imk, (KeyRole.IMK_AC,), "X")
        if imk.algorithm is not Algorithm.TDES:
            raise KeyUsageError("an IMK-AC derives TDES card keys: it must be a TDES key")
        if len(clear) != _IMK_LENGTH:
            raise KeyLengthError("an IMK-AC is double-length TDES")
        return clear

    def verify_arqc(
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
    ) -> ArqcResult:
        version = emv.cryptogram_version(cvn)
        return emv.verify_arqc(
            self._imk(imk), pan, psn, atc, arqc, version=version, tags=tags, response=response
        )

    def verify_arqc_for(
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
    ) -> AuthorisedArqc:
        """`verify_arqc`, and the ledger's word for the request's ATC when the ARQC verified and
        the amount it covers (9F02) is the request's."""
        result = self.verify_arqc(imk, pan, psn, atc, arqc, cvn=cvn, tags=tags, response=response)
        amount = tags.get(emv.TAG_AMOUNT_AUTHORISED)
        if not result.verified or amount is None or amount.hex() != f"{request.amount_minor:012d}":
            return AuthorisedArqc(result, None)
        message = request.chip_message(self.pan_hash(pan), int.from_bytes(atc, "big"))
        return AuthorisedArqc(result, authorisation.token(self._held_authorisation_key(), message))

    # --- keys ------------------------------------------------------------------------------

    def _new_key(self, algorithm: Algorithm, length: int) -> bytes:
        if length not in _KEY_LENGTHS[algorithm]:
            raise KeyLengthError(f"{algorithm.name} keys are {_KEY_LENGTHS[algorithm]} bytes")
        raw = self._rng(length)
        return crypto.with_odd_parity(raw) if algorithm is Algorithm.TDES else raw

    def generate_key(self, role: KeyRole, algorithm: Algorithm, length: int) -> StoredKey:
        return self._lmk.wrap(role, algorithm, self._new_key(algorithm, length), rng=self._rng)

    def generate_session_keys(self, tmk: StoredKey, *, terminal_id: str) -> SessionKeys:
        """New TPK and TAK of the TMK's algorithm, each under the LMK and under the TMK, with the
        ledger's word that they are `terminal_id`'s under this TMK."""
        tmk_clear = self._lmk.unwrap(tmk, (KeyRole.TMK,), "BE")
        algorithm = tmk.algorithm

        def deliver(role: KeyRole) -> DeliveredKey:
            key = self._new_key(algorithm, _SESSION_KEY_LENGTH)
            under_tmk = crypto.ecb_encrypt(algorithm, tmk_clear, key).hex().upper()
            stored = self._lmk.wrap(role, algorithm, key, rng=self._rng)
            return DeliveredKey(stored, under_tmk, kcv_hex(algorithm, key))

        tpk, tak = deliver(KeyRole.TPK), deliver(KeyRole.TAK)
        message = authorisation.session_keys_message(
            terminal_id, tmk.to_text(), tpk.stored.to_text(), tak.stored.to_text()
        )
        return SessionKeys(tpk, tak, authorisation.token(self._held_authorisation_key(), message))

    def key_check_value(self, key: StoredKey) -> str:
        return kcv_hex(key.algorithm, self._lmk.unwrap(key, tuple(KeyRole)))

    def export_key(self, key: StoredKey, kbpk: StoredKey, version: str) -> str:
        """Export ``key`` as a TR-31 block under a TMK/ZMK (usage, mode, exportability kept)."""
        kek = self._lmk.unwrap(kbpk, _KEK_ROLES, "BE")
        clear = self._lmk.unwrap(key, tuple(KeyRole))
        header, _ = tr31.parse_header(key.text)
        if header.exportability != "E":
            raise KeyUsageError("the key is not exportable")
        if version not in ("A", "B", "C", "D"):
            raise RequestError("TR-31 version must be A, B, C or D")
        out = tr31.Header(version, key.usage, key.algorithm.value, key.mode, "00", "E")
        return tr31.wrap(kek, out, clear, rng=self._rng)

    def import_key(self, key_block: str, kbpk: StoredKey, role: KeyRole) -> StoredKey:
        """Import a TR-31 block under a TMK/ZMK as a ``role`` key; its usage must fit the role."""
        kek = self._lmk.unwrap(kbpk, _KEK_ROLES, "BD")
        header, clear = tr31.unwrap(kek, key_block, usages=ROLE_SPECS[role].usages)
        algorithm = tr31.algorithm_of(header)
        return self._lmk.wrap(
            role,
            algorithm,
            clear,
            usage=header.usage,
            exportability=header.exportability,
            rng=self._rng,
        )

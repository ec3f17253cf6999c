"""The simulated terminal's encrypting PIN pad (EPP): the only terminal-side place keys live.

A real kiosk's EPP holds its TMK in tamper-responsive hardware; the simulator holds it here and
never logs or prints it. Key change delivers TPK and TAK under the TMK; the EPP decrypts them and
refuses them unless their check values match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from hsm import crypto, dukpt, mac, pinblock
from hsm.crypto import Algorithm
from hsm.pinblock import PinBlockFormat
from switch.iso8583.elements import KeyChangeData


class KeyCheckError(Exception):
    """A delivered session key's check value does not match: the keys are refused."""


@dataclass(frozen=True, slots=True, repr=False)
class Epp:
    tmk: bytes
    tpk: bytes | None = None
    tak: bytes | None = None
    algorithm: Algorithm = Algorithm.TDES
    # A DUKPT PIN pad (TDES, ANSI X9.24-1): its initial key and initial KSN, injected at the
    # key-loading facility. PIN blocks then go under a new key per transaction, not the TPK.
    ipek: bytes | None = None
    initial_ksn: bytes | None = None

    def __repr__(self) -> str:
        return f"Epp(algorithm={self.algorithm.name}, session_keys={self.tpk is not None})"

    def install_session_keys(self, data: KeyChangeData) -> Epp:
        tpk = self._unwrap(data.tpk_under_tmk, data.tpk_kcv, "TPK")
        tak = self._unwrap(data.tak_under_tmk, data.tak_kcv, "TAK")
        return replace(self, tpk=tpk, tak=tak)

    def _unwrap(self, under_tmk_hex: str, kcv_hex: str, name: str) -> bytes:
        key = crypto.ecb_decrypt(self.algorithm, self.tmk, bytes.fromhex(under_tmk_hex))
        if crypto.key_check_value(self.algorithm, key).hex().upper() != kcv_hex.upper():
            raise KeyCheckError(f"{name} check value does not match")
        return key

    def pin_block(self, pin: str, pan: str, *, rng: crypto.Rng = os.urandom) -> bytes:
        """The PIN as the terminal sends it: ISO format 0 under the TPK (format 4 for AES)."""
        assert self.tpk is not None, "no TPK: run key change first"
        fmt = PinBlockFormat.ISO4 if self.algorithm is Algorithm.AES else PinBlockFormat.ISO0
        return pinblock.encrypt_pin_block(self.tpk, pin, pan, fmt, rng=rng)

    def dukpt_pin_block(
        self, pin: str, pan: str, counter: int, *, rng: crypto.Rng = os.urandom
    ) -> tuple[bytes, bytes]:
        """Format 0 under transaction `counter`'s PIN key; returns the block and its KSN."""
        assert self.ipek is not None, "not a DUKPT PIN pad"
        assert self.initial_ksn is not None, "not a DUKPT PIN pad"
        assert 0 < counter < 1 << 21, "the DUKPT counter is 21 bits"
        base = int.from_bytes(self.initial_ksn, "big") & ~((1 << 21) - 1)
        ksn = (base | counter).to_bytes(len(self.initial_ksn), "big")
        key = crypto.xor(
            dukpt.tdes_transaction_key_from_ipek(self.ipek, ksn), dukpt.TdesVariant.PIN.value
        )
        return pinblock.encrypt_pin_block(key, pin, pan, PinBlockFormat.ISO0, rng=rng), ksn

    def mac(self, data: bytes) -> bytes:
        assert self.tak is not None, "no TAK: run key change first"
        return mac.generate_mac(self.algorithm, self.tak, data)

    def verify_mac(self, data: bytes, value: bytes) -> bool:
        assert self.tak is not None, "no TAK: run key change first"
        return mac.verify_mac(self.algorithm, self.tak, data, value)

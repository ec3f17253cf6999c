"""DUKPT: ANSI X9.24-1 (TDES, 80-bit KSN) and X9.24-3 (AES, 96-bit KSN) key derivation.

Pure functions: BDK and KSN in, keys out. The HSM derives the transaction key per call from
the BDK; it keeps no future-key registers (that is the terminal's side).
"""

from __future__ import annotations

from enum import Enum

from hsm import crypto
from hsm.errors import DukptError, KeyLengthError

TDES_KSN_LENGTH = 10
AES_KSN_LENGTH = 12
_TDES_COUNTER_BITS = 21
_TDES_COUNTER_ONES_MAX = 10
_AES_COUNTER_ONES_MAX = 16
_BDK_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")


class TdesVariant(Enum):
    """X9.24-1 variant masks applied to a transaction key to obtain a working key."""

    PIN = bytes.fromhex("00000000000000FF00000000000000FF")
    MAC_REQUEST = bytes.fromhex("000000000000FF00000000000000FF00")
    MAC_RESPONSE = bytes.fromhex("00000000FF00000000000000FF000000")


def _check_tdes(bdk_or_key: bytes, ksn: bytes) -> None:
    if len(bdk_or_key) != 16:
        raise KeyLengthError("TDES DUKPT keys are double length")
    if len(ksn) != TDES_KSN_LENGTH:
        raise DukptError("TDES DUKPT KSN must be 10 bytes")


def tdes_counter(ksn: bytes) -> int:
    return int.from_bytes(ksn, "big") & ((1 << _TDES_COUNTER_BITS) - 1)


def tdes_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key from the BDK and any KSN of the device (counter ignored)."""
    _check_tdes(bdk, ksn)
    base = int.from_bytes(ksn, "big") & ~((1 << _TDES_COUNTER_BITS) - 1)
    ksn8 = base.to_bytes(TDES_KSN_LENGTH, "big")[:8]
    left = crypto.tdes_ecb_encrypt(bdk, ksn8)
    right = crypto.tdes_ecb_encrypt(crypto.xor(bdk, _BDK_MASK), ksn8)
    return left + right


def _non_reversible(key: bytes, register: bytes) -> bytes:
    def half(k: bytes) -> bytes:
        left, right = k[:8], k[8:]
        return crypto.xor(crypto.tdes_ecb_encrypt(left, crypto.xor(register, right)), right)

    return half(crypto.xor(key, _BDK_MASK)) + half(key)


def tdes_transaction_key_from_ipek(ipek: bytes, ksn: bytes) -> bytes:
    _check_tdes(ipek, ksn)
    counter = tdes_counter(ksn)
    if counter == 0 or counter.bit_count() > _TDES_COUNTER_ONES_MAX:
        raise DukptError("KSN counter is zero or has more than 10 one bits")
    register = int.from_bytes(ksn[2:], "big") & ~((1 << _TDES_COUNTER_BITS) - 1)
    key = ipek
    for bit in reversed(range(_TDES_COUNTER_BITS)):
        if counter >> bit & 1:
            register |= 1 << bit
            key = _non_reversible(key, register.to_bytes(8, "big"))
    return key


def tdes_transaction_key(bdk: bytes, ksn: bytes) -> bytes:
    return tdes_transaction_key_from_ipek(tdes_ipek(bdk, ksn), ksn)


def tdes_working_key(bdk: bytes, ksn: bytes, variant: TdesVariant) -> bytes:
    return crypto.xor(tdes_transaction_key(bdk, ksn), variant.value)


class AesKeyUsage(Enum):
    """X9.24-3 key usage indicators in the derivation data."""

    KEY_ENCRYPTION = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH = 0x2002
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001
    DATA_BOTH = 0x3002
    KEY_DERIVATION = 0x8000
    INITIAL_KEY = 0x8001


class AesDukptKeyType(Enum):
    """Derived key type: (algorithm indicator, length in bits)."""

    TDES2 = (0x0000, 128)
    TDES3 = (0x0001, 192)
    AES128 = (0x0002, 128)
    AES192 = (0x0003, 192)
    AES256 = (0x0004, 256)

    @classmethod
    def for_aes_key(cls, key: bytes) -> AesDukptKeyType:
        by_length = {16: cls.AES128, 24: cls.AES192, 32: cls.AES256}
        if len(key) not in by_length:
            raise KeyLengthError("AES DUKPT keys are 16, 24 or 32 bytes")
        return by_length[len(key)]


def _aes_derive(key: bytes, usage: AesKeyUsage, kind: AesDukptKeyType, data8: bytes) -> bytes:
    algorithm, bits = kind.value
    blocks = []
    for counter in range(1, -(-bits // 128) + 1):
        derivation = bytes([0x01, counter]) + usage.value.to_bytes(2, "big")
        derivation += algorithm.to_bytes(2, "big") + bits.to_bytes(2, "big") + data8
        blocks.append(crypto.aes_ecb_encrypt(key, derivation))
    return b"".join(blocks)[: bits // 8]


def _check_aes_ksn(ksn: bytes) -> int:
    if len(ksn) != AES_KSN_LENGTH:
        raise DukptError("AES DUKPT KSN must be 12 bytes")
    counter = int.from_bytes(ksn[8:], "big")
    if counter == 0 or counter.bit_count() > _AES_COUNTER_ONES_MAX:
        raise DukptError("KSN counter is zero or has more than 16 one bits")
    return counter


def aes_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    """Initial key from the BDK and the 8-byte initial key ID (BDK ID + derivation ID)."""
    if len(initial_key_id) != 8:
        raise DukptError("AES DUKPT initial key ID must be 8 bytes")
    kind = AesDukptKeyType.for_aes_key(bdk)
    return _aes_derive(bdk, AesKeyUsage.INITIAL_KEY, kind, initial_key_id)


def aes_transaction_key_from_initial(initial_key: bytes, ksn: bytes) -> bytes:
    counter = _check_aes_ksn(ksn)
    kind = AesDukptKeyType.for_aes_key(initial_key)
    derivation_id = ksn[4:8]
    key, working = initial_key, 0
    for bit in reversed(range(32)):
        if counter >> bit & 1:
            working |= 1 << bit
            data8 = derivation_id + working.to_bytes(4, "big")
            key = _aes_derive(key, AesKeyUsage.KEY_DERIVATION, kind, data8)
    return key


def aes_transaction_key(bdk: bytes, ksn: bytes) -> bytes:
    _check_aes_ksn(ksn)
    return aes_transaction_key_from_initial(aes_initial_key(bdk, ksn[:8]), ksn)


def aes_working_key(
    bdk: bytes, ksn: bytes, usage: AesKeyUsage, kind: AesDukptKeyType | None = None
) -> bytes:
    """Working key of ``kind`` (default: the BDK's AES size) for one transaction."""
    transaction_key = aes_transaction_key(bdk, ksn)
    kind = kind or AesDukptKeyType.for_aes_key(bdk)
    return _aes_derive(transaction_key, usage, kind, ksn[4:12])

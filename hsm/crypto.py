"""Block-cipher building blocks: TDES and AES in ECB/CBC, CMAC, key check values (and the check
value of an HMAC key).

Pure functions over bytes. TDES comes from ``cryptography.hazmat.decrepit``; single- and
double-length keys are expanded to three-key form (K1|K2|K1) because the library deprecates
short TDES keys, and an expanded key computes exactly the same function.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from enum import Enum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac as _cmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from hsm.errors import KeyLengthError

TDES_BLOCK = 8
AES_BLOCK = 16
TDES_KEY_LENGTHS = (8, 16, 24)
AES_KEY_LENGTHS = (16, 24, 32)
_CACHE_KEYS_MAX = 4096
_CACHE_TRANSIENT_KEYS_MAX = 64

Rng = Callable[[int], bytes]


class Algorithm(Enum):
    """Key algorithm; the value is the TR-31 algorithm letter."""

    TDES = "T"
    AES = "A"
    HMAC = "H"  # HMAC-SHA256 keys (the PAN-hash key): no cipher, any length

    @property
    def block_size(self) -> int:
        assert self is not Algorithm.HMAC, "an HMAC key has no cipher block"
        return TDES_BLOCK if self is Algorithm.TDES else AES_BLOCK


def xor(a: bytes, b: bytes) -> bytes:
    assert len(a) == len(b), "xor operands differ in length"
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def expand_tdes_key(key: bytes) -> bytes:
    """Return the 24-byte form of a 8-, 16- or 24-byte TDES key."""
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    raise KeyLengthError(f"TDES key must be 8, 16 or 24 bytes, got {len(key)}")


def check_aes_key(key: bytes) -> bytes:
    if len(key) not in AES_KEY_LENGTHS:
        raise KeyLengthError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    return key


# Every byte with its low bit set for odd parity: a key is translated through it in one call
# (EMV derives two keys per transaction; a per-byte loop cost more than the ciphers).
_ODD_PARITY = bytes((b & 0xFE) | (((b >> 1).bit_count() + 1) & 1) for b in range(256))


def with_odd_parity(key: bytes) -> bytes:
    """Set each byte's low bit so the byte has odd parity (DES key convention)."""
    return key.translate(_ODD_PARITY)


# Cipher objects are reused per key (building one costs more than a block operation). An ECB
# context keeps no state between whole blocks, so one per key and direction serves every call;
# it is never finalized. (The HSM and the simulator call these from one thread, their event
# loop's.)
@functools.lru_cache(maxsize=_CACHE_KEYS_MAX)
def _tdes_ecb(key: bytes, encrypt: bool) -> CipherContext:
    # ECB is what the standards specify for single-block PIN, KCV and key-under-KEK operations.
    cipher = Cipher(TripleDES(expand_tdes_key(key)), modes.ECB())  # noqa: S305
    return cipher.encryptor() if encrypt else cipher.decryptor()


# Each decryptor made from a CBC Cipher starts from its IV (encryption: `_CbcChain`).
@functools.lru_cache(maxsize=_CACHE_KEYS_MAX)
def _tdes_cbc(key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    return Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(iv))


# A key of one transaction (an EMV card's master or session key) takes its ciphers from a small
# cache of its own: a stream of them would push the terminals' working keys, which come back on
# every request, out of the main cache, and one transaction still reuses its session key.
@functools.lru_cache(maxsize=_CACHE_TRANSIENT_KEYS_MAX)
def _tdes_ecb_transient(key: bytes, encrypt: bool) -> CipherContext:
    return _tdes_ecb.__wrapped__(key, encrypt)


class _CbcChain:
    """A CBC encryptor kept for one key across calls (making one costs more than a MAC's
    blocks). CBC carries a call's last ciphertext block into the next as its chaining value;
    each call xors that block and its own IV into its first plaintext block, which gives
    exactly what a fresh encryptor from that IV gives."""

    __slots__ = ("_context", "_last")

    def __init__(self, key: bytes) -> None:
        cipher = Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(bytes(TDES_BLOCK)))
        self._context = cipher.encryptor()
        self._last = 0  # the chaining value: the zero IV before the first call

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        if not data:
            return b""
        first = int.from_bytes(data[:TDES_BLOCK], "big") ^ int.from_bytes(iv, "big") ^ self._last
        out = self._context.update(first.to_bytes(TDES_BLOCK, "big") + data[TDES_BLOCK:])
        self._last = int.from_bytes(out[-TDES_BLOCK:], "big")
        return out


@functools.lru_cache(maxsize=_CACHE_KEYS_MAX)
def _tdes_cbc_chain(key: bytes) -> _CbcChain:
    return _CbcChain(key)


@functools.lru_cache(maxsize=_CACHE_TRANSIENT_KEYS_MAX)
def _tdes_cbc_chain_transient(key: bytes) -> _CbcChain:
    return _CbcChain(key)


@functools.lru_cache(maxsize=_CACHE_KEYS_MAX)
def _aes_ecb(key: bytes, encrypt: bool) -> CipherContext:
    cipher = Cipher(algorithms.AES(check_aes_key(key)), modes.ECB())  # noqa: S305
    return cipher.encryptor() if encrypt else cipher.decryptor()


def _whole_blocks(data: bytes, block: int) -> None:
    if len(data) % block:
        raise ValueError(f"data length {len(data)} is not a multiple of {block}")


def tdes_ecb_encrypt(key: bytes, data: bytes, *, transient: bool = False) -> bytes:
    _whole_blocks(data, TDES_BLOCK)
    return (_tdes_ecb_transient(key, True) if transient else _tdes_ecb(key, True)).update(data)


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    _whole_blocks(data, TDES_BLOCK)
    return _tdes_ecb(key, False).update(data)


def tdes_cbc_encrypt(key: bytes, iv: bytes, data: bytes, *, transient: bool = False) -> bytes:
    _whole_blocks(data, TDES_BLOCK)
    if len(iv) != TDES_BLOCK:
        raise ValueError(f"a TDES IV is {TDES_BLOCK} bytes, got {len(iv)}")
    chain = _tdes_cbc_chain_transient(key) if transient else _tdes_cbc_chain(key)
    return chain.encrypt(iv, data)


def tdes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    _whole_blocks(data, TDES_BLOCK)
    dec = _tdes_cbc(key, iv).decryptor()
    return dec.update(data) + dec.finalize()


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    _whole_blocks(data, AES_BLOCK)
    return _aes_ecb(key, True).update(data)


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    _whole_blocks(data, AES_BLOCK)
    return _aes_ecb(key, False).update(data)


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    _whole_blocks(data, AES_BLOCK)
    enc = Cipher(algorithms.AES(check_aes_key(key)), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    _whole_blocks(data, AES_BLOCK)
    dec = Cipher(algorithms.AES(check_aes_key(key)), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def ecb_encrypt(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    if algorithm is Algorithm.TDES:
        return tdes_ecb_encrypt(key, data)
    return aes_ecb_encrypt(key, data)


def ecb_decrypt(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    if algorithm is Algorithm.TDES:
        return tdes_ecb_decrypt(key, data)
    return aes_ecb_decrypt(key, data)


def aes_cmac(key: bytes, data: bytes) -> bytes:
    mac = _cmac.CMAC(algorithms.AES(check_aes_key(key)))
    mac.update(data)
    return mac.finalize()


def _cmac_subkey(block: bytes) -> bytes:
    """Double in GF(2^n) (NIST SP 800-38B)."""
    rb = 0x1B if len(block) == TDES_BLOCK else 0x87
    n = int.from_bytes(block, "big") << 1
    if n >> (8 * len(block)):
        n ^= rb
    return (n & ((1 << (8 * len(block))) - 1)).to_bytes(len(block), "big")


def tdes_cmac(key: bytes, data: bytes) -> bytes:
    """CMAC over TDES (64-bit block), as TR-31 version B uses for MAC and key derivation."""
    k1 = _cmac_subkey(tdes_ecb_encrypt(key, bytes(TDES_BLOCK)))
    k2 = _cmac_subkey(k1)
    if data and len(data) % TDES_BLOCK == 0:
        last = xor(data[-TDES_BLOCK:], k1)
        head = data[:-TDES_BLOCK]
    else:
        whole = len(data) - len(data) % TDES_BLOCK
        tail = data[whole:] + b"\x80" + bytes(TDES_BLOCK - 1 - len(data) % TDES_BLOCK)
        last = xor(tail, k2)
        head = data[:whole]
    chain = tdes_cbc_encrypt(key, bytes(TDES_BLOCK), head)[-TDES_BLOCK:] if head else b""
    return tdes_ecb_encrypt(key, xor(last, chain or bytes(TDES_BLOCK)))


def cmac(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    if algorithm is Algorithm.TDES:
        return tdes_cmac(key, data)
    return aes_cmac(key, data)


def kcv_tdes(key: bytes, length: int = 3) -> bytes:
    """Legacy KCV: encrypt a zero block, keep the leftmost bytes."""
    return tdes_ecb_encrypt(key, bytes(TDES_BLOCK))[:length]


def kcv_aes(key: bytes, length: int = 3) -> bytes:
    """AES KCV, CMAC style (X9.24-1:2017): CMAC of a zero block, leftmost bytes."""
    return aes_cmac(key, bytes(AES_BLOCK))[:length]


def kcv_hmac(key: bytes, length: int = 3) -> bytes:
    """No standard defines a KCV for HMAC keys. This follows the CMAC method with the key's own
    MAC function: HMAC-SHA256 of a zero block, leftmost bytes."""
    return hmac.digest(key, bytes(AES_BLOCK), "sha256")[:length]


def key_check_value(algorithm: Algorithm, key: bytes, length: int = 3) -> bytes:
    if algorithm is Algorithm.TDES:
        return kcv_tdes(key, length)
    if algorithm is Algorithm.HMAC:
        return kcv_hmac(key, length)
    return kcv_aes(key, length)

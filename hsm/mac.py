"""MACs: ISO/IEC 9797-1 algorithm 1 (CBC-MAC) and algorithm 3 (retail MAC) over DES/TDES, and
AES-CMAC. Pure functions; a MAC here is the full block, callers truncate.
"""

from __future__ import annotations

import hmac

from hsm import crypto
from hsm.crypto import Algorithm
from hsm.errors import KeyLengthError, RequestError

ISO8583_MAC_LENGTH = 8
MAC_LENGTH_MIN = 4


def pad_iso9797(data: bytes, method: int, block: int = crypto.TDES_BLOCK) -> bytes:
    """Padding method 1 (zeros; empty data becomes one zero block) or 2 (0x80 then zeros)."""
    if method == 1:
        if not data:
            return bytes(block)
        return data + bytes(-len(data) % block)
    if method == 2:
        data += b"\x80"
        return data + bytes(-len(data) % block)
    raise RequestError("ISO 9797-1 padding method must be 1 or 2")


def iso9797_alg1(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """CBC-MAC with the whole (single, double or triple length) key on every block."""
    padded = pad_iso9797(data, padding)
    return crypto.tdes_cbc_encrypt(key, bytes(crypto.TDES_BLOCK), padded)[-crypto.TDES_BLOCK :]


def iso9797_alg3(key: bytes, data: bytes, padding: int = 1, *, transient: bool = False) -> bytes:
    """Retail MAC: single-DES CBC under K1, then decrypt under K2, encrypt under K1.
    ``transient``: the key serves one transaction (see the transient cache in ``crypto``)."""
    if len(key) != 16:
        raise KeyLengthError("retail MAC needs a double-length key")
    padded = pad_iso9797(data, padding)
    head, last = padded[: -crypto.TDES_BLOCK], padded[-crypto.TDES_BLOCK :]
    # Output transformation 3 on the last chain value, E_K1(D_K2(H_q)) with
    # H_q = E_K1(H_q-1 xor D_q), is two-key TDES (EDE under K1, K2, K1) of H_q-1 xor D_q: the
    # single-DES chain under K1 runs over all blocks but the last, then one TDES block.
    if head:
        iv = bytes(crypto.TDES_BLOCK)
        chained = crypto.tdes_cbc_encrypt(key[:8], iv, head, transient=transient)
        last = crypto.xor(chained[-crypto.TDES_BLOCK :], last)
    return crypto.tdes_ecb_encrypt(key, last, transient=transient)


def generate_mac(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    """The switch's MAC: retail MAC for TDES keys, AES-CMAC for AES keys (8 bytes each)."""
    assert algorithm is not Algorithm.HMAC, "the switch's MACs are block-cipher MACs"
    if algorithm is Algorithm.TDES:
        return iso9797_alg3(key, data)
    return crypto.aes_cmac(key, data)[:ISO8583_MAC_LENGTH]


def verify_mac(algorithm: Algorithm, key: bytes, data: bytes, mac: bytes) -> bool:
    """True when ``mac`` equals the leftmost bytes of the MAC; at least 4 bytes are compared."""
    if not (MAC_LENGTH_MIN <= len(mac) <= ISO8583_MAC_LENGTH):
        raise RequestError(f"MAC length must be {MAC_LENGTH_MIN}..{ISO8583_MAC_LENGTH} bytes")
    return hmac.compare_digest(generate_mac(algorithm, key, data)[: len(mac)], mac)

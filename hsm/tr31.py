"""TR-31 / ANSI X9.143 key blocks: wrap and unwrap, versions A and C (variant binding, TDES),
B (TDES key derivation) and D (AES key derivation).

A block is ASCII: a 16-character header, optional blocks, the enciphered key data in hex and the
MAC in hex. The header is authenticated, so key usage, algorithm, mode of use and exportability
are bound to the key; ``unwrap`` checks them against what the caller expects.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Collection
from dataclasses import dataclass, replace

from hsm import crypto
from hsm.crypto import Algorithm
from hsm.errors import KeyBlockError, KeyLengthError, KeyUsageError
from hsm.mac import iso9797_alg1

HEADER_LENGTH = 16
BLOCK_LENGTH_MAX = 9999
_OPTIONAL_BLOCKS_MAX = 99
_DERIVED_CACHE_MAX = 256
_VARIANT_ENC = 0x45
_VARIANT_MAC = 0x4D
_MAC_LENGTH = {"A": 4, "B": 8, "C": 4, "D": 16}
_ALGORITHMS = {"T": Algorithm.TDES, "A": Algorithm.AES, "H": Algorithm.HMAC}


@dataclass(frozen=True)
class Header:
    version: str
    usage: str
    algorithm: str
    mode: str
    key_version: str = "00"
    exportability: str = "E"
    optional_blocks: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        ok = (
            self.version in _MAC_LENGTH
            and len(self.usage) == 2
            and len(self.algorithm) == 1
            and len(self.mode) == 1
            and len(self.key_version) == 2
            and len(self.exportability) == 1
            and len(self.optional_blocks) <= _OPTIONAL_BLOCKS_MAX
            and (self.usage + self.algorithm + self.mode + self.key_version).isascii()
        )
        if not ok:
            raise KeyBlockError("TR-31 header field has the wrong size or value")

    def optional(self, block_id: str) -> str | None:
        return next((data for bid, data in self.optional_blocks if bid == block_id), None)

    def encode(self, block_length: int) -> str:
        blocks = "".join(_encode_optional(bid, data) for bid, data in self.optional_blocks)
        return (
            f"{self.version}{block_length:04d}{self.usage}{self.algorithm}{self.mode}"
            f"{self.key_version}{self.exportability}{len(self.optional_blocks):02d}00{blocks}"
        )


def _encode_optional(block_id: str, data: str) -> str:
    length = 4 + len(data)
    if length > 0xFF:
        raise KeyBlockError("optional block too long")
    return f"{block_id}{length:02X}{data}"


def _parse_optional(text: str, count: int) -> tuple[tuple[tuple[str, str], ...], int]:
    blocks, pos = [], HEADER_LENGTH
    for _ in range(count):
        try:
            block_id, length = text[pos : pos + 2], int(text[pos + 2 : pos + 4], 16)
        except ValueError:
            raise KeyBlockError("TR-31 optional block length is not hex") from None
        if length < 4 or pos + length > len(text):
            raise KeyBlockError("TR-31 optional block overruns the key block")
        blocks.append((block_id, text[pos + 4 : pos + length]))
        pos += length
    return tuple(blocks), pos


def parse_header(text: str) -> tuple[Header, int]:
    """Parse header and optional blocks; return them and where the key data starts."""
    if len(text) < HEADER_LENGTH or not text.isascii():
        raise KeyBlockError("TR-31 key block is too short or not ASCII")
    if not text[1:5].isdigit() or int(text[1:5]) != len(text):
        raise KeyBlockError("TR-31 key block length field does not match its length")
    if not text[12:14].isdigit():
        raise KeyBlockError("TR-31 optional block count is not decimal")
    blocks, end = _parse_optional(text, int(text[12:14]))
    header = Header(text[0], text[5:7], text[7], text[8], text[9:11], text[11], blocks)
    return header, end


def _with_padding_block(header: Header, block_size: int) -> Header:
    """Optional blocks must fill whole cipher blocks; a 'PB' block pads them."""
    if not header.optional_blocks or header.optional("PB") is not None:
        return header
    used = sum(4 + len(data) for _, data in header.optional_blocks)
    pad = -used % block_size
    pad += block_size if pad < 4 else 0
    padded = (*header.optional_blocks, ("PB", "0" * (pad - 4)))
    return replace(header, optional_blocks=padded)


# Derived keys are cached: every stored key shares one KBPK (the LMK), so this saves four
# CMACs per unwrap on the hot path.
@functools.lru_cache(maxsize=_DERIVED_CACHE_MAX)
def _derive(version: str, kbpk: bytes) -> tuple[bytes, bytes]:
    """Return (encryption key, MAC key) derived from the key block protection key."""
    if version in "AC":
        return bytes(b ^ _VARIANT_ENC for b in kbpk), bytes(b ^ _VARIANT_MAC for b in kbpk)
    algorithm = Algorithm.TDES if version == "B" else Algorithm.AES
    code = {16: 0, 24: 1} if version == "B" else {16: 2, 24: 3, 32: 4}
    assert len(kbpk) in code, "KBPK length is checked before derivation"
    bits, block = len(kbpk) * 8, algorithm.block_size

    def one(usage: int) -> bytes:
        out = b""
        for counter in range(1, -(-len(kbpk) // block) + 1):
            data = bytes([counter, 0, usage, 0, 0, code[len(kbpk)]]) + bits.to_bytes(2, "big")
            out += crypto.cmac(algorithm, kbpk, data)
        return out[: len(kbpk)]

    return one(0), one(1)


def _check_kbpk(version: str, kbpk: bytes) -> None:
    allowed = (16, 24, 32) if version == "D" else (16, 24)
    if len(kbpk) not in allowed:
        raise KeyLengthError(f"KBPK length {len(kbpk)} is not allowed for version {version}")


def wrap(kbpk: bytes, header: Header, key: bytes, *, rng: crypto.Rng = os.urandom) -> str:
    """Encipher ``key`` under ``kbpk`` into a TR-31 key block described by ``header``."""
    _check_kbpk(header.version, kbpk)
    block_size = crypto.AES_BLOCK if header.version == "D" else crypto.TDES_BLOCK
    header = _with_padding_block(header, block_size)
    payload = (len(key) * 8).to_bytes(2, "big") + key
    payload += rng(-len(payload) % block_size)
    mac_length = _MAC_LENGTH[header.version]
    total = len(header.encode(0)) + 2 * (len(payload) + mac_length)
    if total > BLOCK_LENGTH_MAX:
        raise KeyBlockError("TR-31 key block would be too long")
    head = header.encode(total)
    kbek, kbak = _derive(header.version, kbpk)
    if header.version in "AC":
        enc = crypto.tdes_cbc_encrypt(kbek, head.encode()[:8], payload)
        mac = iso9797_alg1(kbak, head.encode() + enc)[:mac_length]
    else:
        algorithm = Algorithm.TDES if header.version == "B" else Algorithm.AES
        mac = crypto.cmac(algorithm, kbak, head.encode() + payload)
        enc = _cbc(algorithm, kbek, mac, payload, encrypt=True)
    return head + enc.hex().upper() + mac.hex().upper()


def _cbc(algorithm: Algorithm, key: bytes, iv: bytes, data: bytes, *, encrypt: bool) -> bytes:
    if algorithm is Algorithm.TDES:
        fn = crypto.tdes_cbc_encrypt if encrypt else crypto.tdes_cbc_decrypt
    else:
        fn = crypto.aes_cbc_encrypt if encrypt else crypto.aes_cbc_decrypt
    return fn(key, iv, data)


def _split(text: str, start: int, version: str) -> tuple[bytes, bytes]:
    mac_hex = 2 * _MAC_LENGTH[version]
    body = text[start:]
    block = crypto.AES_BLOCK if version == "D" else crypto.TDES_BLOCK
    try:
        enc, mac = bytes.fromhex(body[:-mac_hex]), bytes.fromhex(body[-mac_hex:])
    except ValueError:
        raise KeyBlockError("TR-31 key data or MAC is not hex") from None
    if len(body) <= mac_hex or len(enc) % block:
        raise KeyBlockError("TR-31 key data is not a whole number of cipher blocks")
    return enc, mac


def _recover(kbpk: bytes, text: str, header: Header, start: int) -> bytes:
    enc, mac = _split(text, start, header.version)
    kbek, kbak = _derive(header.version, kbpk)
    head = text[:start].encode()
    if header.version in "AC":
        expect = iso9797_alg1(kbak, head + enc)[: len(mac)]
        payload = crypto.tdes_cbc_decrypt(kbek, head[:8], enc)
        valid = hmac.compare_digest(expect, mac)
    else:
        algorithm = Algorithm.TDES if header.version == "B" else Algorithm.AES
        payload = _cbc(algorithm, kbek, mac, enc, encrypt=False)
        valid = hmac.compare_digest(crypto.cmac(algorithm, kbak, head + payload), mac)
    if not valid:
        raise KeyBlockError("TR-31 key block failed its integrity check (wrong KBPK or altered)")
    return payload


def unwrap(
    kbpk: bytes,
    text: str,
    *,
    usages: Collection[str] | None = None,
    modes: Collection[str] | None = None,
) -> tuple[Header, bytes]:
    """Authenticate and decipher a key block; refuse it unless its usage and mode are allowed."""
    header, start = parse_header(text)
    _check_kbpk(header.version, kbpk)
    payload = _recover(kbpk, text, header, start)
    key_bits = int.from_bytes(payload[:2], "big")
    if key_bits % 8 or key_bits // 8 > len(payload) - 2:
        raise KeyBlockError("TR-31 key length field is invalid")
    if usages is not None and header.usage not in usages:
        raise KeyUsageError(f"key usage {header.usage} is not one of {sorted(usages)}")
    if modes is not None and header.mode not in modes:
        raise KeyUsageError(f"mode of use {header.mode} is not one of {sorted(modes)}")
    return header, payload[2 : 2 + key_bits // 8]


def algorithm_of(header: Header) -> Algorithm:
    if header.algorithm not in _ALGORITHMS:
        raise KeyBlockError(f"key algorithm {header.algorithm} is not supported")
    return _ALGORITHMS[header.algorithm]

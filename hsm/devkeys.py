"""Development key material for demos and fixtures. DEVELOPMENT ONLY.

``make_dev_keys`` wraps a TMK, a PVK and a BDK under the given (normally the development) LMK
and also returns the clear TMK, which the terminal simulator needs and a real deployment never
has in software; it wraps the development PAN-hash key (``keys.DEVELOPMENT_PAN_HASH_KEY``) as a
PHK; and it makes an issuer master key for chip cards (IMK-AC), also returned in clear for the
simulator's cards, which derive their own keys from it as a card personalisation bureau would.
A seed makes the output reproducible.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from dataclasses import dataclass

from hsm import crypto
from hsm.crypto import Algorithm
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole, Lmk, StoredKey, kcv_hex

_DEV_KEY_LENGTH = 16


def seeded_rng(seed: bytes) -> crypto.Rng:
    """A deterministic byte stream (HMAC-SHA256 in counter mode) for reproducible fixtures."""
    counter = itertools.count()

    def rng(count: int) -> bytes:
        out = b""
        while len(out) < count:
            out += hmac.new(seed, next(counter).to_bytes(8, "big"), hashlib.sha256).digest()
        return out[:count]

    return rng


@dataclass(frozen=True)
class DevKeys:
    lmk_kcv: str
    tmk: StoredKey
    tmk_clear_hex: str  # DEVELOPMENT ONLY: for the terminal simulator
    pvk: StoredKey
    bdk: StoredKey
    phk: StoredKey  # the development PAN-hash key: hashes equal the ledger's development ones
    imk_ac: StoredKey  # an issuer master key for chip cards' application cryptograms
    imk_ac_clear_hex: str  # DEVELOPMENT ONLY: for simulated chip cards

    def as_dict(self) -> dict[str, str]:
        return {
            "warning": "DEVELOPMENT ONLY - demo keys under a public LMK",
            "lmk_kcv": self.lmk_kcv,
            "tmk": self.tmk.to_text(),
            "tmk_kcv": self.tmk.kcv,
            "tmk_clear": self.tmk_clear_hex,
            "pvk": self.pvk.to_text(),
            "pvk_kcv": self.pvk.kcv,
            "bdk": self.bdk.to_text(),
            "bdk_kcv": self.bdk.kcv,
            "phk": self.phk.to_text(),
            "phk_kcv": self.phk.kcv,
            "imk_ac": self.imk_ac.to_text(),
            "imk_ac_kcv": self.imk_ac.kcv,
            "imk_ac_clear": self.imk_ac_clear_hex,
        }


def make_dev_keys(lmk: Lmk, seed: bytes | None = None) -> DevKeys:
    rng = seeded_rng(seed) if seed is not None else os.urandom

    def new_key() -> bytes:
        return crypto.with_odd_parity(rng(_DEV_KEY_LENGTH))

    tmk = new_key()
    stored_tmk = lmk.wrap(KeyRole.TMK, Algorithm.TDES, tmk, rng=rng)
    assert stored_tmk.kcv == kcv_hex(Algorithm.TDES, tmk), "KCV block must match the key"
    pvk = lmk.wrap(KeyRole.PVK, Algorithm.TDES, new_key(), rng=rng)
    bdk = lmk.wrap(KeyRole.BDK, Algorithm.TDES, new_key(), rng=rng)
    phk = lmk.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY, rng=rng)
    # Drawn after the others, so the keys above stay what earlier seeds gave.
    imk_ac = new_key()
    return DevKeys(
        lmk_kcv=lmk.kcv,
        tmk=stored_tmk,
        tmk_clear_hex=tmk.hex().upper(),
        pvk=pvk,
        bdk=bdk,
        phk=phk,
        imk_ac=lmk.wrap(KeyRole.IMK_AC, Algorithm.TDES, imk_ac, rng=rng),
        imk_ac_clear_hex=imk_ac.hex().upper(),
    )

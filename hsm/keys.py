"""The key hierarchy: an AES-256 key-block LMK and keys stored as TR-31 version D blocks under it.

A stored key is the TR-31 block text. Its header binds, under the LMK's MAC, the TR-31 key usage
and mode of use, the key's role in this switch (proprietary optional block ``10``) and its check
value (standard optional block ``KC``), so the ledger can keep one TEXT column and nothing it
stores can be re-labelled without the HSM noticing.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from hsm import crypto, tr31
from hsm.crypto import Algorithm
from hsm.errors import DevelopmentLmkError, KeyBlockError, KeyMaterialError, KeyUsageError

LMK_LENGTH = 32
# Open key blocks kept per HSM process: a fleet's session keys and PVKs, a few MB at most.
OPEN_BLOCKS_MAX = 16_384
ROLE_BLOCK_ID = "10"  # numeric optional-block IDs are reserved for proprietary use
KCV_BLOCK_ID = "KC"
HMAC_HASH_BLOCK_ID, HMAC_SHA256 = "HM", "21"  # X9.143 optional block: the HMAC's hash function
_KCV_LEGACY, _KCV_CMAC = "00", "01"

# DEVELOPMENT ONLY. This LMK is public (it is in the source tree); every key under it is
# readable by anyone. `load_lmk(..., production=True)` and `hsm serve --production` refuse it.
DEVELOPMENT_LMK_HEX = "DE7E10DE7E10DE7E10DE7E10DE7E10DE7E10DE7E10DE7E10DE7E10DE7E10DE7E"
DEVELOPMENT_LMK = bytes.fromhex(DEVELOPMENT_LMK_HEX)
# DEVELOPMENT ONLY. The clear PAN-hash key development uses: the same bytes as
# ledger.settings.DEVELOPMENT_PAN_HASH_KEY (hsm/ and ledger/ do not import each other; a test
# holds the two equal), so hashes the HSM computes in development match the ledger's data.
# A production HSM refuses a PHK holding these bytes, under whatever LMK.
DEVELOPMENT_PAN_HASH_KEY = b"kiosk-switch DEVELOPMENT pan hash key - not for production"


class KeyRole(Enum):
    TMK = "TMK"  # terminal master key: delivers session keys to one terminal
    ZMK = "ZMK"  # zone master key: exchanges keys with another institution
    TPK = "TPK"  # terminal PIN key
    ZPK = "ZPK"  # zone PIN key
    TAK = "TAK"  # terminal authentication (MAC) key
    ZAK = "ZAK"  # zone authentication (MAC) key
    PVK = "PVK"  # PIN verification key
    BDK = "BDK"  # DUKPT base derivation key
    PHK = "PHK"  # PAN-hash key: HMAC-SHA256 of card numbers, the ledger's card look-up key
    IMK_AC = "IMK_AC"  # EMV issuer master key for application cryptograms (ARQC, ARPC)


_CIPHERS = frozenset({Algorithm.TDES, Algorithm.AES})


@dataclass(frozen=True)
class RoleSpec:
    usages: frozenset[str]
    mode: str
    algorithms: frozenset[Algorithm] = _CIPHERS


_MAC_USAGE = {Algorithm.TDES: "M3", Algorithm.AES: "M6"}
ROLE_SPECS: dict[KeyRole, RoleSpec] = {
    KeyRole.TMK: RoleSpec(frozenset({"K0"}), "B"),
    KeyRole.ZMK: RoleSpec(frozenset({"K0"}), "B"),
    KeyRole.TPK: RoleSpec(frozenset({"P0"}), "B"),
    KeyRole.ZPK: RoleSpec(frozenset({"P0"}), "B"),
    KeyRole.TAK: RoleSpec(frozenset(_MAC_USAGE.values()), "C"),
    KeyRole.ZAK: RoleSpec(frozenset(_MAC_USAGE.values()), "C"),
    KeyRole.PVK: RoleSpec(frozenset({"V0", "V1", "V2"}), "C"),
    KeyRole.BDK: RoleSpec(frozenset({"B0"}), "X"),
    # M7: HMAC key; mode G: it only ever computes (there is no hash to verify inside the HSM).
    KeyRole.PHK: RoleSpec(frozenset({"M7"}), "G", frozenset({Algorithm.HMAC})),
    # E0: EMV/chip issuer master key for application cryptograms; X: it only derives keys.
    KeyRole.IMK_AC: RoleSpec(frozenset({"E0"}), "X"),
}


def default_usage(role: KeyRole, algorithm: Algorithm) -> str:
    if role in (KeyRole.TAK, KeyRole.ZAK):
        return _MAC_USAGE[algorithm]
    return min(ROLE_SPECS[role].usages)


@dataclass(frozen=True)
class StoredKey:
    """A key as the host stores it: a TR-31 version D block under the LMK.

    Build it with ``from_text``; the other fields are read from the (authenticated) header and
    are only trusted once the HSM has unwrapped the block.
    """

    text: str
    role: KeyRole = field(init=False)
    algorithm: Algorithm = field(init=False)
    usage: str = field(init=False)
    mode: str = field(init=False)
    kcv: str = field(init=False)

    def __post_init__(self) -> None:
        role, algorithm, usage, mode, kcv = _header_fields(self.text)
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "usage", usage)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "kcv", kcv)

    @classmethod
    def from_text(cls, text: str) -> StoredKey:
        return cls(text.strip())

    def to_text(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


# A card's PVK comes with every PIN it verifies: its header is read once, not per request.
@functools.lru_cache(maxsize=OPEN_BLOCKS_MAX)
def _header_fields(text: str) -> tuple[KeyRole, Algorithm, str, str, str]:
    """A stored key's role, algorithm, usage, mode of use and KCV, from its block's header (a
    block that is not one of this HSM's raises, and is not cached)."""
    header, _ = tr31.parse_header(text)
    role, kcv = header.optional(ROLE_BLOCK_ID) or "", header.optional(KCV_BLOCK_ID)
    if header.version != "D" or role not in KeyRole.__members__ or kcv is None:
        raise KeyBlockError("not a key block of this HSM (version D, role and KCV blocks)")
    return KeyRole[role], tr31.algorithm_of(header), header.usage, header.mode, kcv[2:]


def kcv_hex(algorithm: Algorithm, key: bytes) -> str:
    return crypto.key_check_value(algorithm, key).hex().upper()


@dataclass(frozen=True, repr=False)
class Lmk:
    """The local master key (AES-256), the key-block protection key of every stored key."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != LMK_LENGTH:
            raise KeyMaterialError("the LMK must be an AES-256 key (32 bytes, 64 hex)")

    def __repr__(self) -> str:
        return f"Lmk(kcv={self.kcv}{', DEVELOPMENT' if self.is_development else ''})"

    @property
    def kcv(self) -> str:
        return kcv_hex(Algorithm.AES, self.key)

    @property
    def is_development(self) -> bool:
        return self.key == DEVELOPMENT_LMK

    def wrap(
        self,
        role: KeyRole,
        algorithm: Algorithm,
        key: bytes,
        *,
        usage: str | None = None,
        exportability: str = "E",
        rng: crypto.Rng = os.urandom,
    ) -> StoredKey:
        if algorithm not in ROLE_SPECS[role].algorithms:
            raise KeyUsageError(f"role {role.value} does not take {algorithm.name} keys")
        usage = usage or default_usage(role, algorithm)
        if usage not in ROLE_SPECS[role].usages:
            raise KeyUsageError(f"usage {usage} does not fit role {role.value}")
        # "01" is the MAC-a-zero-block method; an HMAC key's is computed with HMAC-SHA256.
        kcv_method = _KCV_LEGACY if algorithm is Algorithm.TDES else _KCV_CMAC
        blocks: tuple[tuple[str, str], ...] = (
            (ROLE_BLOCK_ID, role.value),
            (KCV_BLOCK_ID, kcv_method + kcv_hex(algorithm, key)),
        )
        if algorithm is Algorithm.HMAC:
            blocks += ((HMAC_HASH_BLOCK_ID, HMAC_SHA256),)
        header = tr31.Header(
            "D", usage, algorithm.value, ROLE_SPECS[role].mode, "00", exportability, blocks
        )
        return StoredKey(tr31.wrap(self.key, header, key, rng=rng))

    def unwrap(self, stored: StoredKey, roles: tuple[KeyRole, ...], modes: str = "") -> bytes:
        """Return the clear key if ``stored`` is intact and has one of ``roles``."""
        header, key = _open_block(self.key, stored.text)
        if stored.role not in roles:
            wanted = "/".join(r.value for r in roles)
            raise KeyUsageError(f"a {stored.role.value} key was given where {wanted} is needed")
        if header.usage not in ROLE_SPECS[stored.role].usages:
            raise KeyUsageError(f"usage {header.usage} does not fit role {stored.role.value}")
        if modes and header.mode not in modes:
            raise KeyUsageError(f"mode of use {header.mode} does not allow this operation")
        return key


@functools.lru_cache(maxsize=OPEN_BLOCKS_MAX)
def _open_block(lmk: bytes, text: str) -> tuple[tr31.Header, bytes]:
    """A verified, decrypted key block. Like a hardware HSM's key slots, recently used keys stay
    open inside the HSM, so a terminal's TPK and TAK are not re-verified on every request; a
    block that fails verification raises and is never cached."""
    return tr31.unwrap(lmk, text)


def _check_owner_only(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(f"LMK file {path} must be readable by its owner only (chmod 600)")


def _parse_lmk_hex(text: str, source: str) -> Lmk:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        return Lmk(bytes.fromhex("".join(lines)))
    except ValueError:
        raise KeyMaterialError(f"LMK from {source} is not hex") from None


def load_lmk(
    *,
    lmk_hex: str | None = None,
    lmk_file: Path | None = None,
    env_var: str = "HSM_LMK",
    production: bool = False,
) -> Lmk:
    """Load the LMK from explicit hex, an owner-only file, or the environment (in that order).

    With nothing configured, development mode falls back to the development LMK; production
    mode refuses both that fallback and the development LMK from any source.
    """
    if lmk_hex is not None:
        lmk = _parse_lmk_hex(lmk_hex, "configuration")
    elif lmk_file is not None:
        _check_owner_only(lmk_file)
        lmk = _parse_lmk_hex(lmk_file.read_text(encoding="ascii"), str(lmk_file))
    elif os.environ.get(env_var):
        lmk = _parse_lmk_hex(os.environ[env_var], f"${env_var}")
    elif production:
        raise KeyMaterialError(f"no LMK configured (set ${env_var} or an LMK file)")
    else:
        lmk = Lmk(DEVELOPMENT_LMK)
    if production and lmk.is_development:
        raise DevelopmentLmkError("the development LMK is refused in production")
    return lmk

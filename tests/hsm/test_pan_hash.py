"""PAN hashing inside the HSM: HMAC-SHA256 under a PHK held under the LMK; in development the
same hash the ledger computes with its development key."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator

import pytest

from hsm import crypto, tr31
from hsm.api import HSM
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys
from hsm.devserver import REPO
from hsm.engine import SoftHsm
from hsm.errors import (
    DevelopmentKeyError,
    KeyBlockError,
    KeyMaterialError,
    KeyUsageError,
    PanError,
)
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole, Lmk, StoredKey
from hsm.local import LocalHSM
from hsm.server import HsmServer, ServerConfig
from ledger.pan import pan_hash as ledger_pan_hash
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY as LEDGER_DEVELOPMENT_KEY

from .support import LMK

PAN = "4012345678909"
# HMAC-SHA256(DEVELOPMENT_PAN_HASH_KEY, PAN), computed with `openssl dgst -sha256 -hmac`.
KNOWN_ANSWER = bytes.fromhex("1e034059d10bcdf0cddb480a96b46a063094ab4a6e1a5f411108198ac3e2ed38")
DEV_CONFIG = tomllib.loads((REPO / "config" / "hsm.dev.toml").read_text(encoding="utf-8"))
DEV_CONFIG_PHK = StoredKey.from_text(DEV_CONFIG["hsm"]["pan_hash_key"])
PRODUCTION_LMK = Lmk(bytes(range(32)))


@pytest.fixture(params=["local", "network"])
async def hashing(request: pytest.FixtureRequest) -> AsyncIterator[HSM]:
    if request.param == "local":
        yield LocalHSM(LMK, pan_hash_key=DEV_CONFIG_PHK)
        return
    server = HsmServer(
        SoftHsm(LMK, pan_hash_key=DEV_CONFIG_PHK), ServerConfig(host="127.0.0.1", port=0)
    )
    await server.start()
    client = NetworkHSM([("127.0.0.1", server.port)], timeout_ms=2000)
    yield client
    await client.close()
    await server.close()


async def test_known_answer_with_the_development_key(hashing: HSM) -> None:
    """Locally and over the wire, the development PHK gives the ledger's development hash."""
    assert (
        await hashing.pan_hash(PAN) == KNOWN_ANSWER == ledger_pan_hash(PAN, LEDGER_DEVELOPMENT_KEY)
    )
    assert await hashing.pan_hash("5500000000000004") == ledger_pan_hash(
        "5500000000000004", LEDGER_DEVELOPMENT_KEY
    )


async def test_a_pan_hash_needs_a_pan_and_a_key(hashing: HSM) -> None:
    for pan in ("", "40123456789", "4012 3456 7890 9", "40123456789012345678"):
        with pytest.raises(PanError):
            await hashing.pan_hash(pan)
    with pytest.raises(KeyMaterialError):
        await LocalHSM(LMK).pan_hash(PAN)


def test_the_development_key_is_the_ledgers() -> None:
    assert DEVELOPMENT_PAN_HASH_KEY == LEDGER_DEVELOPMENT_KEY
    assert LMK.unwrap(DEV_CONFIG_PHK, (KeyRole.PHK,)) == DEVELOPMENT_PAN_HASH_KEY
    assert (DEV_CONFIG_PHK.role, DEV_CONFIG_PHK.algorithm, DEV_CONFIG_PHK.usage) == (
        KeyRole.PHK,
        Algorithm.HMAC,
        "M7",
    )
    assert DEV_CONFIG_PHK.kcv == crypto.kcv_hmac(DEVELOPMENT_PAN_HASH_KEY).hex().upper()


def test_production_refuses_the_development_key(dev_keys: DevKeys) -> None:
    """Under the development LMK, or the same bytes wrapped under a production LMK."""
    with pytest.raises(KeyBlockError):
        SoftHsm(PRODUCTION_LMK, production=True, pan_hash_key=DEV_CONFIG_PHK)
    rewrapped = PRODUCTION_LMK.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY)
    with pytest.raises(DevelopmentKeyError):
        LocalHSM(PRODUCTION_LMK, production=True, pan_hash_key=rewrapped)
    own = PRODUCTION_LMK.wrap(KeyRole.PHK, Algorithm.HMAC, bytes(range(32)))
    assert SoftHsm(PRODUCTION_LMK, production=True, pan_hash_key=own).pan_hash(PAN) != KNOWN_ANSWER
    assert SoftHsm(LMK, pan_hash_key=dev_keys.phk).pan_hash(PAN) == KNOWN_ANSWER


def test_only_a_phk_hashes_pans(dev_keys: DevKeys) -> None:
    with pytest.raises(KeyUsageError):
        SoftHsm(LMK, pan_hash_key=dev_keys.pvk)
    with pytest.raises(KeyUsageError):
        LMK.wrap(KeyRole.PHK, Algorithm.AES, bytes(32))
    with pytest.raises(KeyUsageError):
        LMK.wrap(KeyRole.TAK, Algorithm.HMAC, bytes(32))


async def test_an_admin_makes_a_phk_or_imports_the_ledgers(hashing: HSM) -> None:
    """A new PHK is 32 random bytes; an existing key (the one the ledger's data was hashed
    with) comes in as a TR-31 block under a ZMK."""
    generated = await hashing.generate_key(KeyRole.PHK, Algorithm.HMAC, 32)
    assert (generated.role, generated.algorithm) == (KeyRole.PHK, Algorithm.HMAC)
    assert await hashing.key_check_value(generated) == generated.kcv

    zmk_clear = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    zmk = LMK.wrap(KeyRole.ZMK, Algorithm.TDES, zmk_clear)
    header = tr31.Header("B", "M7", "H", "G")
    block = tr31.wrap(zmk_clear, header, DEVELOPMENT_PAN_HASH_KEY)
    imported = await hashing.import_key(block, zmk, KeyRole.PHK)
    assert SoftHsm(LMK, pan_hash_key=imported).pan_hash(PAN) == KNOWN_ANSWER

"""The ledger's half of the HSM's word (see hsm/authorisation.py for the token itself).

The ledger holds the authorisation key as the two HMAC-SHA256 pads (key xor ipad, key xor opad),
so that PostgreSQL's own sha256() verifies a token with no extension; they live in a table only
the owner reads, used by the SECURITY DEFINER write function. `python -m ledger migrate`
installs the development key when none is installed; production replaces it
(`python -m ledger authorisation-key install`, the key on standard input), and the switch
refuses to start when the ledger's key is not the one its HSM derives.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from ledger.codec import requested
from ledger.model import Request, Reversal
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY

if TYPE_CHECKING:  # the migrations install the development key: they import this module
    from ledger.migrations import Connection

_BLOCK_BYTES = 64  # SHA-256's block
# The same label as the HSM's: the development key is derived from the development PAN-hash
# key exactly as the HSM derives its own (a test keeps the two equal).
_KEY_LABEL = b"kiosk-switch authorisation key v1"
DEVELOPMENT_AUTHORISATION_KEY = hmac.digest(DEVELOPMENT_PAN_HASH_KEY, _KEY_LABEL, hashlib.sha256)
KEY_BYTES = 32


def check_value(key: bytes) -> str:
    return hmac.digest(key, bytes(16), hashlib.sha256)[:3].hex().upper()


def pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer keys for a key no longer than a block."""
    assert len(key) <= _BLOCK_BYTES, "an authorisation key fits one SHA-256 block"
    padded = key.ljust(_BLOCK_BYTES, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


_INSTALL_ONCE = (
    "INSERT INTO ledger.authorisation_key (inner_pad, outer_pad, check_value)"
    " VALUES ($1, $2, $3) ON CONFLICT (singleton) DO NOTHING"
)
_REPLACE = (
    "INSERT INTO ledger.authorisation_key (inner_pad, outer_pad, check_value)"
    " VALUES ($1, $2, $3) ON CONFLICT (singleton) DO UPDATE SET inner_pad = EXCLUDED.inner_pad,"
    " outer_pad = EXCLUDED.outer_pad, check_value = EXCLUDED.check_value"
)


async def install(conn: Connection, key: bytes, *, replace: bool, timeout_ms: int) -> str:
    """Store `key` (or keep the one installed, unless `replace`); returns its check value."""
    assert len(key) == KEY_BYTES, f"an authorisation key is {KEY_BYTES} bytes"
    inner, outer = pads(key)
    await conn.execute(
        _REPLACE if replace else _INSTALL_ONCE, inner, outer, check_value(key),
        timeout=timeout_ms / 1000,
    )  # fmt: skip
    installed = await conn.fetchval(
        "SELECT check_value FROM ledger.authorisation_key", timeout=timeout_ms / 1000
    )
    assert isinstance(installed, str)
    return installed


async def installed_check_value(conn: Connection, *, timeout_s: float) -> str | None:
    """The installed key's check value, as the switch role reads it (the key's table is the
    owner's alone)."""
    value = await conn.fetchval("SELECT ledger.authorisation_check_value()", timeout=timeout_s)
    assert value is None or isinstance(value, str)
    return value


def development_token(request: Request, pan_hash: bytes) -> bytes:
    """The word a development HSM gives for `request` when its PIN is right: for the ledger's
    own tools, tests and benchmarks, which stand for the HSM (the same bytes as
    hsm.authorisation.token with the development key; a test keeps them equal)."""
    return _development_word(_request_lines("kiosk-switch authorisation v1", request, pan_hash))


def development_chip_token(request: Request, pan_hash: bytes, atc: int) -> bytes:
    """The word a development HSM gives for a chip request whose ARQC at `atc` verified."""
    lines = _request_lines("kiosk-switch chip authorisation v1", request, pan_hash)
    return _development_word((*lines, str(atc)))


def development_session_keys_token(terminal_id: str, tmk: str, tpk: str, tak: str) -> bytes:
    """The word a development HSM gives with session keys it generated under `tmk`."""
    return _development_word(("kiosk-switch session keys v1", terminal_id, tmk, tpk, tak))


def development_reversal_token(
    request: Reversal, pan_hash: bytes, original_amount_minor: int
) -> bytes:
    """The word a development HSM gives for a reversal whose MAC verified, its F4 being
    `original_amount_minor` (the original's amount, which the ledger checks it against)."""
    key, original = request.key, request.original
    return _development_word((
        "kiosk-switch reversal v1", key.terminal_id, key.transmission_time, key.stan,
        key.message_class, pan_hash.hex(), original.transmission_time, original.stan,
        original.message_class, str(original_amount_minor), str(request.dispensed_minor),
    ))  # fmt: skip


def _request_lines(label: str, request: Request, pan_hash: bytes) -> tuple[str, ...]:
    key = request.key
    amount_minor, currency = requested(request)
    return (
        label, key.terminal_id, key.transmission_time, key.stan, key.message_class,
        pan_hash.hex(), str(amount_minor), currency,
    )  # fmt: skip


def _development_word(lines: tuple[str, ...]) -> bytes:
    text = "\n".join(lines).encode()
    return hmac.digest(DEVELOPMENT_AUTHORISATION_KEY, text, hashlib.sha256)[:16]

"""Ledger settings: plain values the switch passes in (it owns the TOML file)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path

# Labelled as such everywhere it shows up: never use it outside development.
DEVELOPMENT_PAN_HASH_KEY = b"kiosk-switch DEVELOPMENT pan hash key - not for production"
PAN_HASH_KEY_ENV = "LEDGER_PAN_HASH_KEY"
DSN_ENV = "LEDGER_DSN"


def pan_hash_key_from_env() -> bytes:
    """The PAN hash key from `LEDGER_PAN_HASH_KEY` (hex), else the development key."""
    value = os.environ.get(PAN_HASH_KEY_ENV)
    return bytes.fromhex(value) if value else DEVELOPMENT_PAN_HASH_KEY


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Everything the ledger needs; defaults suit development.

    `dsn` is the switch role's connection (subject to row-level security); `owner_dsn` is the
    schema owner's, used by migrations, provisioning and auditors. With neither, the private
    cluster under `data_dir` is started and used.
    """

    dsn: str | None = None
    owner_dsn: str | None = None
    # The role the journal is read as, by the auditor API and the alerts' `audit verify` (an
    # auditor role, or the owner: the switch's role reads no table). Unset: the private
    # cluster's owner when dsn is unset too, else neither (the auditor API answers 503).
    audit_dsn: str | None = field(default=None, repr=False)
    data_dir: Path = Path(".var/pg")
    # With no dsn: the local pg_auto_failover formation under ha_dir (`python -m ledger
    # cluster --ha`), started unless running, instead of the private cluster under data_dir.
    ha: bool = False
    ha_dir: Path = Path(".var/ha")
    pool_size_min: int = 2
    pool_size_max: int = 16
    # The key the ledger's own tools hash PANs with; None for the switch, whose HSM hashes them.
    pan_hash_key: bytes | None = field(default=DEVELOPMENT_PAN_HASH_KEY, repr=False)
    pin_tries_max: int = 3
    # The business day starts at this UTC time of day; a request before it belongs to the
    # previous business day (daily limits and terminal reports use it).
    business_day_cutover: time = time(0, 0)
    cross_customer_transfers: bool = False
    statement_timeout_ms: int = 5_000
    connect_timeout_ms: int = 10_000
    # A stale snapshot (another request of the same customer committed first) is re-decided
    # at most this many times before the request fails with LedgerError.
    stale_retries_max: int = 64
    # Reads (and writes) at the database at once; requests arriving meanwhile go together in
    # the next call, at most batch_size_max per call.
    calls_in_flight_max: int = 2
    batch_size_max: int = 32

    def __post_init__(self) -> None:
        assert 0 < self.pool_size_min <= self.pool_size_max, "pool sizes"
        assert self.pin_tries_max > 0, "pin_tries_max"
        assert self.statement_timeout_ms > 0, "statement_timeout_ms"
        assert self.stale_retries_max > 0, "stale_retries_max"
        assert self.calls_in_flight_max > 0, "calls_in_flight_max"
        assert self.batch_size_max > 0, "batch_size_max"
        assert self.pan_hash_key is None or len(self.pan_hash_key) >= 16, "pan_hash_key"

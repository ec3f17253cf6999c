"""The audit journal's hashes, byte for byte as the database computes them (ledger.leaf,
ledger.block_hash in functions.sql), so an auditor can recompute them from rows or an export.

A transaction's leaf is the SHA-256 of a text of "name=value" lines (a NULL value is the name
alone) in LEAF_FIELDS order, after the line "kiosk-switch leaf v1", followed by one line per
posting, "leg=account:customer:amount:currency", in account order; lines are joined by "\\n".
A block's hash is the SHA-256 of the previous block's hash (32 zero bytes for a lane's first
block), the text "kiosk-switch block v1\\nlane=L\\nseq=N\\ntransactions=K\\n", and its
transactions' leaves in transaction id order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

GENESIS_HASH = bytes(32)
LEAF_FIELDS = (
    "transaction_id", "customer_id", "terminal_id", "transmission_time", "stan",
    "message_class", "kind", "outcome", "response_code", "amount_minor", "currency",
    "requested_minor", "requested_currency", "ledger_balance_minor", "available_balance_minor",
    "business_date", "recorded_at_us", "pan_masked", "mti", "processing_code", "rrn",
    "original_transmission_time", "original_stan", "original_message_class", "reversal_state",
    "lane", "block_seq",
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Fields(Protocol):
    """A transaction's fields by name: a database row, or a record read back from an export."""

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Leg:
    account_id: int
    customer_id: int
    amount_minor: int
    currency: str


def recorded_at_us(at: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp would round)."""
    return (at - _EPOCH) // timedelta(microseconds=1)


def _text(value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def leaf(record: Fields, legs: Iterable[Leg]) -> bytes:
    """The leaf of one transaction whose fields `record` holds (LEAF_FIELDS)."""
    lines = ["kiosk-switch leaf v1"]
    for name in LEAF_FIELDS:
        value = record[name]
        lines.append(name if value is None else f"{name}={_text(value)}")
    for leg in sorted(legs, key=lambda leg: leg.account_id):
        lines.append(f"leg={leg.account_id}:{leg.customer_id}:{leg.amount_minor}:{leg.currency}")
    return hashlib.sha256("\n".join(lines).encode()).digest()


def block_hash(prev_hash: bytes, lane: int, seq: int, leaves: list[bytes]) -> bytes:
    header = f"kiosk-switch block v1\nlane={lane}\nseq={seq}\ntransactions={len(leaves)}\n"
    return hashlib.sha256(prev_hash + header.encode() + b"".join(leaves)).digest()

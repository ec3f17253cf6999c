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
from collections.abc import Iterable, Mapping
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
# Kinds whose approval moves money: their stored amount is what their postings moved.
MOVING_KINDS = frozenset({"withdrawal", "transfer", "reversal", "opening", "replenishment"})


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


def block_hash(
    prev_hash: bytes, lane: int, seq: int, recorded_at_us: int, leaves: list[bytes]
) -> bytes:
    header = (
        f"kiosk-switch block v1\nlane={lane}\nseq={seq}\ntransactions={len(leaves)}\n"
        f"recorded_at_us={recorded_at_us}\n"
    )
    return hashlib.sha256(prev_hash + header.encode() + b"".join(leaves)).digest()


@dataclass(frozen=True, slots=True)
class Head:
    """The last block of a chain (lane): its number and hash."""

    lane: int
    seq: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def money_damage(record: Fields, legs: list[Leg]) -> str | None:
    """An approved money movement moves exactly its amount; nothing else has postings."""
    moved = sum(leg.amount_minor for leg in legs if leg.amount_minor > 0)
    if record["kind"] in MOVING_KINDS and record["outcome"] == "approved":
        return None if moved == record["amount_minor"] else "amount differs from its postings"
    return None if not legs else "postings on a transaction that moves no money"


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block as recorded: what its hash covers besides its leaves, and the hash."""

    transactions: int
    recorded_at_us: int
    prev_hash: bytes
    hash: bytes


@dataclass
class LaneEnd:
    """Where a walk reached on one chain."""

    seq: int = 0
    hash: bytes = GENESIS_HASH
    started: bool = False


class Walk:
    """Checks a journal fed in chain order (lane, block, transaction id), with no I/O: leaves,
    amounts, block hashes, the links between blocks, and the latest signed anchor of each lane.

    `whole`: the walk sees each chain from its first block (the database); an export may start
    a chain anywhere, so its first block's link to the one before cannot be checked there.
    """

    def __init__(self, anchored: Mapping[int, Head], *, whole: bool) -> None:
        self._anchored = anchored
        self._whole = whole
        self.lanes: dict[int, LaneEnd] = {}
        self.damage: list[Damage] = []
        self.transactions = 0
        self.blocks = 0
        self._block: tuple[int, int, StoredBlock | None] | None = None
        self._leaves: list[bytes] = []

    def block(self, lane: int, seq: int, stored: StoredBlock | None) -> None:
        """A block starts (None: its transactions are there, the block itself is not)."""
        self._close()
        self._block = (lane, seq, stored)

    def transaction(self, record: Fields, legs: list[Leg], stored_leaf: bytes) -> None:
        self.transactions += 1
        self._leaves.append(stored_leaf)
        where = f"transaction {record['transaction_id']}"
        if self._block is None or (record["lane"], record["block_seq"]) != self._block[:2]:
            self.damage.append(Damage(where, "is not in the block it is listed under"))
        elif leaf(record, legs) != stored_leaf:
            self.damage.append(Damage(where, "leaf hash does not match its contents"))
        else:
            reason = money_damage(record, legs)
            if reason is not None:
                self.damage.append(Damage(where, reason))

    def finish(self) -> list[Damage]:
        """Closes the last block and checks each anchored lane reached its anchor."""
        self._close()
        for lane, anchor in sorted(self._anchored.items()):
            walked = self.lanes.get(lane, LaneEnd())
            if self._whole and walked.seq < anchor.seq:
                self.damage.append(
                    Damage(
                        f"chain {lane}",
                        f"its signed anchor is at block #{anchor.seq} but the chain ends at"
                        f" #{walked.seq}: cut, deleted or truncated",
                    )
                )
        return self.damage

    def _close(self) -> None:
        if self._block is None:
            return
        lane, seq, stored = self._block
        leaves, self._leaves, self._block = self._leaves, [], None
        self.blocks += 1
        where = f"block {lane}#{seq}"
        chain = self.lanes.setdefault(lane, LaneEnd())
        follows = chain.started or self._whole
        if stored is None:
            self.damage.append(Damage(where, "transactions of a block that is missing"))
        elif follows and seq != chain.seq + 1:
            self.damage.append(Damage(where, f"sequence gap: expected #{chain.seq + 1}"))
        elif follows and stored.prev_hash != chain.hash:
            self.damage.append(Damage(where, "does not follow the previous block's hash"))
        elif stored.transactions != len(leaves) or stored.hash != block_hash(
            stored.prev_hash, lane, seq, stored.recorded_at_us, leaves
        ):
            self.damage.append(Damage(where, "hash does not match its transactions"))
        anchor = self._anchored.get(lane)
        if anchor is not None and anchor.seq == seq and anchor.hash != (stored and stored.hash):
            self.damage.append(Damage(where, "differs from its signed anchor: history rewritten"))
        chain.seq, chain.started = seq, True
        chain.hash = stored.hash if stored else chain.hash

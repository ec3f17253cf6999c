"""The operator's side of ATM cash: replenishing a cassette and reading every cassette's counts
(the owner's tools, and the operations app through the switch role). The decisions over
cassettes are in ledger/cash.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ledger.balancing import DAY_CLOSED_SQLSTATE
from ledger.errors import LedgerError
from ledger.migrations import Connection


class NoSuchCassette(LedgerError):
    """The terminal has no cassette of that number."""


class ReplenishmentRefused(LedgerError):
    """A replenishment the cassette does not allow: another denomination, negative notes, or a
    time on a closed business day."""


@dataclass(frozen=True, slots=True)
class Replenishment:
    """One replenishment as recorded: the counts the cassette had when taken out, the notes
    put in, and the journal entry that moved the difference (None when there was none)."""

    terminal_id: str
    cassette_no: int
    load_seq: int
    currency: str
    denomination_minor: int
    loaded_notes: int
    previous_remaining_notes: int
    previous_rejected_notes: int
    transaction_id: int | None

    @property
    def moved_minor(self) -> int:
        """The money moved from the vault into the ATM (negative: back to the vault)."""
        notes = self.loaded_notes - self.previous_remaining_notes - self.previous_rejected_notes
        return notes * self.denomination_minor


@dataclass(frozen=True, slots=True)
class CassetteCounts:
    terminal_id: str
    cassette_no: int
    currency: str
    denomination_minor: int
    loaded_notes: int
    dispensed_notes: int
    rejected_notes: int
    remaining_notes: int
    low_notes: int


async def replenish(
    conn: Connection,
    terminal_id: str,
    cassette_no: int,
    notes: int,
    *,
    denomination_minor: int | None,
    by: str,
    at: datetime,
    timeout_ms: int,
) -> Replenishment:
    """Replace the cassette with one of `notes` notes: posted against the vault, journalled,
    recorded, all in one transaction. A cassette that does not exist (NoSuchCassette), a
    denomination that is not the cassette's, a negative count or a time on a closed business day
    (ReplenishmentRefused) is refused, and nothing is written."""
    try:
        row = await conn.fetchrow(
            "SELECT * FROM ledger.replenish_cassette($1, $2, $3, $4, $5, $6)",
            terminal_id, cassette_no, notes, denomination_minor, at, by,
            timeout=timeout_ms / 1000,
        )  # fmt: skip
    except asyncpg.NoDataFoundError as exc:
        raise NoSuchCassette(str(exc)) from None
    except asyncpg.InvalidParameterValueError as exc:
        raise ReplenishmentRefused(str(exc)) from None
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == DAY_CLOSED_SQLSTATE:
            raise ReplenishmentRefused(str(exc)) from None
        raise
    assert row is not None
    return Replenishment(
        row["terminal_id"], row["cassette_no"], row["load_seq"], row["currency"].strip(),
        row["denomination_minor"], row["loaded_notes"], row["previous_remaining_notes"],
        row["previous_rejected_notes"], row["transaction_id"],
    )  # fmt: skip


async def cash_state(conn: Connection, *, timeout_ms: int) -> list[CassetteCounts]:
    """Every terminal's cassettes, in terminal and slot order."""
    rows = await conn.fetch("SELECT * FROM ledger.cash_state()", timeout=timeout_ms / 1000)
    return [CassetteCounts(**{**dict(row), "currency": row["currency"].strip()}) for row in rows]


def replenishment_json(done: Replenishment) -> dict[str, object]:
    return {
        "terminal_id": done.terminal_id, "cassette": done.cassette_no, "load": done.load_seq,
        "currency": done.currency, "denomination_minor": done.denomination_minor,
        "loaded_notes": done.loaded_notes, "taken_out_remaining": done.previous_remaining_notes,
        "taken_out_rejected": done.previous_rejected_notes, "moved_minor": done.moved_minor,
        "transaction_id": done.transaction_id,
    }  # fmt: skip

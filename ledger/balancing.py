"""Terminal balancing (0500/0510) and the business day's close, on the ledger's side.

The switch records an 0500 in one call (`record`), which gets back the host's figures and the
verdict; the owner's tool closes a day (`close_day`). What they compare and freeze is computed
in the database from the journal (ledger/sql/functions.sql, "Terminal balancing").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

import asyncpg

from ledger.errors import BalancingRefused, DayNotOver
from ledger.migrations import Connection

# SQLSTATEs the balancing functions raise (0006_balancing), by the reason they mean.
REFUSALS: Mapping[str, str] = MappingProxyType(
    {"KB001": "day_closed", "KB002": "day_not_begun", "KB003": "counters", "KB004": "currency"}
)
DAY_CLOSED_SQLSTATE = "KB001"
DAY_NOT_OVER_SQLSTATE = "KB005"


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One terminal's totals for a business day and currency, in 0500's field order: counts
    (F74-F80), amounts in minor units (F86-F89) and the net (F97, signed: cash paid out)."""

    credits: int = 0
    credit_reversals: int = 0
    debits: int = 0
    debit_reversals: int = 0
    transfers: int = 0
    transfer_reversals: int = 0
    inquiries: int = 0
    credits_minor: int = 0
    credit_reversals_minor: int = 0
    debits_minor: int = 0
    debit_reversals_minor: int = 0
    net_minor: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DayFigures:
        return cls(**_integers(cls, row))

    def as_list(self) -> list[int]:
        return [int(value) for value in astuple(self)]


@dataclass(frozen=True, slots=True)
class CassetteCounter:
    """One cassette's counters since its last load, as F124 carries them."""

    cassette_no: int
    denomination_minor: int
    dispensed: int
    rejected: int
    remaining: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CassetteCounter:
        return cls(**_integers(cls, row))


def _integers(cls: type, row: Mapping[str, Any]) -> dict[str, int]:
    """A row's (or a jsonb object's) values of the dataclass's fields, as integers."""
    return {f.name: int(row[f.name]) for f in fields(cls)}


@dataclass(frozen=True, slots=True)
class Balancing:
    """What the host found: `differences` names the fields that differ (empty: balanced)."""

    balancing_id: int
    differences: tuple[str, ...]
    host_figures: DayFigures
    host_cassettes: tuple[CassetteCounter, ...]

    @property
    def balanced(self) -> bool:
        return not self.differences


@dataclass(frozen=True, slots=True)
class TerminalReport:
    """A terminal's balancing request: its day, currency, figures and cassette counters."""

    terminal_id: str
    transmission_time: str
    stan: str
    business_date: date
    currency: str
    figures: DayFigures
    cassettes: tuple[CassetteCounter, ...]


def parse_balancing(reply: Mapping[str, Any]) -> Balancing:
    return Balancing(
        int(reply["balancing_id"]),
        tuple(reply["differences"]),
        DayFigures.from_row(reply["host_figures"]),
        tuple(CassetteCounter.from_row(c) for c in reply["host_cassettes"]),
    )


async def record(
    conn: Connection, report: TerminalReport, *, at: datetime, timeout_s: float
) -> Balancing:
    """Record one 0500 and compare it; raises BalancingRefused (nothing written) when the
    ledger refuses it. `conn` decodes jsonb (the store's connections do)."""
    try:
        reply = await conn.fetchval(
            "SELECT ledger.record_balancing($1, $2, $3, $4, $5, $6, $7, $8)",
            report.terminal_id, report.business_date, report.currency,
            report.transmission_time, report.stan, report.figures.as_list(),
            [list(astuple(c)) for c in report.cassettes], at, timeout=timeout_s,
        )  # fmt: skip
    except asyncpg.PostgresError as exc:
        reason = REFUSALS.get(exc.sqlstate or "")
        if reason is None:
            raise
        raise BalancingRefused(reason, str(exc)) from None
    return parse_balancing(reply)


async def close_day(conn: Connection, business_date: date, *, by: str, timeout_s: float) -> bool:
    """Close a business day that is over: True when closed now, False when it already was.
    Raises DayNotOver (nothing written) before the next day's cutover, by the database's
    clock."""
    try:
        closed = await conn.fetchval(
            "SELECT ledger.close_business_day($1, $2)", business_date, by, timeout=timeout_s
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != DAY_NOT_OVER_SQLSTATE:
            raise
        raise DayNotOver(str(exc)) from None
    return bool(closed)


async def latest_imbalances(
    conn: Connection, since: datetime, *, timeout_s: float
) -> Sequence[asyncpg.Record]:
    """Per terminal, its latest balancing since `since` when it did not balance (terminal_id,
    business_date, currency, differences, received_at, balancing_id)."""
    rows: Sequence[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM ledger.latest_imbalances($1)", since, timeout=timeout_s
    )
    return rows

"""Read-only, filtered and paged reads of the audit journal for the auditor API.

One page is one statement: at most `limit` transactions after a transaction id (keyset paging
on the primary key), so a page costs the same at the start and at the end of the journal and
nothing is held between pages. Rows come back in the shape `ledger.exports.transaction_record`
reads, so a page's records and an export's transactions are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ledger.audit import LEGS_JOIN
from ledger.migrations import Connection

PAGE_ROWS_MAX = 1_000


@dataclass(frozen=True, slots=True)
class JournalFilter:
    """Every field set narrows the records; None leaves that field free."""

    terminal_id: str | None = None
    start: datetime | None = None  # recorded at or after
    end: datetime | None = None  # recorded before
    response_code: str | None = None
    rrn: str | None = None
    pan_last4: str | None = None

    def __post_init__(self) -> None:
        assert self.pan_last4 is None or (len(self.pan_last4) == 4 and self.pan_last4.isdigit())
        for at in (self.start, self.end):
            assert at is None or at.tzinfo is not None, "times are timezone-aware"


# Fixed fragments only, each with its parameter: the statement's text depends on which filters
# are set, never on their values, and a filter left free adds no condition the planner must
# see through (the recorded_at BRIN index is used when a time bound is set).
_CONDITIONS = (
    ("terminal_id", "txn.terminal_id = ${}"),
    ("start", "txn.recorded_at >= ${}"),
    ("end", "txn.recorded_at < ${}"),
    ("response_code", "txn.response_code = ${}"),
    ("rrn", "txn.rrn = ${}"),
    ("pan_last4", "right(txn.pan_masked, 4) = ${}"),
)

_PAGE = (
    "SELECT txn.*, legs.* FROM ledger.transactions txn"  # noqa: S608 (constant fragments only)
    + LEGS_JOIN
    + """
 WHERE {where}
 ORDER BY txn.transaction_id
 LIMIT {limit}
"""
)


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[asyncpg.Record]
    # Whether transactions after the last row pass the filter too.
    more: bool


async def page(
    conn: Connection,
    journal_filter: JournalFilter,
    *,
    after_id: int,
    limit: int,
    timeout_ms: int,
) -> Page:
    """The first `limit` transactions with an id above `after_id` that pass the filter, in id
    order (ids grow with time)."""
    assert 0 < limit <= PAGE_ROWS_MAX, limit
    conditions = ["txn.transaction_id > $1"]
    args: list[object] = [after_id]
    for name, condition in _CONDITIONS:
        value = getattr(journal_filter, name)
        if value is not None:
            args.append(value)
            conditions.append(condition.format(len(args)))
    # One row more than asked tells whether another page follows.
    sql = _PAGE.format(where=" AND ".join(conditions), limit=int(limit) + 1)
    rows = await conn.fetch(sql, *args, timeout=timeout_ms / 1000)
    return Page(list(rows[:limit]), len(rows) > limit)

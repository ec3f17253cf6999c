"""Auditor tools: verify the journal and the books, export records, reconcile terminals.

All of them connect as the schema owner and only read. Every transaction carries a leaf hash
over its fields and postings; each write call appends one block per lane chaining the previous
block's hash and its transactions' leaves (see ledger.journal), and ledger.audit_heads holds each
lane's last block, so a removed tail is found as well as an altered record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import date

import asyncpg

from ledger import journal
from ledger.journal import Damage, Head
from ledger.migrations import Connection


@dataclass
class VerifyReport:
    records: int = 0
    blocks: int = 0
    chains: int = 0
    damage: list[Damage] = field(default_factory=list)
    books: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage and not self.books


# A transaction's postings as parallel arrays in account order (see legs_of), for queries over
# ledger.transactions t.
LEGS_JOIN = """
  LEFT JOIN LATERAL (
    SELECT array_agg(p.account_id ORDER BY p.account_id) AS account_ids,
           array_agg(p.customer_id ORDER BY p.account_id) AS customer_ids,
           array_agg(p.amount_minor ORDER BY p.account_id) AS amounts_minor,
           array_agg(p.currency::text ORDER BY p.account_id) AS currencies
      FROM ledger.postings p WHERE p.transaction_id = t.transaction_id) legs ON true
"""
# Every block with its transactions (a block without any, or transactions without their block,
# come out too), in chain order.
_JOURNAL_ROWS = f"""
SELECT coalesce(b.lane, t.lane) AS chain, coalesce(b.seq, t.block_seq) AS position,
       b.transactions AS block_transactions, b.prev_hash AS block_prev_hash,
       b.hash AS block_hash,
       (extract(epoch FROM b.recorded_at) * 1000000)::bigint AS block_recorded_at_us, t.*,
       (extract(epoch FROM t.recorded_at) * 1000000)::bigint AS recorded_at_us, legs.*
  FROM ledger.audit_blocks b
  FULL JOIN ledger.transactions t ON (t.lane, t.block_seq) = (b.lane, b.seq) {LEGS_JOIN}
 ORDER BY 1, 2, t.transaction_id
"""  # noqa: S608 (no value is formatted in: LEGS_JOIN is a constant)


def legs_of(row: asyncpg.Record) -> list[journal.Leg]:
    if row["account_ids"] is None:
        return []
    return [
        journal.Leg(*leg)
        for leg in zip(
            row["account_ids"],
            row["customer_ids"],
            row["amounts_minor"],
            row["currencies"],
            strict=True,
        )
    ]


async def stream_rows(
    conn: Connection, sql: str, *args: object, timeout_ms: int
) -> AsyncIterator[asyncpg.Record]:
    """Rows streamed through a cursor (bounded memory)."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        async for row in conn.cursor(sql, *args, prefetch=1_000):
            yield row


async def _verify_chains(
    conn: Connection, report: VerifyReport, anchored: Mapping[int, Head], *, timeout_ms: int
) -> None:
    heads = {r["lane"]: (r["seq"], bytes(r["hash"])) for r in await conn.fetch(
        "SELECT lane, seq, hash FROM ledger.audit_heads")}  # fmt: skip
    walk = journal.Walk(anchored, whole=True)
    block = None
    async for row in stream_rows(conn, _JOURNAL_ROWS, timeout_ms=timeout_ms):
        if (row["chain"], row["position"]) != block:
            block = (row["chain"], row["position"])
            stored = None
            if row["block_hash"] is not None:
                stored = journal.StoredBlock(
                    row["block_transactions"], row["block_recorded_at_us"],
                    bytes(row["block_prev_hash"]), bytes(row["block_hash"]),
                )  # fmt: skip
            walk.block(row["chain"], row["position"], stored)
        if row["transaction_id"] is not None:
            walk.transaction(row, legs_of(row), row["leaf"])
    report.damage.extend(walk.finish())
    for lane, (seq, head_hash) in sorted(heads.items()):
        walked = walk.lanes.get(lane, journal.LaneEnd())
        if (walked.seq, walked.hash) != (seq, head_hash):
            report.damage.append(
                Damage(f"chain {lane}", f"ends at block #{walked.seq}; its head is at #{seq}")
            )
    report.records, report.blocks, report.chains = walk.transactions, walk.blocks, len(heads)


async def _verify_books(conn: Connection, report: VerifyReport, *, timeout_ms: int) -> None:
    timeout_s = timeout_ms / 1000
    for row in await conn.fetch(
        "SELECT a.account_number, a.balance_minor, coalesce(p.posted, 0) AS posted"
        " FROM ledger.accounts a LEFT JOIN (SELECT account_id, sum(amount_minor) AS posted"
        "  FROM ledger.postings GROUP BY account_id) p USING (account_id)"
        " WHERE a.balance_minor <> coalesce(p.posted, 0) ORDER BY a.account_number",
        timeout=timeout_s,
    ):
        report.books.append(
            f"account {row['account_number']}: balance {row['balance_minor']}"
            f" but postings sum to {row['posted']}"
        )
    for row in await conn.fetch(
        "SELECT transaction_id, currency FROM ledger.postings GROUP BY transaction_id, currency"
        " HAVING sum(amount_minor) <> 0 ORDER BY transaction_id",
        timeout=timeout_s,
    ):
        report.books.append(
            f"transaction {row['transaction_id']}: {row['currency']} does not balance"
        )
    # What foreign keys would refuse (transactions and postings have none: see the baseline).
    for row in await conn.fetch(_STRAY_ROWS, timeout=timeout_s):
        report.books.append(row["stray"])


_STRAY_ROWS = """
SELECT format('posting %s/%s: no such transaction', p.transaction_id, p.account_id) AS stray
  FROM ledger.postings p
 WHERE NOT EXISTS (SELECT FROM ledger.transactions t WHERE t.transaction_id = p.transaction_id)
UNION ALL
SELECT format('posting %s/%s: not an account of customer %s', p.transaction_id, p.account_id,
              p.customer_id)
  FROM ledger.postings p
 WHERE NOT EXISTS (SELECT FROM ledger.accounts a
                    WHERE (a.account_id, a.customer_id) = (p.account_id, p.customer_id))
UNION ALL
SELECT format('transaction %s: no such customer %s', t.transaction_id, t.customer_id)
  FROM ledger.transactions t
 WHERE NOT EXISTS (SELECT FROM ledger.customers c WHERE c.customer_id = t.customer_id)
"""


async def verify(
    conn: Connection, *, timeout_ms: int, anchored: Mapping[int, Head] | None = None
) -> VerifyReport:
    """Walk every chain (leaves, blocks, heads) and check that balances equal the postings;
    with `anchored` (each lane's latest signed head), that no anchored block was rewritten or
    removed."""
    report = VerifyReport()
    await _verify_chains(conn, report, anchored or {}, timeout_ms=timeout_ms)
    await _verify_books(conn, report, timeout_ms=timeout_ms)
    return report


@dataclass(frozen=True, slots=True)
class TerminalDay:
    terminal_id: str
    currency: str
    withdrawals: int
    withdrawn_minor: int
    reversals: int
    reversed_minor: int
    net_minor: int
    posted_minor: int  # what the terminal's cash account postings say

    @property
    def reconciled(self) -> bool:
        return self.net_minor == self.posted_minor


async def terminal_report(
    conn: Connection, business_date: date, *, timeout_ms: int
) -> list[TerminalDay]:
    """Per terminal: approved withdrawals and the reversals that moved cash back (from the
    journal) and the net cash out, reconciled against the postings on its cash account."""
    rows = await conn.fetch(
        """
        WITH day AS (
          SELECT t.terminal_id, t.kind, t.amount_minor, p.amount_minor AS cash_minor
            FROM ledger.transactions t
            JOIN ledger.terminals term ON term.terminal_id = t.terminal_id
            LEFT JOIN ledger.postings p ON p.transaction_id = t.transaction_id
                                       AND p.account_id = term.cash_account_id
           -- Replenishments move cash into the ATM, not out to cardholders: not the day's.
           WHERE t.business_date = $1 AND t.outcome = 'approved'
             AND t.kind IN ('withdrawal', 'reversal'))
        SELECT term.terminal_id, a.currency,
               count(*) FILTER (WHERE d.kind = 'withdrawal' AND d.cash_minor IS NOT NULL)
                 AS withdrawals,
               coalesce(sum(d.amount_minor) FILTER (WHERE d.kind = 'withdrawal'
                 AND d.cash_minor IS NOT NULL), 0)::bigint AS withdrawn,
               count(*) FILTER (WHERE d.kind = 'reversal' AND d.cash_minor IS NOT NULL)
                 AS reversals,
               coalesce(sum(d.amount_minor) FILTER (WHERE d.kind = 'reversal'
                 AND d.cash_minor IS NOT NULL), 0)::bigint AS reversed,
               coalesce(sum(d.cash_minor), 0)::bigint AS posted
          FROM ledger.terminals term
          JOIN ledger.accounts a ON a.account_id = term.cash_account_id
          LEFT JOIN day d ON d.terminal_id = term.terminal_id
         GROUP BY term.terminal_id, a.currency ORDER BY term.terminal_id
        """,
        business_date,
        timeout=timeout_ms / 1000,
    )
    return [_terminal_day(r) for r in rows]


def _terminal_day(r: asyncpg.Record) -> TerminalDay:
    return TerminalDay(
        r["terminal_id"], r["currency"].strip(), r["withdrawals"], r["withdrawn"],
        r["reversals"], r["reversed"], r["withdrawn"] - r["reversed"], r["posted"],
    )  # fmt: skip

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
# ledger.transactions txn.
LEGS_JOIN = """
  LEFT JOIN LATERAL (
    SELECT array_agg(posting.account_id ORDER BY posting.account_id) AS account_ids,
           array_agg(posting.customer_id ORDER BY posting.account_id) AS customer_ids,
           array_agg(posting.amount_minor ORDER BY posting.account_id) AS amounts_minor,
           array_agg(posting.currency::text ORDER BY posting.account_id) AS currencies
      FROM ledger.postings posting
     WHERE posting.transaction_id = txn.transaction_id) legs ON true
"""
# Every block with its transactions (a block without any, or transactions without their block,
# come out too), in chain order.
_JOURNAL_ROWS = f"""
SELECT coalesce(block.lane, txn.lane) AS chain, coalesce(block.seq, txn.block_seq) AS position,
       block.transactions AS block_transactions, block.prev_hash AS block_prev_hash,
       block.hash AS block_hash,
       (extract(epoch FROM block.recorded_at) * 1000000)::bigint AS block_recorded_at_us,
       txn.*, (extract(epoch FROM txn.recorded_at) * 1000000)::bigint AS recorded_at_us, legs.*
  FROM ledger.audit_blocks block
  FULL JOIN ledger.transactions txn
    ON (txn.lane, txn.block_seq) = (block.lane, block.seq) {LEGS_JOIN}
 ORDER BY 1, 2, txn.transaction_id
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
        "SELECT account.account_number, account.balance_minor,"
        " coalesce(per_account.posted, 0) AS posted"
        " FROM ledger.accounts account LEFT JOIN (SELECT account_id, sum(amount_minor) AS posted"
        "  FROM ledger.postings GROUP BY account_id) per_account USING (account_id)"
        " WHERE account.balance_minor <> coalesce(per_account.posted, 0)"
        " ORDER BY account.account_number",
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
SELECT format('posting %s/%s: no such transaction', posting.transaction_id,
              posting.account_id) AS stray
  FROM ledger.postings posting
 WHERE NOT EXISTS (SELECT FROM ledger.transactions txn
                    WHERE txn.transaction_id = posting.transaction_id)
UNION ALL
SELECT format('posting %s/%s: not an account of customer %s', posting.transaction_id,
              posting.account_id, posting.customer_id)
  FROM ledger.postings posting
 WHERE NOT EXISTS (SELECT FROM ledger.accounts account
                    WHERE (account.account_id, account.customer_id)
                        = (posting.account_id, posting.customer_id))
UNION ALL
SELECT format('transaction %s: no such customer %s', txn.transaction_id, txn.customer_id)
  FROM ledger.transactions txn
 WHERE NOT EXISTS (SELECT FROM ledger.customers customer
                    WHERE customer.customer_id = txn.customer_id)
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
          SELECT txn.terminal_id, txn.kind, txn.amount_minor, cash.amount_minor AS cash_minor
            FROM ledger.transactions txn
            JOIN ledger.terminals term ON term.terminal_id = txn.terminal_id
            LEFT JOIN ledger.postings cash ON cash.transaction_id = txn.transaction_id
                                          AND cash.account_id = term.cash_account_id
           -- Replenishments move cash into the ATM, not out to cardholders: not the day's.
           WHERE txn.business_date = $1 AND txn.outcome = 'approved'
             AND txn.kind IN ('withdrawal', 'reversal'))
        SELECT term.terminal_id, account.currency,
               count(*) FILTER (WHERE day_txn.kind = 'withdrawal'
                                  AND day_txn.cash_minor IS NOT NULL) AS withdrawals,
               coalesce(sum(day_txn.amount_minor) FILTER (WHERE day_txn.kind = 'withdrawal'
                 AND day_txn.cash_minor IS NOT NULL), 0)::bigint AS withdrawn,
               count(*) FILTER (WHERE day_txn.kind = 'reversal'
                                  AND day_txn.cash_minor IS NOT NULL) AS reversals,
               coalesce(sum(day_txn.amount_minor) FILTER (WHERE day_txn.kind = 'reversal'
                 AND day_txn.cash_minor IS NOT NULL), 0)::bigint AS reversed,
               coalesce(sum(day_txn.cash_minor), 0)::bigint AS posted
          FROM ledger.terminals term
          JOIN ledger.accounts account ON account.account_id = term.cash_account_id
          LEFT JOIN day day_txn ON day_txn.terminal_id = term.terminal_id
         GROUP BY term.terminal_id, account.currency ORDER BY term.terminal_id
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

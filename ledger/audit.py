"""Auditor tools: verify the journal and the books, export records, reconcile terminals.

All of them connect as the schema owner and only read. Every transaction carries a leaf hash
over its fields and postings; each write call appends one block per lane chaining the previous
block's hash and its transactions' leaves (see ledger.journal), and ledger.audit_heads holds each
lane's last block, so a removed tail is found as well as an altered record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TextIO

import asyncpg

from ledger import journal
from ledger.codec import MONEY_KINDS
from ledger.migrations import Connection
from ledger.pan import remask

EXPORT_FIELDS = (
    *journal.LEAF_FIELDS[:16], "recorded_at", *journal.LEAF_FIELDS[17:], "legs", "leaf",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Damage:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


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


# Every block with its transactions (a block without any, or transactions without their block,
# come out too), in chain order.
_JOURNAL_ROWS = """
SELECT coalesce(b.lane, t.lane) AS chain, coalesce(b.seq, t.block_seq) AS position,
       b.transactions AS block_transactions, b.prev_hash AS block_prev_hash,
       b.hash AS block_hash, t.*,
       (extract(epoch FROM t.recorded_at) * 1000000)::bigint AS recorded_at_us,
       legs.account_ids, legs.customer_ids, legs.amounts_minor, legs.currencies
  FROM ledger.audit_blocks b
  FULL JOIN ledger.transactions t ON (t.lane, t.block_seq) = (b.lane, b.seq)
  LEFT JOIN LATERAL (
    SELECT array_agg(p.account_id ORDER BY p.account_id) AS account_ids,
           array_agg(p.customer_id ORDER BY p.account_id) AS customer_ids,
           array_agg(p.amount_minor ORDER BY p.account_id) AS amounts_minor,
           array_agg(p.currency::text ORDER BY p.account_id) AS currencies
      FROM ledger.postings p WHERE p.transaction_id = t.transaction_id) legs ON true
 ORDER BY 1, 2, t.transaction_id
"""


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


async def _rows(
    conn: Connection, sql: str, *args: object, timeout_ms: int
) -> AsyncIterator[asyncpg.Record]:
    """Rows streamed through a cursor (bounded memory)."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        async for row in conn.cursor(sql, *args, prefetch=1_000):
            yield row


def _record_damage(row: asyncpg.Record) -> str | None:
    """What is wrong with one transaction on its own: its leaf, or its amount against its legs."""
    legs = legs_of(row)
    if journal.leaf(row, legs) != row["leaf"]:
        return "leaf hash does not match its contents"
    moved = sum(leg.amount_minor for leg in legs if leg.amount_minor > 0)
    if row["kind"] in MONEY_KINDS | {"opening"} and row["outcome"] == "approved":
        return None if moved == row["amount_minor"] else "amount differs from its postings"
    return None if not legs else "postings on a transaction that moves no money"


@dataclass
class _Chain:
    """One lane's walk: the block being read and the hash it must follow."""

    lane: int
    seq: int = 0
    prev_hash: bytes = journal.GENESIS_HASH
    leaves: list[bytes] = field(default_factory=list)
    block: asyncpg.Record | None = None


def _close_block(chain: _Chain, report: VerifyReport) -> None:
    block = chain.block
    if block is None:
        return
    where = f"block {chain.lane}#{block['position']}"
    if block["block_hash"] is None:
        report.damage.append(Damage(where, "transactions of a block that is missing"))
    elif block["position"] != chain.seq + 1:
        report.damage.append(Damage(where, f"sequence gap: expected #{chain.seq + 1}"))
    elif block["block_prev_hash"] != chain.prev_hash:
        report.damage.append(Damage(where, "does not follow the previous block's hash"))
    elif block["block_transactions"] != len(chain.leaves) or block["block_hash"] != (
        journal.block_hash(chain.prev_hash, chain.lane, block["position"], chain.leaves)
    ):
        report.damage.append(Damage(where, "hash does not match its transactions"))
    report.blocks += 1
    chain.seq = block["position"]
    chain.prev_hash = block["block_hash"] or chain.prev_hash
    chain.leaves = []
    chain.block = None


async def _verify_chains(conn: Connection, report: VerifyReport, *, timeout_ms: int) -> None:
    heads = {r["lane"]: (r["seq"], r["hash"]) for r in await conn.fetch(
        "SELECT lane, seq, hash FROM ledger.audit_heads")}  # fmt: skip
    chains: dict[int, _Chain] = {}
    chain: _Chain | None = None
    async for row in _rows(conn, _JOURNAL_ROWS, timeout_ms=timeout_ms):
        if chain is None or row["chain"] != chain.lane:
            if chain is not None:
                _close_block(chain, report)
            chain = chains.setdefault(row["chain"], _Chain(row["chain"]))
        if chain.block is not None and chain.block["position"] != row["position"]:
            _close_block(chain, report)
        if chain.block is None:
            chain.block = row
        if row["transaction_id"] is not None:
            report.records += 1
            chain.leaves.append(row["leaf"])
            reason = _record_damage(row)
            if reason is not None:
                report.damage.append(Damage(f"transaction {row['transaction_id']}", reason))
    if chain is not None:
        _close_block(chain, report)
    for lane, (seq, head_hash) in sorted(heads.items()):
        walked = chains.get(lane, _Chain(lane))
        if (walked.seq, walked.prev_hash) != (seq, head_hash):
            report.damage.append(
                Damage(f"chain {lane}", f"ends at block #{walked.seq}; its head is at #{seq}")
            )
    report.chains = len(heads)


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


async def verify(conn: Connection, *, timeout_ms: int) -> VerifyReport:
    """Walk every chain (leaves, blocks, heads) and check that balances equal the postings."""
    report = VerifyReport()
    await _verify_chains(conn, report, timeout_ms=timeout_ms)
    await _verify_books(conn, report, timeout_ms=timeout_ms)
    return report


_EXPORT_ROWS = """
SELECT t.*, legs.account_ids, legs.customer_ids, legs.amounts_minor, legs.currencies
  FROM ledger.transactions t
  LEFT JOIN LATERAL (
    SELECT array_agg(p.account_id ORDER BY p.account_id) AS account_ids,
           array_agg(p.customer_id ORDER BY p.account_id) AS customer_ids,
           array_agg(p.amount_minor ORDER BY p.account_id) AS amounts_minor,
           array_agg(p.currency::text ORDER BY p.account_id) AS currencies
      FROM ledger.postings p WHERE p.transaction_id = t.transaction_id) legs ON true
 WHERE t.recorded_at >= $1 AND t.recorded_at < $2 AND ($3::text IS NULL OR t.terminal_id = $3)
 ORDER BY t.transaction_id
"""


def export_record(row: asyncpg.Record) -> dict[str, Any]:
    """One transaction as exported: every field its leaf covers, its legs and its leaf. PANs are
    masked again on the way out, whatever is stored."""
    record: dict[str, Any] = {name: row[name] for name in EXPORT_FIELDS[:-2]}
    record["pan_masked"] = remask(row["pan_masked"])
    record["recorded_at"] = row["recorded_at"].isoformat()
    record["business_date"] = row["business_date"].isoformat()
    record["legs"] = ";".join(
        f"{leg.account_id}:{leg.customer_id}:{leg.amount_minor}:{leg.currency}"
        for leg in legs_of(row)
    )
    record["leaf"] = row["leaf"].hex()
    return record


async def export(
    conn: Connection,
    out: TextIO,
    *,
    start: datetime,
    end: datetime,
    terminal_id: str | None,
    output_format: str,
    timeout_ms: int,
) -> int:
    """Write transactions with start <= time < end as CSV or JSON lines; returns how many."""
    assert output_format in {"csv", "jsonl"}, output_format
    writer = csv.DictWriter(out, EXPORT_FIELDS)
    if output_format == "csv":
        writer.writeheader()
    count = 0
    async for row in _rows(conn, _EXPORT_ROWS, start, end, terminal_id, timeout_ms=timeout_ms):
        record = export_record(row)
        if output_format == "csv":
            writer.writerow(record)
        else:
            out.write(json.dumps(record) + "\n")
        count += 1
    return count


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
           WHERE t.business_date = $1 AND t.outcome = 'approved')
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

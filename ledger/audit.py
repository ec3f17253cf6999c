"""Auditor tools: verify the hash chains and the books, export records, reconcile terminals.

All of them connect as the schema owner and only read. Each terminal has its own chain: record
n carries the SHA-256 of (hash of record n-1, terminal id, n, canonical JSON body); the first
record of a chain follows 64 zeros, and `ledger.audit_heads` holds each chain's last hash, so
a removed tail is found as well as an altered record.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TextIO

import asyncpg

from ledger.migrations import Connection

GENESIS_HASH = "0" * 64
EXPORT_FIELDS = (
    "terminal_id", "seq", "time", "customer_id", "stan", "transmission_time", "message_class",
    "rrn", "mti", "processing_code", "pan_masked", "kind", "requested_minor",
    "requested_currency", "amount_minor", "currency", "outcome", "response_code", "hash",
)  # fmt: skip


def record_hash(prev_hash: str, terminal_id: str, seq: int, body: str) -> str:
    """The chain hash, byte for byte as ledger.append_audit computes it."""
    material = f"{prev_hash}\n{terminal_id}\n{seq}\n{body}".encode()
    return hashlib.sha256(material).hexdigest()


@dataclass(frozen=True, slots=True)
class Damage:
    terminal_id: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"audit record {self.terminal_id}#{self.seq}: {self.reason}"


@dataclass
class VerifyReport:
    records: int = 0
    chains: int = 0
    damage: list[Damage] = field(default_factory=list)
    books: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage and not self.books


_AUDIT_ROWS = (
    "SELECT terminal_id, seq, customer_id, recorded_at, body, prev_hash, hash FROM ledger.audit"
    " WHERE recorded_at >= $1 AND recorded_at < $2 AND ($3::text IS NULL OR terminal_id = $3)"
    " ORDER BY terminal_id, seq"
)


_BEGINNING = datetime.min.replace(tzinfo=UTC)
_END = datetime.max.replace(tzinfo=UTC)


async def _audit_rows(
    conn: Connection,
    *,
    start: datetime = _BEGINNING,
    end: datetime = _END,
    terminal_id: str | None = None,
    timeout_ms: int,
) -> AsyncIterator[asyncpg.Record]:
    """Audit rows in chain order, streamed through a cursor (bounded memory)."""
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        async for row in conn.cursor(_AUDIT_ROWS, start, end, terminal_id, prefetch=1_000):
            yield row


def _row_damage(row: asyncpg.Record, prev_hash: str, seq: int) -> str | None:
    if row["seq"] != seq:
        return f"sequence gap: expected #{seq}"
    if row["prev_hash"] != prev_hash:
        return "does not follow the previous record's hash"
    if record_hash(prev_hash, row["terminal_id"], seq, row["body"]) != row["hash"]:
        return "hash does not match its contents"
    body = json.loads(row["body"])
    same = (
        body.get("terminal_id") == row["terminal_id"]
        and body.get("customer_id") == row["customer_id"]
        and datetime.fromisoformat(body["time"]) == row["recorded_at"]
    )
    return None if same else "columns differ from the hashed body"


async def _verify_chains(conn: Connection, report: VerifyReport, *, timeout_ms: int) -> None:
    heads = {
        r["terminal_id"]: (r["seq"], r["hash"])
        for r in await conn.fetch("SELECT terminal_id, seq, hash FROM ledger.audit_heads")
    }
    terminal, prev_hash, seq = None, GENESIS_HASH, 0
    seen: set[str] = set()
    async for row in _audit_rows(conn, timeout_ms=timeout_ms):
        if row["terminal_id"] != terminal:
            terminal, prev_hash, seq = row["terminal_id"], GENESIS_HASH, 0
            seen.add(row["terminal_id"])
        seq += 1
        report.records += 1
        reason = _row_damage(row, prev_hash, seq)
        if reason is not None:
            report.damage.append(Damage(row["terminal_id"], row["seq"], reason))
        prev_hash, seq = row["hash"], row["seq"]
        if heads.get(row["terminal_id"], (0, ""))[0] == seq and heads[row["terminal_id"]][1] != (
            prev_hash
        ):
            report.damage.append(Damage(row["terminal_id"], seq, "chain head hash differs"))
    report.chains = len(seen)
    last = await conn.fetch(
        "SELECT h.terminal_id, h.seq, coalesce(max(a.seq), 0) AS last FROM ledger.audit_heads h"
        " LEFT JOIN ledger.audit a USING (terminal_id) GROUP BY h.terminal_id, h.seq"
        " HAVING h.seq <> coalesce(max(a.seq), 0)"
    )
    for row in last:
        report.damage.append(
            Damage(row["terminal_id"], row["last"] + 1, f"missing: the head is at #{row['seq']}")
        )


async def _verify_books(conn: Connection, report: VerifyReport, *, timeout_ms: int) -> None:
    timeout_s = timeout_ms / 1000
    for row in await conn.fetch(
        "SELECT a.account_number, a.balance_minor, coalesce(sum(p.amount_minor), 0) AS posted"
        " FROM ledger.accounts a LEFT JOIN ledger.postings p USING (account_id)"
        " GROUP BY a.account_id HAVING a.balance_minor <> coalesce(sum(p.amount_minor), 0)"
        " ORDER BY a.account_number",
        timeout=timeout_s,
    ):
        report.books.append(
            f"account {row['account_number']}: balance {row['balance_minor']}"
            f" but postings sum to {row['posted']}"
        )
    for row in await conn.fetch(
        "SELECT entry_id, currency FROM ledger.postings GROUP BY entry_id, currency"
        " HAVING sum(amount_minor) <> 0 ORDER BY entry_id",
        timeout=timeout_s,
    ):
        report.books.append(f"journal entry {row['entry_id']}: {row['currency']} does not balance")


async def verify(conn: Connection, *, timeout_ms: int) -> VerifyReport:
    """Walk every chain and check that balances equal the sum of postings."""
    report = VerifyReport()
    await _verify_chains(conn, report, timeout_ms=timeout_ms)
    await _verify_books(conn, report, timeout_ms=timeout_ms)
    report.damage.sort(key=lambda d: (d.terminal_id, d.seq))
    return report


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
    """Write records with start <= time < end as CSV or JSON lines; returns how many."""
    assert output_format in {"csv", "jsonl"}, output_format
    writer = csv.DictWriter(out, EXPORT_FIELDS, extrasaction="ignore")
    if output_format == "csv":
        writer.writeheader()
    count = 0
    rows = _audit_rows(conn, start=start, end=end, terminal_id=terminal_id, timeout_ms=timeout_ms)
    async for row in rows:
        record = json.loads(row["body"]) | {"seq": row["seq"], "hash": row["hash"]}
        if output_format == "csv":
            writer.writerow(record)
        else:
            out.write(json.dumps({k: record.get(k) for k in EXPORT_FIELDS}) + "\n")
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
    """Per terminal: approved withdrawals and reversals (from the stored outcomes) and the net
    cash out, reconciled against the postings on the terminal's cash account."""
    rows = await conn.fetch(
        """
        WITH outcomes AS (
          SELECT terminal_id, result->>'kind' AS kind, (result->>'amount_minor')::bigint AS amt
            FROM ledger.requests
           WHERE result->>'business_date' = $1::date::text AND outcome = 'approved'
             AND result->>'kind' IN ('withdrawal', 'reversal')
             AND jsonb_array_length(result->'postings') > 0
             AND result->'postings' @> jsonb_build_array(jsonb_build_object(
                   'account_id', (SELECT cash_account_id FROM ledger.terminals t
                                   WHERE t.terminal_id = requests.terminal_id)))),
        posted AS (
          SELECT je.terminal_id, sum(p.amount_minor)::bigint AS posted
            FROM ledger.journal_entries je
            JOIN ledger.terminals t ON t.terminal_id = je.terminal_id
            JOIN ledger.postings p ON p.entry_id = je.entry_id
                                  AND p.account_id = t.cash_account_id
           WHERE je.business_date = $1 GROUP BY je.terminal_id)
        SELECT t.terminal_id, a.currency,
               count(*) FILTER (WHERE o.kind = 'withdrawal') AS withdrawals,
               coalesce(sum(o.amt) FILTER (WHERE o.kind = 'withdrawal'), 0)::bigint AS withdrawn,
               count(*) FILTER (WHERE o.kind = 'reversal') AS reversals,
               coalesce(sum(o.amt) FILTER (WHERE o.kind = 'reversal'), 0)::bigint AS reversed,
               coalesce(max(p.posted), 0) AS posted
          FROM ledger.terminals t
          JOIN ledger.accounts a ON a.account_id = t.cash_account_id
          LEFT JOIN outcomes o ON o.terminal_id = t.terminal_id
          LEFT JOIN posted p ON p.terminal_id = t.terminal_id
         GROUP BY t.terminal_id, a.currency ORDER BY t.terminal_id
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

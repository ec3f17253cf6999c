"""Exports of the journal that an auditor can verify alone, and their verification.

JSON lines (the verifiable format): on each chain, every block from the first to the last that
holds a transaction of the time range, each followed by all its transactions, in chain order. A
block line carries `record: "block"`,
`lane`, `seq`, `transactions`, `prev_hash`, `hash` and `recorded_at`; a transaction line carries
`record: "transaction"`, every field its leaf covers (`recorded_at` as ISO 8601 with
microseconds), its `legs` as `[account, customer, amount, currency]` lists, and its `leaf`. Each
line is canonical JSON (sorted keys, no spaces, ASCII), so changing any byte is detectable.

CSV: the transactions whose own time is in the range, one per row, for spreadsheets; it carries
the same fields and leaves, but no blocks.

Card numbers are masked again on the way out (first six, last four), whatever is stored: a row
written by hand with a full PAN is printed masked, and then fails its leaf check.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TextIO

import asyncpg

from ledger import journal
from ledger.audit import LEGS_JOIN, legs_of, stream_rows
from ledger.journal import Damage, Head
from ledger.migrations import Connection
from ledger.pan import mask_pan

CSV_FIELDS = (
    *(name for name in journal.LEAF_FIELDS if name != "recorded_at_us"), "recorded_at", "legs",
    "leaf",
)  # fmt: skip
_CSV_ROWS = f"""
SELECT txn.*, legs.* FROM ledger.transactions txn {LEGS_JOIN}
 WHERE txn.recorded_at >= $1 AND txn.recorded_at < $2
   AND ($3::text IS NULL OR txn.terminal_id = $3)
 ORDER BY txn.transaction_id
"""  # noqa: S608 (no value is formatted in: LEGS_JOIN is a constant)
# Whole blocks, and on each chain every block from the first to the last that holds a
# transaction of the range (and of the terminal, if named): the export's chains have no holes,
# so each block's link to the one before it is checked. The blocks are found through the time
# index; their transactions, whatever time each carries, by one pass over the journal.
_JSONL_ROWS = f"""
WITH touched AS (
  SELECT lane, min(block_seq) AS first_seq, max(block_seq) AS last_seq FROM ledger.transactions
   WHERE recorded_at >= $1 AND recorded_at < $2 AND ($3::text IS NULL OR terminal_id = $3)
   GROUP BY lane)
SELECT block.lane AS block_lane, block.seq AS block_position,
       block.transactions AS block_transactions, block.prev_hash AS block_prev_hash,
       block.hash AS block_hash, block.recorded_at AS block_recorded_at, txn.*, legs.*
  FROM touched
  JOIN ledger.audit_blocks block
    ON block.lane = touched.lane AND block.seq BETWEEN touched.first_seq AND touched.last_seq
  JOIN ledger.transactions txn ON (txn.lane, txn.block_seq) = (block.lane, block.seq)
  {LEGS_JOIN}
 ORDER BY block.lane, block.seq, txn.transaction_id
"""  # noqa: S608 (no value is formatted in: LEGS_JOIN is a constant)


def canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _transaction(row: asyncpg.Record) -> dict[str, Any]:
    record: dict[str, Any] = {name: row[name] for name in CSV_FIELDS[:-3]}
    record["pan_masked"] = mask_pan(row["pan_masked"])
    record["business_date"] = row["business_date"].isoformat()
    record["recorded_at"] = row["recorded_at"].isoformat()
    record["leaf"] = row["leaf"].hex()
    return record


def transaction_record(row: asyncpg.Record) -> dict[str, Any]:
    """A transaction as a JSON-lines export (and the auditor API's journal pages) carry it."""
    legs = [[leg.account_id, leg.customer_id, leg.amount_minor, leg.currency]
            for leg in legs_of(row)]  # fmt: skip
    return {"record": "transaction", **_transaction(row), "legs": legs}


def _block(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "record": "block",
        "lane": row["block_lane"],
        "seq": row["block_position"],
        "transactions": row["block_transactions"],
        "prev_hash": row["block_prev_hash"].hex(),
        "hash": row["block_hash"].hex(),
        "recorded_at": row["block_recorded_at"].isoformat(),
    }


async def _jsonl_records(
    conn: Connection, start: datetime, end: datetime, terminal_id: str | None, timeout_ms: int
) -> AsyncIterator[dict[str, Any]]:
    block = None
    query = stream_rows(conn, _JSONL_ROWS, start, end, terminal_id, timeout_ms=timeout_ms)
    async for row in query:
        if (row["block_lane"], row["block_position"]) != block:
            block = (row["block_lane"], row["block_position"])
            yield _block(row)
        yield transaction_record(row)


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
    """Write the journal for start <= time < end as CSV or JSON lines; returns the transactions
    written. Memory stays bounded whatever the size: rows are streamed through a cursor."""
    assert output_format in {"csv", "jsonl"}, output_format
    count = 0
    if output_format == "jsonl":
        async for record in _jsonl_records(conn, start, end, terminal_id, timeout_ms):
            out.write(canonical(record) + "\n")
            count += record["record"] == "transaction"
        return count
    writer = csv.DictWriter(out, CSV_FIELDS)
    writer.writeheader()
    query = stream_rows(conn, _CSV_ROWS, start, end, terminal_id, timeout_ms=timeout_ms)
    async for row in query:
        legs = ";".join(
            f"{leg.account_id}:{leg.customer_id}:{leg.amount_minor}:{leg.currency}"
            for leg in legs_of(row)
        )
        writer.writerow({**_transaction(row), "legs": legs})
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class ExportReport:
    transactions: int
    blocks: int
    damage: list[Damage]

    @property
    def ok(self) -> bool:
        return not self.damage


class _Fields:
    """A transaction line as the leaf reads it: recorded_at in microseconds, dates as dates."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record

    def __getitem__(self, name: str) -> Any:
        if name == "recorded_at_us":
            return journal.recorded_at_us(exported_time(self._record["recorded_at"]))
        if name == "business_date":
            day = date.fromisoformat(self._record["business_date"])
            if day.isoformat() != self._record["business_date"]:
                raise ValueError("a date not as the exporter writes it")
            return day
        return self._record[name]


def exported_time(text: str) -> datetime:
    """A time as the exporter writes it, and only so: ISO 8601 parses other spellings of the
    same instant, which would let a changed byte go unseen."""
    at = datetime.fromisoformat(text)
    if at.isoformat() != text:
        raise ValueError("a time not as the exporter writes it")
    return at


def _parsed(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Each line's record, or why it is not one (not text, not JSON, not canonical)."""
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            yield number, None, "not the exporter's ASCII text"
            continue
        if not line.endswith("\n"):
            yield number, None, "the line does not end the way the exporter ends it"
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield number, None, "not JSON"
            continue
        if not isinstance(record, dict) or canonical(record) + "\n" != line:
            yield number, None, "not in the exporter's canonical form: changed after export"
            continue
        yield number, record, None


def verify_export(lines: Iterable[bytes], anchored: Mapping[int, Head]) -> ExportReport:
    """Recompute every leaf, block and link of a JSON-lines export, and compare each lane's
    latest signed anchor where the export covers it."""
    walk = journal.Walk(anchored, whole=False)
    damage: list[Damage] = []
    for number, record, problem in _parsed(lines):
        if record is None:
            damage.append(Damage(f"line {number}", problem or ""))
            continue
        try:
            if record["record"] not in ("block", "transaction"):
                damage.append(Damage(f"line {number}", "neither a block nor a transaction"))
            elif record["record"] == "block":
                stored = journal.StoredBlock(
                    int(record["transactions"]),
                    journal.recorded_at_us(exported_time(record["recorded_at"])),
                    bytes.fromhex(record["prev_hash"]),
                    bytes.fromhex(record["hash"]),
                )
                walk.block(int(record["lane"]), int(record["seq"]), stored)
            else:
                legs = [journal.Leg(*leg) for leg in record["legs"]]
                walk.transaction(_Fields(record), legs, bytes.fromhex(record["leaf"]))
        except (KeyError, ValueError, TypeError) as exc:
            damage.append(Damage(f"line {number}", f"not an export record ({exc!r})"))
    damage += walk.finish()
    return ExportReport(walk.transactions, walk.blocks, damage)

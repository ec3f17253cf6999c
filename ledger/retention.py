"""Pruning the operations data (terminal events, traffic, resolved alerts, switch processes)
older than a retention, as the schema owner: `python -m ledger prune-events`.

The journal (transactions, postings, blocks and their heads) is append-only for every role and
is never touched here. Terminal events are append-only too, against mistakes: the owner lifts
that guard (its row trigger) only inside each batch's transaction, which also holds the lock
that keeps the switch's own event writes waiting for the few milliseconds a batch takes.

What the fleet view and the SLA report need of the past is kept whatever its age: each
terminal's latest sign-on before the cut-off and everything after it (so a terminal signed on
for months is still up, and a report starting after the cut-off knows who was signed on), every
event of an alert still open (firing or acknowledged), the alerts themselves, and the switch
processes those events name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.migrations import Connection

# Rows per transaction: each batch holds the lock on terminal_events while it runs.
BATCH_MAX = 10_000

_EVENTS = """
WITH doomed AS (
  SELECT event.event_id FROM ledger.terminal_events event
   WHERE event.occurred_at < $1
     AND CASE
           WHEN event.kind = 'alert' THEN NOT EXISTS (
             SELECT FROM ledger.alerts alert
              WHERE alert.alert_id = (event.detail->>'alert_id')::bigint
                AND alert.state <> 'resolved')
           WHEN event.terminal_id IS NULL THEN true
           ELSE event.occurred_at < coalesce(
             (SELECT max(sign_on.occurred_at) FROM ledger.terminal_events sign_on
               WHERE sign_on.terminal_id = event.terminal_id AND sign_on.kind = 'sign_on'
                 AND sign_on.occurred_at < $1), $1)
         END
   LIMIT $2)
DELETE FROM ledger.terminal_events event USING doomed WHERE event.event_id = doomed.event_id
"""
_TRAFFIC = """
DELETE FROM ledger.terminal_traffic
 WHERE (terminal_id, bucket_start, process_id) IN (
   SELECT traffic.terminal_id, traffic.bucket_start, traffic.process_id
     FROM ledger.terminal_traffic traffic
    WHERE traffic.bucket_start < $1 LIMIT $2)
"""
_ALERTS = """
DELETE FROM ledger.alerts
 WHERE alert_id IN (
   SELECT alert.alert_id FROM ledger.alerts alert
    WHERE alert.state = 'resolved' AND alert.resolved_at < $1 LIMIT $2)
"""
# A process no kept row names: its sessions and traffic are gone, its alerts resolved.
_PROCESSES = """
DELETE FROM ledger.switch_processes process
 WHERE process.beat_at < $1
   AND NOT EXISTS (SELECT FROM ledger.terminal_events event
                    WHERE event.process_id = process.process_id)
   AND NOT EXISTS (SELECT FROM ledger.terminal_traffic traffic
                    WHERE traffic.process_id = process.process_id)
   AND NOT EXISTS (SELECT FROM ledger.alerts alert
                    WHERE alert.raised_by = process.process_id AND alert.state <> 'resolved')
"""


@dataclass(frozen=True, slots=True)
class Pruned:
    events: int
    traffic: int
    alerts: int
    processes: int


async def prune_operations(
    conn: Connection, before: datetime, *, batch_max: int = BATCH_MAX, timeout_ms: int
) -> Pruned:
    """Deletes what is older than `before`, batch by batch (each its own transaction, each
    statement within `timeout_ms`), and says how many rows of each table went."""
    assert before.tzinfo is not None, "a cut-off in UTC, not local time"
    assert batch_max > 0
    events = await _batches(conn, _EVENTS, before, batch_max, timeout_ms, guarded=True)
    traffic = await _batches(conn, _TRAFFIC, before, batch_max, timeout_ms)
    alerts = await _batches(conn, _ALERTS, before, batch_max, timeout_ms)
    status = await conn.execute(_PROCESSES, before, timeout=timeout_ms / 1000)
    return Pruned(events, traffic, alerts, _rows(status))


async def _batches(
    conn: Connection,
    statement: str,
    before: datetime,
    batch_max: int,
    timeout_ms: int,
    *,
    guarded: bool = False,
) -> int:
    timeout_s = timeout_ms / 1000
    total = 0
    while True:
        async with conn.transaction():
            if guarded:
                await conn.execute(
                    "ALTER TABLE ledger.terminal_events DISABLE TRIGGER no_update_delete",
                    timeout=timeout_s,
                )
            deleted = _rows(await conn.execute(statement, before, batch_max, timeout=timeout_s))
            if guarded:
                await conn.execute(
                    "ALTER TABLE ledger.terminal_events ENABLE TRIGGER no_update_delete",
                    timeout=timeout_s,
                )
        total += deleted
        if deleted < batch_max:
            return total


def _rows(status: str) -> int:
    """The row count of a command tag such as "DELETE 42"."""
    return int(status.rsplit(" ", 1)[1])

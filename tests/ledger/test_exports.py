"""Exports an auditor verifies alone: any changed byte is found, PANs go out masked, and a
reader that stops early (`| head`) ends the export cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from ledger.__main__ import main
from ledger.model import Reversal, Withdrawal
from ledger.store import LedgerStore
from tests.conftest import PgCluster
from tests.ledger.factory import AUDIT, NOW, World, key
from tests.ledger.helpers import run

# A time no other test writes at: an export holds every block between the first and the last of
# its range on each chain, so at NOW it would hold most of the session's journal, and the
# byte-by-byte check below would grow with every other test's rows.
EXPORTED_AT = NOW - timedelta(days=30)
WINDOW = ("--from", (EXPORTED_AT - timedelta(minutes=1)).isoformat(),
          "--to", (EXPORTED_AT + timedelta(minutes=1)).isoformat())  # fmt: skip


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


async def _exported(
    store: LedgerStore, conn: asyncpg.Connection, cluster: PgCluster, path: Path
) -> World:
    world = World()
    await world.load(conn, 2, terminals=2)
    for customer, terminal in zip(world.customers, world.terminals, strict=True):
        first = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 2_500, "EUR")
        await run(store, first, EXPORTED_AT)
        reversal = Reversal(customer.pan, key(terminal, "0420"), AUDIT, first.key, 1_000)
        await run(store, reversal, EXPORTED_AT)
    code, out = await asyncio.to_thread(
        _cli, "audit", "export", "--dsn", cluster.owner_dsn, *WINDOW, "--format", "jsonl"
    )
    assert code == 0
    await asyncio.to_thread(path.write_text, out)
    return world


async def test_an_export_verifies_alone_and_any_changed_byte_is_found(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    export = tmp_path / "journal.jsonl"
    world = await _exported(ledger_store, owner_conn, pg_cluster, export)
    code, out = _cli("audit", "verify-export", str(export))
    assert code == 0, out
    assert out.startswith("OK: ")
    data = export.read_bytes()
    assert all(c.pan.encode() not in data for c in world.customers)
    changed = tmp_path / "changed.jsonl"
    # Every 37th byte, the first and the last: letters, digits, punctuation and line ends.
    for position in sorted({0, len(data) - 1, *range(0, len(data), 37)}):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        changed.write_bytes(bytes(flipped))
        code, out = _cli("audit", "verify-export", str(changed))
        assert code == 1, (position, chr(data[position]))
        assert out.startswith("FIRST BAD RECORD: ")


async def test_a_removed_line_is_found(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    export = tmp_path / "journal.jsonl"
    await _exported(ledger_store, owner_conn, pg_cluster, export)
    lines = export.read_bytes().splitlines(keepends=True)
    for dropped in range(len(lines)):
        export.write_bytes(b"".join(lines[:dropped] + lines[dropped + 1 :]))
        assert _cli("audit", "verify-export", str(export))[0] == 1, dropped


def test_a_csv_export_is_not_verified_as_json_lines(tmp_path: Path) -> None:
    export = tmp_path / "journal.csv"
    export.write_text("transaction_id,customer_id\n1,2\n")
    code, out = _cli("audit", "verify-export", str(export))
    assert code == 1
    assert "line 1: not JSON" in out


async def test_the_owner_cannot_store_a_full_pan(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection
) -> None:
    world = World()
    await world.load(owner_conn, 1)
    with pytest.raises(asyncpg.CheckViolationError, match="pan_masked"):
        await owner_conn.execute(
            "INSERT INTO ledger.transactions (transaction_id, customer_id, terminal_id,"
            " transmission_time, stan, message_class, kind, outcome, response_code,"
            " amount_minor, currency, requested_minor, requested_currency, business_date,"
            " recorded_at, pan_masked, mti, processing_code, rrn, lane, block_seq, leaf)"
            " VALUES (nextval('ledger.transaction_ids'), 0, 'T', 't', 's', 'c', 'decline',"
            " 'do_not_honour', '05', 0, '', 0, '', '2026-11-23', now(), $1, '', '', '', 0, 0,"
            " sha256(''::bytea))",
            world.customers[0].pan,
        )


async def test_an_export_into_a_closed_pipe_ends_cleanly(
    ledger_store: LedgerStore, owner_conn: asyncpg.Connection, pg_cluster: PgCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _exported(ledger_store, owner_conn, pg_cluster, tmp_path / "journal.jsonl")
    code, errors = await asyncio.to_thread(_export_into_head, pg_cluster.owner_dsn)
    assert code == 0, errors
    assert b"Traceback" not in errors


def _export_into_head(dsn: str) -> tuple[int, bytes]:
    export = subprocess.Popen(
        [sys.executable, "-m", "ledger", "audit", "export", "--dsn", dsn, *WINDOW,
         "--format", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert export.stdout is not None
    export.stdout.readline()
    export.stdout.close()  # as `| head -1` does
    _, errors = export.communicate(timeout=60)
    return export.returncode, errors

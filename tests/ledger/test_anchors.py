"""Attacks by the database's owner (or a superuser) on the journal's history: each one leaves
`audit verify` without anchors satisfied, and `audit verify --anchors` names it.

Each test runs on a database of its own: the tampering is destructive.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from ledger import anchors
from ledger.__main__ import main
from ledger.migrations import migrate
from ledger.model import Reversal, Withdrawal
from ledger.postgres import SWITCH_ROLE, LocalCluster
from ledger.settings import LedgerSettings
from ledger.store import open_store
from tests.conftest import PgCluster
from tests.ledger.factory import AUDIT, World, key
from tests.ledger.helpers import run


@dataclass(frozen=True)
class Journal:
    dsn: str  # a superuser's: it owns this database
    conn: asyncpg.Connection
    anchors: Path
    public_key: Path


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture
async def journal(pg_cluster: PgCluster, tmp_path: Path) -> AsyncIterator[Journal]:
    """A database with some history on two terminals, anchored once."""
    cluster = LocalCluster(pg_cluster.data_dir)
    cluster.info = pg_cluster.info
    name = f"anchored_{uuid.uuid4().hex[:12]}"
    dsn = cluster.create_database(name)
    conn = await asyncpg.connect(dsn)
    await migrate(conn, timeout_ms=60_000)
    world = World()
    await world.load(conn, 2, terminals=2)
    store = await open_store(
        LedgerSettings(dsn=pg_cluster.info.dsn(SWITCH_ROLE, name)), timeout_ms=30_000
    )
    try:
        for customer, terminal in zip(world.customers, world.terminals, strict=True):
            first = Withdrawal(customer.pan, key(terminal), AUDIT, "20", 2_000, "EUR")
            await run(store, first)
            await run(store, Withdrawal(customer.pan, key(terminal), AUDIT, "20", 1_000, "EUR"))
            await run(store, Reversal(customer.pan, key(terminal, "0420"), AUDIT, first.key, 500))
    finally:
        await store.close()
    private, public = tmp_path / "anchor.key", tmp_path / "anchor.pub"
    anchors.generate_key(private, public)
    publisher = anchors.Publisher(anchors.load_private_key(private), tmp_path / "anchors.jsonl")
    assert await publisher.publish_if_moved(conn, timeout_ms=10_000)
    assert not await publisher.publish_if_moved(conn, timeout_ms=10_000)  # nothing moved since
    try:
        yield Journal(dsn, conn, tmp_path / "anchors.jsonl", public)
    finally:
        await conn.close()


async def _verify(journal: Journal, *, anchored: bool) -> tuple[int, str]:
    extra = ("--anchors", str(journal.anchors), "--anchor-key", str(journal.public_key))
    return await asyncio.to_thread(
        _cli, "audit", "verify", "--dsn", journal.dsn, *(extra if anchored else ())
    )


async def _tamper(journal: Journal, sql: str) -> None:
    """With the journal's triggers off, as only a superuser can."""
    async with journal.conn.transaction():
        await journal.conn.execute("SET LOCAL session_replication_role = replica")
        await journal.conn.execute(sql)


# Balances recomputed from what postings are left, so the books agree after a deletion.
_REBALANCE = """
UPDATE ledger.accounts a SET balance_minor = coalesce(
  (SELECT sum(p.amount_minor) FROM ledger.postings p WHERE p.account_id = a.account_id), 0);
"""
# Every leaf, block and head of the lane recomputed after an edit, from the edited block on.
_REHASH = """
DO $$
DECLARE
  v_block record;
  v_prev bytea;
  v_lane integer := (SELECT lane FROM ledger.transactions WHERE transaction_id = {id});
  v_first bigint := (SELECT block_seq FROM ledger.transactions WHERE transaction_id = {id});
BEGIN
  UPDATE ledger.transactions t SET leaf = ledger.leaf(t, (
      SELECT string_agg(ledger.leg_line(p.account_id, p.customer_id, p.amount_minor, p.currency),
                        E'\\n' ORDER BY p.account_id)
        FROM ledger.postings p WHERE p.transaction_id = t.transaction_id))
   WHERE transaction_id = {id};
  SELECT prev_hash INTO v_prev FROM ledger.audit_blocks WHERE lane = v_lane AND seq = v_first;
  FOR v_block IN SELECT * FROM ledger.audit_blocks WHERE lane = v_lane AND seq >= v_first
                  ORDER BY seq LOOP
    UPDATE ledger.audit_blocks SET prev_hash = v_prev, hash = ledger.block_hash(
        v_prev, v_lane, v_block.seq, v_block.transactions, v_block.recorded_at,
        (SELECT string_agg(leaf, ''::bytea ORDER BY transaction_id) FROM ledger.transactions
          WHERE lane = v_lane AND block_seq = v_block.seq))
     WHERE lane = v_lane AND seq = v_block.seq RETURNING hash INTO v_prev;
  END LOOP;
  UPDATE ledger.audit_heads SET hash = v_prev WHERE lane = v_lane;
END $$;
"""


async def _lane_without_deposits(journal: Journal) -> int:
    """A chain of several blocks whose removal leaves every balance above its floor: no opening
    balance in it (what an attacker would pick too)."""
    lane = await journal.conn.fetchval(
        "SELECT h.lane FROM ledger.audit_heads h WHERE h.seq > 1 AND NOT EXISTS ("
        " SELECT 1 FROM ledger.transactions t WHERE t.lane = h.lane AND t.kind = 'opening')"
        " ORDER BY h.lane LIMIT 1"
    )
    assert isinstance(lane, int), "the history spreads over several chains"
    return lane


async def _withdrawal_id(journal: Journal) -> int:
    found = await journal.conn.fetchval(
        "SELECT min(transaction_id) FROM ledger.transactions WHERE kind = 'withdrawal'"
    )
    assert isinstance(found, int)
    return found


async def test_an_untouched_journal_verifies_against_its_anchors(journal: Journal) -> None:
    code, out = await _verify(journal, anchored=True)
    assert code == 0, out
    assert out.startswith("OK: ")


async def test_a_record_edited_then_rehashed(journal: Journal) -> None:
    edited = await _withdrawal_id(journal)
    await _tamper(
        journal, f"UPDATE ledger.transactions SET rrn = 'FORGED' WHERE transaction_id = {edited}"
    )
    await _tamper(journal, _REHASH.format(id=edited))
    assert (await _verify(journal, anchored=False))[0] == 0  # consistent: only anchors see it
    code, out = await _verify(journal, anchored=True)
    assert code == 1
    assert "differs from its signed anchor: history rewritten" in out


async def test_a_cut_tail(journal: Journal) -> None:
    lane = await _lane_without_deposits(journal)
    await _tamper(
        journal,
        f"""
        DELETE FROM ledger.postings WHERE transaction_id IN (SELECT transaction_id
          FROM ledger.transactions WHERE lane = {lane} AND block_seq = (
            SELECT seq FROM ledger.audit_heads WHERE lane = {lane}));
        DELETE FROM ledger.transactions WHERE lane = {lane} AND block_seq = (
            SELECT seq FROM ledger.audit_heads WHERE lane = {lane});
        DELETE FROM ledger.audit_blocks WHERE lane = {lane} AND seq = (
            SELECT seq FROM ledger.audit_heads WHERE lane = {lane});
        UPDATE ledger.audit_heads h SET seq = h.seq - 1, hash = b.hash FROM ledger.audit_blocks b
         WHERE h.lane = {lane} AND b.lane = {lane} AND b.seq = h.seq - 1;
        {_REBALANCE}
        """,
    )
    assert (await _verify(journal, anchored=False))[0] == 0
    code, out = await _verify(journal, anchored=True)
    assert code == 1
    assert f"chain {lane}: its signed anchor is at block #" in out
    assert "cut, deleted or truncated" in out


async def test_a_deleted_chain(journal: Journal) -> None:
    lane = await _lane_without_deposits(journal)
    await _tamper(
        journal,
        f"""
        DELETE FROM ledger.postings WHERE transaction_id IN (
          SELECT transaction_id FROM ledger.transactions WHERE lane = {lane});
        DELETE FROM ledger.transactions WHERE lane = {lane};
        DELETE FROM ledger.audit_blocks WHERE lane = {lane};
        UPDATE ledger.audit_heads SET seq = 0, hash = decode(repeat('00', 32), 'hex')
         WHERE lane = {lane};
        {_REBALANCE}
        """,
    )
    assert (await _verify(journal, anchored=False))[0] == 0
    code, out = await _verify(journal, anchored=True)
    assert code == 1
    assert f"chain {lane}: its signed anchor is at block #" in out


async def test_a_truncated_journal(journal: Journal) -> None:
    await _tamper(
        journal,
        f"""
        TRUNCATE ledger.postings, ledger.note_movements, ledger.replenishments,
          ledger.transactions, ledger.audit_blocks;
        UPDATE ledger.audit_heads SET seq = 0, hash = decode(repeat('00', 32), 'hex');
        {_REBALANCE}
        """,
    )
    assert (await _verify(journal, anchored=False))[0] == 0
    code, out = await _verify(journal, anchored=True)
    assert code == 1
    assert "cut, deleted or truncated" in out


async def test_a_forged_anchor_is_refused(journal: Journal, tmp_path: Path) -> None:
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    anchors.generate_key(other_private, other_public)
    forger = anchors.Publisher(anchors.load_private_key(other_private), journal.anchors)
    forger.last = ()
    await forger.publish_if_moved(journal.conn, timeout_ms=10_000)
    code, out = await _verify(journal, anchored=True)
    assert code == 2
    assert out == ""


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    private, public = tmp_path / "a.key", tmp_path / "a.pub"
    assert _cli("anchors", "keygen", "--private", str(private), "--public", str(public))[0] == 0
    assert private.stat().st_mode & 0o777 == 0o600
    before = private.read_bytes()
    code, _ = _cli("anchors", "keygen", "--private", str(private), "--public", str(public))
    assert code == 2
    assert private.read_bytes() == before

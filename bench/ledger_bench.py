"""Ledger throughput: withdrawals per second through the async API, next to pgbench's TPC-B.

Both run against the same PostgreSQL cluster in the same run, with durable commits (fsync and
synchronous_commit on). pgbench's built-in TPC-B-like script (`-M prepared -c 8 -j 2`) is the
ceiling for one bank debit/credit per commit; the ledger figure is a full withdrawal as the
switch runs it: the read (card, accounts, request key) then the write (lock, re-check, post,
stored outcome, audit record), each one round trip, distinct customers and terminals per task.

    python -m bench.ledger_bench [duration_s]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench import cpu
from kiosk_sim.histogram import Histogram
from ledger.authorisation import development_token
from ledger.fixtures import load_fixtures
from ledger.migrations import migrate
from ledger.model import AuditFields, Outcome, RequestKey, Withdrawal
from ledger.pan import luhn_complete
from ledger.postgres import SUPERUSER, ClusterInfo, LocalCluster, find_binary
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY, LedgerSettings
from ledger.store import LedgerStore, open_store

# Requests at once. The batch size follows: the store runs two calls of each kind at once, so
# 128 tasks make calls of 20-30 requests, the batch size the write path is designed for (8 make
# calls of 2-3).
CONCURRENCY = (8, 32, 128)
PGBENCH_SCALE = 10
AUDIT = AuditFields(mti="0200", processing_code="012000", rrn="000000000000")
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
# One count for every run in a process: runs share terminals, and a request key used twice
# would be a repeat (answered from its stored outcome), not a withdrawal.
_STANS = itertools.count(1)


def _pan(n: int) -> str:
    return luhn_complete(f"52000{n:010d}")


def _fixtures(customers: int, base_id: int) -> dict[str, Any]:
    big = 10**12
    return {
        "customers": [
            {
                "id": base_id + i, "name": f"bench {i}",
                "accounts": [{"number": f"BENCH-{base_id + i}", "type": "20", "currency": "EUR",
                              "opening_balance_minor": big}],
                "cards": [{"pan": _pan(base_id + i), "expiry": "9912", "currency": "EUR",
                           "max_per_txn_minor": big, "daily_amount_minor": big,
                           "daily_count": 2**31 - 1, "accounts": {"20": f"BENCH-{base_id + i}"}}],
            }
            for i in range(customers)
        ],
        "terminals": [
            {"id": f"BENCH{base_id + i}", "location": "bench", "currency": "EUR"}
            for i in range(customers)
        ],
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pgbench:
    """One pgbench TPC-B-like run: rate, latency and the CPU it took (server and client)."""

    tps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_txn: float
    wal_bytes_per_txn: float
    steal_percent: float


async def wal_position_bytes(info: ClusterInfo) -> int:
    """Where the server's write-ahead log is now, in bytes from its start: the difference over
    a run is the WAL that run wrote, a measure of database work that no other load moves."""
    conn = await asyncpg.connect(info.owner_dsn)
    try:
        position = await conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        )
    finally:
        await conn.close()
    assert isinstance(position, int)
    return position


def pgbench_latencies(lines: Iterable[str]) -> Histogram:
    """Transaction latencies from pgbench's per-transaction log (`-l`): the third field, in
    microseconds; lines for failed or skipped transactions carry a word there and are left out."""
    latencies = Histogram()
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            latencies.record(int(fields[2]))
    return latencies


def pgbench_run(info: ClusterInfo, cluster: LocalCluster, duration_s: int) -> Pgbench:
    """pgbench TPC-B-like, prepared statements, 8 clients on 2 threads."""
    cluster.create_database("pgbench_tpcb")
    pgbench = shutil.which("pgbench") or str(find_binary("pgbench"))
    where = ["-h", str(info.socket_dir), "-p", str(info.port), "-U", SUPERUSER]
    subprocess.run(
        [pgbench, "-i", "-q", "-s", str(PGBENCH_SCALE), *where, "pgbench_tpcb"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    postmaster = cpu.postmaster_pid(cluster.data_dir)
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as log_dir:
        server_before, (_, client_before) = (
            cpu.cluster_cpu_s(postmaster),
            cpu.own_and_children_cpu_s(),
        )
        machine_before, wal_before = cpu.MachineTicks.read(), uvloop.run(wal_position_bytes(info))
        done = subprocess.run(
            [pgbench, "-M", "prepared", "-c", "8", "-j", "2", "-T", str(duration_s), "-n",
             "-l", "--log-prefix", str(Path(log_dir) / "txn"), *where, "pgbench_tpcb"],
            check=True, capture_output=True, text=True, timeout=duration_s + 120,
        )  # fmt: skip
        machine_after, wal_after = cpu.MachineTicks.read(), uvloop.run(wal_position_bytes(info))
        server_after, (_, client_after) = (
            cpu.cluster_cpu_s(postmaster),
            cpu.own_and_children_cpu_s(),
        )
        latencies = Histogram()
        for log in Path(log_dir).iterdir():
            with log.open() as lines:
                latencies.merge(pgbench_latencies(lines))
    match = _TPS.search(done.stdout)
    assert match is not None, done.stdout
    assert latencies.total > 0, "pgbench logged no transaction"
    cpu_s = server_after - server_before + client_after - client_before
    return Pgbench(
        tps=float(match[1]),
        p50_ms=latencies.percentile_us(50) / 1000,
        p99_ms=latencies.percentile_us(99) / 1000,
        cpu_us_per_txn=1e6 * cpu_s / latencies.total,
        wal_bytes_per_txn=(wal_after - wal_before) / latencies.total,
        steal_percent=cpu.steal_percent(machine_before, machine_after),
    )


async def _withdrawals_per_s(
    store: LedgerStore, tasks: int, base_id: int, duration_s: float
) -> float:
    end = time.monotonic() + duration_s

    async def worker(i: int) -> int:
        pan, terminal = _pan(base_id + i), f"BENCH{base_id + i}"
        approved = 0
        while time.monotonic() < end:
            stan = next(_STANS)
            request_key = RequestKey(terminal, f"{stan:010d}", f"{stan % 1_000_000:06d}", "0200")
            request = Withdrawal(pan, request_key, AUDIT, "20", 100, "EUR")
            lookup = await store.lookup(request, timeout_ms=30_000)
            word = development_token(lookup.request, lookup.pan_hash)  # the HSM's, for a PIN
            result = await store.execute(lookup, authorisation=word, timeout_ms=30_000)
            assert result.outcome is Outcome.APPROVED, result
            approved += 1
        return approved

    started = time.monotonic()
    counts = await asyncio.gather(*(worker(i) for i in range(tasks)))
    return sum(counts) / (time.monotonic() - started)


async def _ledger_figures(info: ClusterInfo, duration_s: float) -> dict[str, float]:
    conn = await asyncpg.connect(info.owner_dsn)
    try:
        await migrate(conn, timeout_ms=120_000)
        base_id = int(time.time()) % 1_000_000 * 1_000
        data = _fixtures(max(CONCURRENCY), base_id)
        await load_fixtures(conn, data, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=120_000)
    finally:
        await conn.close()
    figures = {}
    for tasks in CONCURRENCY:
        settings = LedgerSettings(dsn=info.switch_dsn, pool_size_min=tasks, pool_size_max=tasks)
        store = await open_store(settings, timeout_ms=60_000)
        try:
            figures[f"ledger_withdrawals_per_s_c{tasks}"] = await _withdrawals_per_s(
                store, tasks, base_id, duration_s
            )
        finally:
            await store.close()
    return figures


def run(duration_s: float = 10.0, data_dir: Path | None = None) -> dict[str, float]:
    """Start (or reuse) a private cluster under `data_dir` (a temporary one if None).

    Runs on uvloop, as the switch does.
    """
    return uvloop.run(_run(duration_s, data_dir))


async def _run(duration_s: float, data_dir: Path | None) -> dict[str, float]:
    scratch = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="ledger-bench-")) if scratch else data_dir
    assert directory is not None
    cluster = LocalCluster(directory)
    try:
        info = await asyncio.to_thread(cluster.start, timeout_ms=120_000)
        tps = (await asyncio.to_thread(pgbench_run, info, cluster, int(duration_s))).tps
        figures = {"pgbench_tpcb_tps_c8": tps, **await _ledger_figures(info, duration_s)}
    finally:
        await asyncio.to_thread(cluster.stop, timeout_ms=60_000)
        if scratch:
            shutil.rmtree(directory, ignore_errors=True)
    best = max(figures[f"ledger_withdrawals_per_s_c{c}"] for c in CONCURRENCY)
    figures["ratio_c8"] = figures["ledger_withdrawals_per_s_c8"] / tps
    figures["ratio_c32"] = figures["ledger_withdrawals_per_s_c32"] / tps
    figures["ratio_c128"] = figures["ledger_withdrawals_per_s_c128"] / tps
    figures["ratio_best"] = best / tps
    return {name: round(value, 3) for name, value in figures.items()}


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    print(json.dumps(run(seconds), indent=2))

"""Where the ledger's write path spends PostgreSQL's time: a profile, not a benchmark.

Runs the ledger bench's withdrawals (read then write through the async API, distinct customers
and terminals per task) on a private cluster with pg_stat_statements loaded, tracking nested
statements (`track = all`) and planning, and prints per concurrency:

- withdrawals/s, the server's and this process's CPU per withdrawal, WAL bytes per withdrawal,
  calls per withdrawal, steal and load average;
- the top statements by total time: calls, plans (a plan per call means the statement is planned
  again every time), plan and execution time per call, rows;
- per table, inserts, updates and HOT updates (an update that is not HOT writes index entries).

A nested statement's time is its run only: building and freeing its executor state (for
post_batch's statements, most of a call's fixed cost) is counted in its caller's time alone, so
a caller's time exceeds the sum of its statements'. perf on the backend shows that part
(standard_ExecutorStart).

With `--explain`, auto_explain logs every nested statement's plan with actual times to the
cluster's server.log (slow: use it to read plans, not for figures). Tracking itself costs
server time, so compare figures between runs of this tool, and take throughput from
bench.ledger_bench.

    python -m bench.ledger_profile [--tasks 1,8,32] [--seconds 10] [--top 20] [--explain]
                                   [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import uvloop

from bench import cpu
from bench.ledger_bench import _fixtures, _withdrawals_per_s, wal_position_bytes
from ledger.fixtures import load_fixtures
from ledger.migrations import migrate
from ledger.postgres import ClusterInfo, LocalCluster
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY, LedgerSettings
from ledger.store import open_store

_TOP_STATEMENTS = """
SELECT calls, plans, total_plan_time / greatest(calls, 1) * 1000 AS plan_us,
       total_exec_time / greatest(calls, 1) * 1000 AS exec_us, total_exec_time AS total_ms,
       rows, toplevel, regexp_replace(query, '\\s+', ' ', 'g') AS query
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY total_exec_time + total_plan_time DESC LIMIT $1
"""

_TABLES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd
  FROM pg_stat_user_tables WHERE schemaname = 'ledger' ORDER BY relname
"""


async def _configure(cluster: LocalCluster, info: ClusterInfo, explain: bool) -> ClusterInfo:
    """pg_stat_statements preloaded (a restart), nested statements and planning tracked."""
    conn = await asyncpg.connect(info.superuser_dsn)
    try:
        # One quoted name per library: a single 'a,b' is taken as one library named "a,b".
        preload = "'pg_stat_statements', 'auto_explain'" if explain else "'pg_stat_statements'"
        await conn.execute(f"ALTER SYSTEM SET shared_preload_libraries = {preload}")
    finally:
        await conn.close()
    await asyncio.to_thread(cluster.restart, down_ms=0)
    assert cluster.info is not None
    conn = await asyncpg.connect(cluster.info.superuser_dsn)
    try:
        settings = {
            "pg_stat_statements.track": "all",
            "pg_stat_statements.track_planning": "on",
            "pg_stat_statements.max": "5000",
        }
        if explain:
            settings |= {
                "auto_explain.log_min_duration": "0",
                "auto_explain.log_analyze": "on",
                "auto_explain.log_nested_statements": "on",
                "auto_explain.log_timing": "on",
            }
        for name, value in settings.items():
            await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()
    return cluster.info


@dataclass(frozen=True, slots=True)
class _Reading:
    server_cpu_s: float
    client_cpu_s: float
    wal_bytes: int
    machine: cpu.MachineTicks


async def _read_counters(info: ClusterInfo, postmaster: int) -> _Reading:
    own_s, _ = cpu.own_and_children_cpu_s()
    wal_bytes = await wal_position_bytes(info)
    return _Reading(cpu.cluster_cpu_s(postmaster), own_s, wal_bytes, cpu.MachineTicks.read())


async def profile(
    info: ClusterInfo, postmaster: int, tasks: int, base_id: int, *, duration_s: float, top: int
) -> None:
    superuser = await asyncpg.connect(info.superuser_dsn)
    try:
        await superuser.execute("SELECT pg_stat_statements_reset(), pg_stat_reset()")
        settings = LedgerSettings(dsn=info.switch_dsn, pool_size_min=tasks, pool_size_max=tasks)
        store = await open_store(settings, timeout_ms=60_000)
        try:
            before = await _read_counters(info, postmaster)
            rate = await _withdrawals_per_s(store, tasks, base_id, duration_s)
            after = await _read_counters(info, postmaster)
            figures = store.batch_figures()
        finally:
            await store.close()
        await asyncio.sleep(0.6)  # table statistics reach pg_stat_user_tables at the next flush
        done = max(figures.writes - figures.decided_again, 1)
        print(
            f"\n## {tasks} tasks: {rate:,.0f} withdrawals/s; per withdrawal: server CPU"
            f" {1e6 * (after.server_cpu_s - before.server_cpu_s) / done:,.0f} µs, client CPU"
            f" {1e6 * (after.client_cpu_s - before.client_cpu_s) / done:,.0f} µs, WAL"
            f" {(after.wal_bytes - before.wal_bytes) / done:,.0f} B; requests per write call"
            f" {figures.writes / max(figures.write_calls, 1):.2f}, per read call"
            f" {figures.reads / max(figures.read_calls, 1):.2f}; steal"
            f" {cpu.steal_percent(before.machine, after.machine):.1f} %, load"
            f" {os.getloadavg()[0]:.2f}"
        )
        print("\n| calls | plans | plan µs | exec µs | total ms | rows | statement |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for row in await superuser.fetch(_TOP_STATEMENTS, top):
            query = row["query"] if len(row["query"]) <= 110 else row["query"][:107] + "..."
            print(
                f"| {row['calls']} | {row['plans']} | {row['plan_us']:,.0f} |"
                f" {row['exec_us']:,.0f} | {row['total_ms']:,.0f} | {row['rows']} |"
                f" {'' if row['toplevel'] else '↳ '}`{query}` |"
            )
        print("\n| table | inserts | updates | HOT updates |")
        print("|---|---:|---:|---:|")
        ledger_db = await asyncpg.connect(info.owner_dsn)
        try:
            for row in await ledger_db.fetch(_TABLES):
                if row["n_tup_ins"] or row["n_tup_upd"]:
                    print(
                        f"| {row['relname']} | {row['n_tup_ins']} | {row['n_tup_upd']} |"
                        f" {row['n_tup_hot_upd']} |"
                    )
        finally:
            await ledger_db.close()
    finally:
        await superuser.close()


async def _main(args: argparse.Namespace) -> None:
    scratch = args.data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="ledger-profile-")) if scratch else args.data_dir
    cluster = LocalCluster(directory)
    try:
        info = await asyncio.to_thread(cluster.start, timeout_ms=120_000)
        info = await _configure(cluster, info, args.explain)
        postmaster = cpu.postmaster_pid(cluster.data_dir)
        tasks_list = [int(t) for t in args.tasks.split(",")]
        base_id = int(time.time()) % 1_000_000 * 1_000
        conn = await asyncpg.connect(info.owner_dsn)
        try:
            await migrate(conn, timeout_ms=120_000)
            fixtures = _fixtures(max(tasks_list), base_id)
            await load_fixtures(
                conn, fixtures, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=120_000
            )
        finally:
            await conn.close()
        for tasks in tasks_list:
            await profile(info, postmaster, tasks, base_id, duration_s=args.seconds, top=args.top)
        if args.explain:
            print(f"\nplans: {cluster.data_dir / 'server.log'}")
    finally:
        await asyncio.to_thread(cluster.stop, timeout_ms=60_000)
        if scratch and not args.explain:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1,8,32", help="concurrencies, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency")
    parser.add_argument("--top", type=int, default=20, help="statements shown")
    parser.add_argument("--explain", action="store_true", help="auto_explain to server.log")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse this cluster")
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()

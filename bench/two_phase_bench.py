"""What two-phase commit costs PostgreSQL: pgbench's TPC-B-like transaction committed as usual,
then the same transaction ended by PREPARE TRANSACTION and COMMIT PREPARED, as a sharded ledger
would commit a withdrawal that touches two nodes (docs/scaling.md). Interleaved runs on one
private cluster; figures are measured, never asserted.

`python -m bench.two_phase_bench [seconds per run]`
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ledger.postgres import SUPERUSER, ClusterInfo, LocalCluster, find_binary

ROUNDS = 3
SCALE = 8
CLIENTS = 8
# pgbench's built-in tpcb-like script, ended in two phases. PREPARE TRANSACTION takes no
# parameter, so the runs use the simple query protocol (both of them, to compare like with like).
TWO_PHASE_SCRIPT = r"""\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
  VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
PREPARE TRANSACTION 'bench-:client_id';
COMMIT PREPARED 'bench-:client_id';
"""


def _pgbench(info: ClusterInfo, *args: str, timeout_s: float) -> str:
    pgbench = shutil.which("pgbench") or str(find_binary("pgbench"))
    where = ["-h", str(info.socket_dir), "-p", str(info.port), "-U", SUPERUSER]
    done = subprocess.run(
        [pgbench, *args, *where, "two_phase"],
        check=True, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    return done.stdout


def _tps(output: str) -> float:
    found = re.search(r"tps = ([0-9.]+)", output)
    assert found is not None, output
    return float(found[1])


def run(duration_s: int = 10) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="two-phase-bench-"))
    cluster = LocalCluster(directory)
    try:
        info = cluster.start(timeout_ms=120_000)
        cluster.create_database("two_phase")
        # One prepared transaction per client at most, at any moment; read at server start.
        cluster.psql(
            f"ALTER SYSTEM SET max_prepared_transactions = {CLIENTS * 2}",
            database="two_phase", timeout_ms=30_000,
        )  # fmt: skip
        cluster.restart(down_ms=0)
        _pgbench(info, "-i", "-q", "-s", str(SCALE), timeout_s=600)
        script = directory / "two-phase.sql"
        script.write_text(TWO_PHASE_SCRIPT)
        common = ["-M", "simple", "-c", str(CLIENTS), "-j", "2", "-T", str(duration_s), "-n"]
        one, two = [], []
        for _ in range(ROUNDS):
            one.append(_tps(_pgbench(info, *common, "-b", "tpcb-like", timeout_s=duration_s + 120)))
            two.append(_tps(_pgbench(info, *common, "-f", str(script), timeout_s=duration_s + 120)))
    finally:
        cluster.stop(timeout_ms=60_000)
        shutil.rmtree(directory, ignore_errors=True)
    best_one, best_two = max(one), max(two)
    return {
        "tpcb_tps_one_phase_best": round(best_one, 1),
        "tpcb_tps_two_phase_best": round(best_two, 1),
        "two_phase_cost_factor": round(best_one / best_two, 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 10), indent=2))

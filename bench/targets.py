"""The performance issue's targets next to a run's figures: the table `make bench` ends with.

Each target names the suite and figure that measures it, the figure before the redesign (the
issue's own "now", from bench/results/20261130T225253Z.json), and the bound. A target whose
suite did not run, or failed, is shown as not measured. Nothing here is asserted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Target:
    what: str
    suite: str
    figure: str
    before: str
    bound: Literal["at least", "at most"]
    limit: float

    def met_by(self, value: float) -> bool:
        return value >= self.limit if self.bound == "at least" else value <= self.limit


# The switch_bench figures are those at 256 terminals, where the best rate was measured.
TARGETS = (
    Target("ledger API alone, withdrawals/s ÷ pgbench tps", "ledger_bench", "ratio_best",
           "0.30–0.32", "at least", 3.0),
    Target("PostgreSQL CPU per approved withdrawal, µs", "switch_bench",
           "postgres_cpu_us_per_approved_t256", "564–580", "at most", 120),
    Target("WAL per approved withdrawal, bytes", "switch_bench", "wal_bytes_per_approved_t256",
           "3,250", "at most", 1_100),
    Target("switch CPU per approved withdrawal, µs", "switch_bench",
           "switch_cpu_us_per_approved_t256", "681", "at most", 300),
    Target("simulator CPU per approved withdrawal, µs", "switch_bench",
           "simulator_cpu_us_per_approved_t256", "269", "at most", 150),
    Target("end to end, approved withdrawals/s ÷ pgbench tps", "switch_bench",
           "ratio_to_pgbench", "0.19–0.22", "at least", 0.6),
    Target("open loop at 80 % of the closed-loop maximum, worst p99 of 3 runs, ms",
           "switch_bench", "open_loop_p99_ms", "54–118", "at most", 50),
    Target("10,000 idle mutual-TLS connections, switch RSS, MB", "switch_bench",
           "tls_switch_rss_mb_with_idle", "428", "at most", 200),
)  # fmt: skip


def markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per target: before, the bound, this run's figure and whether it meets it."""
    lines = ["| target | before | bound | this run | met |", "|---|---:|---:|---:|---|"]
    for target in TARGETS:
        bound = f"{'≥' if target.bound == 'at least' else '≤'} {target.limit:g}"
        result = results.get(target.suite, {})
        value = (
            result.get("figures", {}).get(target.figure) if result.get("status") == "ok" else None
        )
        shown, met = (
            ("not measured", "")
            if value is None
            else (f"{value:,.2f}", "yes" if target.met_by(value) else "no")
        )
        lines.append(f"| {target.what} | {target.before} | {bound} | {shown} | {met} |")
    return "\n".join(lines)

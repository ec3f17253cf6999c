"""The bench's parsers of /proc and pgbench output (the figures themselves are never asserted)."""

from __future__ import annotations

import os

import pytest

from bench import cpu, targets
from bench.__main__ import parse_args
from bench.ledger_bench import pgbench_latencies


@pytest.mark.parametrize(
    ("line", "total", "steal"),
    [
        ("cpu  10 0 5 80 1 0 0 4 0 0", 100, 4),
        ("cpu  10 0 5 80 1 0 0 4", 100, 4),
        ("cpu  3 2 1 0 0 0 0 0 7 7", 6, 0),  # guest time is inside user and nice already
    ],
)
def test_machine_ticks_parse(line: str, total: int, steal: int) -> None:
    assert cpu.MachineTicks.parse(line) == cpu.MachineTicks(total, steal)


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3"])
def test_machine_ticks_refuses_other_lines(line: str) -> None:
    with pytest.raises(AssertionError):
        cpu.MachineTicks.parse(line)


@pytest.mark.parametrize(
    ("before", "after", "percent"),
    [
        (cpu.MachineTicks(100, 10), cpu.MachineTicks(300, 60), 25.0),
        (cpu.MachineTicks(100, 10), cpu.MachineTicks(100, 10), 0.0),
    ],
)
def test_steal_percent(before: cpu.MachineTicks, after: cpu.MachineTicks, percent: float) -> None:
    assert cpu.steal_percent(before, after) == percent


def test_own_process_cpu_is_read_from_proc() -> None:
    spent_s = cpu.process_cpu_s(os.getpid())
    own_s, _children_s = cpu.own_and_children_cpu_s()
    assert 0 < spent_s <= own_s + 0.05


def test_pgbench_latencies_skip_failed_and_skipped_lines() -> None:
    log = [
        "0 1 110 0 1700000000 1",
        "1 1 100 0 1700000000 2",
        "0 2 failed 0 1700000000 3",
        "1 2 skipped 0 1700000000 4",
        "",
        "0 3 120 0 1700000000 5 12",
    ]
    latencies = pgbench_latencies(log)  # below 128 µs the histogram is exact
    assert latencies.total == 3
    assert (latencies.min_us, latencies.percentile_us(50), latencies.max_us) == (100, 110, 120)


@pytest.mark.parametrize(
    ("argv", "suites"),
    [
        ([], None),
        (["--suite", "codec_bench", "--suite", "ledger_bench"], ["codec_bench", "ledger_bench"]),
    ],
)
def test_the_bench_runs_the_suites_asked_for(argv: list[str], suites: list[str] | None) -> None:
    assert parse_args(argv).suite == suites


@pytest.mark.parametrize("argv", [["--help"], ["--suite", "nope"]])
def test_the_bench_answers_help_and_bad_arguments_without_running(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == (0 if argv == ["--help"] else 2)


def test_targets_table_says_met_not_met_and_not_measured() -> None:
    results = {
        "ledger_bench": {"status": "ok", "figures": {"ratio_best": 3.5}},
        "switch_bench": {
            "status": "ok",
            "figures": {"switch_cpu_us_per_approved_t256": 301, "open_loop_p99_ms": 50.0},
        },
    }
    rows = {
        row.split(" | ")[0].removeprefix("| "): row
        for row in targets.markdown(results).splitlines()
    }
    assert rows["ledger API alone, withdrawals/s ÷ pgbench tps"].endswith("| ≥ 3 | 3.50 | yes |")
    assert rows["switch CPU per approved withdrawal, µs"].endswith("| ≤ 300 | 301.00 | no |")
    open_loop = "open loop at 80 % of the closed-loop maximum, worst p99 of 3 runs, ms"
    assert rows[open_loop].endswith("| ≤ 50 | 50.00 | yes |")
    assert rows["end to end, approved withdrawals/s ÷ pgbench tps"].endswith("| not measured |  |")
    assert len(rows) == 2 + len(targets.TARGETS)

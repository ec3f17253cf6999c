"""The run report: its figures, its per-second series, and that every format says the same."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiosk_sim import scrape
from kiosk_sim.__main__ import main, show_progress, write_report
from kiosk_sim.cash import Balancing
from kiosk_sim.report import Report, SecondFigures, Series
from switch.access import DEVELOPMENT_TOKENS, Role

START = datetime(2026, 11, 30, 23, 57, 1, 250_000, tzinfo=UTC)
START_ISO = "2026-11-30T23:57:01.250+00:00"


def begun(
    *,
    faults: dict[str, float] | None = None,
    target_rate_per_s: float | None = None,
    series: Series | None = None,
) -> Report:
    """A report whose run clock reads 50.0 at the start (not 0: times are the clock's, not
    elapsed)."""
    report = Report(
        seed=7,
        terminals=4,
        mix={"withdrawal": 3, "balance": 1, "transfer": 0},
        faults={"drop": 0.01, "slow": 0.0} if faults is None else faults,
        target_rate_per_s=target_rate_per_s,
        series=series or Series(),
    )
    report.begin(at_s=50.0, at=START)
    return report


def sample() -> Report:
    report = begun()
    for i in range(100):
        code = "00" if i < 90 else "51"
        report.record_answer(code, at_s=50.0 + i / 50, latency_us=1_000 + i * 10)
    report.kinds["withdrawal"] = 100
    report.record_timeout(at_s=51.5)
    report.record_error("connection_dropped", at_s=51.6, count=2)
    report.end(at_s=52.0)
    return report


def test_figures() -> None:
    data = sample().summary().as_dict()
    assert data["answered"] == 100
    assert data["approved_per_s"] == 45.0
    # Bucket tops: 8 µs wide between 1,024 and 2,048 µs at 7 bits of precision.
    assert data["latency_ms"] == {
        "p50": 1.495,
        "p90": 1.895,
        "p99": 1.983,
        "p99.9": 1.99,
        "max": 1.99,
    }
    assert data["response_codes"] == {"00": 90, "51": 10}
    assert data["end_state_differences"] is None  # no end-state check ran


def test_formats() -> None:
    summary = sample().summary()
    data = json.loads(summary.json())
    assert (data["timeouts"], data["sessions"], data["sessions_per_s"]) == (1, 100, 50.0)
    assert summary.text().splitlines()[:3] == [
        "run       4 terminals, 2.0 s, closed loop",
        "answered  100 (50.0/s), approved 90 (45.0/s)",
        "sessions  100 (50.0/s): withdrawal 100",
    ]
    assert "| run | 4 terminals, 2.0 s, closed loop |\n| answered | 100 (50.0/s)," in (
        summary.markdown()
    )
    assert "| timeouts | 1   errors 2 (connection_dropped 2) |" in summary.markdown()


def test_open_loop_reports_its_target_in_sessions_which_may_send_several_requests() -> None:
    report = begun(target_rate_per_s=30.0)
    report.kinds.update(partial=40, duplicate=20)
    for i in range(120):  # each partial: withdrawal + reversal; each duplicate: 2
        report.record_answer("00", at_s=50.0 + i / 60, latency_us=2_000)
    report.idle_echoes = 3
    report.end(at_s=52.0)
    summary = report.summary()
    assert summary.text().splitlines()[:3] == [
        "run       4 terminals, 2.0 s, open loop at 30.0 sessions/s",
        "answered  120 (60.0/s), approved 120 (60.0/s)",
        "sessions  60 (30.0/s): duplicate 20, partial 40",
    ]
    assert "| run | 4 terminals, 2.0 s, open loop at 30.0 sessions/s |" in summary.markdown()
    assert "| echoes | 3 (idle kiosks keeping their connection) |" in summary.markdown()
    assert json.loads(summary.json())["idle_echoes"] == 3


def test_text_markdown_and_json_carry_the_same_facts() -> None:
    report = sample()
    report.differences = ["0001: expected 10, ledger has 9"]
    summary = report.summary()
    text, markdown, data = summary.text(), summary.markdown(), json.loads(summary.json())
    assert (data["seed"], data["started_at"], data["duration_s"]) == (7, START_ISO, 2.0)
    assert (data["mix"], data["faults"]) == ({"withdrawal": 3, "balance": 1}, {"drop": 0.01})
    assert (data["kinds"], data["errors"]) == ({"withdrawal": 100}, {"connection_dropped": 2})
    assert data["end_state_details"] == ["0001: expected 10, ledger has 9"]
    rows = {
        "seed": "7",
        "started": START_ISO,
        "mix": "withdrawal=3,balance=1",  # weight 0 is not in the mix; the order is kept
        "faults": "drop=0.01",
        "codes": "00: 90  51: 10",
        "sessions": "100 (50.0/s): withdrawal 100",
        "timeouts": "1   errors 2 (connection_dropped 2)",
        "latency": "p50 1.5 ms  p90 1.9 ms  p99 2.0 ms  p99.9 2.0 ms  max 2.0 ms",
        "seconds": "2, 0 with nothing answered; worst p99 2.0 ms in second 1",
        "end state": "1 differences",
    }
    for label, value in rows.items():
        assert f"{label:<9} {value}" in text.splitlines()
        assert f"| {label} | {value} |" in markdown.splitlines()
    assert "  - 0001: expected 10, ledger has 9" in text.splitlines()
    assert "- 0001: expected 10, ledger has 9" in markdown.splitlines()


def test_a_run_without_faults_says_none() -> None:
    report = begun(faults={})
    report.end(at_s=50.5)
    assert "faults    none" in report.summary().text().splitlines()


# Times on the run clock, which read 50.0 at the start. Latencies sit on 4-bit bucket tops
# (992-1023, 3072-3327 µs), so the per-second percentiles are exact.
SAMPLES: list[tuple[float, str, str, int | None]] = [
    (50.2, "answer", "00", 1_023),
    (50.9, "answer", "51", 3_327),
    (50.999, "timeout", "", None),
    (51.0, "answer", "00", 2_047),  # on the boundary: the next second
    (51.5, "error", "reconnects", None),
    (51.7, "answer", "00", None),  # answered, not timed (a slow-write fault)
    # 52.x: nothing at all
    (53.2, "answer", "00", 40_959),
    (53.3, "error", "response_mac_wrong", None),
]


def replay(report: Report, samples: list[tuple[float, str, str, int | None]]) -> None:
    for at_s, what, name, latency_us in samples:
        if what == "answer":
            report.record_answer(name, at_s=at_s, latency_us=latency_us)
        elif what == "timeout":
            report.record_timeout(at_s=at_s)
        else:
            report.record_error(name, at_s=at_s)


# Columns: second, answered, approved, timeouts, errors, latency p50 ms, latency p99 ms.
@pytest.mark.parametrize(
    ("seconds_max", "end_s", "dropped", "expected"),
    [
        (
            3_600,
            54.0,
            0,
            [
                SecondFigures(0, 2, 1, 1, 0, 1.023, 3.327),
                SecondFigures(1, 2, 2, 0, 1, 2.047, 2.047),
                SecondFigures(2, 0, 0, 0, 0, None, None),
                SecondFigures(3, 1, 1, 0, 1, 40.959, 40.959),
            ],
        ),
        # The run went on quietly after its last answer: those seconds are there, as zeros.
        (
            3_600,
            55.5,
            0,
            [
                SecondFigures(0, 2, 1, 1, 0, 1.023, 3.327),
                SecondFigures(1, 2, 2, 0, 1, 2.047, 2.047),
                SecondFigures(2, 0, 0, 0, 0, None, None),
                SecondFigures(3, 1, 1, 0, 1, 40.959, 40.959),
                SecondFigures(4, 0, 0, 0, 0, None, None),
                SecondFigures(5, 0, 0, 0, 0, None, None),
            ],
        ),
        # A series of 2 seconds keeps the run's last two; the totals still count everything.
        (
            2,
            54.0,
            2,
            [
                SecondFigures(2, 0, 0, 0, 0, None, None),
                SecondFigures(3, 1, 1, 0, 1, 40.959, 40.959),
            ],
        ),
    ],
)
def test_per_second_buckets(
    seconds_max: int, end_s: float, dropped: int, expected: list[SecondFigures]
) -> None:
    report = begun(series=Series(seconds_max))
    replay(report, SAMPLES)
    report.end(at_s=end_s)
    summary = report.summary()
    assert summary.seconds_dropped == dropped
    assert list(summary.seconds) == expected
    assert (report.answered, report.timeouts, sum(report.errors.values())) == (5, 1, 2)
    assert report.latency.total == 4


def test_a_sample_from_the_past_is_a_bug() -> None:
    report = begun()
    report.record_answer("00", at_s=53.0, latency_us=1_000)
    report.record_answer("00", at_s=53.9, latency_us=1_000)  # the same second: fine
    with pytest.raises(AssertionError, match="clock went back"):
        report.record_answer("00", at_s=51.0, latency_us=1_000)
    with pytest.raises(AssertionError, match="clock went back"):
        begun().record_answer("00", at_s=48.5, latency_us=1_000)  # before the run began


def stalled_answers() -> list[tuple[float, int]]:
    """(answered at, latency µs): open loop at 100 sessions/s for 10 s, each answered in 5 ms,
    except that the switch answered nothing from 4.0 s to 7.0 s, then cleared its backlog at once:
    the 300 sessions scheduled meanwhile were answered at 7.0 s, up to 3 s late."""
    answers = []
    for tick in range(1_000):
        scheduled_s = 50.0 + tick / 100
        answered_s = scheduled_s + 0.005
        if 54.0 <= scheduled_s < 57.0:
            answered_s = 57.0
        answers.append((answered_s, round((answered_s - scheduled_s) * 1e6)))
    return answers


def replay_answers(report: Report, answers: list[tuple[float, int]]) -> None:
    for at_s, latency_us in answers:
        report.record_answer("00", at_s=at_s, latency_us=latency_us)


def test_a_stall_shows_as_quiet_seconds_then_a_slow_one() -> None:
    report = begun(target_rate_per_s=100.0)
    replay_answers(report, stalled_answers())
    report.end(at_s=60.0)
    seconds = report.summary().seconds
    assert [second.answered for second in seconds] == [100] * 4 + [0] * 3 + [400] + [100] * 2
    assert [second.latency_p99_ms for second in seconds[4:7]] == [None] * 3
    # Rank 396 of 400: the backlog's 296th answer, scheduled at 4.04 s, waited 2.96 s; its bucket
    # (4 bits: 131 ms wide there) tops out above the slowest answer, so the p99 is that: 3 s.
    assert seconds[7].latency_p99_ms == 3_000.0
    assert seconds[8].latency_p99_ms == pytest.approx(5, rel=1 / 16)
    assert "seconds   10, 3 with nothing answered; worst p99 3,000.0 ms in second 7" in (
        report.summary().text().splitlines()
    )


def test_the_progress_line_shows_the_last_second(capsys: pytest.CaptureFixture[str]) -> None:
    report = begun(target_rate_per_s=100.0)
    answers = stalled_answers()
    replay_answers(report, [answer for answer in answers if answer[0] < 56.02])
    show_progress(report, 6.02)  # in the stall; the run so far had 400 answers, all in 5 ms
    replay_answers(report, [answer for answer in answers if 56.02 <= answer[0] < 58.0])
    show_progress(report, 8.0)  # second 7: the backlog came in
    during, after = capsys.readouterr().err.split("\r")[1:]
    assert during == "   6.0s      400 answered, last second       0 p99          -  errors 0"
    assert after == "   8.0s      800 answered, last second     400 p99  3000.0 ms  errors 0"


def stalled_report() -> Report:
    report = begun(target_rate_per_s=100.0)
    replay_answers(report, stalled_answers())
    report.record_timeout(at_s=58.5)
    report.end(at_s=60.0)
    return report


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_chart_is_a_png_beside_the_report_and_linked_from_it(tmp_path: Path) -> None:
    written = write_report(stalled_report(), tmp_path / "run.md")
    png = tmp_path / "run.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert png.stat().st_size > 10_000  # axes, lines and labels, not an empty canvas
    markdown = (tmp_path / "run.md").read_text().splitlines()
    assert "| chart | run.png |" in markdown
    assert markdown[-1] == "![latency p50/p99 and answers per second](run.png)"
    assert "chart     run.png" in written.text().splitlines()  # what the terminal is shown


def test_the_json_report_carries_the_series_and_names_its_chart(tmp_path: Path) -> None:
    write_report(stalled_report(), tmp_path / "run.json")
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["chart"] == {"file_name": "run.png", "skipped_because": None}
    assert (tmp_path / "run.png").read_bytes().startswith(PNG_SIGNATURE)
    seconds = data["series"]["seconds"]
    assert data["series"]["seconds_dropped"] == 0
    assert [second["answered"] for second in seconds] == [100] * 4 + [0] * 3 + [400] + [100] * 2
    assert seconds[4] == {
        "second": 4,
        "answered": 0,
        "approved": 0,
        "timeouts": 0,
        "errors": 0,
        "latency_p50_ms": None,
        "latency_p99_ms": None,
    }
    assert (seconds[7]["latency_p99_ms"], seconds[8]["timeouts"]) == (3_000.0, 1)


def test_without_matplotlib_the_report_is_written_and_says_the_chart_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes an import fail as if the package were not installed.
    for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    write_report(stalled_report(), tmp_path / "run.md")
    markdown = (tmp_path / "run.md").read_text()
    assert "| chart | skipped: matplotlib is not installed |" in markdown.splitlines()
    assert "![" not in markdown
    assert not (tmp_path / "run.png").exists()


def test_a_png_report_file_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--report", "run.png"]) == 2
    assert "the chart is .png" in capsys.readouterr().err


BEFORE = """switch_request_latency_seconds_sum 1.500000
switch_request_latency_seconds_count 150
switch_financial_latency_seconds_sum 1.000000
switch_financial_latency_seconds_count 100
switch_step_latency_seconds_sum{step="look_up"} 0.400000
switch_step_latency_seconds_count{step="look_up"} 100
"""
AFTER = """switch_request_latency_seconds_bucket{le="+Inf"} 400
switch_request_latency_seconds_sum 3.100000
switch_request_latency_seconds_count 400
switch_financial_latency_seconds_bucket{le="+Inf"} 300
switch_financial_latency_seconds_sum 3.000000
switch_financial_latency_seconds_count 300
switch_step_latency_seconds_bucket{step="look_up",le="+Inf"} 300
switch_step_latency_seconds_sum{step="look_up"} 1.400000
switch_step_latency_seconds_count{step="look_up"} 300
switch_step_latency_seconds_sum{step="post"} 0.200000
switch_step_latency_seconds_count{step="post"} 20
switch_step_latency_seconds_sum{step="verify_pin"} 0.040000
switch_step_latency_seconds_count{step="verify_pin"} 20
switch_ledger_writes_total 7
"""


def test_step_means_between_two_scrapes() -> None:
    assert scrape.latency_totals(BEFORE) == {
        "request": scrape.Totals(1.0, 100),
        "look_up": scrape.Totals(0.4, 100),
    }
    means = scrape.mean_ms_between(BEFORE, AFTER)
    assert [(name, round(ms, 9)) for name, ms in means.items()] == [
        ("post", 10.0),
        ("look_up", 5.0),
        ("verify_pin", 2.0),
        ("request", 10.0),
    ]
    assert scrape.mean_ms_between(AFTER, AFTER) == {}


def test_ledger_wait_call_and_batch_means_between_two_scrapes() -> None:
    before = """switch_ledger_reads_total 10
switch_ledger_read_calls_total 5
switch_ledger_read_wait_seconds_total 0.5
switch_ledger_read_call_seconds_total 0.25
switch_ledger_writes_total 0
switch_ledger_write_calls_total 0
"""
    after = """switch_ledger_reads_total 40
switch_ledger_read_calls_total 8
switch_ledger_read_wait_seconds_total 0.8
switch_ledger_read_call_seconds_total 0.31
switch_ledger_writes_total 0
switch_ledger_write_calls_total 0
switch_connections 3
"""
    assert scrape.plain_values(after)["connections"] == 3.0
    means = scrape.ledger_means_between(before, after)
    assert {name: round(value, 9) for name, value in means.items()} == {
        "read_wait_ms": 10.0,
        "read_call_ms": 20.0,
        "read_batch": 10.0,
    }


def test_balancing_and_cash_in_every_format() -> None:
    report = sample()
    report.cash.update({"partial_dispenses": 3, "notes_rejected": 2})
    imbalance = Balancing("S0070002", "1201", "95", (("F124 slot 1 dispensed", "41", "40"),))
    report.balancing = [Balancing("S0070001", "1201", "00"), imbalance]
    report.miscounting = "S0070002"
    summary = report.summary()
    balancing = "2 0500s from 2 kiosks: 1 balanced (00), 1 not; S0070002 miscounts on purpose"
    shown = "S0070002 1201: 95 F124 slot 1 dispensed 41 (host 40)"
    text = summary.text()
    assert f"balancing {balancing}" in text
    assert f"  0510 {shown}" in text
    assert "cash      notes_rejected 2, partial_dispenses 3" in text
    markdown = summary.markdown()
    assert f"| balancing | {balancing} |" in markdown
    assert f"- {shown}" in markdown
    data = json.loads(summary.json())
    assert data["cash"] == {"notes_rejected": 2, "partial_dispenses": 3}
    assert data["balancing"] == {
        "miscounting": "S0070002",
        "results": [
            {"terminal_id": "S0070001", "business_date": "1201", "code": "00", "differences": []},
            {
                "terminal_id": "S0070002",
                "business_date": "1201",
                "code": "95",
                "differences": [{"field": "F124 slot 1 dispensed", "terminal": "41", "host": "40"}],
            },
        ],
    }


def test_a_run_that_did_not_balance_says_nothing_of_it() -> None:
    data = sample().summary().as_dict()
    assert (data["balancing"], data["cash"]) == (None, {})
    assert "balancing" not in sample().to_text()


def test_the_simulator_reads_with_the_switchs_development_viewer_key() -> None:
    assert DEVELOPMENT_TOKENS[Role.VIEWER] == scrape.DEVELOPMENT_KEY

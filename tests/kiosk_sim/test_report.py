"""The run report's figures and formats."""

from __future__ import annotations

import json

from kiosk_sim import scrape
from kiosk_sim.report import Report


def sample() -> Report:
    report = Report(duration_s=2.0, terminals=4)
    for i in range(100):
        report.latency.record(1_000 + i * 10)
        report.response_codes["00" if i < 90 else "51"] += 1
    report.kinds["withdrawal"] = 100
    report.timeouts = 1
    report.errors["connection_dropped"] = 2
    return report


def test_figures() -> None:
    data = sample().as_dict()
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
    report = sample()
    data = json.loads(report.to_json())
    assert (data["timeouts"], data["sessions"], data["sessions_per_s"]) == (1, 100, 50.0)
    assert report.to_text().splitlines()[:3] == [
        "4 terminals, 2.0 s, closed loop",
        "answered  100 (50.0/s), approved 90 (45.0/s)",
        "sessions  100 (50.0/s): withdrawal 100",
    ]
    assert "| mode | closed loop |\n| sessions/s | 50.0 |" in report.to_markdown()
    assert "| approved/s | 45.0 |" in report.to_markdown()


def test_open_loop_reports_its_target_in_sessions_which_may_send_several_requests() -> None:
    report = Report(duration_s=2.0, terminals=4, target_rate_per_s=30.0)
    report.kinds.update(partial=40, duplicate=20)
    report.response_codes["00"] = 120  # each partial: withdrawal + reversal; each duplicate: 2
    report.idle_echoes = 3
    assert report.to_text().splitlines()[:3] == [
        "4 terminals, 2.0 s, open loop at 30.0 sessions/s",
        "answered  120 (60.0/s), approved 120 (60.0/s)",
        "sessions  60 (30.0/s): duplicate 20, partial 40",
    ]
    assert "| mode | open loop at 30.0 sessions/s |" in report.to_markdown()
    assert json.loads(report.to_json())["idle_echoes"] == 3


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
        ("look_up", 5.0),
        ("verify_pin", 2.0),
        ("post", 10.0),
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

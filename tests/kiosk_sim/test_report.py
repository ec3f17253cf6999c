"""The run report's figures and formats."""

from __future__ import annotations

import json

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
    assert json.loads(report.to_json())["timeouts"] == 1
    assert "approved 90 (45.0/s)" in report.to_text()
    assert "| approved/s | 45.0 |" in report.to_markdown()

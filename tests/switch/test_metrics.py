"""The Prometheus text the metrics render: exact lines for request and step histograms."""

from __future__ import annotations

from switch.metrics import Metrics
from switch.tls import HandshakeFailure


def test_step_latencies_render_as_one_histogram_per_step() -> None:
    metrics = Metrics()
    for step, latency_ms in [("look_up", 0.4), ("look_up", 7.0), ("post", 30.0)]:
        metrics.observe_step(step, latency_ms)
    text = metrics.render({})
    lines = text.splitlines()
    look_up = [line for line in lines if 'step="look_up"' in line]
    assert look_up[:5] == [
        'switch_step_latency_seconds_bucket{step="look_up",le="0.001"} 1',
        'switch_step_latency_seconds_bucket{step="look_up",le="0.002"} 1',
        'switch_step_latency_seconds_bucket{step="look_up",le="0.005"} 1',
        'switch_step_latency_seconds_bucket{step="look_up",le="0.01"} 2',
        'switch_step_latency_seconds_bucket{step="look_up",le="0.02"} 2',
    ]
    assert look_up[-3:] == [
        'switch_step_latency_seconds_bucket{step="look_up",le="+Inf"} 2',
        'switch_step_latency_seconds_sum{step="look_up"} 0.007400',
        'switch_step_latency_seconds_count{step="look_up"} 2',
    ]
    assert 'switch_step_latency_seconds_bucket{step="post",le="0.05"} 1' in lines
    assert lines.count("# TYPE switch_step_latency_seconds histogram") == 1


def test_request_latency_keeps_its_series_without_labels() -> None:
    metrics = Metrics()
    metrics.observe("0200", "00", 12.5)
    lines = metrics.render({}).splitlines()
    assert 'switch_request_latency_seconds_bucket{le="0.01"} 0' in lines
    assert 'switch_request_latency_seconds_bucket{le="0.02"} 1' in lines
    assert "switch_request_latency_seconds_sum 0.012500" in lines
    assert "switch_request_latency_seconds_count 1" in lines


def test_financial_requests_and_reversals_also_have_a_histogram_of_their_own() -> None:
    metrics = Metrics()
    for mti, latency_ms in [("0200", 12.5), ("0420", 3.0), ("0800", 0.5), ("0421", 4.0)]:
        metrics.observe(mti, "00", latency_ms)
    lines = metrics.render({}).splitlines()
    assert "switch_request_latency_seconds_count 4" in lines
    assert "switch_financial_latency_seconds_sum 0.019500" in lines
    assert "switch_financial_latency_seconds_count 3" in lines
    assert 'switch_financial_latency_seconds_bucket{le="0.001"} 0' in lines


def test_values_read_at_scrape_time_are_typed_by_name() -> None:
    lines = Metrics().render({"connections": 3, "ledger_writes_total": 12}).splitlines()
    assert lines[-4:] == [
        "# TYPE switch_connections gauge",
        "switch_connections 3",
        "# TYPE switch_ledger_writes_total counter",
        "switch_ledger_writes_total 12",
    ]


def test_tls_refusals_render_every_reason_and_subject_mismatches_a_total() -> None:
    metrics = Metrics()
    metrics.count_tls_refusal(HandshakeFailure.EXPIRED)
    metrics.count_tls_refusal(HandshakeFailure.EXPIRED)
    metrics.count_subject_mismatch()
    lines = metrics.render({}).splitlines()
    start = lines.index("# TYPE switch_tls_handshake_failures_total counter")
    assert lines[start + 1 : start + 5] == [
        'switch_tls_handshake_failures_total{reason="unknown_ca"} 0',
        'switch_tls_handshake_failures_total{reason="expired"} 2',
        'switch_tls_handshake_failures_total{reason="no_certificate"} 0',
        'switch_tls_handshake_failures_total{reason="protocol"} 0',
    ]
    assert "# TYPE switch_tls_subject_mismatches_total counter" in lines
    assert "switch_tls_subject_mismatches_total 1" in lines

"""The metrics on prometheus-client: every series the hand-written exposition had, with the same
names, types, labels and values, read back with prometheus-client's parser; and several
processes summed in multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.batches import BatchFigures
from ledger.store import LedgerStore
from switch.access import Refusal
from switch.app import ledger_figures
from switch.metrics import FIGURES, LATENCY_BUCKETS_MS, Metrics
from switch.tls import HandshakeFailure
from tests.switch.scraped import by_label, samples, value

REPO = Path(__file__).resolve().parents[2]


def test_step_latencies_are_one_histogram_with_a_series_per_step() -> None:
    metrics = Metrics()
    for step, latency_ms in [("look_up", 0.4), ("look_up", 7.0), ("post", 30.0)]:
        metrics.observe_step(step, latency_ms)
    buckets = {
        float(s.labels["le"]): s.value
        for s in samples(metrics)
        if s.name == "switch_step_latency_seconds_bucket" and s.labels["step"] == "look_up"
    }
    assert buckets == {
        **{bound_ms / 1000: (1 if bound_ms < 7 else 2) for bound_ms in LATENCY_BUCKETS_MS},
        float("inf"): 2,
    }
    name = "switch_step_latency_seconds"
    assert value(metrics, f"{name}_sum", step="look_up") == pytest.approx(0.0074)
    assert value(metrics, f"{name}_count", step="look_up") == 2
    assert value(metrics, f"{name}_bucket", step="post", le="0.05") == 1
    assert value(metrics, f"{name}_bucket", step="post", le="0.02") == 0
    text = metrics.exposition({}).decode()
    assert text.count(f"# TYPE {name} histogram") == 1


def test_request_latency_keeps_its_series_without_labels() -> None:
    metrics = Metrics()
    metrics.observe("0200", "00", 12.5, chip=False)
    name = "switch_request_latency_seconds"
    assert value(metrics, f"{name}_bucket", le="0.01") == 0
    assert value(metrics, f"{name}_bucket", le="0.02") == 1
    assert value(metrics, f"{name}_bucket", le="+Inf") == 1
    assert value(metrics, f"{name}_sum") == pytest.approx(0.0125)
    assert value(metrics, f"{name}_count") == 1
    assert value(metrics, "switch_requests_total", mti="0200", response_code="00") == 1


def test_financial_requests_and_reversals_also_have_a_histogram_of_their_own() -> None:
    metrics = Metrics()
    for mti, latency_ms in [("0200", 12.5), ("0420", 3.0), ("0800", 0.5), ("0421", 4.0)]:
        metrics.observe(mti, "00", latency_ms, chip=False)
    assert value(metrics, "switch_request_latency_seconds_count") == 4
    assert value(metrics, "switch_financial_latency_seconds_sum") == pytest.approx(0.0195)
    assert value(metrics, "switch_financial_latency_seconds_count") == 3
    assert value(metrics, "switch_financial_latency_seconds_bucket", le="0.001") == 0
    requests = by_label(metrics, "switch_requests_total", "mti", "response_code")
    assert requests == {("0200", "00"): 1, ("0420", "00"): 1, ("0800", "00"): 1, ("0421", "00"): 1}


def test_figures_copied_in_are_typed_by_name_and_counters_only_grow() -> None:
    metrics = Metrics()
    metrics.refresh({"connections": 3, "ledger_writes_total": 12})
    metrics.refresh({"connections": 1, "ledger_writes_total": 20})
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(metrics.exposition({}).decode())
    }
    # The parser names a counter's family without its _total.
    assert families["switch_connections"] == "gauge"
    assert families["switch_ledger_writes"] == "counter"
    assert value(metrics, "switch_connections") == 1
    assert value(metrics, "switch_ledger_writes_total") == 20
    with pytest.raises(AssertionError, match="went down"):
        metrics.refresh({"ledger_writes_total": 19})


def test_every_series_of_the_hand_written_exposition_is_there() -> None:
    metrics = Metrics()
    metrics.refresh({figure.name: 0 for figure in FIGURES})
    fleet = {"tls_client_certificate_days_left_min": 12.5}
    names = {s.name for s in samples(metrics, fleet)}
    assert {
        "switch_request_latency_seconds_bucket",
        "switch_request_latency_seconds_sum",
        "switch_request_latency_seconds_count",
        "switch_financial_latency_seconds_count",
        "switch_dependency_errors_total",
        "switch_tls_handshake_failures_total",
        "switch_tls_subject_mismatches_total",
        "switch_connections",
        "switch_in_flight_requests",
        "switch_refused_connections_total",
        "switch_ledger_read_calls_total",
        "switch_ledger_reads_total",
        "switch_ledger_write_calls_total",
        "switch_ledger_writes_total",
        "switch_ledger_writes_decided_again_total",
        "switch_ledger_read_wait_seconds_total",
        "switch_ledger_read_call_seconds_total",
        "switch_ledger_write_wait_seconds_total",
        "switch_ledger_write_call_seconds_total",
        "switch_tls_client_certificate_days_left_min",
    } <= names
    assert not [name for name in names if name.endswith("_created")]
    assert value(metrics, "switch_dependency_errors_total", component="database") == 0
    assert value(metrics, "switch_dependency_errors_total", component="hsm") == 0


class _Store:
    def batch_figures(self) -> BatchFigures:
        return BatchFigures(1, 2, 3, 4, 5, 0.5, 0.25, 0.125, 0.0625)


def test_the_switch_copies_in_figures_the_metrics_declare() -> None:
    metrics = Metrics()
    metrics.refresh(ledger_figures(cast(LedgerStore, _Store())))
    assert value(metrics, "switch_ledger_writes_decided_again_total") == 5
    assert value(metrics, "switch_ledger_write_call_seconds_total") == 0.0625


def test_tls_refusals_have_every_reason_and_subject_mismatches_a_total() -> None:
    metrics = Metrics()
    metrics.count_tls_refusal(HandshakeFailure.EXPIRED)
    metrics.count_tls_refusal(HandshakeFailure.EXPIRED)
    metrics.count_subject_mismatch()
    assert by_label(metrics, "switch_tls_handshake_failures_total", "reason") == {
        ("unknown_ca",): 0,
        ("expired",): 2,
        ("no_certificate",): 0,
        ("protocol",): 0,
    }
    assert value(metrics, "switch_tls_subject_mismatches_total") == 1


def test_api_refusals_are_counted_by_reason() -> None:
    metrics = Metrics()
    metrics.count_api_refusal(Refusal.WRONG_ROLE)
    counted = by_label(metrics, "switch_api_refusals_total", "reason")
    assert counted == {(reason,): int(reason is Refusal.WRONG_ROLE) for reason in Refusal}


# One switch process: answers requests, copies in its figures, and exits without a goodbye.
_PROCESS = """
from switch.metrics import Metrics
metrics = Metrics()
for _ in range({requests}):
    metrics.observe("0200", "00", 5.0, chip=False)
metrics.refresh({{"connections": {connections}, "ledger_writes_total": 7,
                 "database_up": {database_up}, "terminals_up": 3}})
"""
# The one answering the scrape: every process's values, and the fleet's gauges of its own.
_SCRAPE = """
import sys
from prometheus_client.multiprocess import mark_process_dead
from switch.metrics import Metrics
for pid in sys.argv[1:]:
    mark_process_dead(int(pid))
metrics = Metrics()
metrics.refresh({"database_up": 1, "terminals_up": 3})
sys.stdout.write(metrics.exposition({"tls_client_certificate_days_left_min": 3.0}).decode())
"""


def _python(code: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def _scraped(directory: Path, *dead: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = _python(_SCRAPE, directory, *map(str, dead)).stdout
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    first = subprocess.Popen(
        [sys.executable, "-c", _PROCESS.format(requests=3, connections=2, database_up=0)],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        cwd=REPO,
    )
    assert first.wait(timeout=60) == 0
    _python(_PROCESS.format(requests=4, connections=5, database_up=1), tmp_path)
    scraped = _scraped(tmp_path)
    assert scraped[("switch_requests_total", (("mti", "0200"), ("response_code", "00")))] == 7
    assert scraped[("switch_request_latency_seconds_count", ())] == 7
    assert scraped[("switch_connections", ())] == 7
    assert scraped[("switch_ledger_writes_total", ())] == 14
    assert scraped[("switch_tls_client_certificate_days_left_min", ())] == 3.0
    # A probe: down when any process finds it down. What every process reads from the ledger
    # alike: the latest read, not a sum.
    assert scraped[("switch_database_up", ())] == 0
    assert scraped[("switch_terminals_up", ())] == 3
    # A process gone: its connections and its probe leave, what it counted stays counted.
    scraped = _scraped(tmp_path, first.pid)
    assert scraped[("switch_connections", ())] == 5
    assert scraped[("switch_database_up", ())] == 1
    assert scraped[("switch_terminals_up", ())] == 3
    assert scraped[("switch_ledger_writes_total", ())] == 14
    assert scraped[("switch_requests_total", (("mti", "0200"), ("response_code", "00")))] == 7

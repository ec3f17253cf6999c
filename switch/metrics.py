"""The switch's Prometheus metrics, on prometheus-client. No I/O of its own.

One process: each `Metrics` has a registry of its own (tests build several in one process), read
at scrape time. Several switch processes behind one operations port: set PROMETHEUS_MULTIPROC_DIR
to an empty directory in every process's environment before it starts (prometheus-client picks
its storage when it is imported); each process then writes its values to files there and a
scrape answered by any process sums them all (`exposition`). Figures that other objects keep
(connections, the ledger's batch counters) are copied into the metrics at each scrape and, with
several processes, every second too (`refresh`), so that no process's share is older than that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from ledger.activity import APPROVED_CODE, CHIP_SECURITY_CODE
from ledger.cash import CashLevel, cash_level
from ledger.cassettes import CassetteCounts
from switch.access import Refusal
from switch.session import FINANCIAL_CLASSES
from switch.tls import HandshakeFailure

# The `_created` series double the series count and nothing reads them.
disable_created_metrics()

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000)
_BUCKETS_S = tuple(bound_ms / 1000 for bound_ms in LATENCY_BUCKETS_MS)
DEPENDENCIES = ("hsm", "database")


# How a gauge's values from several processes make one (prometheus-client's multiprocess
# modes; "live" ones leave out the processes that have exited):
# - what each process holds a share of (its connections, its queues): their sum;
GaugeMode = Literal["livesum", "livemin", "livemostrecent"]
LIVE_SUM: GaugeMode = "livesum"
# - a probe each process makes of the HSM or the ledger: down when any live process finds it so;
LIVE_MIN: GaugeMode = "livemin"
# - what each process reads from the ledger, alike in all of them: the latest read.
LIVE_LATEST: GaugeMode = "livemostrecent"
GAUGE_MODES = (LIVE_SUM, LIVE_MIN, LIVE_LATEST)


@dataclass(frozen=True, slots=True)
class Figure:
    """A value another object keeps, copied in at scrape time: a gauge, or a `_total` that only
    grows (a counter, summed over every process that ever ran). A gauge's `mode` says how
    several processes' values make one."""

    name: str
    help_text: str
    mode: GaugeMode = LIVE_SUM

    def __post_init__(self) -> None:
        assert self.mode in GAUGE_MODES, self.mode
        assert not (self.is_counter and self.mode != LIVE_SUM), f"{self.name} is a counter"

    @property
    def is_counter(self) -> bool:
        return self.name.endswith("_total")


FIGURES: tuple[Figure, ...] = (
    Figure("connections", "Terminal connections open."),
    Figure("in_flight_requests", "Requests received and not yet answered."),
    Figure("refused_connections_total", "Connections closed at once: over max_connections."),
    Figure("ledger_read_calls_total", "Ledger read calls (each carries a batch of requests)."),
    Figure("ledger_reads_total", "Requests carried by ledger read calls."),
    Figure("ledger_write_calls_total", "Ledger write calls (each carries a batch of requests)."),
    Figure("ledger_writes_total", "Requests carried by ledger write calls."),
    Figure(
        "ledger_writes_decided_again_total",
        "Writes decided again because their customer changed since their read.",
    ),
    Figure("ledger_read_wait_seconds_total", "Time requests waited for their read call."),
    Figure("ledger_read_call_seconds_total", "Time read calls took."),
    Figure("ledger_write_wait_seconds_total", "Time requests waited for their write call."),
    Figure("ledger_write_call_seconds_total", "Time write calls took."),
    # The operations (switch/operations.py, switch/alerting.py: docs/operations.md).
    Figure("terminal_events_queued", "Terminal events waiting to be written to the ledger."),
    Figure("terminal_events_written_total", "Terminal events written to the ledger."),
    Figure("terminal_events_dropped_total", "Terminal events dropped: queue full or refused."),
    Figure("terminal_traffic_requests_dropped_total", "Requests left out of the traffic rows."),
    Figure("operations_write_failures_total", "Writes of events or traffic that failed."),
    Figure("alert_notifications_queued", "Webhook notifications waiting to be sent."),
    Figure("alert_notifications_sent_total", "Webhook notifications delivered."),
    Figure("alert_notifications_failed_attempts_total", "Webhook attempts that failed."),
    Figure("alert_notifications_dropped_queue_full_total", "Notifications dropped: queue full."),
    Figure(
        "alert_notifications_dropped_after_retries_total",
        "Notifications dropped after their last retry.",
    ),
    Figure("hsm_up", "The HSM answered the last probe (1) or not (0).", LIVE_MIN),
    Figure("database_up", "The ledger answered the last probe (1) or not (0).", LIVE_MIN),
    Figure("terminals_up", "Provisioned terminals up.", LIVE_LATEST),
    Figure("terminals_down", "Provisioned terminals down.", LIVE_LATEST),
    Figure("terminals_never_seen", "Provisioned terminals never seen.", LIVE_LATEST),
    Figure("terminals_out_of_service", "Provisioned terminals out of service.", LIVE_LATEST),
    Figure("terminals_down_seconds_max", "The longest a seen terminal has been down.", LIVE_LATEST),
    Figure("alerts_open", "Alerts firing or acknowledged, as last read.", LIVE_LATEST),
    Figure(
        "terminals_imbalanced",
        "Terminals whose latest 0500 of the last two business days did not balance.",
        LIVE_LATEST,
    ),
    Figure("audit_verify_ok", "The last journal check passed (1) or not (0).", LIVE_LATEST),
    Figure(
        "audit_verify_timestamp_seconds",
        "When the last journal check ran (Unix time).",
        LIVE_LATEST,
    ),
    Figure("alert_evaluations_total", "Alert rule evaluations."),
    Figure("alert_evaluation_failures_total", "Alert rule evaluations that failed."),
)
_FIGURES = {figure.name: figure for figure in FIGURES}
# Gauges about the whole fleet, computed for each scrape (and absent when there is no value).
FLEET_GAUGES: Mapping[str, str] = {
    "tls_client_certificate_days_left_min": (
        "Fewest days left on the client certificate of a signed-on terminal."
    ),
}


def multiprocess() -> bool:
    """Whether prometheus-client keeps its values in files shared by several processes."""
    return MULTIPROCESS_ENV in os.environ


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._requests = Counter(
            "switch_requests_total",
            "Requests answered, by request MTI and response code.",
            ["mti", "response_code"],
            registry=registry,
        )
        self._chip_requests = Counter(
            "switch_chip_requests_total",
            "Financial requests with chip data (F55) answered, by response code (63: refused"
            " for the card's security).",
            ["response_code"],
            registry=registry,
        )
        self._latency = Histogram(
            "switch_request_latency_seconds",
            "Time from request received to response sent.",
            buckets=_BUCKETS_S,
            registry=registry,
        )
        self._financial_latency = Histogram(
            "switch_financial_latency_seconds",
            "The same, for financial requests and reversals only.",
            buckets=_BUCKETS_S,
            registry=registry,
        )
        self._steps = Histogram(
            "switch_step_latency_seconds",
            "Time in each step of the request pipeline.",
            ["step"],
            buckets=_BUCKETS_S,
            registry=registry,
        )
        self._errors = Counter(
            "switch_dependency_errors_total",
            "Failed calls to the HSM or the database.",
            ["component"],
            registry=registry,
        )
        self._tls_failures = Counter(
            "switch_tls_handshake_failures_total",
            "TLS handshakes refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self._subject_mismatches = Counter(
            "switch_tls_subject_mismatches_total",
            "Requests refused because the client certificate names another terminal.",
            registry=registry,
        )
        self._api_refusals = Counter(
            "switch_api_refusals_total",
            "Operations app requests refused (401, 403), by reason.",
            ["reason"],
            registry=registry,
        )
        # Every labelled series exists from the start, at 0, so that rate() sees the first one.
        for component in DEPENDENCIES:
            self._errors.labels(component)
        for reason in HandshakeFailure:
            self._tls_failures.labels(reason)
        for refusal in Refusal:
            self._api_refusals.labels(refusal)
        for code in (APPROVED_CODE, CHIP_SECURITY_CODE):
            self._chip_requests.labels(code)
        self._figures = {figure.name: _figure_metric(figure, registry) for figure in FIGURES}
        self._copied: dict[str, float] = dict.fromkeys(_FIGURES, 0.0)
        # labels() takes a lock and builds a key: the children are kept for the request path.
        self._request_series: dict[tuple[str, str], Counter] = {}
        self._step_series: dict[str, Histogram] = {}

    def observe(self, mti: str, response_code: str, latency_ms: float, *, chip: bool) -> None:
        series = self._request_series.get((mti, response_code))
        if series is None:
            series = self._request_series[(mti, response_code)] = self._requests.labels(
                mti, response_code
            )
        series.inc()
        self._latency.observe(latency_ms / 1000)
        if mti[:3] in FINANCIAL_CLASSES:
            self._financial_latency.observe(latency_ms / 1000)
            if chip:
                self._chip_requests.labels(response_code).inc()

    def observe_step(self, step: str, latency_ms: float) -> None:
        """How long one pipeline step of a request took (waiting for the HSM or ledger included)."""
        series = self._step_series.get(step)
        if series is None:
            series = self._step_series[step] = self._steps.labels(step)
        series.observe(latency_ms / 1000)

    def count_error(self, component: str) -> None:
        """An HSM or database call that failed (timeout, unreachable, refused)."""
        assert component in DEPENDENCIES, component
        self._errors.labels(component).inc()

    def count_tls_refusal(self, reason: HandshakeFailure) -> None:
        self._tls_failures.labels(reason).inc()

    def count_subject_mismatch(self) -> None:
        """A terminal whose certificate names another terminal, refused."""
        self._subject_mismatches.inc()

    def count_api_refusal(self, reason: Refusal) -> None:
        self._api_refusals.labels(reason).inc()

    def refresh(self, figures: Mapping[str, float]) -> None:
        """Copy in the figures other objects keep (names from `FIGURES`)."""
        for name, value in figures.items():
            metric = self._figures[name]
            if isinstance(metric, Counter):
                grown = value - self._copied[name]
                assert grown >= 0, f"{name} went down"
                metric.inc(grown)
            else:
                metric.set(value)
            self._copied[name] = value

    def exposition(
        self, fleet_gauges: Mapping[str, float], cash: Sequence[CassetteCounts] = ()
    ) -> bytes:
        """The Prometheus text: this process's metrics (every process's, in multiprocess mode),
        `fleet_gauges`, values about the whole fleet computed for this scrape, and the
        terminals' cash as last read from the ledger."""
        source: CollectorRegistry = self.registry
        if multiprocess():
            source = CollectorRegistry()
            MultiProcessCollector(source)
        return generate_latest(_Scrape(source, fleet_gauges, cash))


def _figure_metric(figure: Figure, registry: CollectorRegistry) -> Counter | Gauge:
    name = f"switch_{figure.name}"
    if figure.is_counter:
        return Counter(name, figure.help_text, registry=registry)
    return Gauge(name, figure.help_text, registry=registry, multiprocess_mode=figure.mode)


class _Scrape:
    """One scrape's collector: the metrics, then the fleet's gauges of the moment."""

    def __init__(
        self,
        source: CollectorRegistry,
        fleet_gauges: Mapping[str, float],
        cash: Sequence[CassetteCounts],
    ) -> None:
        self._source = source
        self._fleet_gauges = fleet_gauges
        self._cash = cash

    def collect(self) -> Iterable[Metric]:
        yield from self._source.collect()
        yield from _gauges(self._fleet_gauges)
        yield from cash_gauges(self._cash)


def _gauges(values: Mapping[str, float]) -> Iterator[Metric]:
    for name, value in sorted(values.items()):
        gauge = GaugeMetricFamily(f"switch_{name}", FLEET_GAUGES[name])
        gauge.add_metric([], value)
        yield gauge


# A terminal's cash level as a number, for alert expressions (`== 2`: out of cash).
CASH_LEVEL_VALUES: Mapping[CashLevel, int] = {CashLevel.OK: 0, CashLevel.LOW: 1, CashLevel.OUT: 2}


def cash_gauges(cash: Sequence[CassetteCounts]) -> Iterator[Metric]:
    """Per terminal and cassette the notes left; per terminal its cash level; and how many
    terminals are low or out (terminals without cassettes count notes nowhere: absent)."""
    notes = GaugeMetricFamily(
        "switch_terminal_cash_notes_remaining",
        "Notes left in each cassette, as last read from the ledger.",
        labels=["terminal_id", "cassette", "denomination_minor", "currency"],
    )
    levels = GaugeMetricFamily(
        "switch_terminal_cash_level",
        "Each terminal's cash: 0 ok, 1 low (a cassette at its low mark), 2 out.",
        labels=["terminal_id"],
    )
    by_terminal: dict[str, list[CassetteCounts]] = {}
    for cassette in cash:
        by_terminal.setdefault(cassette.terminal_id, []).append(cassette)
        notes.add_metric(
            [cassette.terminal_id, str(cassette.cassette_no),
             str(cassette.denomination_minor), cassette.currency],
            cassette.remaining_notes,
        )  # fmt: skip
    counted = dict.fromkeys(CashLevel, 0)
    for terminal_id, cassettes in sorted(by_terminal.items()):
        level = cash_level((c.remaining_notes, c.low_notes) for c in cassettes)
        assert level is not None, "a terminal listed has cassettes"
        counted[level] += 1
        levels.add_metric([terminal_id], CASH_LEVEL_VALUES[level])
    yield notes
    yield levels
    for level in (CashLevel.LOW, CashLevel.OUT):
        total = GaugeMetricFamily(
            f"switch_terminals_cash_{level.value}", f"Terminals whose cash is {level.value}."
        )
        total.add_metric([], counted[level])
        yield total

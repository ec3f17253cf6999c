"""Request metrics, kept in memory and rendered in the Prometheus text format. No I/O."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

from switch.session import FINANCIAL_CLASSES
from switch.tls import HandshakeFailure

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000)


@dataclass
class LatencyHistogram:
    """Prometheus histogram counts over `LATENCY_BUCKETS_MS`."""

    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    sum_ms: float = 0.0
    count: int = 0

    def observe(self, latency_ms: float) -> None:
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.sum_ms += latency_ms
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        """`labels`: the series' own labels, such as 'step="post"'."""
        before_le = f"{labels}," if labels else ""
        series = f"{{{labels}}}" if labels else ""
        lines = []
        cumulative = 0
        for bound_ms, count in zip(LATENCY_BUCKETS_MS, self.bucket_counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{{before_le}le="{bound_ms / 1000:g}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{before_le}le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{series} {self.sum_ms / 1000:.6f}")
        lines.append(f"{name}_count{series} {self.count}")
        return lines


@dataclass
class Metrics:
    requests: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # Financial requests and reversals only: the whole of what their pipeline steps are part of.
    financial_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    steps: dict[str, LatencyHistogram] = field(default_factory=dict)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    tls_handshake_failures: collections.Counter[HandshakeFailure] = field(
        default_factory=collections.Counter
    )
    tls_subject_mismatches: int = 0

    def observe(self, mti: str, response_code: str, latency_ms: float) -> None:
        self.requests[(mti, response_code)] += 1
        self.latency.observe(latency_ms)
        if mti[:3] in FINANCIAL_CLASSES:
            self.financial_latency.observe(latency_ms)

    def observe_step(self, step: str, latency_ms: float) -> None:
        """How long one pipeline step of a request took (waiting for the HSM or ledger included)."""
        histogram = self.steps.get(step)
        if histogram is None:
            histogram = self.steps[step] = LatencyHistogram()
        histogram.observe(latency_ms)

    def count_error(self, component: str) -> None:
        """An HSM or database call that failed (timeout, unreachable, refused)."""
        self.errors[component] += 1

    def count_tls_refusal(self, reason: HandshakeFailure) -> None:
        self.tls_handshake_failures[reason] += 1

    def count_subject_mismatch(self) -> None:
        """A terminal whose certificate names another terminal, refused."""
        self.tls_subject_mismatches += 1

    def render(self, scraped: Mapping[str, float]) -> str:
        """The Prometheus text; `scraped`: values read from elsewhere at scrape time."""
        lines = [
            "# HELP switch_requests_total Requests answered, by request MTI and response code.",
            "# TYPE switch_requests_total counter",
        ]
        for (mti, code), count in sorted(self.requests.items()):
            lines.append(f'switch_requests_total{{mti="{mti}",response_code="{code}"}} {count}')
        lines += [
            "# HELP switch_request_latency_seconds Time from request received to response sent.",
            "# TYPE switch_request_latency_seconds histogram",
        ]
        lines += self.latency.render("switch_request_latency_seconds")
        lines += [
            "# HELP switch_financial_latency_seconds The same, for financial requests and"
            " reversals only.",
            "# TYPE switch_financial_latency_seconds histogram",
        ]
        lines += self.financial_latency.render("switch_financial_latency_seconds")
        lines += [
            "# HELP switch_step_latency_seconds Time in each step of the request pipeline.",
            "# TYPE switch_step_latency_seconds histogram",
        ]
        for step, histogram in sorted(self.steps.items()):
            lines += histogram.render("switch_step_latency_seconds", f'step="{step}"')
        lines += [
            "# HELP switch_dependency_errors_total Failed calls to the HSM or the database.",
            "# TYPE switch_dependency_errors_total counter",
        ]
        for component in ("hsm", "database"):
            count = self.errors[component]
            lines.append(f'switch_dependency_errors_total{{component="{component}"}} {count}')
        lines += [
            "# HELP switch_tls_handshake_failures_total TLS handshakes refused, by reason.",
            "# TYPE switch_tls_handshake_failures_total counter",
        ]
        for reason in HandshakeFailure:
            count = self.tls_handshake_failures[reason]
            lines.append(f'switch_tls_handshake_failures_total{{reason="{reason}"}} {count}')
        lines += [
            "# HELP switch_tls_subject_mismatches_total Requests refused because the client"
            " certificate names another terminal.",
            "# TYPE switch_tls_subject_mismatches_total counter",
            f"switch_tls_subject_mismatches_total {self.tls_subject_mismatches}",
        ]
        for name, value in sorted(scraped.items()):
            # Those named *_total only ever grow.
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE switch_{name} {kind}", f"switch_{name} {value:g}"]
        return "\n".join(lines) + "\n"

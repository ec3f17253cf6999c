"""Request metrics, kept in memory and rendered in the Prometheus text format. No I/O."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000)


@dataclass
class Metrics:
    requests: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    latency_bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1)
    )
    latency_ms_sum: float = 0.0
    latency_count: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def observe(self, mti: str, response_code: str, latency_ms: float) -> None:
        self.requests[(mti, response_code)] += 1
        self.latency_bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_ms_sum += latency_ms
        self.latency_count += 1

    def count_error(self, component: str) -> None:
        """An HSM or database call that failed (timeout, unreachable, refused)."""
        self.errors[component] += 1

    def render(self, gauges: Mapping[str, float]) -> str:
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
        cumulative = 0
        for bound_ms, count in zip(LATENCY_BUCKETS_MS, self.latency_bucket_counts, strict=False):
            cumulative += count
            bound_s = bound_ms / 1000
            lines.append(f'switch_request_latency_seconds_bucket{{le="{bound_s:g}"}} {cumulative}')
        lines += [
            f'switch_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
            f"switch_request_latency_seconds_sum {self.latency_ms_sum / 1000:.6f}",
            f"switch_request_latency_seconds_count {self.latency_count}",
            "# HELP switch_dependency_errors_total Failed calls to the HSM or the database.",
            "# TYPE switch_dependency_errors_total counter",
        ]
        for component in ("hsm", "database"):
            count = self.errors[component]
            lines.append(f'switch_dependency_errors_total{{component="{component}"}} {count}')
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE switch_{name} gauge", f"switch_{name} {value:g}"]
        return "\n".join(lines) + "\n"

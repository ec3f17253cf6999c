"""Reading the switch's own /metrics: where a run's time went, step by step.

The switch times each step of its request pipeline (`switch_step_latency_seconds`); the means
over a run, next to the mean latency, show whether the time was the database, the HSM or the
switch itself (the remainder: framing, decoding, queueing for the in-flight limit, the
response MAC). The text is read with prometheus-client's own parser.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

PREFIX = "switch_"
# What the simulator reads of the operations app: /metrics and /terminals, a viewer's routes,
# with the switch's published development viewer key (a client is given its key, as any is).
DEVELOPMENT_KEY = "dev-viewer.development-only-viewer-key"
# The key of the whole time of financial requests (those that run the steps), next to the steps.
REQUEST = "request"


@dataclass(frozen=True, slots=True)
class Totals:
    seconds: float
    count: int


def latency_totals(metrics_text: str) -> dict[str, Totals]:
    """Time spent and count, per pipeline step and for whole financial requests (key
    `REQUEST`)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for sample in _samples(metrics_text):
        if sample.name.startswith("switch_step_latency_seconds_"):
            name = sample.labels["step"]
        elif sample.name.startswith("switch_financial_latency_seconds_"):
            name = REQUEST
        else:
            continue
        if sample.name.endswith("_sum"):
            sums[name] = sample.value
        elif sample.name.endswith("_count"):
            counts[name] = int(sample.value)
    return {name: Totals(sums[name], counts.get(name, 0)) for name in sums}


def _samples(metrics_text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(metrics_text):
        yield from family.samples


def mean_ms_between(before: str, after: str) -> dict[str, float]:
    """Mean milliseconds per step, the slowest first, then per whole request, over what happened
    between two scrapes."""
    first, last = latency_totals(before), latency_totals(after)
    means = {}
    for name, totals in last.items():
        earlier = first.get(name, Totals(0.0, 0))
        count = totals.count - earlier.count
        if count > 0:
            means[name] = 1000 * (totals.seconds - earlier.seconds) / count
    return dict(sorted(means.items(), key=lambda item: (item[0] == REQUEST, -item[1])))


def plain_values(metrics_text: str) -> dict[str, float]:
    """The series without labels (counters and gauges), by name without the `switch_` prefix."""
    return {
        sample.name.removeprefix(PREFIX): sample.value
        for sample in _samples(metrics_text)
        if not sample.labels and sample.name.startswith(PREFIX)
    }


def ledger_means_between(before: str, after: str) -> dict[str, float]:
    """Per kind (read, write) over what happened between two scrapes: the mean time a request
    waited for its call (ms), the mean call (ms) and the mean requests per call."""
    first, last = plain_values(before), plain_values(after)

    def grew(name: str) -> float:
        return last.get(name, 0.0) - first.get(name, 0.0)

    means = {}
    for kind in ("read", "write"):
        requests, calls = grew(f"ledger_{kind}s_total"), grew(f"ledger_{kind}_calls_total")
        if requests > 0 and calls > 0:
            means[f"{kind}_wait_ms"] = 1000 * grew(f"ledger_{kind}_wait_seconds_total") / requests
            means[f"{kind}_call_ms"] = 1000 * grew(f"ledger_{kind}_call_seconds_total") / calls
            means[f"{kind}_batch"] = requests / calls
    return means


def admin_headers(token: str = DEVELOPMENT_KEY) -> dict[str, str]:
    """What the operations app asks of every call but /health and /ready: an API key."""
    return {"Authorization": f"Bearer {token}"}


async def fetch_metrics(port: int, token: str = DEVELOPMENT_KEY) -> str:
    async with (
        aiohttp.ClientSession(headers=admin_headers(token)) as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as reply,
    ):
        reply.raise_for_status()
        return await reply.text()

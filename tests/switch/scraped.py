"""Values of a Monitor's metrics, read back from its Prometheus text with prometheus-client's
parser (what a scraper sees, not the objects behind it)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from switch.metrics import Metrics


def samples(metrics: Metrics, fleet_gauges: dict[str, float] | None = None) -> list[Sample]:
    text = metrics.exposition(fleet_gauges or {}).decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels`; 0 when there is none."""
    found = [s.value for s in samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def by_label(metrics: Metrics, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    """The samples of `name` by the values of `label_names` (those with exactly these labels)."""
    return {
        tuple(s.labels[label] for label in label_names): s.value
        for s in samples(metrics)
        if s.name == name and set(s.labels) == set(label_names)
    }

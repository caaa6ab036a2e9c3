"""What /metrics would show now, as samples keyed by name and labels (for count tests)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.services.metrics import build_registry

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples() -> Samples:
    registry, _, _ = build_registry(None)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

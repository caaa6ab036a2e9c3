"""Prometheus metrics.

Pipeline counters (instructions, instances, LLM requests and their HTTP attempts, tokens,
latency) are read from the database at scrape time rather than counted in each process: workers
run in other processes and often on other hosts, and the stored rows are the truth the job
status also reports, so the two can never disagree. HTTP metrics are the API process's own.
Queue depth comes from the broker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from app.db import session_scope
from app.llm.base import parse_attempt_errors
from app.models import Instance, Instruction, Job, LLMCall, Mixture
from app.selfinstruct.types import SURPLUS_REASONS
from app.services.backend_load import current_loads

log = logging.getLogger(__name__)

QueueDepth = Callable[[], list[tuple[str, int]]]
MIXTURE_INVERSION = "mixture_inversion"  # the purpose label of mixtures' inversion requests
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PipelineCollector(Collector):
    def __init__(self, queue_depth: QueueDepth | None = None) -> None:
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        with session_scope() as session:
            jobs = GaugeMetricFamily("selfinstruct_jobs", "Jobs by status.", labels=["status"])
            for status, count in session.execute(
                select(Job.status, func.count()).group_by(Job.status)
            ):
                jobs.add_metric([str(status)], count)
            yield jobs
            yield from _decisions(
                session,
                Instruction,
                "instructions",
                Instruction.variant == 0,
                "Generated instructions",
            )
            yield from _decisions(
                session,
                Instruction,
                "reformulations",
                Instruction.variant != 0,
                "Unnatural-Instructions reformulations of accepted instructions",
            )
            yield from _decisions(session, Instance, "instances", None, "Generated instances")
            yield from _llm(session, _mixture_inversion_usage(session))
            yield from _llm_attempts(session)
        if self._queue_depth is not None:
            depth = GaugeMetricFamily(
                "selfinstruct_queue_depth",
                "Pipeline tasks waiting in the broker.",
                labels=["queue"],
            )
            try:
                for queue, count in self._queue_depth():
                    depth.add_metric([queue], count)
            except Exception:  # the broker is down: say so by leaving the gauge empty
                log.warning("queue depth unavailable", exc_info=True)
            yield depth
        yield from _backend_loads()
        yield GaugeMetricFamily(
            "selfinstruct_metrics_collect_seconds",
            "Time this scrape spent reading the database and broker.",
            value=time.perf_counter() - started,
        )


def _decisions(session, model, name: str, where, what: str) -> Iterator[Metric]:  # type: ignore[no-untyped-def]
    family = CounterMetricFamily(
        f"selfinstruct_{name}",
        f"{what} by outcome (accepted, rejected, over_target) and rejection reason.",
        labels=["outcome", "reason"],
    )
    query = select(model.accepted, model.reason, func.count()).group_by(
        model.accepted, model.reason
    )
    for accepted, reason, count in session.execute(query if where is None else query.where(where)):
        family.add_metric(_outcome(accepted, reason), count)
    yield family


def _mixture_inversion_usage(session) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """LLM use of mixtures' inverted records: kept in each mixture's manifest, not as calls."""
    total: Counter[str] = Counter()
    for (manifest,) in session.execute(
        select(Mixture.manifest).where(Mixture.manifest.is_not(None))
    ):
        usage = (manifest or {}).get("llm_usage") or {}
        for key in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            total[key] += int(usage.get(key) or 0)
    return dict(total)


def _outcome(accepted: bool, reason: str | None) -> list[str]:
    """The labels of a decision: surplus past the target is an outcome of its own."""
    if accepted:
        return ["accepted", ""]
    if reason in SURPLUS_REASONS:
        return ["over_target", ""]
    return ["rejected", reason or ""]


def _llm(session, mixture_inversion: dict[str, int]) -> Iterator[Metric]:  # type: ignore[no-untyped-def]
    requests = CounterMetricFamily(
        "selfinstruct_llm_requests",
        "LLM requests by purpose and outcome.",
        labels=["purpose", "ok"],
    )
    tokens = CounterMetricFamily("selfinstruct_llm_tokens", "LLM tokens by kind.", labels=["kind"])
    latency = HistogramMetricFamily(
        "selfinstruct_llm_latency_seconds", "LLM request latency by purpose.", labels=["purpose"]
    )
    bucket_columns = [
        func.sum(case((LLMCall.latency_ms <= round(b * 1000), 1), else_=0))
        for b in LATENCY_BUCKETS_S
    ]
    rows = session.execute(
        select(
            LLMCall.purpose,
            LLMCall.ok,
            func.count(),
            func.coalesce(func.sum(LLMCall.prompt_tokens), 0),
            func.coalesce(func.sum(LLMCall.completion_tokens), 0),
            func.coalesce(func.sum(LLMCall.latency_ms), 0),
            *bucket_columns,
        ).group_by(LLMCall.purpose, LLMCall.ok)
    ).all()
    prompt_total = completion_total = 0
    per_purpose: dict[str, list[float]] = {}
    for purpose, ok, count, prompt, completion, latency_ms, *buckets in rows:
        requests.add_metric([purpose, "true" if ok else "false"], count)
        prompt_total += int(prompt)
        completion_total += int(completion)
        merged = per_purpose.setdefault(purpose, [0.0] * (len(buckets) + 2))
        for n, value in enumerate(buckets):
            merged[n] += int(value or 0)
        merged[-2] += count
        merged[-1] += int(latency_ms) / 1000
    if mixture_inversion.get("requests"):
        errors = mixture_inversion.get("errors", 0)
        requests.add_metric([MIXTURE_INVERSION, "true"], mixture_inversion["requests"] - errors)
        requests.add_metric([MIXTURE_INVERSION, "false"], errors)
        prompt_total += mixture_inversion.get("prompt_tokens", 0)
        completion_total += mixture_inversion.get("completion_tokens", 0)
    tokens.add_metric(["prompt"], prompt_total)
    tokens.add_metric(["completion"], completion_total)
    for purpose, values in per_purpose.items():
        count, total_s = values[-2], values[-1]
        cumulative = [(str(b), values[n]) for n, b in enumerate(LATENCY_BUCKETS_S)]
        latency.add_metric([purpose], [*cumulative, ("+Inf", count)], total_s)
    yield requests
    yield tokens
    yield latency


def _llm_attempts(session) -> Iterator[Metric]:  # type: ignore[no-untyped-def]
    """HTTP attempts behind the requests: a retried failure is in none of the request counts."""
    attempts = CounterMetricFamily(
        "selfinstruct_llm_attempts",
        "HTTP attempts of LLM requests (one per request, plus its retries) by purpose.",
        labels=["purpose"],
    )
    retries = CounterMetricFamily(
        "selfinstruct_llm_retries", "LLM request retries by purpose.", labels=["purpose"]
    )
    failed = CounterMetricFamily(
        "selfinstruct_llm_failed_attempts",
        "Failed HTTP attempts of LLM requests (retried or last) by purpose and kind.",
        labels=["purpose", "kind"],
    )
    cache_hits = CounterMetricFamily(
        "selfinstruct_llm_cache_hits",
        "LLM requests answered from the response cache (never sent) by purpose.",
        labels=["purpose"],
    )
    for purpose, count, total, cached in session.execute(
        select(
            LLMCall.purpose,
            func.count(),
            func.coalesce(func.sum(LLMCall.attempts), 0),
            func.coalesce(func.sum(case((LLMCall.cached.is_(True), 1), else_=0)), 0),
        ).group_by(LLMCall.purpose)
    ):
        attempts.add_metric([purpose], int(total))
        retries.add_metric([purpose], int(total) - count)
        cache_hits.add_metric([purpose], int(cached))
    by_kind: Counter[tuple[str, str]] = Counter()
    for purpose, text, count in session.execute(
        select(LLMCall.purpose, LLMCall.attempt_errors, func.count())
        .where(LLMCall.attempt_errors.is_not(None))
        .group_by(LLMCall.purpose, LLMCall.attempt_errors)
    ):
        for kind, n in parse_attempt_errors(text).items():
            by_kind[purpose, kind] += n * count
    for (purpose, kind), n in sorted(by_kind.items()):
        failed.add_metric([purpose, kind], n)
    yield attempts
    yield retries
    yield failed
    yield cache_hits


def _backend_loads() -> Iterator[Metric]:
    """Each LLM backend's requests in flight, concurrency limit and waiting requests, as every
    worker's gate shares them."""
    families = {
        "in_flight": GaugeMetricFamily(
            "selfinstruct_llm_in_flight", "LLM requests in flight.", labels=["backend"]
        ),
        "limit": GaugeMetricFamily(
            "selfinstruct_llm_concurrency_limit",
            "Requests an LLM backend may have in flight (adaptive).",
            labels=["backend"],
        ),
        "waiting": GaugeMetricFamily(
            "selfinstruct_llm_waiting", "LLM requests waiting for a slot.", labels=["backend"]
        ),
    }
    try:
        loads = current_loads()
    except Exception:  # Redis is down: leave the gauges empty, as for the queue depth
        log.warning("LLM backend loads unavailable", exc_info=True)
        loads = {}
    for name, load in loads.items():
        families["in_flight"].add_metric([name], load.in_flight)
        families["limit"].add_metric([name], load.limit)
        families["waiting"].add_metric([name], load.waiting)
    yield from families.values()


def build_registry(
    queue_depth: callable | None = None,
) -> tuple[CollectorRegistry, Counter, Histogram]:  # type: ignore[valid-type]
    """A registry with the pipeline collector and the API's own HTTP metrics."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(queue_depth))
    http_requests = PromCounter(
        "selfinstruct_http_requests",
        "API requests by method, route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    http_latency = Histogram(
        "selfinstruct_http_request_duration_seconds",
        "API request duration by route.",
        ["route"],
        registry=registry,
    )
    return registry, http_requests, http_latency

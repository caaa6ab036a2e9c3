"""What a full job will cost, projected from a sample of it (a preview, or a job's progress).

Pure: the service counts the sample's rows; nothing here touches a database or the network.

The model: step-1 (instruction) requests are what the target drives, through the yield, the
candidates accepted (or surplus past the target) per step-1 request; every other request
(classification, instances, judges) is spent per accepted instruction. So a full job of N needs
N / yield step-1 requests plus N times the other requests per accepted instruction, and its
tokens follow from the tokens per request of each kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

Z_95 = 1.959964  # two-sided 95 % normal quantile


@dataclass(frozen=True, slots=True)
class Usage:
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TokenSpread:
    """How far one purpose's tokens per request vary in the sample (standard deviations): the
    projection scales by their mean, which a sample of a few dozen requests knows only so well
    (an instance request brings one short output or five examples)."""

    requests: int
    prompt_sd: float
    completion_sd: float


STEP1 = "instructions"  # the purpose of step-1 requests, as the service records calls


@dataclass(frozen=True, slots=True)
class Sample:
    """A measured run: its step-1 usage, the usage of everything else, and what it yielded."""

    step1: Usage
    other: Usage
    candidates: int  # step-1 candidates decided (accepted, rejected or surplus)
    accepted: int  # candidates that passed every filter (surplus past the target included)
    settled: int  # accepted instructions whose other requests are all in `other`
    rejected: dict[str, int]
    wall_seconds: float | None = None
    spreads: Mapping[str, TokenSpread] = field(default_factory=dict)  # by purpose (STEP1 too)
    latency_s: float | None = None  # the mean latency of the sample's requests
    concurrency: int | None = None  # requests the backend serves at once, as measured now
    baseline_s: float | None = None  # the backend's no-load latency, as measured now


class Interval(BaseModel):
    expected: float
    low: float
    high: float


class Yield(BaseModel):
    candidates_per_request: float = Field(description="Step-1 candidates per step-1 request.")
    acceptance: Interval = Field(description="Share of candidates accepted, with its interval.")
    accepted_per_step1_request: Interval
    other_requests_per_instruction: float = Field(
        description="Classification, instance and judge requests per accepted instruction."
    )
    rejection_reasons: dict[str, int] = Field(description="The sample's rejections by reason.")


class Projection(BaseModel):
    """Expected value and a 95 % range for a job of `target` instructions."""

    target: int
    sample_instructions: int = Field(description="Accepted instructions the projection is from.")
    requests: Interval
    prompt_tokens: Interval
    completion_tokens: Interval
    cost: Interval | None = Field(None, description="From the backend's prices; null without.")
    wall_seconds: Interval | None = Field(
        None,
        description="The sample's own wall time, plus the further requests at the backend's "
        "measured throughput (its concurrency limit over the sample's mean latency), every slot "
        "busy; `high` keeps half of them busy.",
    )
    yield_: Yield = Field(alias="yield")

    # "yield" in JSON whichever way the model is dumped (status bodies use model_dump_json()).
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0, n and small n)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def project(
    sample: Sample,
    target: int,
    *,
    prices: tuple[float, float] | None = None,
) -> Projection | None:
    """Scale `sample` to a job of `target` accepted instructions; None if it accepted nothing.

    The range is the 95 % Wilson interval of the acceptance rate (candidates are treated as
    independent trials), carried through the step-1 requests it implies, and for tokens also the
    95 % interval of each purpose's mean tokens per request (`sample.spreads`): it covers the
    sampling variation of a sample this size, not drift over a longer run (the ROUGE-L filter
    rejects more as the pool of accepted instructions grows, so a long job tends towards
    `high`). `prices` are per million prompt and completion tokens.
    """
    if sample.accepted <= 0 or sample.step1.requests <= 0 or sample.candidates <= 0:
        return None
    per_request = sample.candidates / sample.step1.requests
    rate = sample.accepted / sample.candidates
    rate_low, rate_high = wilson(sample.accepted, sample.candidates)
    rate_low = max(rate_low, 1 / (sample.candidates + 1))  # no accepted: no finite bound
    settled = max(sample.settled, 1)
    others = sample.other.requests / settled

    def step1(r: float) -> float:
        return target / (per_request * r)

    expected, low, high = step1(rate), step1(rate_high), step1(rate_low)
    other_requests = target * others

    def interval(step1_each: float, other_each: float, half: float = 0.0) -> Interval:
        return Interval(
            expected=expected * step1_each + other_requests * other_each,
            low=max(low * step1_each + other_requests * other_each - half, 0.0),
            high=high * step1_each + other_requests * other_each + half,
        )

    def half(kind: str) -> float:
        return _mean_half_width(sample.spreads, kind, expected, target / settled)

    requests = interval(1.0, 1.0)
    prompt = interval(_each(sample.step1, "p"), _each(sample.other, "p"), half("p"))
    completion = interval(_each(sample.step1, "c"), _each(sample.other, "c"), half("c"))
    return Projection(
        target=target,
        sample_instructions=sample.accepted,
        requests=_rounded(requests),
        prompt_tokens=_rounded(prompt),
        completion_tokens=_rounded(completion),
        cost=None if prices is None else _cost(prompt, completion, prices),
        wall_seconds=_wall(sample, requests),
        yield_=Yield(
            candidates_per_request=round(per_request, 4),
            acceptance=_scaled(rate, rate_low, rate_high, 1.0),
            accepted_per_step1_request=_scaled(rate, rate_low, rate_high, per_request),
            other_requests_per_instruction=round(others, 4),
            rejection_reasons=dict(sorted(sample.rejected.items(), key=lambda kv: -kv[1])),
        ),
    )


def _scaled(expected: float, low: float, high: float, factor: float) -> Interval:
    return Interval(
        expected=round(expected * factor, 4),
        low=round(low * factor, 4),
        high=round(high * factor, 4),
    )


def _each(usage: Usage, kind: str) -> float:
    """Tokens of one request of `usage` (prompt `p` or completion `c`)."""
    if usage.requests <= 0:
        return 0.0
    tokens = usage.prompt_tokens if kind == "p" else usage.completion_tokens
    return tokens / usage.requests


def _mean_half_width(
    spreads: Mapping[str, TokenSpread], kind: str, step1_requests: float, per_settled: float
) -> float:
    """The 95 % half-width of the projected tokens that comes from each purpose's mean tokens
    per request being estimated from the sample: the purposes' errors are independent, so their
    variances add. A purpose's projected requests are step 1's, or its sample's count scaled
    from the settled instructions to the target."""
    variance = 0.0
    for purpose, spread in spreads.items():
        if spread.requests <= 1:
            continue
        sd = spread.prompt_sd if kind == "p" else spread.completion_sd
        projected = step1_requests if purpose == STEP1 else spread.requests * per_settled
        variance += (projected * sd) ** 2 / spread.requests
    return Z_95 * math.sqrt(variance)


def _rounded(value: Interval) -> Interval:
    return Interval(
        expected=round(value.expected), low=math.floor(value.low), high=math.ceil(value.high)
    )


def cost(prompt_tokens: float, completion_tokens: float, prices: tuple[float, float]) -> float:
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def _cost(prompt: Interval, completion: Interval, prices: tuple[float, float]) -> Interval:
    return Interval(
        expected=round(cost(prompt.expected, completion.expected, prices), 6),
        low=round(cost(prompt.low, completion.low, prices), 6),
        high=round(cost(prompt.high, completion.high, prices), 6),
    )


QUEUED_LATENCY = 1.5  # mean latency over the no-load latency that says requests queued


def _queued(sample: Sample) -> bool:
    """Whether the sample's requests waited at the backend: a mean latency well above the
    no-load latency the concurrency limit measured (the limit's own test for queueing)."""
    baseline, latency = sample.baseline_s, sample.latency_s
    return bool(baseline and latency and latency > QUEUED_LATENCY * baseline)


def _wall(sample: Sample, requests: Interval) -> Interval | None:
    """The sample's wall time (start-up, and the chain of steps every instruction waits on)
    plus the further requests at the backend's throughput: its concurrency limit over the
    sample's mean latency (Little's law with every slot busy). Without a measured latency and
    concurrency, or when the sample's requests already queued at the backend, at the sample's
    own pace: a backend that queues is full at the sample's concurrency (a local server that
    serves one request at a time), while a sample that never filled a large backend makes that
    pace pessimistic."""
    total = sample.step1.requests + sample.other.requests
    if not sample.wall_seconds or sample.wall_seconds <= 0 or total <= 0:
        return None
    if not sample.latency_s or not sample.concurrency or _queued(sample):
        per_request_s = sample.wall_seconds / total
        return Interval(
            expected=round(requests.expected * per_request_s, 1),
            low=round(requests.low * per_request_s, 1),
            high=round(requests.high * per_request_s, 1),
        )
    full_slot_s = sample.latency_s / sample.concurrency  # one request with every slot busy

    def at(requests_n: float, busy_share: float) -> float:
        further = max(requests_n - total, 0.0)
        return round(sample.wall_seconds + further * full_slot_s / busy_share, 1)  # type: ignore[operator]

    return Interval(
        expected=at(requests.expected, 1.0),
        low=at(requests.low, 1.0),
        high=at(requests.high, 0.5),
    )


class LiveCost(BaseModel):
    """What a job has used so far, and what it will have used at its target."""

    prompt_tokens: int
    completion_tokens: int
    cache_hits: int = Field(description="Requests answered from the response cache (free).")
    cost: float | None = Field(
        None, description="So far, from the backend's prices (cache hits cost nothing)."
    )
    projected: Projection | None = Field(
        None, description="While the job runs: its total, projected from its progress so far."
    )


def billed_cost(
    prompt_tokens: int,
    completion_tokens: int,
    cached: tuple[int, int],
    prices: tuple[float, float] | None,
) -> float | None:
    """Cost of the tokens a backend was paid for: cache hits are left out."""
    if prices is None:
        return None
    return round(cost(prompt_tokens - cached[0], completion_tokens - cached[1], prices), 6)


class Actual(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = None
    wall_seconds: float | None = None


class PreviewComparison(BaseModel):
    """A finished job beside the projection of the preview it followed."""

    preview_id: str
    projection: Projection | None = Field(
        None, description="The preview's projection for this job's target (null: no yield)."
    )
    actual: Actual
    within_range: dict[str, bool] = Field(
        default_factory=dict, description="Per measure: whether the actual value is in range."
    )


def compare(preview_id: str, projection: Projection | None, actual: Actual) -> PreviewComparison:
    within: dict[str, bool] = {}
    if projection is not None:
        pairs: dict[str, tuple[Interval | None, float | None]] = {
            "requests": (projection.requests, actual.requests),
            "prompt_tokens": (projection.prompt_tokens, actual.prompt_tokens),
            "completion_tokens": (projection.completion_tokens, actual.completion_tokens),
            "cost": (projection.cost, actual.cost),
            "wall_seconds": (projection.wall_seconds, actual.wall_seconds),
        }
        within = {
            name: span.low <= value <= span.high
            for name, (span, value) in pairs.items()
            if span is not None and value is not None
        }
    return PreviewComparison(
        preview_id=preview_id, projection=projection, actual=actual, within_range=within
    )

"""Projecting a full job from a preview: scaling by yield, the interval, prices, wall time."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace

import pytest

from app.selfinstruct.projection import (
    STEP1,
    Sample,
    TokenSpread,
    Usage,
    billed_cost,
    project,
    wilson,
)


def _sample(
    *, accepted: int = 20, candidates: int = 40, step1: int = 5, wall: float | None = 10.0
) -> Sample:
    return Sample(
        step1=Usage(step1, step1 * 1000, step1 * 200),
        other=Usage(accepted * 2, accepted * 2 * 300, accepted * 2 * 50),
        candidates=candidates,
        accepted=accepted,
        settled=accepted,
        rejected={"rouge_similar": candidates - accepted - 5, "too_short": 5},
        wall_seconds=wall,
    )


def test_scales_step1_requests_by_yield_and_the_rest_by_instructions() -> None:
    projection = project(_sample(), 100)
    assert projection is not None
    # 8 candidates a request, half accepted: 4 instructions a step-1 request -> 25 of them,
    # plus 2 other requests for each of the 100 instructions.
    assert projection.requests.expected == 25 + 200
    assert projection.prompt_tokens.expected == 25 * 1000 + 200 * 300
    assert projection.completion_tokens.expected == 25 * 200 + 200 * 50
    assert projection.yield_.accepted_per_step1_request.expected == 4.0
    assert projection.yield_.other_requests_per_instruction == 2.0
    assert projection.yield_.rejection_reasons == {"rouge_similar": 15, "too_short": 5}
    assert projection.cost is None


def test_the_range_brackets_the_expectation_and_narrows_with_the_sample() -> None:
    small = project(_sample(accepted=20, candidates=40, step1=5), 1000)
    large = project(_sample(accepted=2000, candidates=4000, step1=500), 1000)
    assert small is not None and large is not None
    for p in (small, large):
        assert p.requests.low <= p.requests.expected <= p.requests.high
        assert p.prompt_tokens.low <= p.prompt_tokens.expected <= p.prompt_tokens.high
    assert small.requests.expected == large.requests.expected
    width = lambda p: p.requests.high - p.requests.low  # noqa: E731
    assert width(large) < width(small) / 5


def test_cost_from_prices_and_wall_time_from_throughput() -> None:
    projection = project(_sample(), 100, prices=(1.0, 2.0))
    assert projection is not None and projection.cost is not None
    expected = (projection.prompt_tokens.expected + 2 * projection.completion_tokens.expected) / 1e6
    assert projection.cost.expected == pytest.approx(expected, rel=1e-6)
    assert projection.cost.low <= projection.cost.expected <= projection.cost.high
    # The sample: 45 requests in 10 s.
    assert projection.wall_seconds is not None
    assert projection.wall_seconds.expected == pytest.approx(225 * 10 / 45, abs=0.1)
    assert project(_sample(wall=None), 100).wall_seconds is None  # type: ignore[union-attr]


def test_nothing_accepted_projects_nothing() -> None:
    assert project(_sample(accepted=0, candidates=10), 100) is None


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    rng, rate, trials, covered = random.Random(7), 0.3, 40, 0
    for _ in range(2000):
        successes = sum(rng.random() < rate for _ in range(trials))
        low, high = wilson(successes, trials)
        covered += low <= rate <= high
    assert 0.92 <= covered / 2000 <= 0.98
    assert wilson(0, 10)[0] == 0.0
    assert wilson(10, 10)[1] == pytest.approx(1.0)


def test_cache_hits_are_not_billed() -> None:
    assert billed_cost(1_000_000, 1_000_000, (500_000, 0), (2.0, 4.0)) == 5.0
    assert billed_cost(10, 10, (0, 0), None) is None


def test_with_a_latency_and_a_concurrency_the_further_requests_go_at_the_backends_pace() -> None:
    sample = replace(_sample(), latency_s=0.5, concurrency=10)  # 45 requests in 10 s
    projection = project(sample, 100)
    assert projection is not None and projection.wall_seconds is not None
    # 225 requests, 180 more than the sample's, 0.05 s each with all 10 slots busy; the range
    # from the fewest requests so to the most with half the slots busy.
    requests, wall = projection.requests, projection.wall_seconds
    assert wall.expected == pytest.approx(10 + 180 * 0.05, abs=0.1)
    assert wall.low == pytest.approx(10 + (requests.low - 45) * 0.05, abs=0.1)
    assert wall.high == pytest.approx(10 + (requests.high - 45) * 0.05 / 0.5, abs=0.1)


def test_a_sample_whose_requests_queued_projects_at_its_own_pace() -> None:
    """A server that serves one request at a time (a local model) queues a sample's requests
    however high the limit is: their mean latency is well above the no-load latency, and the
    server was already full, so the further requests go at the sample's pace, not at limit /
    latency. Without queueing, the limit is what the further requests can use."""
    unqueued = replace(_sample(), latency_s=0.5, concurrency=10, baseline_s=0.45)
    queued = replace(unqueued, latency_s=1.0)  # 2.2 times the no-load latency
    fast, slow = project(unqueued, 100), project(queued, 100)
    assert fast is not None and fast.wall_seconds is not None
    assert slow is not None and slow.wall_seconds is not None
    assert fast.wall_seconds.expected == pytest.approx(10 + 180 * 0.05, abs=0.1)
    assert slow.wall_seconds.expected == pytest.approx(225 * 10 / 45, abs=0.1)


def test_token_spreads_widen_the_token_ranges_and_not_the_requests() -> None:
    plain = project(_sample(), 1000)
    spreads = {STEP1: TokenSpread(5, 100.0, 20.0), "instances": TokenSpread(20, 50.0, 40.0)}
    spread = project(replace(_sample(), spreads=spreads), 1000)
    assert plain is not None and spread is not None
    assert spread.requests == plain.requests
    for kind in ("prompt_tokens", "completion_tokens"):
        wide, narrow = getattr(spread, kind), getattr(plain, kind)
        assert wide.expected == narrow.expected
        assert wide.low < narrow.low and wide.high > narrow.high


def _instance_tokens(rng: random.Random) -> int:
    """An instance answer as the fake backend gives them: mostly one short output, now and then
    up to five examples, so its tokens per request are far from normal."""
    if rng.random() < 0.7:
        return rng.randint(8, 14)
    return sum(rng.randint(12, 18) for _ in range(rng.randint(1, 5)))


def _sampled(rng: random.Random, instructions: int) -> Sample:
    """A sample of `instructions`, one instance request each; step 1 brings no completion
    tokens, so the instance tokens are all the completion range has to cover."""
    tokens = [_instance_tokens(rng) for _ in range(instructions)]
    return Sample(
        step1=Usage(5, 5000, 0),
        other=Usage(instructions, instructions * 300, sum(tokens)),
        candidates=40,
        accepted=instructions,
        settled=instructions,
        rejected={},
        spreads={"instances": TokenSpread(instructions, 0.0, statistics.stdev(tokens))},
    )


def test_the_token_range_covers_a_long_jobs_tokens_about_95_percent_of_the_time() -> None:
    rng = random.Random(5)
    population = statistics.mean(_instance_tokens(rng) for _ in range(200_000))
    target, trials = 5000, 400
    covered = without_spread = 0
    for _ in range(trials):
        sample = _sampled(rng, 20)
        actual = target * population  # a long job's mean tokens per request is the population's
        band = project(sample, target).completion_tokens  # type: ignore[union-attr]
        covered += band.low <= actual <= band.high
        band = project(replace(sample, spreads={}), target).completion_tokens  # type: ignore[union-attr]
        without_spread += band.low <= actual <= band.high
    assert 0.88 <= covered / trials <= 0.99
    assert without_spread / trials < 0.2  # the acceptance range alone says nothing of tokens

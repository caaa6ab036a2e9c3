"""How many requests one LLM backend should have in flight: the algorithm alone, without I/O.

No clock and no randomness here: callers pass `now` (any clock, the same one throughout), so the
gates in `concurrency.py` and the tests' simulations drive the same code.

The limit is learnt from two signals, as TCP's congestion control learns a window:

* Latency. A server that batches requests (vLLM, llama.cpp, TGI) answers in about the same time
  up to its capacity and queues the rest; past it, latency grows with the number in flight. The
  limit grows while a window's median latency stays under `tolerance` times the no-load latency
  (the baseline) and is cut by `LATENCY_CUT` when it goes over, so it settles between the
  server's capacity C and about tolerance * C: the server is always full and the queue in front
  of it stays bounded.
* Overload. HTTP 429s or 503s or timeouts cut the limit by `OVERLOAD_CUT` (by `GENTLE_CUT` when
  they come at about the level of the previous ones) and the level is remembered: growth near it
  is slow, and slower below it with each overload in a row at that level, so against a server
  that refuses requests above a hidden concurrency the limit settles just under that
  concurrency with few refusals. It takes most of the requests sent at
  a level or above being refused (at least `MIN_REFUSALS`): a server's random faults, or a rate
  limit's, refuse some requests at every level, and cutting for them would only starve the
  server. One episode cuts once: a window starts after each change, so refusals of requests
  sent before the last cut count only as timeouts do (when they are most of the window's
  answers), and there is at most one cut per baseline latency.

Growth doubles per window in slow start, which ends at the first congestion signal or when two
windows in a row have a median above (1 + tolerance) / 2 baselines; then it adds about
sqrt(limit) per window. Either only when the window used at least half the limit.

Windows use medians because generation lengths differ: single latencies are long-tailed. A window
holds the answers to requests sent after it started (so it measures the current limit, not the
previous one) and closes after max(`min_samples`, the sender's own peak in flight) of them, about
one round of the sender's requests: fewer would measure the fastest of a round, more would react
slowly. 16 at least, because the median of fewer long-tailed samples is too noisy (about +-15%
for 16 lognormal samples of sigma 0.5) to tell a doubled latency from chance. With little
traffic a window closes after `max_window_s` (or `TIMED_BASELINES` baselines, if longer) with
at least `MIN_TIMED_SAMPLES`.

The baseline follows the lowest window medians down quickly and drifts up slowly (so it can
follow a change of model). A server that is over capacity from the first request (fewer slots
than the initial limit) would never show its no-load latency, so when the median is well above
the baseline the limit is probed from time to time: one window at half the limit, then halves
again while latency halves with it (it is all queueing) and is still above the baseline; where
halving the limit no longer halves latency, or latency is back at the baseline, the median is
the no-load latency. At a limit near tolerance * C the first
probe level is C, so the server stays full during most of a probe. Probes come after the
first slow start, then every `PROBE_EVERY_BASELINES` baselines, doubling up to
`PROBE_MAX_BASELINES` while they find the baseline unchanged, and at once after
`PROBE_AFTER_CUTS` latency cuts in a row (the model may have become slower).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

Outcome = Literal["ok", "overload", "error"]

OVERLOAD_CUT = 0.7
GENTLE_CUT = 0.9  # an overload at about the level of the previous one
LATENCY_CUT = 0.9
NEAR_OVERLOAD = 0.9  # growth is slow from this share of the last overload level...
FORGET_OVERLOAD = 1.1  # ...up to this multiple of it, where the level is forgotten
NEAR_STEP = 0.01  # slow growth per window, as a share of the limit (at least MIN_NEAR_STEP)
MIN_NEAR_STEP = 0.25
# Each overload in a row at the same level halves the slow growth below that level, up to this
# many times: against a server that does not change, episodes (each costs a few refusals) come
# at doubling intervals instead of every few seconds. Above the level the pace is the usual one,
# so a server that has grown is still found.
MAX_REPEAT_HALVINGS = 3
MIN_REFUSALS = 2  # refusals a concurrency signal needs...
REFUSED_SHARE = 0.75  # ...and the share of the requests sent at their level or above they are
MANY_REFUSALS = 8  # with this many, a lower share is enough (chance no longer explains it)
MANY_REFUSED_SHARE = 0.5
MIN_LATE_REFUSALS = 3  # refusals of requests sent before the window: their share of its answers
SAME_LEVEL = 0.85  # an overload at this share of the last level or above is the same level
BASELINE_DOWN = 0.25  # share of the gap the baseline closes per window when a median is lower
BASELINE_UP = 0.002  # ... and when it is higher
PROBE_FOLLOW = 0.5  # share of the gap to a higher no-load median a probe closes
PROBE_QUEUED = 0.7  # a probe whose median fell below this share of the level above's: go deeper
# Between probes: from this many baselines (at least PROBE_MIN_INTERVAL_S), doubling up to
# PROBE_MAX_BASELINES while probes find the baseline where it was.
PROBE_EVERY_BASELINES = 40.0
PROBE_MAX_BASELINES = 640.0
PROBE_MIN_INTERVAL_S = 5.0
PROBE_SAME_BASELINE = 0.3
PROBE_AFTER_CUTS = 8  # latency cuts in a row that call for a probe now (the model may be slower)
MIN_TIMED_SAMPLES = 4
TIMED_BASELINES = 4.0  # a window closed by time lasts at least this many baselines
DEFAULT_CUT_INTERVAL_S = 0.5  # between overload cuts while no latency has been measured


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    initial: int = 16
    minimum: int = 1
    cap: int = 1024
    tolerance: float = 2.0
    min_samples: int = 16
    max_window_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.cap:
            raise ValueError("need 1 <= minimum <= cap")
        if self.tolerance <= 1:
            raise ValueError("tolerance must be above 1")

    @property
    def start(self) -> int:
        return max(self.minimum, min(self.cap, self.initial))


@dataclass(frozen=True, slots=True)
class LimitState:
    """What every sender shares. Times are on the callers' clock; 0 means never."""

    limit: float
    slow_start: bool = True
    rising: bool = False  # slow start: the last window's latency was well above the baseline
    baseline_s: float = 0.0  # no-load latency; 0 until measured
    overload_level: float = 0.0  # most in flight known to be fine below the last overload
    overload_repeats: int = 0  # overloads in a row at about that level, after the first
    last_cut_at: float = 0.0  # last overload cut
    probe_level: float = 0.0  # the limit in force while probing; 0: not probing
    probe_ref_s: float = 0.0  # median at the level above the current probe level
    next_probe_at: float = 0.0
    probe_interval_s: float = 0.0  # 0: the shortest
    cuts_in_row: int = 0  # latency cuts without growth in between
    updated_at: float = 0.0
    version: int = 0


@dataclass(slots=True)
class Window:
    """One sender's requests and answers since `started_at` (mutable; each sender keeps its own).

    Levels are the number of requests in flight (every sender's) with a request when it went
    out, itself included."""

    started_at: float
    latencies: list[tuple[float, float, int]] = field(default_factory=list)  # sent, s, level
    local_peak: int = 0  # most of this sender's own requests in flight
    sent: Counter[int] = field(default_factory=Counter)  # requests sent in the window by level
    refused: Counter[int] = field(default_factory=Counter)  # ... and refused, by level
    late_refusals: list[tuple[float, int]] = field(
        default_factory=list
    )  # sent before it: at, level
    answers: int = 0  # every answer in the window, whenever its request went out
    overload_in_flight: int = 0  # the level refusals point at; 0: none (yet)

    def note_sent(self, sent_at: float, in_flight: int) -> None:
        if sent_at >= self.started_at:
            self.sent[in_flight] += 1

    def add(
        self,
        sent_at: float,
        latency_s: float,
        outcome: Outcome,
        in_flight: int,
        local_in_flight: int = 0,
    ) -> None:
        """One answer: when its request went out, how long it took, and how many requests (of
        every sender, then of this one) were in flight with it when it went out."""
        if outcome == "error":
            return
        self.answers += 1
        fresh = sent_at >= self.started_at
        if outcome == "ok":
            if fresh:
                self.latencies.append((sent_at, latency_s, in_flight))
                self.local_peak = max(self.local_peak, local_in_flight)
        elif fresh:
            self.refused[in_flight] += 1
            for level in {in_flight, min(self.refused)}:
                if _refusals_point_at(level, self.refused, self.sent):
                    self.overload_in_flight = min(self.overload_in_flight or level, level)
        else:
            self.late_refusals.append((sent_at, in_flight))

    def late_overload(self, since: float) -> int:
        """The level refusals of requests sent before the window (timeouts, mostly) point at,
        counting those sent after `since`; 0: none."""
        late = [level for sent_at, level in self.late_refusals if sent_at >= since]
        if len(late) >= MIN_LATE_REFUSALS and len(late) >= REFUSED_SHARE * self.answers:
            return min(late)
        return 0

    def rebase(self, since: float) -> None:
        """Drop what was sent before `since` (another sender changed the limit then)."""
        if since > self.started_at:
            self.started_at = since
            self.latencies = [s for s in self.latencies if s[0] >= since]
            self.local_peak = 0  # recomputed from new samples; the peak only shapes the target
            self.sent.clear()  # by level only, not by time: start counting again
            self.refused.clear()
            self.overload_in_flight = 0

    def due(self, config: AdaptiveConfig, now: float, baseline_s: float = 0.0) -> bool:
        """Whether to apply the window now (`baseline_s`: the last known baseline)."""
        count = len(self.latencies)
        if self.overload_in_flight or self.late_overload(0.0):
            return True
        if count >= max(config.min_samples, self.local_peak):
            return True
        timeout = max(config.max_window_s, TIMED_BASELINES * baseline_s)
        return now - self.started_at >= timeout and count >= MIN_TIMED_SAMPLES


def _refusals_point_at(level: int, refused: Counter[int], sent: Counter[int]) -> bool:
    """Whether most requests sent at `level` or above were refused: a server's random faults
    (or a rate limit's) refuse a share of requests at every level, a concurrency limit all of
    them above it. Requests not yet answered count as served."""
    refusals = sum(n for at, n in refused.items() if at >= level)
    sends = max(refusals, sum(n for at, n in sent.items() if at >= level))
    if refusals >= MANY_REFUSALS:
        return refusals >= MANY_REFUSED_SHARE * sends
    return refusals >= MIN_REFUSALS and refusals >= REFUSED_SHARE * sends


def initial_state(config: AdaptiveConfig) -> LimitState:
    return LimitState(limit=float(config.start))


def effective_limit(state: LimitState, config: AdaptiveConfig) -> int:
    """Requests allowed in flight now (a probe lowers it for a while)."""
    level = state.probe_level or state.limit
    return max(config.minimum, min(config.cap, math.floor(level + 1e-9)))


def apply_window(
    state: LimitState, window: Window, config: AdaptiveConfig, now: float
) -> LimitState:
    """The state after one window; `state` itself when the window changes nothing."""
    refused_at = window.overload_in_flight or window.late_overload(state.last_cut_at)
    if refused_at:
        if not state.last_cut_at or now - state.last_cut_at >= _cut_interval(state):
            return _after_overload(state, refused_at, config, now)
        return state
    if len(window.latencies) < MIN_TIMED_SAMPLES:
        return state
    median = _median([latency for _, latency, _ in window.latencies])
    if state.probe_level:
        return _probe_step(state, median, config, now)

    probe_when = (1 + config.tolerance) / 2  # well above the baseline: maybe queued
    baseline = state.baseline_s
    if state.slow_start:
        baseline = min(baseline or median, median)  # the first windows may include set-up costs
    elif median < probe_when * baseline:
        baseline = _follow(baseline, median)  # only unqueued windows tell the no-load latency
    new = replace(state, baseline_s=baseline, updated_at=now, version=state.version + 1)
    limit = state.limit
    due = now >= state.next_probe_at or state.cuts_in_row >= PROBE_AFTER_CUTS
    if not state.slow_start and due and median > probe_when * baseline:
        return replace(
            new,
            probe_level=max(float(config.minimum), limit / 2),
            probe_ref_s=median,
            cuts_in_row=0,
        )
    if median > config.tolerance * baseline:
        # Queueing: cut, and check the baseline soon (it may have been measured queued).
        next_probe = now if state.slow_start else state.next_probe_at
        return replace(
            new,
            limit=_clamp(limit * LATENCY_CUT, config),
            slow_start=False,
            next_probe_at=next_probe,
            cuts_in_row=state.cuts_in_row + 1,
        )
    if state.slow_start and median > probe_when * baseline:
        # Latency is rising: slow down if it still is after one more window at this limit (a
        # small window's median is noisy).
        if state.rising:
            return replace(new, slow_start=False, rising=False, next_probe_at=now)
        return replace(new, rising=True)
    used = max(in_flight for _, _, in_flight in window.latencies) >= 0.5 * effective_limit(
        state, config
    )
    if not used:
        return new
    new = replace(new, cuts_in_row=0)
    if state.slow_start:
        return replace(new, limit=_clamp(limit * 2, config), rising=False)
    step, level, repeats = max(1.0, math.sqrt(limit)), state.overload_level, state.overload_repeats
    if level and limit > FORGET_OVERLOAD * level:
        level, repeats = 0.0, 0
    elif level:
        slow = max(MIN_NEAR_STEP, NEAR_STEP * limit)
        if limit < level:
            slow /= 2 ** min(repeats, MAX_REPEAT_HALVINGS)
        # Fast up to the slow zone below the last overload, slowly through it.
        step = slow if limit >= NEAR_OVERLOAD * level else min(step, NEAR_OVERLOAD * level - limit)
        step = max(step, slow)
    return replace(
        new, limit=_clamp(limit + step, config), overload_level=level, overload_repeats=repeats
    )


def _after_overload(
    state: LimitState, in_flight: int, config: AdaptiveConfig, now: float
) -> LimitState:
    known = float(max(config.minimum, in_flight - 1))
    same = state.overload_level and known >= SAME_LEVEL * state.overload_level
    cut = GENTLE_CUT if same else OVERLOAD_CUT
    return replace(
        state,
        limit=_clamp(min(state.limit, in_flight) * cut, config),
        slow_start=False,
        overload_level=known,
        overload_repeats=state.overload_repeats + 1 if same else 0,
        last_cut_at=now,
        probe_level=0.0,
        updated_at=now,
        version=state.version + 1,
    )


def _probe_step(state: LimitState, median: float, config: AdaptiveConfig, now: float) -> LimitState:
    new = replace(state, updated_at=now, version=state.version + 1)
    deeper = state.probe_level / 2
    if (
        state.probe_ref_s
        and median < PROBE_QUEUED * state.probe_ref_s
        and not _near(median, state.baseline_s)
        and math.floor(deeper) >= config.minimum
    ):
        # Latency fell with the level: all queueing still. Halve again.
        return replace(new, probe_level=deeper, probe_ref_s=median)
    # No queue at this level: its median is the no-load latency (it may have grown: new model).
    before = state.baseline_s
    if not before or median <= before:
        baseline = median
    else:
        baseline = before + PROBE_FOLLOW * (median - before)
    shortest = max(PROBE_MIN_INTERVAL_S, PROBE_EVERY_BASELINES * baseline)
    if before and abs(baseline - before) <= PROBE_SAME_BASELINE * before:
        longest = max(shortest, PROBE_MAX_BASELINES * baseline)
        interval = min(longest, max(shortest, 2 * state.probe_interval_s))
    else:
        interval = shortest
    return replace(
        new,
        baseline_s=baseline,
        probe_level=0.0,
        next_probe_at=now + interval,
        probe_interval_s=interval,
    )


def _near(median: float, baseline: float) -> bool:
    """Whether a probe's median is the known no-load latency: no queue at this level, so a
    level lower would only leave the server half empty for a window."""
    return bool(baseline) and median <= (1 + PROBE_SAME_BASELINE) * baseline


def _follow(baseline: float, median: float) -> float:
    if not baseline:
        return median
    rate = BASELINE_DOWN if median < baseline else BASELINE_UP
    return baseline + rate * (median - baseline)


def _cut_interval(state: LimitState) -> float:
    return state.baseline_s if state.baseline_s else DEFAULT_CUT_INTERVAL_S


def _clamp(limit: float, config: AdaptiveConfig) -> float:
    return max(float(config.minimum), min(float(config.cap), limit))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2

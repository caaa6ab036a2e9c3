"""A job's quality report: the analysis of the Self-Instruct paper (section 3.2), for every job.

Pure: the service loads the rows and passes a verb-object parser (`verbs.py`); nothing here
touches a database or the network. Costly parts (ROUGE-L to the nearest text, parsing) run on an
evenly spaced sample of the accepted instructions, `sample_size` at most, so a report on a 52K job
answers in seconds; the sample size is in the report.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from app.selfinstruct.projection import PreviewComparison, Projection
from app.selfinstruct.rouge import RougeLIndex, tokenize
from app.selfinstruct.types import SURPLUS_REASONS

VerbObject = tuple[str | None, str | None]
VerbObjectParser = Callable[[Sequence[str]], list[VerbObject]]

ROUGE_EDGES = tuple(round(i * 0.05, 2) for i in range(21))
WORD_EDGES = (0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)
EXAMPLES_PER_REASON = 3


@dataclass(frozen=True, slots=True)
class InstructionRow:
    text: str
    accepted: bool
    reason: str | None
    is_classification: bool | None


@dataclass(frozen=True, slots=True)
class InstanceRow:
    instruction: str
    input: str
    output: str
    accepted: bool
    reason: str | None


class Rejections(BaseModel):
    generated: int = Field(description="accepted + rejected + over_target.")
    accepted: int
    rejected: int
    over_target: int = Field(
        0,
        description="Candidates that passed every filter after the target was reached: "
        "surplus, not rejections (not in `rejected` or `by_reason`).",
    )
    by_reason: dict[str, int] = Field(description="Rejections per reason code, largest first.")
    examples: dict[str, list[str]] = Field(description="A few rejected texts for each reason.")


class Histogram(BaseModel):
    edges: list[float] = Field(description="Bin edges; bin i holds edges[i] <= x < edges[i+1].")
    counts: list[int] = Field(description="One more than the bins: values >= the last edge.")
    count: int
    mean: float | None
    median: float | None
    p90: float | None
    max: float | None


class RougeReport(BaseModel):
    sample: int = Field(description="Accepted instructions measured (evenly spaced sample).")
    of: int = Field(description="Accepted instructions in the job.")
    to_nearest_seed: Histogram
    to_nearest_instruction: Histogram = Field(
        description="ROUGE-L F to the most similar other accepted instruction of the job."
    )
    to_nearest_earlier_instruction: Histogram = Field(
        description="ROUGE-L F to the most similar instruction accepted before it (what the "
        "dedupe filter saw)."
    )


class VerbCount(BaseModel):
    verb: str
    count: int
    objects: list[tuple[str, int]] = Field(description="Top direct objects of this verb.")


class VerbReport(BaseModel):
    parser: str = Field(description="What found the root verbs and their direct objects.")
    sample: int
    parsed: int = Field(description="Sampled instructions with a root verb and a direct object.")
    top_verbs: list[VerbCount]


class Lengths(BaseModel):
    instruction_words: Histogram
    input_words: Histogram
    output_words: Histogram


class Usage(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    tokens_per_accepted_example: float | None = Field(
        None,
        description="Prompt + completion tokens per accepted example (a record of the export; "
        "in Unnatural mode reformulations are examples too).",
    )
    tokens_per_accepted_instruction: float | None = Field(
        None,
        description="Prompt + completion tokens per accepted instruction (Unnatural mode: per "
        "core; reformulations are not counted); as `progress.tokens_per_accepted_instruction`.",
    )
    cost: float | None = Field(None, description="In the currency of the backend's prices.")
    cost_per_accepted_example: float | None = None


class Recipe(BaseModel):
    """What the job was made from: enough to explain it, and to rerun it."""

    mode: str
    rng_seed: int
    seed_set_hash: str
    template_version: str | None
    rerun_of: str | None = None
    options: dict[str, Any]


class JudgeScores(BaseModel):
    """How the LLM judges graded the job's instances: count per grade (1-3)."""

    answer: dict[str, int] = Field(default_factory=dict)
    faithfulness: dict[str, int] = Field(default_factory=dict)
    instructions_dropped: int = 0


class QualityReport(BaseModel):
    recipe: Recipe | None = None
    judges: JudgeScores | None = Field(None, description="Only for jobs with LLM judges.")
    reformulations: int | None = Field(
        None, description="Unnatural mode: accepted reformulations (the rest covers cores)."
    )
    instructions: Rejections
    instances: Rejections
    rouge_l: RougeReport
    verbs: VerbReport
    lengths: Lengths
    classification_share: float | None = Field(
        description="Share of accepted instructions judged classification tasks."
    )
    empty_input_share: float | None = Field(
        description="Share of accepted instances with no input."
    )
    usage: Usage
    projection: Projection | None = Field(
        None, description="A preview's projection for its full target."
    )
    preview: PreviewComparison | None = Field(
        None, description="A finished job that followed a preview: its projection beside this."
    )


@dataclass(frozen=True)
class Prices:
    """Per million tokens, as providers quote them."""

    prompt: float
    completion: float


def build_report(
    instructions: Sequence[InstructionRow],
    instances: Sequence[InstanceRow],
    seeds: Sequence[str],
    usage: tuple[int, int, int],
    parser: tuple[str, VerbObjectParser],
    *,
    sample_size: int = 2000,
    prices: Prices | None = None,
    tokenizer: Callable[[str], list[str]] = tokenize,
) -> QualityReport:
    """`instructions` in the order they were generated (Unnatural mode: the cores); `instances`
    every example of the export (reformulations' too); `usage` = (requests, prompt tokens,
    completion tokens)."""
    accepted = [i.text for i in instructions if i.accepted]
    kept = [i for i in instances if i.accepted]
    sample_positions = evenly_spaced(len(accepted), sample_size)
    judged = [i.is_classification for i in instructions if i.accepted]
    judged_known = [j for j in judged if j is not None]
    return QualityReport(
        instructions=rejections([(i.text, i.accepted, i.reason) for i in instructions]),
        instances=rejections([(_instance_text(i), i.accepted, i.reason) for i in instances]),
        rouge_l=rouge_report(accepted, seeds, sample_positions, tokenizer),
        verbs=verb_report([accepted[p] for p in sample_positions], parser),
        lengths=Lengths(
            instruction_words=histogram([_words(t) for t in accepted], WORD_EDGES),
            input_words=histogram([_words(i.input) for i in kept], WORD_EDGES),
            output_words=histogram([_words(i.output) for i in kept], WORD_EDGES),
        ),
        classification_share=_share(sum(judged_known), len(judged_known)),
        empty_input_share=_share(sum(not i.input.strip() for i in kept), len(kept)),
        usage=usage_report(
            *usage, accepted_examples=len(kept), accepted_instructions=len(accepted), prices=prices
        ),
    )


def per_accepted(tokens: int, accepted: int) -> float | None:
    """Tokens spent per accepted item, as both progress and the report round it."""
    return round(tokens / accepted, 1) if accepted else None


def evenly_spaced(total: int, at_most: int) -> list[int]:
    """Positions of an evenly spaced sample (all of them when there are few enough)."""
    if total <= at_most:
        return list(range(total))
    step = total / at_most
    return [int(i * step) for i in range(at_most)]


def rejections(rows: Sequence[tuple[str, bool, str | None]]) -> Rejections:
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    surplus = 0
    for text, accepted, reason in rows:
        if accepted:
            continue
        if reason in SURPLUS_REASONS:
            surplus += 1
            continue
        key = reason or "unknown"
        counts[key] += 1
        if len(examples[key]) < EXAMPLES_PER_REASON:
            examples[key].append(text[:500])
    rejected = sum(counts.values())
    return Rejections(
        generated=len(rows),
        accepted=len(rows) - rejected - surplus,
        rejected=rejected,
        over_target=surplus,
        by_reason=dict(counts.most_common()),
        examples=dict(examples),
    )


def rouge_report(
    accepted: Sequence[str],
    seeds: Sequence[str],
    positions: list[int],
    tokenizer: Callable[[str], list[str]] = tokenize,
) -> RougeReport:
    seed_index = RougeLIndex(seeds, tokenizer=tokenizer)
    to_seed = [seed_index.best(accepted[p]).score for p in positions]
    forwards, backwards = range(len(accepted)), range(len(accepted) - 1, -1, -1)
    earlier = _nearest_in_order(accepted, positions, forwards, tokenizer)
    later = _nearest_in_order(accepted, positions, backwards, tokenizer)
    return RougeReport(
        sample=len(positions),
        of=len(accepted),
        to_nearest_seed=histogram(to_seed, ROUGE_EDGES),
        to_nearest_instruction=histogram(
            [max(earlier[p], later[p]) for p in positions], ROUGE_EDGES
        ),
        to_nearest_earlier_instruction=histogram([earlier[p] for p in positions], ROUGE_EDGES),
    )


def _nearest_in_order(
    texts: Sequence[str],
    positions: list[int],
    order: Iterable[int],
    tokenizer: Callable[[str], list[str]],
) -> dict[int, float]:
    """Best ROUGE-L of each sampled text against the texts before it in `order`: one pass
    forwards gives the nearest earlier text, one backwards the nearest later one, and their
    maximum the nearest other text, exactly, for the cost of querying only the sample."""
    index, wanted, best = RougeLIndex(tokenizer=tokenizer), set(positions), {}
    for position in order:
        if position in wanted:
            best[position] = index.best(texts[position]).score if len(index) else 0.0
        index.add(texts[position])
    return best


def verb_report(texts: Sequence[str], parser: tuple[str, VerbObjectParser]) -> VerbReport:
    name, parse = parser
    pairs = [(v, o) for v, o in parse(texts) if v and o]
    verbs = Counter(v for v, _ in pairs)
    objects: dict[str, Counter[str]] = defaultdict(Counter)
    for verb, obj in pairs:
        objects[verb][obj] += 1  # type: ignore[index]
    top = [
        VerbCount(verb=v, count=n, objects=objects[v].most_common(4))  # type: ignore[index]
        for v, n in verbs.most_common(20)
    ]
    return VerbReport(parser=name, sample=len(texts), parsed=len(pairs), top_verbs=top)


def histogram(values: Sequence[float], edges: Sequence[float]) -> Histogram:
    counts = [0] * len(edges)
    for value in values:
        bin_no = 0
        while bin_no + 1 < len(edges) and value >= edges[bin_no + 1]:
            bin_no += 1
        counts[bin_no] += 1
    ordered = sorted(values)
    return Histogram(
        edges=list(edges),
        counts=counts,
        count=len(values),
        mean=round(statistics.fmean(values), 4) if values else None,
        median=round(statistics.median(values), 4) if values else None,
        p90=round(ordered[int(0.9 * (len(ordered) - 1))], 4) if values else None,
        max=round(ordered[-1], 4) if values else None,
    )


def usage_report(
    requests: int,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    accepted_examples: int,
    accepted_instructions: int = 0,
    prices: Prices | None,
) -> Usage:
    cost = None
    if prices is not None:
        cost = (prompt_tokens * prices.prompt + completion_tokens * prices.completion) / 1e6
    tokens = prompt_tokens + completion_tokens
    return Usage(
        requests=requests,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_per_accepted_example=per_accepted(tokens, accepted_examples),
        tokens_per_accepted_instruction=per_accepted(tokens, accepted_instructions),
        cost=None if cost is None else round(cost, 6),
        cost_per_accepted_example=round(cost / accepted_examples, 8)
        if cost is not None and accepted_examples
        else None,
    )


def _instance_text(instance: InstanceRow) -> str:
    return f"{instance.instruction}\nInput: {instance.input}\nOutput: {instance.output}"


def _words(text: str) -> int:
    return len(text.split())


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None

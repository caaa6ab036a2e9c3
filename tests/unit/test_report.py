"""The quality report's pure core: counts, histograms, ROUGE-L, verbs, usage."""

from __future__ import annotations

import pytest

from app.selfinstruct.report import (
    ROUGE_EDGES,
    InstanceRow,
    InstructionRow,
    Prices,
    build_report,
    evenly_spaced,
    histogram,
)
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.verbs import singular, verb_object, verb_objects
from app.services.report import verb_parser

SEEDS = ["Write a poem about the sea.", "Classify the sentiment of the sentence."]
HEURISTIC = ("heuristic", verb_objects)


def rows() -> tuple[list[InstructionRow], list[InstanceRow]]:
    instructions = [
        InstructionRow("Write a poem about the mountains at night.", True, None, False),
        InstructionRow("Draw a map.", False, "blacklisted_keyword", None),
        InstructionRow("Write a poem about the sea at night.", True, None, False),
        InstructionRow("Sort.", False, "too_short", None),
        InstructionRow("Classify the tone of the email as formal or casual.", True, None, True),
        InstructionRow("Draw a picture.", False, "blacklisted_keyword", None),
        InstructionRow("Give three tips for staying focused.", True, None, None),
    ]
    instances = [
        InstanceRow(instructions[0].text, "", "Stars over the ridge.", True, None),
        InstanceRow(instructions[2].text, "", "", False, "empty_output"),
        InstanceRow(instructions[4].text, "Dear team, ...", "Formal", True, None),
        InstanceRow(instructions[6].text, "", "Silence your phone. Plan breaks.", True, None),
    ]
    return instructions, instances


def test_rejections_are_counted_by_reason_with_examples() -> None:
    instructions, instances = rows()
    report = build_report(instructions, instances, SEEDS, (10, 1000, 200), HEURISTIC)
    assert report.instructions.generated == 7 and report.instructions.accepted == 4
    assert report.instructions.by_reason == {"blacklisted_keyword": 2, "too_short": 1}
    assert list(report.instructions.by_reason) == ["blacklisted_keyword", "too_short"]
    assert report.instructions.examples["blacklisted_keyword"] == ["Draw a map.", "Draw a picture."]
    assert report.instances.by_reason == {"empty_output": 1}
    assert "Write a poem about the sea at night." in report.instances.examples["empty_output"][0]


def test_candidates_past_the_target_are_surplus_not_rejections() -> None:
    instructions, instances = rows()
    surplus = [InstructionRow(f"Name {n} rivers of Europe.", False, "over_target", None)
               for n in (3, 4, 5)]  # fmt: skip
    report = build_report([*instructions, *surplus], instances, SEEDS, (10, 1, 1), HEURISTIC)
    part = report.instructions
    assert (part.generated, part.accepted, part.rejected, part.over_target) == (10, 4, 3, 3)
    assert part.by_reason == {"blacklisted_keyword": 2, "too_short": 1}
    assert "over_target" not in part.examples


def test_shares_lengths_and_usage() -> None:
    instructions, instances = rows()
    report = build_report(
        instructions, instances, SEEDS, (10, 1000, 200), HEURISTIC, prices=Prices(2.0, 8.0)
    )
    assert report.classification_share == pytest.approx(1 / 3, abs=1e-4)  # one unjudged is left out
    assert report.empty_input_share == pytest.approx(2 / 3, abs=1e-4)
    assert report.lengths.instruction_words.count == 4
    assert report.lengths.output_words.max == 5
    assert report.usage.tokens_per_accepted_example == 400.0
    assert report.usage.cost == pytest.approx((1000 * 2 + 200 * 8) / 1e6)
    assert report.usage.cost_per_accepted_example == pytest.approx(0.0036 / 3)
    assert build_report(instructions, instances, SEEDS, (1, 1, 1), HEURISTIC).usage.cost is None


def test_rouge_to_nearest_seed_and_earlier_instruction_are_exact() -> None:
    instructions, instances = rows()
    report = build_report(instructions, instances, SEEDS, (0, 0, 0), HEURISTIC).rouge_l
    accepted = [i.text for i in instructions if i.accepted]
    seeds = RougeLIndex(SEEDS)
    expected_seed = [seeds.best(t).score for t in accepted]
    expected_earlier = [0.0] + [
        RougeLIndex(accepted[:n]).best(accepted[n]).score for n in range(1, 4)
    ]
    assert report.sample == report.of == 4
    assert report.to_nearest_seed.mean == pytest.approx(sum(expected_seed) / 4, abs=1e-4)
    assert report.to_nearest_earlier_instruction.max == pytest.approx(
        max(expected_earlier), abs=1e-4
    )
    assert sum(report.to_nearest_seed.counts) == 4


def test_large_jobs_are_measured_on_an_evenly_spaced_sample() -> None:
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    assert evenly_spaced(100, 4) == [0, 25, 50, 75]
    texts = [f"Write a story number {n} about topic {n * 7} for reader {n * 3}." for n in range(50)]
    instructions = [InstructionRow(t, True, None, False) for t in texts]
    report = build_report(instructions, [], SEEDS, (0, 0, 0), HEURISTIC, sample_size=10)
    assert (report.rouge_l.sample, report.rouge_l.of, report.verbs.sample) == (10, 50, 10)


def test_histogram_bins_values_at_their_lower_edge() -> None:
    result = histogram([0.0, 0.05, 0.049, 0.7, 1.0], ROUGE_EDGES)
    assert result.counts[0] == 2 and result.counts[1] == 1
    assert result.counts[14] == 1 and result.counts[-1] == 1
    assert (result.median, result.max) == (0.05, 1.0)
    empty = histogram([], ROUGE_EDGES)
    assert empty.count == 0 and empty.mean is None


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("Write a poem about the sea.", ("write", "poem")),
        ("Classify the sentiment of the review.", ("classify", "sentiment")),
        ("Give three tips for staying healthy.", ("give", "tip")),
        ("Please rewrite the following sentences in a formal tone.", ("rewrite", "sentence")),
        ("Given a list of numbers, find the largest number.", ("find", "number")),
        ("What are three tips for saving money?", (None, None)),
        ("Is this review positive?", (None, None)),
        ("Sort them.", ("sort", None)),
        ("", (None, None)),
    ],
)
def test_heuristic_verb_and_object(text: str, pair: tuple[str | None, str | None]) -> None:
    assert verb_object(text) == pair


@pytest.mark.parametrize(
    ("plural", "single"),
    [("stories", "story"), ("classes", "class"), ("boxes", "box"), ("tips", "tip"), ("bus", "bus")],
)
def test_singular(plural: str, single: str) -> None:
    assert singular(plural) == single


def test_top_verbs_with_their_objects() -> None:
    texts = [
        "Write a poem about love.", "Write a poem about loss.", "Write an email to a friend.",
        "Give three tips for sleep.", "What is love?",
    ]  # fmt: skip
    instructions = [InstructionRow(t, True, None, False) for t in texts]
    verbs = build_report(instructions, [], SEEDS, (0, 0, 0), HEURISTIC).verbs
    assert verbs.parsed == 4 and verbs.sample == 5
    assert verbs.top_verbs[0].verb == "write" and verbs.top_verbs[0].count == 3
    assert verbs.top_verbs[0].objects == [("poem", 2), ("email", 1)]


def test_the_installed_parser_agrees_on_plain_imperatives() -> None:
    name, parse = verb_parser()
    texts = ["Write a poem about the sea.", "Classify the sentiment of the review."]
    assert parse(texts) == [("write", "poem"), ("classify", "sentiment")]
    assert name  # the report says which parser ran

"""LLM-judge filters: templates, reading the judges' answers, where their verdicts apply."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.selfinstruct.judges import (
    ANSWER_JUDGE_PROMPT,
    INSTRUCTION_JUDGE_PROMPT,
    InstructionVerdict,
    Outcomes,
    build_instance_judge_prompt,
    build_instruction_judge_prompt,
    judge_warnings,
    parse_instruction_verdict,
    parse_score,
)
from app.selfinstruct.options import GenerationOptions, JudgeStep, judge_options
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import accept_round, judgeable
from app.selfinstruct.types import Completion, InstructionReason


@pytest.mark.parametrize(
    ("answer", "keep", "note"),
    [
        (" Keep - clear and answerable.", True, "clear and answerable."),
        ("DROP: needs an image\nTask: next", False, "needs an image"),
        (" drop", False, ""),
        ("I would say it is fine", True, "judge answer not understood; kept"),
    ],
)
def test_instruction_verdicts(answer: str, keep: bool, note: str) -> None:
    assert parse_instruction_verdict(answer) == InstructionVerdict(keep, note)


@pytest.mark.parametrize(
    ("answer", "score"),
    [(" 3", 3), ("2 - partly right", 2), (" Grade: 1", 1), ("10", None), ("none", None),
     ("The answer deserves a 3", None), ("3/3", 3), ("2 out of 3", 2), ("Score: 2", 2),
     ("Rating: 3", 3), ("**Grade:** 2", 2), ("Grade (1, 2 or 3): 2", 2), ("Final score: 1", 1),
     ("3.", 3), ("3 (correct)", 3), ("3\n\nTask: next", 3), ("Grade: 3. It is right.", 3),
     ("Grade 2", 2), ("Score: 10", None), ("2.5", None), ("3/5", None), ("Score: 2/5", None)],
)  # fmt: skip
def test_scores(answer: str, score: int | None) -> None:
    assert parse_score(answer) == score


@pytest.mark.parametrize(
    "answer",
    ["Example 1\nInput: a text\nOutput: 3", "1. Write a poem about the sea.", "1) Write",
     "Example 1: Write a haiku.", "1 Write a poem", "Grade 1 students read.", "Task 2: Sum it."],
)  # fmt: skip
def test_a_number_inside_other_text_is_no_grade(answer: str) -> None:
    assert parse_score(answer) is None


def test_a_judge_that_rejects_nearly_all_it_judged_is_a_warning() -> None:
    instructions = Outcomes(passed=20, rejected={"over_target": 2, "judge_dropped": 1})
    rejects_all = Outcomes(passed=1, rejected={"judge_low_score": 18, "empty_output": 5})
    (warning,) = judge_warnings(
        ["instruction", "answer"], instructions, rejects_all, finished=False
    )
    assert warning.startswith("the answer judge rejected 18 of the 19 instances it judged")
    # Below nine in ten, or on too few while the job runs, it may be right.
    most = Outcomes(passed=3, rejected={"judge_low_score": 17})
    assert judge_warnings(["answer"], instructions, most, finished=True) == []
    few = Outcomes(passed=0, rejected={"judge_low_score": 3})
    assert judge_warnings(["answer"], instructions, few, finished=False) == []
    (finished,) = judge_warnings(["answer"], instructions, few, finished=True)
    assert "rejected 3 of the 3 instances" in finished
    # The faithfulness judge decides among the instances the answer judge passed.
    both = Outcomes(passed=1, rejected={"judge_low_score": 9, "judge_unfaithful": 10})
    (unfaithful,) = judge_warnings(["answer", "faithfulness"], instructions, both, finished=True)
    assert unfaithful.startswith("the faithfulness judge rejected 10 of the 11 instances")


def test_prompts_end_where_the_verdict_goes() -> None:
    prompt = build_instruction_judge_prompt(" Name a colour. ")
    assert "Task: Name a colour.\n" in prompt and prompt.endswith("Verdict:")
    graded = build_instance_judge_prompt("Name a colour.", "", "Blue.", ANSWER_JUDGE_PROMPT)
    assert "Input: (none)\nAnswer: Blue." in graded and graded.endswith("Grade (1, 2 or 3):")
    custom = build_instruction_judge_prompt("X.", "Judge {instruction}! Verdict:")
    assert custom == "Judge X.! Verdict:"
    assert INSTRUCTION_JUDGE_PROMPT.count("{instruction}") == 1


def test_custom_prompts_may_use_only_their_fields() -> None:
    with pytest.raises(ValidationError, match=r"judges\.instruction\.prompt[\s\S]*\{output\}"):
        GenerationOptions.model_validate(
            {"judges": {"instruction": {"prompt": "Is {output} good?"}}}
        )
    with pytest.raises(ValidationError, match="not a valid prompt template"):
        GenerationOptions.model_validate({"judges": {"answer": {"prompt": "Grade {input"}}})
    for risky in ("{output:>999999999}", "{input!r}", "{instruction.__class__}", "{0}"):
        with pytest.raises(ValidationError, match=r"judges\.answer\.prompt"):
            GenerationOptions.model_validate({"judges": {"answer": {"prompt": risky}}})
    with pytest.raises(ValidationError, match="threshold"):
        GenerationOptions.model_validate({"judges": {"faithfulness": {"threshold": 4}}})
    ok = GenerationOptions.model_validate(
        {"judges": {"answer": {"prompt": "{instruction} {input} {output} Grade (1, 2 or 3):"}}}
    )
    assert ok.judges is not None and list(ok.judges.steps()) == ["answer"]
    with pytest.raises(ValidationError, match="batch_api"):
        GenerationOptions.model_validate({"batch_api": True, "judges": {"answer": {}}})


def test_a_judge_on_another_backend_does_not_inherit_the_model() -> None:
    options = GenerationOptions(backend="main", model="big", endpoint="chat")
    same = judge_options(options, JudgeStep())
    assert (same.backend, same.model, same.endpoint) == ("main", "big", "chat")
    other = judge_options(options, JudgeStep(backend="judge", endpoint="completions"))
    assert (other.backend, other.model, other.endpoint) == ("judge", None, "completions")


def test_only_candidates_that_could_be_accepted_are_judged() -> None:
    options = GenerationOptions()
    index = RougeLIndex(["Write a short poem about the sea and the wind."])
    completion = Completion(
        " Write a short poem about the sea and the wind.\n"  # a copy of the pool
        "10. Draw a map of your town.\n"  # blacklisted keyword
        "11. Explain how tides work to a ten-year-old.\n"
        "12. Explain how tides work to a ten-year-old.\n"  # asked once
        "13. Brainstorm ideas for a school fair.\n"
    )
    texts = judgeable([completion], index, options)
    assert texts == [
        "Explain how tides work to a ten-year-old.",
        "Brainstorm ideas for a school fair.",
    ]
    assert judgeable([Completion(completion.text, "length")], index, options) == []

    verdicts = {
        texts[0]: InstructionVerdict(True, "clear"),
        texts[1]: InstructionVerdict(False, "too open-ended"),
    }
    outcome = accept_round([completion], index, options, remaining=5, verdicts=verdicts)
    decided = [(d.text, d.reason, d.judge_note) for d in outcome.decisions]
    assert decided[2] == (texts[0], None, "clear")
    assert decided[3][1] is InstructionReason.NEAR_DUPLICATE  # the round's own copy
    assert decided[4] == (texts[1], InstructionReason.JUDGE_DROPPED, "too open-ended")

"""Hostile model output is cleaned before parsing, or rejected with a reason: never a crash."""

from __future__ import annotations

from app.selfinstruct.batched import accept_batched_round
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import accept_round, judge_instances, judgeable
from app.selfinstruct.sanitize import (
    EXCERPT_CHARS,
    MIN_CHAR_CAP,
    OVERSIZED,
    clean_completion,
    clean_text,
    completion_char_cap,
)
from app.selfinstruct.types import Completion, InstanceReason, InstructionReason
from app.selfinstruct.unnatural import CoreExample, accept_unnatural_round, judge_output

HUGE = "Explain the rules of chess to a child. " * 200_000  # about 8 MB


def test_control_characters_go_but_tabs_and_newlines_stay() -> None:
    raw = "a\x00b\x01c\x07d\x1b[0me\x7f\tf\ng\rh\x0bi\x0cj\x1f"
    assert clean_text(raw) == "abcd[0me\x7f\tf\ng\rhij"


def test_surrogates_become_replacement_characters_and_encode() -> None:
    cleaned = clean_text("caf\ud800e \udfff and \ud83d\ude00")
    assert cleaned == "caf\ufffde \ufffd and \ufffd\ufffd"
    cleaned.encode("utf-8")  # would raise on any surrogate left


def test_clean_text_leaves_ordinary_text_alone() -> None:
    text = "Écris un poème sur la mer.\n\t2. Résume l'article 日本語 😀"
    assert clean_text(text) == text


def test_the_cap_follows_max_tokens_with_a_floor() -> None:
    assert completion_char_cap(16) == MIN_CHAR_CAP
    assert completion_char_cap(1024) == 16 * 1024


def test_a_long_answer_is_cut_and_marked_oversized() -> None:
    completion = clean_completion(HUGE, "stop", max_chars=10_000)
    assert completion.oversized and completion.finish_reason == OVERSIZED
    assert len(completion.text) == 10_000
    assert not Completion("x", "length").oversized


def test_an_answer_within_the_cap_keeps_its_finish_reason() -> None:
    completion = clean_completion(" Sort the\x00 list.\n", "length", max_chars=100)
    assert completion == Completion(" Sort the list.\n", "length")


def test_nul_bytes_inside_instructions_are_parsed_as_if_absent() -> None:
    options = GenerationOptions(seed=1)
    raw = " Give three\x00 tips for saving money.\n10. Translate the \ud800poem into French.\n"
    completion = clean_completion(raw, "stop", max_chars=completion_char_cap(options.max_tokens))
    outcome = accept_round([completion], RougeLIndex([]), options, remaining=10)
    texts = [d.text for d in outcome.decisions]
    assert texts == ["Give three tips for saving money.", "Translate the \ufffdpoem into French."]
    assert outcome.decisions[0].accepted
    assert all("\x00" not in t for t in texts)


def test_an_oversized_round_answer_is_one_rejection_with_a_reason() -> None:
    options = GenerationOptions(seed=1)
    cap = completion_char_cap(options.max_tokens)
    oversized = clean_completion(HUGE, "stop", max_chars=cap)
    fine = Completion(" Write a haiku about autumn leaves.\n", "stop")
    outcome = accept_round([oversized, fine], RougeLIndex([]), options, remaining=10)
    first, second = outcome.decisions
    assert first.reason == InstructionReason.OVERSIZED_RESPONSE
    assert first.text.startswith("Explain the rules of chess") and len(first.text) <= EXCERPT_CHARS
    assert second.accepted
    assert judgeable([oversized, fine], RougeLIndex([]), options) == [second.text]


def test_an_oversized_instance_answer_is_rejected_as_a_whole() -> None:
    options = GenerationOptions(seed=1)
    completion = clean_completion(
        "Example 1\nInput: x\nOutput: y\n" * 100_000, "stop", max_chars=9000
    )
    (decision,) = judge_instances(completion, is_classification=False, options=options)
    assert decision.reason == InstanceReason.OVERSIZED_RESPONSE
    assert len(decision.instance.output) <= EXCERPT_CHARS


def test_batched_and_unnatural_modes_reject_oversized_answers() -> None:
    oversized = clean_completion(HUGE, "stop", max_chars=MIN_CHAR_CAP)
    batched = accept_batched_round(
        [oversized], RougeLIndex([]), GenerationOptions(mode="batched"), remaining=5
    )
    unnatural = accept_unnatural_round(
        [oversized], RougeLIndex([]), GenerationOptions(mode="unnatural"), remaining=5
    )
    for outcome in (batched, unnatural):
        (decision,) = outcome.decisions
        assert decision.reason == InstructionReason.OVERSIZED_RESPONSE
    output = judge_output(CoreExample("Sort the list.", "3 1 2", "None."), oversized)
    assert output.reason == InstanceReason.OVERSIZED_RESPONSE

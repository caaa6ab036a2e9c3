# ruff: noqa: RUF001  (Cyrillic letters are the point of these tests)
"""Seeds in other languages: dedupe tokenization per script and a switchable non-ASCII filter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex, characters, tokenize, unicode_words
from app.selfinstruct.rounds import accept_round
from app.selfinstruct.types import Completion, InstructionReason

REPO_ROOT = Path(__file__).resolve().parents[2]

CHINESE_SEEDS = ["写一首关于大海的短诗。", "把下面的句子翻译成英文。", "列出三种常见的水果。"]
RUSSIAN_SEEDS = ["Напишите короткое стихотворение о море.", "Переведите предложение на английский."]
GERMAN_SEEDS = [
    "Schreiben Sie ein kurzes Gedicht über das Meer.",
    "Übersetzen Sie den Satz ins Englische.",
]


def test_tokenizers_per_script() -> None:
    assert characters("用Python写一个函数") == ["用", "python", "写", "一", "个", "函", "数"]
    assert unicode_words("Напишите КОРОТКОЕ стихотворение") == [
        "напишите",
        "короткое",
        "стихотворение",
    ]
    assert unicode_words("Übersetzen Sie für Bären") == ["übersetzen", "sie", "für", "bären"]
    assert tokenize("Напишите короткое стихотворение") == []  # why rouge_score cannot be used
    assert tokenize("Übersetzen Sie") == ["bersetzen", "sie"]  # rouge-score's own, kept exact


@pytest.mark.parametrize(
    ("tokenizer", "seeds", "near_duplicate", "different"),
    [
        ("characters", CHINESE_SEEDS, "写一首关于大海的诗。", "介绍一下长城的历史。"),
        ("unicode_words", RUSSIAN_SEEDS, "Напишите короткое стихотворение о реке.",
         "Объясните, как работает фотосинтез."),
        ("unicode_words", GERMAN_SEEDS, "Schreiben Sie ein kurzes Gedicht über den Fluss.",
         "Erklären Sie, wie Photosynthese funktioniert."),
    ],
)  # fmt: skip
def test_near_duplicates_are_found_in_each_script(
    tokenizer: str, seeds: list[str], near_duplicate: str, different: str
) -> None:
    index = RougeLIndex(seeds, tokenizer=TOKENIZERS[tokenizer])
    assert index.best(near_duplicate).score > 0.7
    assert index.best(different).score < 0.5


def test_rouge_score_tokens_see_no_overlap_in_cyrillic() -> None:
    index = RougeLIndex(RUSSIAN_SEEDS)
    assert index.best(RUSSIAN_SEEDS[0]).score == 0.0  # even an exact copy


def chinese_round(options: GenerationOptions):  # type: ignore[no-untyped-def]
    completion = Completion(
        " 写一首关于大海的诗。\n5. 介绍一下长城的历史。\n6. 解释光合作用的过程。"
    )
    index = RougeLIndex(CHINESE_SEEDS, tokenizer=TOKENIZERS[options.dedupe_tokenizer])
    return accept_round([completion], index, options, remaining=10, first_numbers=[4])


def test_chinese_job_options_filter_and_dedupe_by_character() -> None:
    options = GenerationOptions(dedupe_tokenizer="characters", reject_non_ascii_start=False)
    outcome = chinese_round(options)
    assert [(d.text, d.reason) for d in outcome.decisions] == [
        ("写一首关于大海的诗。", InstructionReason.NEAR_DUPLICATE),
        ("介绍一下长城的历史。", None),
        ("解释光合作用的过程。", None),
    ]


def test_paper_defaults_reject_chinese_as_the_paper_did() -> None:
    outcome = chinese_round(GenerationOptions())
    # One whitespace "word" each: too short before the non-ASCII check is reached.
    assert {d.reason for d in outcome.decisions} == {InstructionReason.TOO_SHORT}
    outcome = chinese_round(GenerationOptions(dedupe_tokenizer="characters"))
    assert {d.reason for d in outcome.decisions} <= {
        InstructionReason.STARTS_WITH_NON_ASCII,
        InstructionReason.NEAR_DUPLICATE,
    }


def test_dedupe_cli_takes_a_tokenizer(tmp_path: Path) -> None:
    lines = [*RUSSIAN_SEEDS, "Напишите короткое стихотворение о реке.", "Объясните фотосинтез."]
    source = tmp_path / "ru.jsonl"
    source.write_text(
        "".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in lines)
    )
    result = subprocess.run(
        [sys.executable, "-m", "app", "dedupe", str(source), "--tokenizer", "unicode_words"],
        capture_output=True, text=True, cwd=REPO_ROOT, check=True, timeout=60,
    )  # fmt: skip
    kept = [json.loads(line)["instruction"] for line in result.stdout.splitlines()]
    assert kept == [RUSSIAN_SEEDS[0], RUSSIAN_SEEDS[1], "Объясните фотосинтез."]
    refused = subprocess.run(
        [sys.executable, "-m", "app", "dedupe", str(source), "--tokenizer", "klingon"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "--tokenizer must be one of" in refused.stderr

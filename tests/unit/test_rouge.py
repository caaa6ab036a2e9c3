"""The ROUGE-L index must give rouge-score's answers exactly, not approximately."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from app.selfinstruct.dedupe import dedupe_texts
from app.selfinstruct.rouge import RougeLIndex, rouge_l_fmeasure, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
VOCABULARY = (
    "the a of to write give list classify sentence story poem email and in it is 3 42".split()
)


def brute_force_best(pool: list[str], text: str) -> tuple[float, int | None]:
    scores = [SCORER.score(item, text)["rougeL"].fmeasure for item in pool]
    if not scores or max(scores) == 0.0:
        return 0.0, None
    top = max(scores)
    return top, scores.index(top)


def test_tokenize_matches_rouge_score() -> None:
    text = "Write a 5-line poem, about the SEA! Don't rhyme; café"
    assert tokenize(text) == SCORER._tokenizer.tokenize(text)


def test_fmeasure_is_bit_identical() -> None:
    a, b = "write a short poem about the sea", "write a poem about a sea storm"
    assert rouge_l_fmeasure(tokenize(a), tokenize(b)) == SCORER.score(a, b)["rougeL"].fmeasure


sentences = st.lists(st.sampled_from(VOCABULARY), min_size=0, max_size=14).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(pool=st.lists(sentences, max_size=40), queries=st.lists(sentences, min_size=1, max_size=8))
def test_best_equals_brute_force(pool: list[str], queries: list[str]) -> None:
    index = RougeLIndex(pool)
    for query in queries:
        match = index.best(query)
        assert (match.score, match.item) == brute_force_best(pool, query)
        for threshold in (0.0, 0.3, 0.7):
            assert index.exceeds(query, threshold) == (brute_force_best(pool, query)[0] > threshold)


def test_growing_pool_with_reorders_stays_exact() -> None:
    rng = random.Random(3)
    words = [f"w{i}" for i in range(300)]
    pool: list[str] = []
    index = RougeLIndex()
    for step in range(1400):  # crosses the first key-order recount at 1024 items
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        if step % 97 == 0:
            match = index.best(text)
            assert (match.score, match.item) == brute_force_best(pool, text)
        pool.append(text)
        index.add(text)


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_dedupe_keeps_first_of_each_near_duplicate_group(threshold: float) -> None:
    texts = [
        "Write a short poem about the sea.",
        "Write a short poem about the ocean.",
        "Summarize the article in one sentence.",
        "Write a short poem about the sea",
    ]
    verdicts = list(dedupe_texts(texts, threshold=threshold, explain_rejections=True))
    assert [v.kept for v in verdicts] == [True, False, True, False]
    assert verdicts[1].nearest == texts[0]
    assert verdicts[3].max_rouge == 1.0


def test_float_arithmetic_at_the_threshold_matches_rouge_score() -> None:
    """la=8, lb=12, lcs=7: rational F is exactly 0.7, rouge-score's float is just above it."""
    pool_item = "a b c d e f g x1"
    candidate = "a b c d e f g y1 y2 y3 y4 y5"
    expected = SCORER.score(pool_item, candidate)["rougeL"].fmeasure
    assert expected > 0.7  # 0.7000000000000001
    index = RougeLIndex([pool_item])
    assert index.best(candidate).score == expected
    assert index.exceeds(candidate, 0.7)
    assert [v.kept for v in dedupe_texts([candidate], against=[pool_item])] == [False]


boundary_words = st.lists(st.sampled_from([*VOCABULARY, "x", "y", "z"]), min_size=1, max_size=20)


@settings(max_examples=80, deadline=None)
@given(common=boundary_words, extra_a=boundary_words, extra_b=boundary_words)
def test_near_threshold_pairs(common: list[str], extra_a: list[str], extra_b: list[str]) -> None:
    first = " ".join(common + extra_a[: len(common) // 3])
    second = " ".join(extra_b[: len(common) // 4] + common)
    index = RougeLIndex([first])
    expected = SCORER.score(first, second)["rougeL"].fmeasure
    assert index.best(second).score == expected
    for threshold in (0.5, 0.6, 0.7, 0.8):
        assert index.exceeds(second, threshold) == (expected > threshold)

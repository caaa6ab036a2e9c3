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

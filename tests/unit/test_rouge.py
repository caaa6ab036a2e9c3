"""The ROUGE-L index must give rouge-score's answers exactly, not approximately."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from app.selfinstruct.dedupe import dedupe_texts
from app.selfinstruct.rouge import (
    TOKENIZERS,
    RougeLIndex,
    RougeMatch,
    _key_bit,
    _token_keys,
    rouge_l_fmeasure,
    tokenize,
)

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


def score_lcs(target: list[str], prediction: list[str]) -> float:
    """rouge-score's own LCS F-measure on already tokenised text."""
    return rouge_scorer._score_lcs(target, prediction).fmeasure


def brute_force_tokens(pool: list[list[str]], tokens: list[str]) -> tuple[float, int | None]:
    scores = [score_lcs(item, tokens) for item in pool]
    if not scores or max(scores) == 0.0:
        return 0.0, None
    top = max(scores)
    return top, scores.index(top)


def assert_matches_rouge_score(pool: list[str], queries: list[str]) -> None:
    index = RougeLIndex(pool)
    for query in queries:
        expected = brute_force_best(pool, query)
        match = index.best(query)
        assert (match.score, match.item) == expected, query
        for threshold in (0.0, 0.5, 0.7, 0.9):
            assert index.exceeds(query, threshold) == (expected[0] > threshold), (query, threshold)


def colliding_words(count: int) -> tuple[list[str], list[str]]:
    """Words whose first copies all set the same signature bit, and every word tried before.

    Token ids follow first appearance, so a pool that starts with the tried words in order
    gives the colliding words the same ids (and bits) as here.
    """
    probe = RougeLIndex()
    tried: list[str] = []
    colliding: list[str] = []
    while len(colliding) < count:
        word = f"c{len(tried)}"
        tried.append(word)
        probe.add(word)
        if _key_bit(_token_keys([probe._token_ids[word]])[0]) == 0:
            colliding.append(word)
    return tried, colliding


def test_signature_collisions_keep_best_exact() -> None:
    """Pool words sharing the candidate's signature bit but not its tokens must not count."""
    tried, words = colliding_words(24)
    rng = random.Random(5)
    pool = [" ".join(tried)] + [" ".join(rng.sample(words, 10)) for _ in range(60)]
    queries = [" ".join(rng.sample(words, rng.randint(1, 14))) for _ in range(25)]
    assert_matches_rouge_score(pool, queries)


def test_repeated_tokens_count_each_copy_once() -> None:
    pool = ["the the the cat", "the cat the cat the", "cat cat cat cat", "the", "a the a the a"]
    queries = ["the the the the", "cat the cat", "the cat the cat the cat", "a a a a a a", "the a"]
    assert_matches_rouge_score(pool, queries)


def test_long_repetitive_texts() -> None:
    """Hundreds of tokens put several candidate keys on one signature bit."""
    rng = random.Random(9)
    words = "the a of to and in is it write list give".split()
    pool = [" ".join(rng.choice(words) for _ in range(rng.randint(150, 400))) for _ in range(12)]
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 500))) for _ in range(8)]
    queries += [pool[3], pool[3] + " of"]
    assert_matches_rouge_score(pool, queries)


def test_equal_scores_return_the_first_item() -> None:
    """Several items at the same float score: rouge-score keeps the earliest."""
    pool = ["x y", "write a poem", "a poem write", "write a poem", "poem a write", "write a poem"]
    index = RougeLIndex(pool)
    assert index.best("write a poem").item == 1
    assert index.best("write a poem").score == 1.0
    assert index.best("write poem").item == brute_force_best(pool, "write poem")[1]


def test_equal_rationals_with_different_floats() -> None:
    """2·lcs/(lp + lq) equal for several items, whose floats differ in the last bit."""
    lq = 12
    query_words = [f"q{i}" for i in range(lq)]
    pool = []
    for lcs in range(1, 9):
        for filler in range(0, 14):
            shared = query_words[:lcs]
            pool.append(" ".join(shared + [f"f{lcs}_{filler}_{k}" for k in range(filler)]))
    random.Random(2).shuffle(pool)
    floats = {SCORER.score(item, " ".join(query_words))["rougeL"].fmeasure for item in pool}
    assert len(floats) > len({round(f, 9) for f in floats})  # some rationals have two floats
    assert_matches_rouge_score(pool, [" ".join(query_words), " ".join(query_words[:7])])


@pytest.mark.parametrize(("lcs", "first_length"), [(7, 7), (7, 8), (7, 10), (14, 15), (21, 30)])
def test_pairs_exactly_at_the_threshold(lcs: int, first_length: int) -> None:
    """Rational F-measure exactly 0.7: rouge-score's float decides, on either side of 0.7."""
    second_length = 20 * lcs // 7 - first_length
    common = [f"k{i}" for i in range(lcs)]
    first = " ".join(common + [f"a{i}" for i in range(first_length - lcs)])
    second = " ".join([f"b{i}" for i in range(second_length - lcs)] + common)
    filler = [" ".join(f"n{j}_{i}" for i in range(5)) for j in range(20)]
    assert_matches_rouge_score([*filler, first, *filler], [second])
    assert_matches_rouge_score([second], [first])


def test_empty_and_one_token_texts() -> None:
    pool = ["", "!!!", "a", "b a", "a"]
    queries = ["", "...", "a", "z", "a a", "b", "a b"]
    assert_matches_rouge_score(pool, queries)
    assert RougeLIndex([]).best("a") == RougeMatch(0.0, None)
    assert not RougeLIndex(["a"]).exceeds("", 0.0)


@pytest.mark.parametrize("name", ["unicode_words", "characters"])
def test_non_latin_tokenizers_match_rouge_score_arithmetic(name: str) -> None:
    tokenizer = TOKENIZERS[name]
    pool = [
        "Напишите короткое стихотворение о зиме",  # noqa: RUF001
        "Напишите длинное стихотворение о лете",  # noqa: RUF001
        "这是一个关于天气的问题",
        "这是一个关于时间的问题",
        "日本語の文章を要約してください",
        "Γράψτε μια σύντομη ιστορία",
        "用Python写一个函数",
    ]
    queries = [*pool, "Напишите стихотворение о зиме", "一个关于天气", "用Python写函数", "ιστορία"]  # noqa: RUF001
    pool_tokens = [tokenizer(text) for text in pool]
    index = RougeLIndex(pool, tokenizer=tokenizer)
    for query in queries:
        expected = brute_force_tokens(pool_tokens, tokenizer(query))
        match = index.best(query)
        assert (match.score, match.item) == expected, query
        assert index.exceeds(query, 0.5) == (expected[0] > 0.5)


@settings(max_examples=40, deadline=None)
@given(
    pool=st.lists(
        st.lists(st.sampled_from("a b c the x".split()), max_size=30).map(" ".join), max_size=30
    ),
    queries=st.lists(
        st.lists(st.sampled_from("a b c the y".split()), max_size=30).map(" ".join),
        min_size=1,
        max_size=5,
    ),
)
def test_tiny_vocabulary_many_copies(pool: list[str], queries: list[str]) -> None:
    """Few distinct tokens, many copies: overlap bounds are loose and ties are common."""
    assert_matches_rouge_score(pool, queries)


def test_growing_pool_interleaved_with_queries() -> None:
    """Adds between queries, across key-order recounts, near-duplicates of earlier texts."""
    rng = random.Random(17)
    words = [f"w{i}" for i in range(40)] + ["the", "a", "of"] * 5
    pool: list[str] = []
    index = RougeLIndex()
    for step in range(1300):
        if pool and rng.random() < 0.4:
            base = rng.choice(pool).split()
            base.insert(rng.randrange(len(base) + 1), rng.choice(words))
            text = " ".join(base)
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 15)))
        if step % 23 == 0:
            expected = brute_force_best(pool, text)
            assert (index.best(text).score, index.best(text).item) == expected
            assert index.exceeds(text, 0.7) == (expected[0] > 0.7)
        pool.append(text)
        index.add(text)


def test_texts_longer_than_the_packed_fields() -> None:
    """An item length past 32,767 tokens is stored clamped, which only loosens the filter."""
    rng = random.Random(4)
    words = [f"v{i}" for i in range(50)]
    long_text = " ".join(rng.choice(words) for _ in range(33_000))
    pool = ["v1 v2 v3 zz", long_text, "v4 v5"]
    queries = ["v1 v2 v3", "v7 v8 v9 v10", "zz"]
    assert_matches_rouge_score(pool, queries)


@settings(max_examples=60, deadline=None)
@given(
    pool=st.lists(sentences, max_size=40),
    queries=st.lists(sentences, min_size=1, max_size=8),
    within=st.integers(min_value=0, max_value=40),
)
def test_best_within_a_prefix_is_rouge_score_on_that_prefix(
    pool: list[str], queries: list[str], within: int
) -> None:
    index = RougeLIndex(pool)
    for query in queries:
        match = index.best(query, within=within)
        assert (match.score, match.item) == brute_force_best(pool[:within], query)


def test_scores_found_after_the_pool_grew_are_those_of_the_pool_then() -> None:
    """A text scored once 1,300 more were added (across key-order recounts) against the pool
    as it stood when it came, near-duplicates of earlier texts included."""
    rng = random.Random(23)
    words = [f"w{i}" for i in range(40)] + ["the", "a", "of"] * 5
    pool: list[str] = []
    index = RougeLIndex()
    asked: list[tuple[str, int]] = []
    for step in range(1300):
        if pool and rng.random() < 0.4:
            base = rng.choice(pool).split()
            base.insert(rng.randrange(len(base) + 1), rng.choice(words))
            text = " ".join(base)
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 15)))
        if step % 23 == 0:
            asked.append((text, len(index)))
        pool.append(text)
        index.add(text)
    for text, size in asked:
        match = index.best(text, within=size)
        assert (match.score, match.item) == brute_force_best(pool[:size], text)

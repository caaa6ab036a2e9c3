"""Exact ROUGE-L index: rouge-score's answers for one text against a pool, without scoring the pool.

rouge-score (`RougeScorer(["rougeL"], use_stemmer=False)`) finds near-duplicates by comparing a
candidate with every earlier text. This index returns the same maximum F-measure and the same
(first) pool item, but runs an LCS only on items that a provably safe bound cannot rule out.

For a candidate of lq tokens and an item of lp tokens sharing `overlap` tokens (as multisets):
- The rational F-measure is 2·lcs/(lp + lq) with lcs <= min(lp, lq, overlap). Every bound is an
  integer inequality; rounding never rules out an item that could win.
- Each copy of a token is its own key (the 2nd "the" differs from the 1st): multisets become sets.
- Prefix filtering, as in set-similarity joins (PPJoin): with all keys in one global order, rarest
  first, two texts sharing at least k keys share one among the first len - k + 1 keys of each.
  Per similarity floor, the inverted lists hold only those first keys of every item, with their
  position in the item; floor 0 keeps every key and is the complete index.
- Positional bound: if the last shared prefix key sits at position i of the candidate and j of
  the item, and A prefix keys are shared, the overlap is at most A + min(lq-1-i, lp-1-j).
- Survivors get an exact LCS (rapidfuzz's bit-parallel LCSseq over token ids written as code
  points) and the winner is picked with rouge-score's own float arithmetic.
"""

from __future__ import annotations

import math
import operator
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

_TOKEN = re.compile(r"[a-z0-9]+")

# rouge-score's float F-measure is within 6·2**-53 (relative) of the rational one, so a float
# above a threshold needs a rational F-measure of at least threshold·(1 - 2**-50). Floors are
# rounded down to a multiple of 2**-20 so bound arithmetic stays within int64.
_FLOAT_SLACK = 1 - Fraction(1, 2**50)
_FLOOR_DENOMINATOR = 2**20
# best() looks for the maximum at or above these floors in turn, then over the complete index:
# a high floor keeps prefixes short, and in a large pool most candidates have a close neighbour.
_BEST_FLOORS = (0.7, 0.5, 0.3)
# The global key order is recounted when the pool has doubled since the last count.
_REORDER_MIN_ITEMS = 1024
# Fewer survivors than this are compared one call each; more go to one rapidfuzz cdist call.
_CDIST_BATCH_MIN = 16

_SURROGATE_START = 0xD800
_SURROGATE_COUNT = 0x800
_MAX_CODE_POINT = 0x10FFFF
_TOKEN_ID_SHIFT = 32

# A token sequence for rapidfuzz: a str while every code point is valid, else a tuple of ints.
TokenCodes = str | tuple[int, ...]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


def tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming.

    rouge-score lower-cases, turns every run outside a-z/0-9 into a space and keeps what is left;
    collecting the a-z/0-9 runs directly gives the same list.
    """
    return _TOKEN.findall(text.lower())


# rouge-score's tokenizer drops every character outside a-z/0-9, so Russian or Chinese text has
# no tokens at all and nothing would ever count as a near-duplicate. These two keep all scripts.
_UNICODE_WORD = re.compile(r"[^\W_]+")
# Scripts written without spaces between words: kana, CJK ideographs, Thai, Lao, Myanmar, Khmer.
_NO_SPACES = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"
)
_CHARACTER_OR_WORD = re.compile(f"[{_NO_SPACES}]|[^\\W_{_NO_SPACES}]+")

Tokenizer = Literal["rouge_score", "unicode_words", "characters"]


def unicode_words(text: str) -> list[str]:
    """Case-folded runs of letters and digits of any script (Cyrillic, Greek, accented Latin)."""
    return _UNICODE_WORD.findall(text.casefold())


def characters(text: str) -> list[str]:
    """One token per character in scripts without spaces (Chinese, Japanese, Thai), words
    elsewhere, so mixed text such as "用Python写一个函数" splits sensibly."""
    return _CHARACTER_OR_WORD.findall(text.casefold())


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "rouge_score": tokenize,
    "unicode_words": unicode_words,
    "characters": characters,
}


def word_counter(tokenizer: Tokenizer) -> Callable[[str], int]:
    """How the length filters count words: whitespace-separated, as the paper does, unless
    the job tokenizes for a script without spaces."""
    if tokenizer == "rouge_score":
        return lambda text: len(text.split())
    split = TOKENIZERS[tokenizer]
    return lambda text: len(split(text))


def fmeasure_from_lcs(lcs: int, target_length: int, prediction_length: int) -> float:
    """rouge-score's F-measure, operation by operation, so the float is bit-identical."""
    if target_length == 0 or prediction_length == 0:
        return 0.0
    precision = lcs / prediction_length
    recall = lcs / target_length
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l_fmeasure(target_tokens: Sequence[str], prediction_tokens: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token lists, equal to rouge-score's `_score_lcs(...).fmeasure`."""
    if not target_tokens or not prediction_tokens:
        return 0.0
    lcs = int(LCSseq.similarity(target_tokens, prediction_tokens))
    return fmeasure_from_lcs(lcs, len(target_tokens), len(prediction_tokens))


def decision_floor(threshold: float) -> Fraction:
    """A rational at or below every F-measure whose rouge-score float could exceed `threshold`."""
    floor = Fraction(threshold) * _FLOAT_SLACK
    return Fraction(math.floor(floor * _FLOOR_DENOMINATOR), _FLOOR_DENOMINATOR)


@dataclass(frozen=True, slots=True)
class RougeMatch:
    """The highest F-measure against a pool and the first item reaching it (None if all are 0)."""

    score: float
    item: int | None


def _min_overlap(floor: Fraction, length: int) -> int:
    """Fewest keys a text of `length` tokens must share with any partner to reach `floor`.

    The partner has at least floor·length/(2 - floor) tokens (lcs <= its length), so the needed
    overlap floor·(length + partner)/2 is at least floor·length/(2 - floor); never below one key.
    """
    n, d = floor.numerator, floor.denominator
    return max(1, -((-n * length) // (2 * d - n)))


def _code_point(token_id: int) -> int:
    # rapidfuzz compares code points; skipping the surrogate block keeps every id a valid character.
    return token_id if token_id < _SURROGATE_START else token_id + _SURROGATE_COUNT


def _token_id(code_point: int) -> int:
    return code_point if code_point < _SURROGATE_START else code_point - _SURROGATE_COUNT


def _token_codes(token_ids: Sequence[int]) -> TokenCodes:
    code_points = [_code_point(t) for t in token_ids]
    if not code_points or max(code_points) <= _MAX_CODE_POINT:
        return "".join(map(chr, code_points))
    return tuple(code_points)  # past a million distinct tokens; rapidfuzz compares ints alike


def _token_ids_of(codes: TokenCodes) -> list[int]:
    return [_token_id(c) for c in (map(ord, codes) if isinstance(codes, str) else codes)]


def _token_keys(token_ids: Iterable[int]) -> list[int]:
    """One key per token copy: (id, copy number) packed in one int."""
    copies: dict[int, int] = {}
    keys = []
    for token_id in token_ids:
        copy = copies.get(token_id, 0)
        copies[token_id] = copy + 1
        keys.append((token_id << _TOKEN_ID_SHIFT) | copy)
    return keys


def _pick(codes: list[TokenCodes], items: list[int]) -> list[TokenCodes]:
    """codes[i] for each i; itemgetter runs the loop in C."""
    picked = operator.itemgetter(*items)(codes)
    return [picked] if len(items) == 1 else list(picked)


class _KeyOrder:
    """The global order of prefix filtering: fewest items first (counted at the last recount).

    Any fixed total order keeps the filter exact; rarity only makes prefixes selective. Keys
    unseen at the recount sort first, ties by key (newer token ids first).
    """

    __slots__ = ("counted_items", "document_frequency")

    def __init__(self, keys_per_item: Iterable[Sequence[int]]) -> None:
        counts: Counter[int] = Counter()
        self.counted_items = 0
        for keys in keys_per_item:
            counts.update(keys)
            self.counted_items += 1
        self.document_frequency = {key: count for key, count in counts.items() if count > 1}

    def sort(self, keys: list[int]) -> list[int]:
        frequency = self.document_frequency
        keys.sort(key=lambda key: (frequency.get(key, 0), -key))
        return keys


class _PrefixPostings:
    """Per key, the (item, position in item) pairs of the item prefixes that `floor` requires."""

    __slots__ = ("floor", "lists")

    def __init__(self, floor: Fraction) -> None:
        self.floor = floor
        self.lists: dict[int, array[int]] = {}

    def add(self, item: int, ordered_keys: Sequence[int]) -> None:
        prefix = len(ordered_keys) - _min_overlap(self.floor, len(ordered_keys)) + 1
        lists = self.lists
        for position, key in enumerate(ordered_keys[:prefix]):
            pairs = lists.get(key)
            if pairs is None:
                lists[key] = array("i", (item, position))
            else:
                pairs.append(item)
                pairs.append(position)


@dataclass(slots=True)
class _Query:
    length: int
    codes: TokenCodes
    ordered_keys: list[int]
    unknown_tokens: int  # first in the global order: no item holds them


class _Search:
    """One scan of one floor's posting lists for one candidate.

    Best mode (threshold None) keeps the highest float F-measure whose rational value is at or
    above the floor, lowest item on ties, and raises its bound to each new best. Threshold mode
    keeps the floor and stops at the first item whose float F-measure is above the threshold.
    """

    def __init__(
        self, index: RougeLIndex, query: _Query, postings: _PrefixPostings, threshold: float | None
    ) -> None:
        self.index = index
        self.query = query
        self.postings = postings
        self.threshold = threshold
        self.bound_numerator = postings.floor.numerator
        self.bound_denominator = postings.floor.denominator
        self.score = 0.0
        self.item: int | None = None
        self.seen: np.ndarray[Any, np.dtype[np.bool_]] | None = None  # best mode only
        self.lengths: IntArray = np.frombuffer(index._lengths, dtype=np.int32)

    @property
    def found_above_threshold(self) -> bool:
        return self.threshold is not None and self.item is not None

    def run(self) -> None:
        """Visit the candidate's prefix in growing batches: rare keys first, so an early close
        match raises the bound and shortens what is left to visit."""
        position = self.query.unknown_tokens
        # Threshold mode has a fixed bound: one pass over the whole prefix costs least.
        batch = 1 if self.threshold is None else len(self.query.ordered_keys) + 1
        while position < self._prefix_end():
            end = min(self._prefix_end(), position + batch)
            self._scan(position, end)
            if self.found_above_threshold:
                return
            position, batch = end, batch * 2

    def _prefix_end(self) -> int:
        """Candidate positions beyond this cannot hold the first shared key of a winner."""
        n, d = self.bound_numerator, self.bound_denominator
        lq = self.query.length
        needed = max(1, -((-n * lq) // (2 * d - n)))
        return lq - needed + 1

    def _scan(self, start: int, end: int) -> None:
        lists = self.postings.lists
        offset = self.query.unknown_tokens
        found = [
            (position, pairs)
            for position in range(start, end)
            if (pairs := lists.get(self.query.ordered_keys[position - offset])) is not None
        ]
        if not found:
            return
        pairs = np.concatenate([np.frombuffer(p, dtype=np.int32) for _, p in found]).reshape(-1, 2)
        counts = [len(p) // 2 for _, p in found]
        query_positions = np.repeat(np.array([pos for pos, _ in found], dtype=np.int64), counts)
        items = pairs[:, 0]
        # Items met in an earlier batch were settled there, with a bound at least as high.
        if self.threshold is None:  # best mode scans in batches; threshold mode in one
            if self.seen is None:
                self.seen = np.zeros(len(self.index), dtype=np.bool_)
            fresh = ~self.seen[items]
            self.seen[items] = True
        else:
            fresh = np.ones(items.size, dtype=np.bool_)
        item_lengths = self.lengths[items]
        shortest, longest = self._length_window(self.query.length - start)
        keep = fresh & (item_lengths >= shortest) & (item_lengths <= longest)
        if not keep.any():
            return
        survivors, survivor_lengths = self._positional_filter(
            items[keep], pairs[keep, 1], query_positions[keep], item_lengths[keep]
        )
        if survivors.size:
            self._verify(survivors, survivor_lengths)

    def _length_window(self, most_shared: int) -> tuple[int, int]:
        """Item lengths lp for which 2·min(lp, most_shared)/(lp + lq) can reach the bound."""
        n, d = self.bound_numerator, self.bound_denominator
        lq = self.query.length
        if n == 0:
            return 1, np.iinfo(np.int32).max
        shortest = max(1, -((-n * lq) // (2 * d - n)))
        longest = (2 * most_shared * d - n * lq) // n
        return shortest, longest

    def _positional_filter(
        self,
        items: IntArray,
        item_positions: IntArray,
        query_positions: IntArray,
        lengths: IntArray,
    ) -> tuple[IntArray, IntArray]:
        """Items whose overlap bound A + min(lq-1-i, lp-1-j) can still reach the bound."""
        order = np.argsort(items, kind="stable")  # keeps each item's matches in key order
        items = items[order]
        last = np.flatnonzero(np.append(items[1:] != items[:-1], True))
        shared = np.diff(last, prepend=-1)
        item_lengths = lengths[order][last].astype(np.int64)
        lq = self.query.length
        rest = np.minimum(
            lq - 1 - query_positions[order][last], item_lengths - 1 - item_positions[order][last]
        )
        most_lcs = np.minimum(np.minimum(shared + rest, item_lengths), lq)
        reaches = 2 * most_lcs * self.bound_denominator >= self.bound_numerator * (
            item_lengths + lq
        )
        return items[last][reaches], item_lengths[reaches]

    def _verify(self, survivors: IntArray, lengths: IntArray) -> None:
        """Exact LCS, then rouge-score's float F-measure (numpy float64 repeats its operations)."""
        codes = self.index._codes
        query_codes = self.query.codes
        if survivors.size >= _CDIST_BATCH_MIN:
            lcs = process.cdist(
                [query_codes],
                _pick(codes, survivors.tolist()),
                scorer=LCSseq.similarity,
                dtype=np.int64,
                workers=1,
            )[0]
        else:
            lcs = np.array(
                [LCSseq.similarity(query_codes, codes[item]) for item in survivors.tolist()],
                dtype=np.int64,
            )
        lq = self.query.length
        precision = lcs / lengths
        recall = lcs / lq
        scores = 2.0 * precision * recall / (precision + recall)
        if self.threshold is not None:
            above = np.flatnonzero(scores > self.threshold)
            if above.size:
                self.score, self.item = float(scores[above[0]]), int(survivors[above[0]])
            return
        eligible = 2 * lcs * self.bound_denominator >= self.bound_numerator * (lengths + lq)
        if not eligible.any():
            return
        top = scores[eligible].max()
        winners = np.flatnonzero(eligible & (scores == top))
        winner = winners[np.argmin(survivors[winners])]
        item = int(survivors[winner])
        if top > self.score or (top == self.score and self.item is not None and item < self.item):
            self.score, self.item = float(top), item
            self.bound_numerator = 2 * int(lcs[winner])
            self.bound_denominator = int(lengths[winner]) + lq


class RougeLIndex:
    """A growing pool of texts answering: which item is most ROUGE-L-similar to this text?

    Items are numbered in insertion order from 0. Tokens are stored as ids: per item a code-point
    string (for LCS) and a length; per similarity floor in use, int32 (item, position) lists.
    """

    def __init__(
        self, texts: Iterable[str] = (), tokenizer: Callable[[str], list[str]] = tokenize
    ) -> None:
        self._tokenize = tokenizer
        self._texts: list[str] = []
        self._codes: list[TokenCodes] = []
        self._lengths: array[int] = array("i")
        self._token_ids: dict[str, int] = {}
        self._order: _KeyOrder | None = None
        self._postings: dict[Fraction, _PrefixPostings] = {}
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> int:
        """Append a text to the pool and return its item number."""
        item = len(self._texts)
        vocabulary = self._token_ids
        token_ids = [vocabulary.setdefault(t, len(vocabulary)) for t in self._tokenize(text)]
        self._texts.append(text)
        self._codes.append(_token_codes(token_ids))
        self._lengths.append(len(token_ids))
        if self._order is not None:
            if len(self) >= max(2 * self._order.counted_items, _REORDER_MIN_ITEMS):
                self._reorder()
            else:
                keys = self._order.sort(_token_keys(token_ids))
                for postings in self._postings.values():
                    postings.add(item, keys)
        return item

    def text(self, item: int) -> str:
        return self._texts[item]

    def best(self, text: str) -> RougeMatch:
        """Highest F-measure and the first item reaching it (score 0.0, item None if none > 0)."""
        query = self._query(text)
        if query is None:
            return RougeMatch(0.0, None)
        for floor in [*map(decision_floor, _BEST_FLOORS), Fraction(0)]:
            search = _Search(self, query, self._postings_at(floor), threshold=None)
            search.run()
            if search.item is not None:
                return RougeMatch(search.score, search.item)
        return RougeMatch(0.0, None)

    def exceeds(self, text: str, threshold: float) -> bool:
        """Whether `best(text).score > threshold`, stopping at the first item above it."""
        if threshold < 0:
            return True  # every score, 0.0 included, is above a negative threshold
        if threshold >= 1:
            return False  # rouge-score's F-measure never exceeds 1.0
        query = self._query(text)
        if query is None:
            return False
        search = _Search(self, query, self._postings_at(decision_floor(threshold)), threshold)
        search.run()
        return search.found_above_threshold

    def _query(self, text: str) -> _Query | None:
        """The candidate's keys in the global order; None when no pool item shares a token."""
        tokens = self._tokenize(text)
        known_ids = [t for t in map(self._token_ids.get, tokens) if t is not None]
        if not known_ids:
            return None
        if self._order is None:
            self._reorder()
        assert self._order is not None
        # Tokens the pool has never seen cannot be matched: the LCS skips them, the length keeps them.
        return _Query(
            length=len(tokens),
            codes=_token_codes(known_ids),
            ordered_keys=self._order.sort(_token_keys(known_ids)),
            unknown_tokens=len(tokens) - len(known_ids),
        )

    def _postings_at(self, floor: Fraction) -> _PrefixPostings:
        """The posting lists for `floor`, built from the whole pool on first use."""
        postings = self._postings.get(floor)
        if postings is None:
            postings = self._postings[floor] = _PrefixPostings(floor)
            self._fill(postings)
        return postings

    def _reorder(self) -> None:
        """Recount the global key order and rebuild every posting list under it."""
        self._order = _KeyOrder(_token_keys(_token_ids_of(codes)) for codes in self._codes)
        for floor in self._postings:
            self._postings[floor] = _PrefixPostings(floor)
            self._fill(self._postings[floor])

    def _fill(self, postings: _PrefixPostings) -> None:
        assert self._order is not None
        for item, codes in enumerate(self._codes):
            postings.add(item, self._order.sort(_token_keys(_token_ids_of(codes))))

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
- Signature bound: each item keeps a 64-bit signature with one hashed bit per key. Every shared
  key sets its bit in both, so the candidate's keys landing on the item's set bits bound the
  overlap. In instruction-like pools it rules out nearly every prefix match before any sort.
- Positional bound: if the last shared prefix key sits at position i of the candidate and j of
  the item, and A prefix keys are shared, the overlap is at most A + min(lq-1-i, lp-1-j).
- Survivors get an exact LCS (rapidfuzz's bit-parallel LCSseq over token ids written as code
  points), highest bound first, and the winner is picked with rouge-score's own float arithmetic.
- best() keeps the best verified item as a lower bound and stops once no unverified item can
  reach it: ties (equal floats) go to the lowest item, as in rouge-score's first maximum.
"""

from __future__ import annotations

import math
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
# The global key order is recounted when the pool has doubled since the last count.
_REORDER_MIN_ITEMS = 1024
# Survivors with the highest bounds are verified first; the rest only if still needed.
_FIRST_BATCH = 32
# best()'s first scan also verifies this many items with the highest signature bounds it meets.
_SEEDS = 16
# A posting entry is `length << 48 | position in the item << 32 | item`.
_ITEM_MASK = (1 << 32) - 1
_POSITION_SHIFT = 32
_POSITION_MASK = (1 << 16) - 1
_LENGTH_SHIFT = 48
_LENGTH_MASK = (1 << 15) - 1
# Per item, a 64-bit signature: one bit per key, set by a multiplicative hash (Knuth's constant).
_SIGNATURE_BITS_LOG2 = 6
_HASH_MULTIPLIER = 0x9E3779B97F4A7C15
_UINT64_MASK = (1 << 64) - 1

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


# best() looks for the maximum at or above these floors, then over the complete index (floor 0):
# a high floor keeps prefixes short, and most candidates have a neighbour above 0.4.
_BEST_FLOORS = (*map(decision_floor, (0.7, 0.5, 0.3)), Fraction(0))


@dataclass(frozen=True, slots=True)
class RougeMatch:
    """The highest F-measure against a pool and the first item reaching it (None if all are 0)."""

    score: float
    item: int | None


def _min_overlap(numerator: int, denominator: int, length: int) -> int:
    """Fewest keys a text of `length` tokens must share with any partner to reach n/d.

    The partner has at least n·length/(2d - n) tokens (lcs <= its length), so the needed
    overlap n·(length + partner)/2d is at least n·length/(2d - n); never below one key.
    """
    return max(1, -((-numerator * length) // (2 * denominator - numerator)))


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


def _key_bit(key: int) -> int:
    """The signature bit of a key: the top six bits of a multiplicative hash."""
    return ((key * _HASH_MULTIPLIER) & _UINT64_MASK) >> (64 - _SIGNATURE_BITS_LOG2)


def _key_bits(keys: Iterable[int]) -> list[int]:
    shift = 64 - _SIGNATURE_BITS_LOG2
    return [((key * _HASH_MULTIPLIER) & _UINT64_MASK) >> shift for key in keys]


def _signature(keys: Iterable[int]) -> int:
    signature = 0
    for bit in _key_bits(keys):
        signature |= 1 << bit
    return signature


def _bit_masks(keys: Iterable[int]) -> tuple[np.uint64, ...]:
    """masks[m] holds the bits that more than m keys hash to."""
    masks = [0]
    for bit in map((1).__lshift__, _key_bits(keys)):
        level = 0
        while masks[level] & bit:
            level += 1
            if level == len(masks):
                masks.append(0)
        masks[level] |= bit
    return tuple(map(np.uint64, masks))


def _popcount(values: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
    """Set bits per value, as uint8."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    bits = np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1)
    return bits.sum(axis=1, dtype=np.uint8)


def _token_keys(token_ids: Iterable[int]) -> list[int]:
    """One key per token copy: (id, copy number) packed in one int."""
    token_ids = list(token_ids)
    if len(set(token_ids)) == len(token_ids):  # no repeats: every copy number is 0
        return [token_id << _TOKEN_ID_SHIFT for token_id in token_ids]
    copies: dict[int, int] = {}
    keys = []
    for token_id in token_ids:
        copy = copies.get(token_id, 0)
        copies[token_id] = copy + 1
        keys.append((token_id << _TOKEN_ID_SHIFT) | copy)
    return keys


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
        # A Counter answers 0 for keys it lacks, without storing them.
        self.document_frequency = Counter({key: n for key, n in counts.items() if n > 1})

    def sort(self, keys: list[int]) -> list[int]:
        keys.sort(reverse=True)  # then a stable sort by frequency: (frequency, -key) order
        keys.sort(key=self.document_frequency.__getitem__)
        return keys


class _PrefixPostings:
    """Per key, one int64 entry per item prefix holding it, as `floor` requires prefixes.

    An entry packs the item's length, the key's position in the item and the item. Positions
    and lengths past their fields are stored as the field's maximum: a smaller position only
    loosens bounds, and the stored length only serves the signature test, where a smaller
    length asks for fewer shared keys (the positional bound reads exact lengths).
    """

    __slots__ = ("floor", "lists")

    def __init__(self, floor: Fraction) -> None:
        self.floor = floor
        self.lists: dict[int, array[int]] = {}

    def add(self, item: int, ordered_keys: Sequence[int]) -> None:
        length = len(ordered_keys)
        prefix = length - _min_overlap(self.floor.numerator, self.floor.denominator, length) + 1
        lists = self.lists
        base = (min(length, _LENGTH_MASK) << _LENGTH_SHIFT) | item
        for position, key in enumerate(ordered_keys[:prefix]):
            entry = base | (min(position, _POSITION_MASK) << _POSITION_SHIFT)
            pairs = lists.get(key)
            if pairs is None:
                lists[key] = array("q", (entry,))
            else:
                pairs.append(entry)


@dataclass(slots=True)
class _Query:
    length: int
    codes: TokenCodes
    ordered_keys: list[int]
    unknown_tokens: int  # first in the global order: no item holds them
    # bit_masks[m]: the signature bits that more than m of the candidate's keys hash to.
    bit_masks: tuple[np.uint64, ...]


@dataclass(slots=True)
class _Candidates:
    """Items a scan could not rule out, with their lengths and overlap upper bounds."""

    items: IntArray
    lengths: IntArray
    most_lcs: IntArray

    def __getitem__(self, selection: Any) -> _Candidates:
        return _Candidates(self.items[selection], self.lengths[selection], self.most_lcs[selection])

    def reaching(self, bound: tuple[int, int], query_length: int) -> np.ndarray[Any, Any]:
        """Which candidates' F-measure bound 2·most_lcs/(lp + lq) is at least n/d."""
        n, d = bound
        return 2 * d * self.most_lcs >= n * (self.lengths + query_length)

    def by_bound(self, query_length: int) -> _Candidates:
        """Highest F-measure bound first (a float quotient orders these small rationals exactly)."""
        return self[np.argsort(-(self.most_lcs / (self.lengths + query_length)), kind="stable")]


_NO_CANDIDATES = _Candidates(*(np.zeros(0, dtype=np.int64) for _ in range(3)))


class _Scan:
    """What one candidate needs from the pool: filtering one floor's posting lists, then LCS."""

    def __init__(self, index: RougeLIndex, query: _Query) -> None:
        self.index = index
        self.query = query

    def candidates(
        self,
        postings: _PrefixPostings,
        bound: tuple[int, int],
        seen: np.ndarray[Any, np.dtype[np.bool_]] | None,
        seeds: int = 0,
    ) -> tuple[_Candidates, _Candidates]:
        """Items not in `seen` whose F-measure can reach bound n/d (n/d >= the postings' floor).

        PPJoin: a partner shares one of the first lq - t + 1 keys of the candidate (t: fewest
        shared keys possible) and one of its own prefix keys. An entry at candidate position i
        and item position j that is an item's first shared key bounds the overlap by
        1 + min(lq-1-i, lp-1-j); the bound shrinks along an item's entries, so the entries
        dropped by it are each item's last ones and the kept ones are counted exactly. The
        positional bound then uses an item's last kept entry: A shared so far plus what is left.

        Also returns up to `seeds` other items met with the highest signature bounds: verified
        first, they give best() a lower bound close to the answer.
        """
        n, d = bound
        query = self.query
        lq, unknown = query.length, query.unknown_tokens
        scanned = query.ordered_keys[: lq - _min_overlap(n, d, lq) + 1 - unknown]
        lists = postings.lists
        found = [(p, a) for p, key in enumerate(scanned, unknown) if (a := lists.get(key))]
        if not found:
            return _NO_CANDIDATES, _NO_CANDIDATES
        entries = np.concatenate([np.frombuffer(a, dtype=np.int64) for _, a in found])
        # The signature bound first: it rules out nearly every entry, so little is left to sort.
        items = entries & _ITEM_MASK
        stored_lengths = entries >> _LENGTH_SHIFT
        overlap = self._overlap_bound(items)
        promising = self._seeds(items, stored_lengths, overlap, seeds) if seeds else _NO_CANDIDATES
        keep = overlap >= self._fewest_shared(n, d)[stored_lengths]
        if seen is not None:
            keep &= ~seen[items]
        kept = np.flatnonzero(keep)
        entries, items = entries[kept], items[kept]
        lengths = self.index._lengths[items]
        list_ends = np.cumsum([len(a) for _, a in found])
        query_positions = np.array([p for p, _ in found])[
            np.searchsorted(list_ends, kept, side="right")
        ]
        item_positions = (entries >> _POSITION_SHIFT) & _POSITION_MASK
        rest = np.minimum(lq - 1 - query_positions, lengths - 1 - item_positions)
        keep = np.flatnonzero(2 * d * (rest + 1) >= n * (lengths + lq))
        if not keep.size:
            return _NO_CANDIDATES, promising
        return self._positional(
            items[keep], item_positions[keep], query_positions[keep], n, d
        ), promising

    def _seeds(
        self, items: IntArray, stored_lengths: IntArray, overlap: IntArray, count: int
    ) -> _Candidates:
        if items.size > count:
            bound = np.minimum(overlap, stored_lengths) / (stored_lengths + self.query.length)
            items = items[np.argpartition(-bound, count - 1)[:count]]
        items = np.unique(items)
        return _Candidates(items, self.index._lengths[items], np.zeros_like(items))

    def _positional(
        self,
        items: IntArray,
        item_positions: IntArray,
        query_positions: IntArray,
        n: int,
        d: int,
    ) -> _Candidates:
        """Group entries by item (each item's entries run in key order on both sides)."""
        lq = self.query.length
        shift = lq.bit_length()
        item_shift = shift + _POSITION_MASK.bit_length()
        if len(self.index).bit_length() + item_shift < 63:
            packed = np.sort((items << item_shift) | (item_positions << shift) | query_positions)
            items, item_positions = packed >> item_shift, (packed >> shift) & _POSITION_MASK
            query_positions = packed & ((1 << shift) - 1)
        else:  # too wide to pack into one int64
            order = np.lexsort((query_positions, items))
            items, item_positions, query_positions = (
                items[order],
                item_positions[order],
                query_positions[order],
            )
        last = np.flatnonzero(np.append(items[1:] != items[:-1], True))
        shared = np.diff(last, prepend=-1)
        items, item_positions, query_positions = (
            items[last],
            item_positions[last],
            query_positions[last],
        )
        lengths = self.index._lengths[items]
        most_lcs = np.minimum(
            shared + np.minimum(lq - 1 - query_positions, lengths - 1 - item_positions),
            self._overlap_bound(items),
        )
        grouped = _Candidates(items, lengths, most_lcs)
        return grouped[grouped.reaching((n, d), lq)]

    def _fewest_shared(self, n: int, d: int) -> IntArray:
        """Per item length lp, the fewest shared keys reaching n/d: ceil(n·(lp + lq) / 2d)."""
        lengths = np.arange(self.index._max_length + 1, dtype=np.int64)
        return -((-n * (lengths + self.query.length)) // (2 * d))

    def _overlap_bound(self, items: IntArray) -> IntArray:
        """Candidate keys whose signature bit the item has set: at least the shared keys.

        Each shared key sets the same bit in both signatures, so summing the candidate's keys
        per bit over the bits the item has set counts every shared key (and some that collide).
        """
        signatures = self.index._signatures[items]
        masks = self.query.bit_masks
        bound = _popcount(signatures & masks[0])
        if len(masks) > 3:  # a uint8 sum could overflow
            bound = bound.astype(np.int64)
        for mask in masks[1:]:
            bound += _popcount(signatures & mask)
        return bound

    def lcs_scores(self, candidates: _Candidates) -> tuple[IntArray, np.ndarray[Any, Any]]:
        """Exact LCS, then rouge-score's float F-measure (numpy float64 repeats its operations).

        Every candidate shares a token with the query, so lcs >= 1 and no division is 0/0.
        """
        codes = self.index._codes[: len(self.index)][candidates.items].tolist()
        lcs = process.cdist(
            [self.query.codes], codes, scorer=LCSseq.similarity, dtype=np.int64, workers=1
        )[0]
        precision = lcs / candidates.lengths
        recall = lcs / self.query.length
        return lcs, 2.0 * precision * recall / (precision + recall)


class _Best:
    """The running maximum of best(): highest float, lowest item on ties, and its rational."""

    __slots__ = ("bound", "item", "query_length", "score")

    def __init__(self, query_length: int) -> None:
        self.query_length = query_length
        self.score = 0.0
        self.item = -1
        self.bound = (0, 1)  # 2·lcs / (lp + lq) of the best item: a lower bound on the answer

    def update(self, candidates: _Candidates, lcs: IntArray, scores: np.ndarray[Any, Any]) -> None:
        top = scores.max()
        winners = np.flatnonzero(scores == top)
        winner = winners[np.argmin(candidates.items[winners])]
        item = int(candidates.items[winner])
        if top > self.score or (top == self.score and item < self.item):
            self.score, self.item = float(top), item
            self.bound = (2 * int(lcs[winner]), int(candidates.lengths[winner]) + self.query_length)

    def reaches(self, floor: Fraction) -> bool:
        return self.bound[0] * floor.denominator >= floor.numerator * self.bound[1]


def _verify_by_bound(
    scan: _Scan, candidates: _Candidates, best: _Best, seen: np.ndarray[Any, Any]
) -> None:
    """Verify in order of falling bound, in growing batches, until no bound reaches the best."""
    lq = scan.query.length
    candidates = candidates.by_bound(lq)
    start, size = 0, _FIRST_BATCH
    while start < candidates.items.size:
        batch = candidates[start : start + size]
        reaching = batch.reaching(best.bound, lq)
        if not reaching[0]:
            return  # the rest have lower bounds still
        batch = batch[reaching & ~seen[batch.items]]
        if batch.items.size:
            seen[batch.items] = True
            best.update(batch, *scan.lcs_scores(batch))
        start, size = start + size, size * 4


class RougeLIndex:
    """A growing pool of texts answering: which item is most ROUGE-L-similar to this text?

    Items are numbered in insertion order from 0. Tokens are stored as ids: per item a code-point
    string (for LCS) and a length; per similarity floor in use, int64 posting lists.
    """

    def __init__(
        self, texts: Iterable[str] = (), tokenizer: Callable[[str], list[str]] = tokenize
    ) -> None:
        self._tokenize = tokenizer
        self._texts: list[str] = []
        # Grown by doubling, so a query indexes them without copying the pool.
        self._codes: np.ndarray[Any, np.dtype[np.object_]] = np.empty(16, dtype=object)
        self._lengths: IntArray = np.zeros(16, dtype=np.int64)
        self._signatures: np.ndarray[Any, np.dtype[np.uint64]] = np.zeros(16, dtype=np.uint64)
        self._max_length = 0
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
        if item > _ITEM_MASK:
            raise OverflowError("a RougeLIndex holds at most 2**32 items")
        vocabulary = self._token_ids
        token_ids = [vocabulary.setdefault(t, len(vocabulary)) for t in self._tokenize(text)]
        if item == self._lengths.size:
            self._codes = np.concatenate([self._codes, np.empty(item, dtype=object)])
            self._lengths = np.concatenate([self._lengths, np.zeros(item, dtype=np.int64)])
            self._signatures = np.concatenate([self._signatures, np.zeros(item, dtype=np.uint64)])
        self._texts.append(text)
        self._codes[item] = _token_codes(token_ids)
        self._lengths[item] = len(token_ids)
        self._max_length = max(self._max_length, len(token_ids))
        keys = _token_keys(token_ids)
        self._signatures[item] = _signature(keys)
        if self._order is not None:
            if len(self) >= max(2 * self._order.counted_items, _REORDER_MIN_ITEMS):
                self._reorder()
            else:
                self._order.sort(keys)
                for postings in self._postings.values():
                    postings.add(item, keys)
        return item

    def text(self, item: int) -> str:
        return self._texts[item]

    def best(self, text: str, within: int | None = None) -> RougeMatch:
        """Highest F-measure and the first item reaching it (score 0.0, item None if none > 0),
        among the first `within` items (all by default): the answer of the pool as it stood
        then, since items are only ever appended.

        Scans floors from high to low. Every verified item raises a running best whose rational
        F-measure is a lower bound on the answer; a scan at floor f with bound max(best, f)
        finds every unverified item that could tie or beat it, so once best >= f it is final.
        The next floor is the highest one at or below the best so far, or else the next lower.
        """
        query = self._query(text)
        if query is None:
            return RougeMatch(0.0, None)
        scan = _Scan(self, query)
        best = _Best(query.length)
        seen = np.zeros(len(self), dtype=np.bool_)
        seen[len(self) if within is None else max(within, 0) :] = True  # added since: never a match
        next_floor, seeds = 0, _SEEDS
        while True:
            reached = next(i for i, f in enumerate(_BEST_FLOORS) if best.reaches(f))
            next_floor = min(next_floor, reached)
            floor = _BEST_FLOORS[next_floor]
            bound = best.bound if best.reaches(floor) else (floor.numerator, floor.denominator)
            candidates, promising = scan.candidates(self._postings_at(floor), bound, seen, seeds)
            promising = promising[~seen[promising.items]]
            if promising.items.size:
                seen[promising.items] = True
                best.update(promising, *scan.lcs_scores(promising))
            _verify_by_bound(scan, candidates, best, seen)
            if best.reaches(floor):
                return (
                    RougeMatch(best.score, best.item) if best.item >= 0 else RougeMatch(0.0, None)
                )
            next_floor, seeds = next_floor + 1, 0

    def exceeds(self, text: str, threshold: float) -> bool:
        """Whether `best(text).score > threshold`, stopping at the first item above it."""
        if threshold < 0:
            return True  # every score, 0.0 included, is above a negative threshold
        if threshold >= 1:
            return False  # rouge-score's F-measure never exceeds 1.0
        query = self._query(text)
        if query is None:
            return False
        floor = decision_floor(threshold)
        scan = _Scan(self, query)
        candidates, _ = scan.candidates(
            self._postings_at(floor), (floor.numerator, floor.denominator), None
        )
        if candidates.items.size > _FIRST_BATCH:  # likely matches first
            candidates = candidates.by_bound(query.length)
        for batch in (candidates[:_FIRST_BATCH], candidates[_FIRST_BATCH:]):
            if batch.items.size and bool((scan.lcs_scores(batch)[1] > threshold).any()):
                return True
        return False

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
        keys = _token_keys(known_ids)
        return _Query(
            length=len(tokens),
            codes=_token_codes(known_ids),
            ordered_keys=self._order.sort(keys),
            unknown_tokens=len(tokens) - len(known_ids),
            bit_masks=_bit_masks(keys),
        )

    def _postings_at(self, floor: Fraction) -> _PrefixPostings:
        """The posting lists for `floor`, built from the whole pool on first use."""
        postings = self._postings.get(floor)
        if postings is None:
            postings = self._postings[floor] = _PrefixPostings(floor)
            self._fill([postings])
        return postings

    def _reorder(self) -> None:
        """Recount the global key order and rebuild every posting list under it."""
        codes = self._codes[: len(self)].tolist()
        self._order = _KeyOrder(_token_keys(_token_ids_of(c)) for c in codes)
        self._postings = {floor: _PrefixPostings(floor) for floor in self._postings}
        self._fill(list(self._postings.values()))

    def _fill(self, postings: list[_PrefixPostings]) -> None:
        """Add every item to each of `postings`, sorting its keys once."""
        assert self._order is not None
        for item, codes in enumerate(self._codes[: len(self)].tolist()):
            keys = self._order.sort(_token_keys(_token_ids_of(codes)))
            for floor_postings in postings:
                floor_postings.add(item, keys)

"""Exact ROUGE-L index (rouge-score semantics). Placeholder interface; see issue for the fast version."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


def tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming."""
    tokens = re.split(r"\s+", _NON_ALNUM.sub(" ", text.lower()))
    return [t for t in tokens if _VALID_TOKEN.match(t)]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_fmeasure(target: Sequence[str], prediction: Sequence[str]) -> float:
    if not target or not prediction:
        return 0.0
    lcs = _lcs(target, prediction)
    precision = lcs / len(prediction)
    recall = lcs / len(target)
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


@dataclass(frozen=True, slots=True)
class RougeMatch:
    score: float
    item: int | None


class RougeLIndex:
    """A growing pool of texts answering: which item is most ROUGE-L-similar to this text?"""

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self._texts: list[str] = []
        self._tokens: list[list[str]] = []
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> int:
        self._texts.append(text)
        self._tokens.append(tokenize(text))
        return len(self._texts) - 1

    def text(self, item: int) -> str:
        return self._texts[item]

    def best(self, text: str) -> RougeMatch:
        """Highest F-measure and the first item reaching it (score 0.0, item None if none > 0)."""
        query = tokenize(text)
        best = RougeMatch(0.0, None)
        for item, tokens in enumerate(self._tokens):
            score = rouge_l_fmeasure(tokens, query)
            if score > best.score:
                best = RougeMatch(score, item)
        return best

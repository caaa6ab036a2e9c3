"""Greedy near-duplicate removal in input order: the paper's ROUGE-L filter for any list of texts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex, Tokenizer


@dataclass(frozen=True, slots=True)
class DedupeVerdict:
    """Whether one text was kept; for an explained rejection, its score and nearest text."""

    kept: bool
    max_rouge: float | None = None
    nearest: str | None = None


def dedupe_texts(
    texts: Iterable[str],
    *,
    threshold: float = 0.7,
    against: Iterable[str] = (),
    explain_rejections: bool = False,
    tokenizer: Tokenizer = "rouge_score",
) -> Iterator[DedupeVerdict]:
    """One verdict per text, in order: kept when its max ROUGE-L F-measure against `against`
    and the texts kept so far is at most `threshold` (rejected only when strictly above, as in
    the paper).

    Kept texts need only the yes/no answer, which stops early; the exact score and nearest text
    are computed for rejected texts only, and only when asked.
    """
    index = RougeLIndex(against, tokenizer=TOKENIZERS[tokenizer])
    for text in texts:
        if not index.exceeds(text, threshold):
            index.add(text)
            yield DedupeVerdict(kept=True)
        elif explain_rejections:
            match = index.best(text)
            nearest = index.text(match.item) if match.item is not None else None
            yield DedupeVerdict(kept=False, max_rouge=match.score, nearest=nearest)
        else:
            yield DedupeVerdict(kept=False)

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


KEPT = DedupeVerdict(kept=True)
REJECTED = DedupeVerdict(kept=False)


def dedupe_texts(
    texts: Iterable[str],
    *,
    threshold: float = 0.7,
    against: Iterable[str] = (),
    explain_rejections: bool = False,
    tokenizer: Tokenizer = "rouge_score",
    workers: int = 1,
    block_size: int | None = None,
) -> Iterator[DedupeVerdict]:
    """One verdict per text, in order: kept when its max ROUGE-L F-measure against `against`
    and the texts kept so far is at most `threshold` (rejected only when strictly above, as in
    the paper).

    Kept texts need only the yes/no answer, which stops early; the exact score and nearest text
    are computed for rejected texts only, and only when asked. With `workers` > 1 the verdicts
    are the same, computed by that many processes (see dedupe_parallel).
    """
    if workers > 1:
        from app.selfinstruct.dedupe_parallel import parallel_verdicts  # imports this module

        return parallel_verdicts(
            texts,
            threshold=threshold,
            against=against,
            explain_rejections=explain_rejections,
            tokenizer=tokenizer,
            workers=workers,
            block_size=block_size,
        )
    return serial_verdicts(
        texts,
        threshold=threshold,
        against=against,
        explain_rejections=explain_rejections,
        tokenizer=tokenizer,
    )


def serial_verdicts(
    texts: Iterable[str],
    *,
    threshold: float,
    against: Iterable[str],
    explain_rejections: bool,
    tokenizer: Tokenizer,
) -> Iterator[DedupeVerdict]:
    """The greedy pass in this process: one index of the `against` texts and the kept ones."""
    index = RougeLIndex(against, tokenizer=TOKENIZERS[tokenizer])
    for text in texts:
        if not index.exceeds(text, threshold):
            index.add(text)
            yield KEPT
        elif explain_rejections:
            match = index.best(text)
            nearest = index.text(match.item) if match.item is not None else None
            yield DedupeVerdict(kept=False, max_rouge=match.score, nearest=nearest)
        else:
            yield REJECTED

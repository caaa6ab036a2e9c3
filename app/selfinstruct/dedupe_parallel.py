"""The greedy dedupe on several cores, with exactly the verdicts of one process.

Each worker process holds the pool: the `against` texts and every text kept so far. Candidates
come in blocks, dealt out round-robin. For each of its candidates a worker answers: is it above
the threshold against the pool, and which earlier candidates of the block (kept or not) might it
be above the threshold with? The second answer is a bound, from the token LCS of every pair of
the block in one rapidfuzz call, that never misses a pair above the threshold.

This process then goes through the block in order. A text is above the threshold against the
pool plus the block's earlier kept texts exactly when it is against one of the two; and only
the kept ones among its possible partners can be, so each text needs an exact check here only
against those (usually none: near-duplicates within one block are rare). The kept texts are
therefore the one-process greedy result. They travel with the next block for the workers to add.

For an explained rejection, the best match over the union is the better of the two parts' best
matches, the pool's on a tie: the pool's items come first, and `best` names the first item
reaching the maximum. A kept text that is not a possible partner scores below the threshold,
so it can neither win nor tie against a match above it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from app.selfinstruct.dedupe import KEPT, REJECTED, DedupeVerdict, serial_verdicts
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex, Tokenizer, decision_floor

# Candidates per worker and block: enough to make the messages few, few enough that the pair
# matrix, the texts read ahead and the output held back stay small.
BLOCK_PER_WORKER = 256

# (score, nearest text); (0.0, None) when nothing shares a token.
Match = tuple[float, str | None]
NO_MATCH: Match = (0.0, None)


@dataclass(frozen=True, slots=True)
class _Answer:
    """A worker's answer for one candidate: whether it is above the threshold against the pool;
    the earlier texts of the block that might be (positions; not looked for when the text is
    above the pool and rejections are not explained); and, when they are, its pool match."""

    over_pool: bool
    near_block: tuple[int, ...]
    pool_match: Match | None = None


def _best(index: RougeLIndex, text: str) -> Match:
    match = index.best(text)
    return match.score, index.text(match.item) if match.item is not None else None


@dataclass(slots=True)
class _Pool:
    """A worker's state: the pool index and the decision settings."""

    index: RougeLIndex
    tokenizer: Tokenizer
    threshold: float
    explain: bool

    def check(self, block: list[str], start: int, step: int) -> list[_Answer]:
        """Answers for block[start::step]."""
        mine = range(start, len(block), step)
        near = _near_earlier(block, mine, TOKENIZERS[self.tokenizer], self.threshold)
        return [self._answer(block[j], partners) for j, partners in zip(mine, near, strict=True)]

    def _answer(self, text: str, near_block: tuple[int, ...]) -> _Answer:
        if not self.index.exceeds(text, self.threshold):
            return _Answer(False, near_block)
        if not self.explain:
            return _Answer(True, ())
        return _Answer(True, near_block, _best(self.index, text))


def _near_earlier(
    block: list[str], mine: range, tokenize: Callable[[str], list[str]], threshold: float
) -> list[tuple[int, ...]]:
    """Per text of `mine`: the earlier texts of the block that might be above the threshold with
    it (every one that is, perhaps a few more).

    Above the threshold needs a rational F-measure 2·lcs/(la + lb) of at least decision_floor;
    the token LCS of every pair comes from one rapidfuzz call (hash collisions only add).
    """
    tokens = [tokenize(text) for text in block]
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    rows = np.array(mine, dtype=np.int64)
    lcs = process.cdist(
        [tokens[j] for j in mine], tokens, scorer=LCSseq.similarity, dtype=np.int32, workers=1
    ).astype(np.int64)
    floor = decision_floor(threshold)
    reach = 2 * floor.denominator * lcs >= floor.numerator * (
        lengths[None, :] + lengths[rows, None]
    )
    earlier = np.arange(len(block))[None, :] < rows[:, None]
    hits = reach & earlier & (lcs > 0)  # a pair sharing no token scores 0.0 and beats nothing
    partners: list[tuple[int, ...]] = [()] * len(rows)
    for r in np.flatnonzero(hits.any(axis=1)).tolist():
        partners[r] = tuple(np.flatnonzero(hits[r]).tolist())
    return partners


def _serve(conn: Connection, against: list[str], settings: tuple[Tokenizer, float, bool]) -> None:
    """A worker: answer ('check', kept since, block, start, step) and ('best', texts) until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pool = _Pool(RougeLIndex(against, tokenizer=TOKENIZERS[settings[0]]), *settings)
    while (message := conn.recv()) is not None:
        if message[0] == "check":
            _, kept, block, start, step = message
            for text in kept:
                pool.index.add(text)
            conn.send(pool.check(block, start, step))
        else:
            conn.send([_best(pool.index, text) for text in message[1]])


class _Workers:
    """Worker processes, each holding a copy of the pool."""

    def __init__(self, count: int, against: list[str], settings: tuple[Tokenizer, float, bool]):
        # spawn, not fork: forking while another thread (a progress bar) holds a lock can leave
        # the child stuck on it.
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._processes: list[BaseProcess] = []
        for _ in range(count):
            parent, child = context.Pipe()
            worker = context.Process(target=_serve, args=(child, against, settings), daemon=True)
            worker.start()
            child.close()
            self._conns.append(parent)
            self._processes.append(worker)

    def send_check(self, kept: list[str], block: list[str]) -> None:
        step = len(self._conns)
        for start, conn in enumerate(self._conns):
            conn.send(("check", kept, block, start, step))

    def send_best(self, texts: list[str]) -> None:
        step = len(self._conns)
        for start, conn in enumerate(self._conns):
            conn.send(("best", texts[start::step]))

    def receive(self, size: int) -> list[Any]:
        """The answers to the last send, in the order of its texts."""
        step = len(self._conns)
        merged: list[Any] = [None] * size
        for start, conn in enumerate(self._conns):
            try:
                merged[start::step] = conn.recv()
            except EOFError as exc:
                raise RuntimeError("a dedupe worker process exited unexpectedly") from exc
        return merged

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # already gone
                conn.send(None)
            conn.close()
        for worker in self._processes:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join()


class _Block:
    """One block's in-order pass in this process, over the workers' answers.

    A text is checked exactly against the kept ones among the earlier texts the workers named
    (its possible partners); no other kept text can reach the threshold with it, nor tie with
    a match above it.
    """

    def __init__(self, tokenizer: Tokenizer, threshold: float, explain: bool) -> None:
        self._tokenize = TOKENIZERS[tokenizer]
        self._threshold = threshold
        self._explain = explain
        self._kept_at: list[bool] = []
        self.kept: list[str] = []

    def resolve(
        self, block: list[str], answers: list[_Answer]
    ) -> tuple[list[Match | None], list[int]]:
        """Per text: None if kept, else its match so far; and the positions of the rejected
        texts whose pool match is still to be asked for."""
        verdicts: list[Match | None] = []
        ask_pool: list[int] = []
        for position, (text, answer) in enumerate(zip(block, answers, strict=True)):
            partners = [block[i] for i in answer.near_block if self._kept_at[i]]
            local = RougeLIndex(partners, tokenizer=self._tokenize) if partners else None
            near_kept = local is not None and local.exceeds(text, self._threshold)
            self._kept_at.append(not answer.over_pool and not near_kept)
            if self._kept_at[-1]:
                self.kept.append(text)
                verdicts.append(None)
            elif not self._explain:
                verdicts.append(NO_MATCH)
            else:
                local_match = _best(local, text) if local is not None else NO_MATCH
                if answer.pool_match is None:
                    ask_pool.append(position)
                    verdicts.append(local_match)
                else:
                    verdicts.append(union_best(answer.pool_match, local_match))
        return verdicts, ask_pool


def union_best(pool: Match, later: Match) -> Match:
    """The best match over the pool followed by later items: the pool's on a tie."""
    return pool if pool[0] >= later[0] else later


def _read_block(texts: Iterator[str], size: int) -> tuple[list[str], Exception | None]:
    """The next block, and the error that ended it early (raised once the texts before it are
    answered, as one process would)."""
    block: list[str] = []
    try:
        block.extend(islice(texts, size))
    except Exception as exc:  # re-raised by the caller, in input order
        return block, exc
    return block, None


def parallel_verdicts(
    texts: Iterable[str],
    *,
    threshold: float,
    against: Iterable[str],
    explain_rejections: bool,
    tokenizer: Tokenizer,
    workers: int,
    block_size: int | None = None,
) -> Iterator[DedupeVerdict]:
    """`dedupe_texts`'s verdicts, computed by `workers` processes.

    The texts are read one block ahead of the verdicts, while the workers check the block before.
    An input that fits in one block is deduplicated here, without starting any process.
    """
    size = block_size or BLOCK_PER_WORKER * workers
    against = list(against)
    remaining = iter(texts)
    block, error = _read_block(remaining, size)
    if len(block) < size:
        yield from serial_verdicts(
            block,
            threshold=threshold,
            against=against,
            explain_rejections=explain_rejections,
            tokenizer=tokenizer,
        )
        if error is not None:
            raise error
        return
    pool = _Workers(workers, against, (tokenizer, threshold, explain_rejections))
    try:
        kept: list[str] = []
        while block:
            pool.send_check(kept, block)
            following, following_error = ([], None) if error else _read_block(remaining, size)
            in_order = _Block(tokenizer, threshold, explain_rejections)
            matches, ask_pool = in_order.resolve(block, pool.receive(len(block)))
            if ask_pool:  # the workers have not added this block's kept texts yet
                pool.send_best([block[i] for i in ask_pool])
                for i, pool_match in zip(ask_pool, pool.receive(len(ask_pool)), strict=True):
                    matches[i] = union_best(pool_match, matches[i] or NO_MATCH)
            yield from map(_verdict_of(explain_rejections), matches)
            if error is not None:
                raise error
            block, error, kept = following, following_error, in_order.kept
    finally:
        pool.close()


def _verdict_of(explain: bool) -> Callable[[Match | None], DedupeVerdict]:
    def verdict(match: Match | None) -> DedupeVerdict:
        if match is None:
            return KEPT
        if not explain:
            return REJECTED
        return DedupeVerdict(kept=False, max_rouge=match[0], nearest=match[1])

    return verdict

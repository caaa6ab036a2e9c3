"""The per-process cache of each job's ROUGE-L index (seeds and accepted instructions).

Rebuilding a job's index means re-tokenising every seed and accepted instruction. A worker keeps
the index of the jobs it serves; when another worker has moved the job on, it adds only the
rounds it missed (with several workers, rounds alternate between them, and a full rebuild per
round at 40K instructions took most of a paper-scale job's time).
"""

from __future__ import annotations

import bisect
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Instruction, Job
from app.selfinstruct.balance import count_verbs
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex


@dataclass
class JobIndex:
    rounds_completed: int
    index: RougeLIndex
    machine_texts: list[str]
    verbs: Counter[str] | None  # accepted instructions per root verb, when the job caps them
    text_rounds: list[int] = field(default_factory=list)  # the round of each machine text

    def add(self, rows: Sequence[tuple[int, str]]) -> None:
        self.machine_texts.extend(text for _, text in rows)
        self.text_rounds.extend(round_no for round_no, _ in rows)

    def pool_through(self, round_no: int) -> list[str]:
        """The machine instructions accepted in rounds up to `round_no`, in pool order."""
        return self.machine_texts[: bisect.bisect_right(self.text_rounds, round_no)]


_indexes: dict[uuid.UUID, JobIndex] = {}


def accepted_texts(
    session: Session, job_id: uuid.UUID, after_round: int = 0
) -> list[tuple[int, str]]:
    """Accepted instructions (round, text) in pool order (round, then slot), from `after_round`
    + 1 on."""
    return list(
        session.execute(  # rows unpack as (round, text)
            select(Instruction.round, Instruction.text)
            .where(
                Instruction.job_id == job_id,
                Instruction.accepted.is_(True),
                Instruction.variant == 0,
                Instruction.round > after_round,
            )
            .order_by(Instruction.round, Instruction.slot)
        )
    )  # type: ignore[arg-type]


def load_job_index(
    session: Session, job: Job, seed_texts: Sequence[str], options: GenerationOptions
) -> JobIndex:
    """The job's index as of its stored rounds: cached, caught up, or built."""
    cached = _indexes.get(job.id)
    if cached is not None and cached.rounds_completed == job.rounds_completed:
        return cached  # a round's texts commit with its count: nothing was missed
    if cached is not None and cached.rounds_completed < job.rounds_completed:
        missed = accepted_texts(session, job.id, after_round=cached.rounds_completed)
        for _, text in missed:
            cached.index.add(text)
        cached.add(missed)
        if cached.verbs is not None:
            cached.verbs.update(count_verbs([text for _, text in missed]))
        cached.rounds_completed = job.rounds_completed
        return cached
    rows = accepted_texts(session, job.id)
    machine = [text for _, text in rows]
    tokenizer = TOKENIZERS[options.dedupe_tokenizer]
    index = RougeLIndex([*seed_texts, *machine], tokenizer=tokenizer)
    capped = options.balance is not None and options.balance.max_per_verb is not None
    verbs = count_verbs(machine) if capped else None
    cached = JobIndex(job.rounds_completed, index, [], verbs)
    cached.add(rows)
    _indexes[job.id] = cached
    return cached


def note_stored_round(job_id: uuid.UUID, round_no: int, accepted: Sequence[str]) -> None:
    """The round's accepted texts, already in the cached index since its acceptance, are now
    in the pool; the caller forgets the index if the round's transaction fails to commit."""
    cached = _indexes.get(job_id)
    if cached is not None:
        cached.rounds_completed = round_no
        cached.add([(round_no, text) for text in accepted])


def forget_job_index(job_id: uuid.UUID) -> None:
    _indexes.pop(job_id, None)

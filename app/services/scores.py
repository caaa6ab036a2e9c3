"""Each candidate's highest ROUGE-L and nearest text, stored after its round's commit.

A round's decisions need only `RougeLIndex.exceeds`; the exact maximum and nearest text (what
users browse and export beside every candidate) are searched afterwards so that the search never
holds up acceptance. A worker that dies between a round's commit and its score write leaves
those rows unscored; each candidate keeps the size of the pool it was compared with
(`Instruction.pool_items`), so the next task of the job, or the job's completion, scores them
exactly as the dead worker would have.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update

from app.db import session_scope
from app.models import Instruction, Job
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import score_decisions
from app.selfinstruct.types import CandidateDecision
from app.services.job_index import load_job_index
from app.services.seed_sets import load_seed_tasks

log = logging.getLogger(__name__)


@dataclass
class PendingScores:
    """A stored round's candidates (by row id) without their highest ROUGE-L and nearest text
    yet, and the index that decided them (it only grows, so their pool is its prefix)."""

    job_id: uuid.UUID
    rows: list[tuple[uuid.UUID, CandidateDecision]]
    index: RougeLIndex


def store_scores(pending: PendingScores) -> None:
    """Store the highest ROUGE-L and nearest text of a stored round's candidates: rouge-score's
    answers against the pool each was compared with. Best effort, like the journal: the
    decisions are stored already, and a failure here leaves the rows to `store_missed_scores`."""
    started = time.perf_counter()
    scored = score_decisions([d for _, d in pending.rows], pending.index)
    scoring_s = time.perf_counter() - started
    try:
        with session_scope() as session:
            session.execute(
                update(Instruction),
                [
                    {"id": row_id, "max_rouge": d.max_rouge, "nearest": d.nearest}
                    for (row_id, _), d in zip(pending.rows, scored, strict=True)
                ],
            )
            session.execute(
                update(Job)
                .where(Job.id == pending.job_id)
                .values(dedupe_s=func.coalesce(Job.dedupe_s, 0.0) + scoring_s)
            )
    except Exception:
        log.warning("job %s: ROUGE-L scores not stored", pending.job_id, exc_info=True)


def missed_scores(job_id: uuid.UUID) -> PendingScores | None:
    """The job's stored candidates whose score write never happened, with the job's index
    (built or caught up from the database: it holds every pool each was compared with)."""
    with session_scope() as session:
        rows = session.execute(
            select(Instruction.id, Instruction.text, Instruction.pool_items)
            .where(
                Instruction.job_id == job_id,
                Instruction.pool_items.is_not(None),
                Instruction.max_rouge.is_(None),
            )
            .order_by(Instruction.round, Instruction.slot)
        ).all()
        job = session.get(Job, job_id)
        if not rows or job is None:
            return None
        options = GenerationOptions.model_validate(job.options)
        seeds = load_seed_tasks(session, job.seed_set_id)
        state = load_job_index(session, job, [s.instruction for s in seeds], options)
    # Scoring reads only the text and the pool size; the stored verdict stays as it is.
    decisions = [
        (row_id, CandidateDecision(text, 0, None, pool_items=pool_items))
        for row_id, text, pool_items in rows
    ]
    return PendingScores(job_id, decisions, state.index)


def store_missed_scores(job_id: uuid.UUID) -> int:
    """Score what a dead worker left unscored; the number of candidates scored."""
    pending = missed_scores(job_id)
    if pending is None:
        return 0
    log.info("job %s: storing %d ROUGE-L scores a stopped task left", job_id, len(pending.rows))
    store_scores(pending)
    return len(pending.rows)

"""A job's mix so far, read from its rows: what balancing steers by and what its status shows."""

from __future__ import annotations

import uuid

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models import Instance, Instruction
from app.schemas import BalanceProgress, ShareProgress
from app.selfinstruct.balance import MixSoFar
from app.selfinstruct.options import BalanceTargets
from app.selfinstruct.types import InstructionReason


def mix_so_far(session: Session, job_id: uuid.UUID) -> MixSoFar:
    """Classification and input counts among accepted instructions steps 2 and 3 have decided."""
    classified, classification = session.execute(
        select(
            func.count(Instruction.is_classification),
            func.coalesce(func.sum(case((Instruction.is_classification.is_(True), 1), else_=0)), 0),
        ).where(
            Instruction.job_id == job_id,
            Instruction.accepted.is_(True),
            Instruction.variant == 0,
        )
    ).one()
    with_instances, with_input = session.execute(
        select(
            func.count(func.distinct(Instance.instruction_id)),
            func.count(func.distinct(case((Instance.input != "", Instance.instruction_id)))),
        ).where(Instance.job_id == job_id, Instance.accepted.is_(True))
    ).one()
    return MixSoFar(int(classified), int(classification), int(with_instances), int(with_input))


def balance_progress(
    targets: BalanceTargets, mix: MixSoFar, rejected: dict[str, int]
) -> BalanceProgress:
    return BalanceProgress(
        classification_share=ShareProgress(
            target=targets.classification_share,
            actual=MixSoFar.share(mix.classification, mix.classified),
            known=mix.classified,
        ),
        input_share=ShareProgress(
            target=targets.input_share,
            actual=MixSoFar.share(mix.with_input, mix.with_instances),
            known=mix.with_instances,
        ),
        max_per_verb=targets.max_per_verb,
        rejected_at_verb_cap=rejected.get(InstructionReason.VERB_CAP.value, 0),
    )

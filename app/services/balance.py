"""A job's mix so far, read from its rows: what balancing steers by and what its status shows."""

from __future__ import annotations

import uuid

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models import Instance, InstancesState, Instruction
from app.schemas import BalanceProgress, ShareProgress
from app.selfinstruct.balance import MixSoFar
from app.selfinstruct.options import BalanceTargets
from app.selfinstruct.types import InstructionReason


def mix_so_far(
    session: Session, job_id: uuid.UUID, *, through_round: int | None = None
) -> MixSoFar:
    """Classification and input counts among accepted instructions steps 2 and 3 have decided;
    with `through_round`, among those of rounds up to that one only."""
    in_rounds = () if through_round is None else (Instruction.round <= through_round,)
    classified, classification = session.execute(
        select(
            func.count(Instruction.is_classification),
            func.coalesce(func.sum(case((Instruction.is_classification.is_(True), 1), else_=0)), 0),
        ).where(
            Instruction.job_id == job_id,
            Instruction.accepted.is_(True),
            Instruction.variant == 0,
            *in_rounds,
        )
    ).one()
    instances = select(
        func.count(func.distinct(Instance.instruction_id)),
        func.count(func.distinct(case((Instance.input != "", Instance.instruction_id)))),
    ).where(Instance.job_id == job_id, Instance.accepted.is_(True))
    if through_round is not None:
        instances = instances.join(Instruction, Instance.instruction_id == Instruction.id).where(
            *in_rounds
        )
    with_instances, with_input = session.execute(instances).one()
    return MixSoFar(int(classified), int(classification), int(with_instances), int(with_input))


def undecided_through(session: Session, job_id: uuid.UUID, through_round: int | None) -> int:
    """Accepted instructions of rounds up to `through_round` (None: of every round) still
    waiting for steps 2 and 3."""
    query = (
        select(func.count())
        .select_from(Instruction)
        .where(
            Instruction.job_id == job_id,
            Instruction.accepted.is_(True),
            Instruction.instances_state == InstancesState.PENDING,
        )
    )
    if through_round is not None:
        query = query.where(Instruction.round <= through_round)
    return int(session.scalar(query) or 0)


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

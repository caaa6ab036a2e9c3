"""step-1 answer journal: answers of rounds not yet stored, kept across a dead worker

Revision ID: 20261203a
Revises: 20261202a
Create Date: 2026-12-03 07:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import app.models
from alembic import op


revision: str = '20261203a'
down_revision: str | None = '20261202a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'llm_answers',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('job_id', sa.Uuid(), nullable=False),
        sa.Column('round', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('finish_reason', sa.String(length=32), nullable=True),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('latency_ms', sa.Integer(), nullable=False),
        sa.Column('recorded', sa.Boolean(), nullable=False),
        sa.Column('created_at', app.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_llm_answers_job_id_jobs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_llm_answers')),
        sa.UniqueConstraint('job_id', 'round', 'position', name=op.f('uq_llm_answers_job_id_round_position')),
    )
    with op.batch_alter_table('llm_answers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_llm_answers_job_id'), ['job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('llm_answers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_llm_answers_job_id'))
    op.drop_table('llm_answers')

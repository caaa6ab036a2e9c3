"""job summaries: cached progress counters per job

Revision ID: 20261201a
Revises: 20261129c
Create Date: 2026-12-01 22:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '20261201a'
down_revision: str | None = '20261129c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'job_summaries',
        sa.Column('job_id', sa.Uuid(), nullable=False),
        sa.Column('progress', sa.JSON(), nullable=False),
        sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['job_id'], ['jobs.id'], name=op.f('fk_job_summaries_job_id_jobs'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('job_id', name=op.f('pk_job_summaries')),
    )


def downgrade() -> None:
    op.drop_table('job_summaries')

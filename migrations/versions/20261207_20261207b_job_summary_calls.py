"""job summaries: the job's LLM calls per purpose, for the live projection

Revision ID: 20261207b
Revises: 20261207a
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '20261207b'
down_revision: str | None = '20261207a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job_summaries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('calls', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_summaries', schema=None) as batch_op:
        batch_op.drop_column('calls')

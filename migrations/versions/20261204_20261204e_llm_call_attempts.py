"""llm call attempts: HTTP attempts per call and the kinds of those that failed

Revision ID: 20261204e
Revises: 20261203a
Create Date: 2026-12-04 07:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '20261204e'
down_revision: str | None = '20261203a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('llm_calls', 'llm_answers')


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column('attempts', sa.Integer(), server_default='1', nullable=False)
            )
            batch_op.add_column(sa.Column('attempt_errors', sa.String(length=200), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('attempt_errors')
            batch_op.drop_column('attempts')

"""instructions: the pool size each candidate was compared with, to store missed scores

Revision ID: 20261207a
Revises: 20261206b
Create Date: 2026-12-07 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '20261207a'
down_revision: str | None = '20261206b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSCORED = sa.text('pool_items IS NOT NULL AND max_rouge IS NULL')


def upgrade() -> None:
    with op.batch_alter_table('instructions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_items', sa.Integer(), nullable=True))
        batch_op.create_index(
            'ix_instructions_unscored',
            ['job_id'],
            unique=False,
            postgresql_where=UNSCORED,
            sqlite_where=UNSCORED,
        )


def downgrade() -> None:
    with op.batch_alter_table('instructions', schema=None) as batch_op:
        batch_op.drop_index('ix_instructions_unscored')
        batch_op.drop_column('pool_items')

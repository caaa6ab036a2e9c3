"""job previews: a preview's full target, and the preview a job follows

Revision ID: 20261206b
Revises: 20261205a
Create Date: 2026-12-06 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '20261206b'
down_revision: str | None = '20261205a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preview_target', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('from_preview_id', sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_from_preview_id'), ['from_preview_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_from_preview_id_jobs'), 'jobs', ['from_preview_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_from_preview_id_jobs'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_from_preview_id'))
        batch_op.drop_column('from_preview_id')
        batch_op.drop_column('preview_target')

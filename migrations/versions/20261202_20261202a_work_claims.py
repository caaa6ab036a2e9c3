"""work claims: rounds and instance batches held by the task working on them

Revision ID: 20261202a
Revises: 20261201a
Create Date: 2026-12-02 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import app.models
from alembic import op


revision: str = '20261202a'
down_revision: str | None = '20261201a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('round_claim_token', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('round_claimed_until', app.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('round_claimed_by', sa.String(length=200), nullable=True))
    with op.batch_alter_table('instructions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_token', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', app.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_instructions_claimed_until'), ['claimed_until'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('instructions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instructions_claimed_until'))
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('claim_token')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('round_claimed_by')
        batch_op.drop_column('round_claimed_until')
        batch_op.drop_column('round_claim_token')

"""response cache: backends' answers kept per key, and which calls were answered from them

Revision ID: 20261205a
Revises: 20261204e
Create Date: 2026-12-05 07:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import app.models
from alembic import op


revision: str = '20261205a'
down_revision: str | None = '20261204e'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('llm_calls', 'llm_answers')


def upgrade() -> None:
    op.create_table(
        'llm_response_cache',
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('owner_key_id', sa.Uuid(), nullable=True),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('finish_reason', sa.String(length=32), nullable=True),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('created_at', app.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['owner_key_id'], ['api_keys.id'], name=op.f('fk_llm_response_cache_owner_key_id_api_keys'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('digest', name=op.f('pk_llm_response_cache')),
    )
    with op.batch_alter_table('llm_response_cache', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_llm_response_cache_owner_key_id'), ['owner_key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_llm_response_cache_created_at'), ['created_at'], unique=False)
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('cached', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('cached')
    with op.batch_alter_table('llm_response_cache', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_llm_response_cache_created_at'))
        batch_op.drop_index(batch_op.f('ix_llm_response_cache_owner_key_id'))
    op.drop_table('llm_response_cache')

"""rescoring runs and results

rescore_runs: one row per batch re-scoring run (selection, stages, overrides, effective
settings, progress). rescore_results: one row per (run, turn), the turn's historical decision
and its re-scored one; unique per run and turn, with a partial index on the unscored rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:02:10.788511
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('rescore_runs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('conversation', sa.String(length=128), nullable=True),
    sa.Column('stages', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('overrides', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('settings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('total_turns', sa.Integer(), nullable=False),
    sa.Column('total_batches', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_rescore_runs_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rescore_runs'))
    )
    op.create_index('ix_rescore_runs_tenant_created', 'rescore_runs', ['tenant_id', 'created_at'], unique=False)
    op.create_table('rescore_results',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.UUID(), nullable=False),
    sa.Column('turn_id', sa.UUID(), nullable=False),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('old_phase', sa.String(length=32), nullable=True),
    sa.Column('old_intent', sa.String(length=64), nullable=True),
    sa.Column('old_proposed_agent', sa.String(length=32), nullable=True),
    sa.Column('old_confidence', sa.Float(), nullable=True),
    sa.Column('old_level', sa.String(length=8), nullable=True),
    sa.Column('old_top_score', sa.Float(), nullable=True),
    sa.Column('old_agent', sa.String(length=32), nullable=True),
    sa.Column('old_routing_reason', sa.Text(), nullable=True),
    sa.Column('new_phase', sa.String(length=32), nullable=True),
    sa.Column('new_intent', sa.String(length=64), nullable=True),
    sa.Column('new_proposed_agent', sa.String(length=32), nullable=True),
    sa.Column('new_confidence', sa.Float(), nullable=True),
    sa.Column('new_level', sa.String(length=8), nullable=True),
    sa.Column('new_top_score', sa.Float(), nullable=True),
    sa.Column('new_agent', sa.String(length=32), nullable=True),
    sa.Column('new_routing_reason', sa.Text(), nullable=True),
    sa.Column('new_hits', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('routing_changed', sa.Boolean(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('usage', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['rescore_runs.id'], name=op.f('fk_rescore_results_run_id_rescore_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rescore_results')),
    sa.UniqueConstraint('run_id', 'turn_id', name=op.f('uq_rescore_results_run_id_turn_id'))
    )
    op.create_index('ix_rescore_results_unscored', 'rescore_results', ['run_id', 'batch'], unique=False, postgresql_where=sa.text('scored_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_rescore_results_unscored', table_name='rescore_results', postgresql_where=sa.text('scored_at IS NULL'))
    op.drop_table('rescore_results')
    op.drop_index('ix_rescore_runs_tenant_created', table_name='rescore_runs')
    op.drop_table('rescore_runs')

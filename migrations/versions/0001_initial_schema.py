"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 12:30:52.642993
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import pgvector.sqlalchemy
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute('CREATE EXTENSION IF NOT EXISTS vector')
    op.create_table('tenants',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('settings', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants'))
    )
    op.create_table('conversations',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('next_seq', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('active_turn_id', sa.UUID(), nullable=True),
    sa.Column('qualification_status', sa.String(length=32), server_default='unknown', nullable=False),
    sa.Column('contextual_memory', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_conversations_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations')),
    sa.UniqueConstraint('tenant_id', 'external_id', name=op.f('uq_conversations_tenant_id_external_id'))
    )
    op.create_table('kb_documents',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('chunk_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_kb_documents_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kb_documents')),
    sa.UniqueConstraint('tenant_id', 'source', name=op.f('uq_kb_documents_tenant_id_source'))
    )
    op.create_table('kb_chunks',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('document_id', sa.UUID(), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('heading', sa.String(length=500), server_default='', nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('tsv', postgresql.TSVECTOR(), sa.Computed("to_tsvector('english', heading || ' ' || text)", persisted=True), nullable=False),
    sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(dim=384), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['kb_documents.id'], name=op.f('fk_kb_chunks_document_id_kb_documents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_kb_chunks_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kb_chunks')),
    sa.UniqueConstraint('document_id', 'ordinal', name=op.f('uq_kb_chunks_document_id_ordinal'))
    )
    # Keep vectors inline in the heap row: with the default out-of-line (TOAST) storage the
    # planner overestimates the cost of reading them and never picks the HNSW index under a
    # tenant filter (pgvector README, FAQ).
    op.execute('ALTER TABLE kb_chunks ALTER COLUMN embedding SET STORAGE PLAIN')
    op.create_index('ix_kb_chunks_embedding_hnsw', 'kb_chunks', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_with={'m': 16, 'ef_construction': 64}, postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_index(op.f('ix_kb_chunks_tenant_id'), 'kb_chunks', ['tenant_id'], unique=False)
    op.create_index('ix_kb_chunks_tsv', 'kb_chunks', ['tsv'], unique=False, postgresql_using='gin')
    op.create_table('turns',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('conversation_id', sa.UUID(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('topology', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('accepted_at', sa.Float(), nullable=False),
    sa.Column('stage_deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('phase', sa.String(length=32), nullable=True),
    sa.Column('intent', sa.String(length=64), nullable=True),
    sa.Column('proposed_agent', sa.String(length=32), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('handoff', sa.Boolean(), nullable=True),
    sa.Column('orchestration_note', sa.Text(), nullable=True),
    sa.Column('orchestrated_at', sa.Float(), nullable=True),
    sa.Column('research_results', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('kb_information_level', sa.String(length=8), nullable=True),
    sa.Column('research_note', sa.Text(), nullable=True),
    sa.Column('researched_at', sa.Float(), nullable=True),
    sa.Column('next_agent', sa.String(length=32), nullable=True),
    sa.Column('routing_reason', sa.Text(), nullable=True),
    sa.Column('routed_at', sa.Float(), nullable=True),
    sa.Column('agent_response', sa.Text(), nullable=True),
    sa.Column('agent_fallback', sa.Boolean(), nullable=True),
    sa.Column('completed_at', sa.Float(), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('usage', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_turns_conversation_id_conversations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_turns_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_turns')),
    sa.UniqueConstraint('conversation_id', 'seq', name=op.f('uq_turns_conversation_id_seq'))
    )
    op.create_index('ix_turns_open_by_deadline', 'turns', ['status', 'stage_deadline_at'], unique=False, postgresql_where=sa.text("status IN ('queued', 'routed')"))
    op.create_index('ix_turns_tenant_created', 'turns', ['tenant_id', 'created_at'], unique=False)
    op.create_index('uq_turns_tenant_idempotency_key', 'turns', ['tenant_id', 'idempotency_key'], unique=True, postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.create_table('turn_outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('turn_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['turn_id'], ['turns.id'], name=op.f('fk_turn_outbox_turn_id_turns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_turn_outbox'))
    )
    op.create_index('ix_turn_outbox_pending', 'turn_outbox', ['created_at'], unique=False, postgresql_where=sa.text('dispatched_at IS NULL'))
    op.create_index(op.f('ix_turn_outbox_turn_id'), 'turn_outbox', ['turn_id'], unique=False)
    op.create_table('turn_spans',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('turn_id', sa.UUID(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('queue', sa.String(length=64), nullable=True),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('enqueued_at', sa.Float(), nullable=True),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=False),
    sa.Column('simulated_ms', sa.Float(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('fields_written', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('calls', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('tokens_in', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('tokens_out', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.ForeignKeyConstraint(['turn_id'], ['turns.id'], name=op.f('fk_turn_spans_turn_id_turns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_turn_spans'))
    )
    op.create_index(op.f('ix_turn_spans_turn_id'), 'turn_spans', ['turn_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_turn_spans_turn_id'), table_name='turn_spans')
    op.drop_table('turn_spans')
    op.drop_index(op.f('ix_turn_outbox_turn_id'), table_name='turn_outbox')
    op.drop_index('ix_turn_outbox_pending', table_name='turn_outbox', postgresql_where=sa.text('dispatched_at IS NULL'))
    op.drop_table('turn_outbox')
    op.drop_index('uq_turns_tenant_idempotency_key', table_name='turns', postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.drop_index('ix_turns_tenant_created', table_name='turns')
    op.drop_index('ix_turns_open_by_deadline', table_name='turns', postgresql_where=sa.text("status IN ('queued', 'routed')"))
    op.drop_table('turns')
    op.drop_index('ix_kb_chunks_tsv', table_name='kb_chunks', postgresql_using='gin')
    op.drop_index(op.f('ix_kb_chunks_tenant_id'), table_name='kb_chunks')
    op.drop_index('ix_kb_chunks_embedding_hnsw', table_name='kb_chunks', postgresql_using='hnsw', postgresql_with={'m': 16, 'ef_construction': 64}, postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_table('kb_chunks')
    op.drop_table('kb_documents')
    op.drop_table('conversations')
    op.drop_table('tenants')

"""vector tables per embedding model, ingest jobs

One table per embedding model and dimension, so that vectors of different models never mix
in one index; the local model's vectors move out of kb_chunks into the first of them.
kb_ingest_jobs carries documents queued for the ingest workers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:53:15.882146
"""

from __future__ import annotations

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VECTOR_TABLES = {'kb_vectors_local_hash_384': 384, 'kb_vectors_text_embedding_3_small_1536': 1536}
HNSW = {'m': 16, 'ef_construction': 64}


def _create_vector_table(table: str, dim: int) -> None:
    op.create_table(table,
    sa.Column('chunk_id', sa.BigInteger(), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(dim=dim), nullable=False),
    sa.ForeignKeyConstraint(['chunk_id'], ['kb_chunks.id'], name=op.f(f'fk_{table}_chunk_id_kb_chunks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('chunk_id', name=op.f(f'pk_{table}'))
    )
    # Keep vectors inline in the heap row: with the default out-of-line (TOAST) storage the
    # planner overestimates the cost of reading them and never picks the HNSW index under a
    # tenant filter (pgvector README, FAQ).
    op.execute(f'ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN')
    op.create_index(op.f(f'ix_{table}_tenant_id'), table, ['tenant_id'], unique=False)


def _create_hnsw_index(table: str) -> None:
    op.create_index(f'ix_{table}_embedding_hnsw', table, ['embedding'], unique=False, postgresql_using='hnsw', postgresql_with=HNSW, postgresql_ops={'embedding': 'vector_cosine_ops'})


def upgrade() -> None:
    op.create_table('kb_ingest_jobs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('batch_id', sa.UUID(), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('embedding_model', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('chunks', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_kb_ingest_jobs_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kb_ingest_jobs'))
    )
    op.create_index(op.f('ix_kb_ingest_jobs_batch_id'), 'kb_ingest_jobs', ['batch_id'], unique=False)
    for table, dim in VECTOR_TABLES.items():
        _create_vector_table(table, dim)
    # The local model's vectors move to their own table; the index is built after the copy.
    op.execute(
        'INSERT INTO kb_vectors_local_hash_384 (chunk_id, tenant_id, embedding) '
        'SELECT id, tenant_id, embedding FROM kb_chunks'
    )
    for table in VECTOR_TABLES:
        _create_hnsw_index(table)
    op.drop_index('ix_kb_chunks_embedding_hnsw', table_name='kb_chunks', postgresql_using='hnsw')
    op.drop_column('kb_chunks', 'embedding')


def downgrade() -> None:
    op.add_column('kb_chunks', sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(dim=384), nullable=True))
    op.execute(
        'UPDATE kb_chunks c SET embedding = v.embedding '
        'FROM kb_vectors_local_hash_384 v WHERE v.chunk_id = c.id'
    )
    # Documents that only other models had embedded cannot live in the old schema.
    op.execute(
        'DELETE FROM kb_documents d WHERE EXISTS '
        '(SELECT 1 FROM kb_chunks c WHERE c.document_id = d.id AND c.embedding IS NULL)'
    )
    op.alter_column('kb_chunks', 'embedding', nullable=False)
    op.execute('ALTER TABLE kb_chunks ALTER COLUMN embedding SET STORAGE PLAIN')
    op.create_index('ix_kb_chunks_embedding_hnsw', 'kb_chunks', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_with=HNSW, postgresql_ops={'embedding': 'vector_cosine_ops'})
    for table in reversed(list(VECTOR_TABLES)):
        op.drop_index(op.f(f'ix_{table}_tenant_id'), table_name=table)
        op.drop_index(f'ix_{table}_embedding_hnsw', table_name=table, postgresql_using='hnsw')
        op.drop_table(table)
    op.drop_index(op.f('ix_kb_ingest_jobs_batch_id'), table_name='kb_ingest_jobs')
    op.drop_table('kb_ingest_jobs')

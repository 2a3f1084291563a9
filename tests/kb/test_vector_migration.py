"""The migration that moves local-model vectors out of kb_chunks into their own table keeps
them, and its downgrade brings them back."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from shared.db.migrations import alembic_config
from shared.db.session import database_url

pytestmark = pytest.mark.integration


def test_vectors_move_to_their_model_table_and_back(services: None) -> None:
    name = f"vecmig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = database_url().rsplit("/", 1)[0] + f"/{name}"
    vector = "[" + ",".join(["0.5"] * 4 + ["0"] * 380) + "]"
    try:
        config = alembic_config(url)
        command.upgrade(config, "0001")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name) VALUES ('t1', 't1')"))
            conn.execute(
                text(
                    "INSERT INTO kb_documents (id, tenant_id, source, title, content_hash) "
                    "VALUES (:d, 't1', 'a.md', 'A', 'h')"
                ),
                {"d": uuid.uuid4()},
            )
            conn.execute(
                text(
                    "INSERT INTO kb_chunks (tenant_id, document_id, ordinal, text, content_hash,"
                    " embedding) SELECT 't1', id, 0, 'alpha', 'h', CAST(:v AS vector) "
                    "FROM kb_documents"
                ),
                {"v": vector},
            )
        command.upgrade(config, "0002")
        with engine.connect() as conn:
            moved = conn.execute(
                text("SELECT tenant_id, embedding::text FROM kb_vectors_local_hash_384")
            ).all()
        assert [(t, v.replace(" ", "")) for t, v in moved] == [("t1", vector)]
        command.downgrade(config, "0001")
        with engine.connect() as conn:
            back = conn.execute(text("SELECT embedding::text FROM kb_chunks")).scalars().all()
        assert [v.replace(" ", "") for v in back] == [vector]
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

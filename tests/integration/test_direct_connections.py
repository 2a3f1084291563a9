"""The hot path's direct connections: autocommit, the server's keepalives, a pool that
never hands out a connection that broke or was left inside a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.db.direct import direct_connection, direct_pool, transaction_pipeline
from shared.db.session import session_scope
from tests.conftest import accept_unpublished_turn

pytestmark = pytest.mark.integration


def test_direct_and_session_connections_ask_the_server_for_keepalives(services: None) -> None:
    with direct_connection() as conn:
        assert conn.autocommit
        direct = conn.execute("SHOW tcp_keepalives_idle").fetchone()
    with session_scope() as session:
        pooled = session.execute(text("SHOW tcp_keepalives_idle")).scalar()
    assert direct is not None and direct[0] == pooled == "10"


def test_a_connection_handed_back_inside_a_transaction_is_closed_not_reused(
    services: None,
) -> None:
    pool = direct_pool()
    with direct_connection() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
    assert conn.closed
    with direct_connection() as again:
        assert again is not conn
        assert again.execute("SELECT 1").fetchone() == (1,)
    assert again in pool._idle  # a clean one is kept


def test_a_failed_pipelined_transaction_is_rolled_back_and_the_connection_reused(
    services: None,
) -> None:
    with direct_connection() as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS pipeline_probe (x int PRIMARY KEY)")
        conn.execute("TRUNCATE pipeline_probe")
        with pytest.raises(Exception, match="duplicate key"), transaction_pipeline(conn):
            conn.execute("INSERT INTO pipeline_probe VALUES (1)")
            conn.execute("INSERT INTO pipeline_probe VALUES (1)")
        assert conn.execute("SELECT count(*) FROM pipeline_probe").fetchone() == (0,)
    with direct_connection() as same:
        assert same is conn  # rolled back to idle, so kept


def test_a_stage_write_relaxes_only_its_own_commit(services: None, tenant: str) -> None:
    """Stage outputs before the agent commit without waiting for the WAL flush; the
    connection they used goes back to the pool as synchronous as it came, so the next
    acceptance or agent end on it is synchronous."""
    import time

    from shared.db.spans import SpanRecord
    from shared.db.turns import RELAXED_COMMIT_STAGES, write_stage_output
    from shared.schemas import Stage

    assert Stage.AGENT not in RELAXED_COMMIT_STAGES
    turn_id = accept_unpublished_turn(tenant)
    with direct_connection() as conn:
        wrote = write_stage_output(
            conn,
            stage=Stage.ORCHESTRATOR,
            turn_id=turn_id,
            values={"intent": "integration", "orchestrated_at": time.time()},
            span=SpanRecord(turn_id=turn_id, stage="orchestrator", started_at=time.time()),
        )
        assert wrote
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    from shared.turn.recovery import end_turn_failed
    from shared.turn_state import Actor

    end_turn_failed(turn_id, "test over", actor=Actor.SWEEPER)

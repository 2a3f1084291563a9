"""The test session starts its own real Postgres (with pgvector) and Redis, migrates, and
runs real Celery workers from the Procfile as subprocesses. With DATABASE_URL and REDIS_URL
set, it uses those servers instead."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One data dir per test session, so that sessions running side by side never share servers.
TEST_DATA_DIR = ROOT / ".chordline" / f"test-{os.getpid()}"
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test-fast` runs every test not marked ``integration``: a test that reaches the
    servers (the ``services`` fixture, directly or through another) must carry the mark."""
    unmarked = [
        item.nodeid
        for item in items
        if "services" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that use the servers must be marked integration: " + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def services() -> Iterator[None]:
    """Embedded (or configured) Postgres and Redis, migrated to head."""
    shutil.rmtree(TEST_DATA_DIR, ignore_errors=True)
    os.environ["CHORDLINE_DATA_DIR"] = str(TEST_DATA_DIR)
    os.environ.setdefault("CHORDLINE_LOG_FORMAT", "json")
    from shared.db.migrations import migrate
    from shared.tools.stack.services import reset_process_state
    from shared.tools.stack.services import services as running_services

    reset_process_state()
    try:
        with running_services():
            migrate()
            yield
    finally:
        shutil.rmtree(TEST_DATA_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def workers(services: None) -> Iterator[None]:
    """One real worker process per turn queue, plus maintenance, as the Procfile runs them."""
    from shared.tools.stack.procfile import TURN_PROCESSES, running_workers

    # Simulated providers at a tenth of the default stage times: the header stages
    # really run side by side (40-80 ms and 30-70 ms), and a turn still takes ~0.2 s.
    env = {
        "CHORDLINE_PROVIDERS": "simulated",
        "CHORDLINE_SIMULATED_LATENCY_SCALE": "0.1",
        "CHORDLINE_CELERY_SWEEPER_INTERVAL_S": "1",
    }
    with running_workers(
        [*TURN_PROCESSES, "maintenance"], env_overrides=env, log_dir=ARTIFACTS / "worker-logs"
    ):
        yield


def new_tenant(settings: dict[str, object] | None = None, *, with_demo_kb: bool = True) -> str:
    from shared.db.session import session_scope
    from shared.db.tenants import ensure_tenant
    from shared.kb.ingest import ingest_paths
    from shared.providers.registry import get_providers
    from shared.tools.demo.conversation import DEMO_KB

    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with session_scope() as session:
        ensure_tenant(session, tenant_id=tenant, settings=settings)
    if with_demo_kb:
        ingest_paths([DEMO_KB], tenant_id=tenant, embedder=get_providers().embedder)
    return tenant


def accept_unpublished_turn(
    tenant: str,
    *,
    message: str = "Does it integrate with NetSuite?",
    conversation: str | None = None,
    topology: str = "parallel",
    accepted_at: float | None = None,
    stage_deadline_s: float = 60.0,
) -> str:
    """A turn accepted in one statement as ``enqueue_turn`` accepts it, and not published:
    what runs of it is up to the test."""
    from shared.db.direct import direct_connection
    from shared.db.turns import accept_turn

    turn_id = str(uuid.uuid4())
    with direct_connection() as conn:
        accept_turn(
            conn,
            turn_id=turn_id,
            tenant_id=tenant,
            conversation=conversation or f"c-{uuid.uuid4().hex[:8]}",
            message=message,
            topology=topology,
            idempotency_key=None,
            accepted_at=time.time() if accepted_at is None else accepted_at,
            stage_deadline_s=stage_deadline_s,
            reject_when_busy=False,
        )
    return turn_id


@pytest.fixture
def tenant(services: None) -> str:
    return new_tenant()


@pytest.fixture
def redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The commands this process sends to Redis from now on, one entry per write to a
    socket (a pipeline is one): what a change of round trips is counted with."""
    import redis.connection

    sent: list[bytes] = []
    send: Any = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    yield sent

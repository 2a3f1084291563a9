"""Re-scoring tests: real Postgres, Redis and a real ``rescoring`` worker from the Procfile."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

from shared.tools.stack.processes import ProcessGroup
from shared.tools.stack.procfile import running_workers
from tests.conftest import ARTIFACTS, new_tenant

# A batch's turns must still take a moment, so a test can act while a run is under way:
# simulated stage times at a fifth of the defaults (orchestrator 80-160 ms,
# retrieval 60-140 ms), in series per turn.
SLOW_ENV = {"CHORDLINE_PROVIDERS": "simulated", "CHORDLINE_SIMULATED_LATENCY_SCALE": "0.2"}
FAST_ENV = {"CHORDLINE_PROVIDERS": "simulated", "CHORDLINE_SIMULATED_LATENCY_SCALE": "0"}


@contextlib.contextmanager
def rescoring_worker(env: dict[str, str]) -> Iterator[ProcessGroup]:
    """One rescoring worker process, as the Procfile runs it."""
    with running_workers(
        ["rescoring"], env_overrides=env, log_dir=ARTIFACTS / "worker-logs"
    ) as group:
        yield group


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def wait_until_finished(run_id: str, *, timeout_s: float = 90) -> None:
    from shared.rescoring.runs import RunStatus, read_progress

    wait_for(
        lambda: read_progress(run_id).status is not RunStatus.RUNNING,
        timeout_s=timeout_s,
        what=f"run {run_id} to finish",
    )


def history_tenant(turns: int, *, per_conversation: int = 5) -> str:
    """A fresh tenant with the demo knowledge base and a synthetic history."""
    from shared.tools.synthetic.rescoring import generate_history

    tenant = new_tenant()
    generate_history(
        tenant_id=tenant, turns=turns, turns_per_conversation=per_conversation, seed=11
    )
    return tenant


def rescoring_queue_length() -> int:
    from shared.redis_conn import get_redis

    return int(get_redis().llen("rescoring"))


def run_rows(tenant: str) -> int:
    from sqlalchemy import func, select

    from shared.db.session import session_scope
    from shared.rescoring.models import RescoreRun

    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(RescoreRun).where(RescoreRun.tenant_id == tenant)
            )
            or 0
        )


def scored_at_by_turn(run_id: str) -> dict[uuid.UUID, object]:
    from sqlalchemy import select

    from shared.db.session import session_scope
    from shared.rescoring.models import RescoreResult

    with session_scope() as session:
        return {
            turn_id: scored_at
            for turn_id, scored_at in session.execute(
                select(RescoreResult.turn_id, RescoreResult.scored_at).where(
                    RescoreResult.run_id == uuid.UUID(run_id),
                    RescoreResult.scored_at.is_not(None),
                )
            )
        }

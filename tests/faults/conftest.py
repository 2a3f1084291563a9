"""The fault-injection suite runs on servers of its own, which it kills and restarts, so it
never disturbs the servers of the rest of the test session.

It takes a few minutes, so a plain ``pytest`` skips it; ``make test-faults`` runs it (as CI
does), and so does naming it: ``pytest tests/faults``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import Cluster
from tests.faults.proxy import TcpProxy
from tests.faults.rig import (
    ARTIFACTS,
    REPORT,
    SETTINGS,
    Rig,
    fresh_data_dir,
    new_marker,
    worker_env,
    write_report,
)
from tests.faults.servers import Postgres, Valkey

HERE = Path(__file__).resolve().parent
OPT_IN_ENV = "CHORDLINE_FAULT_SUITE"
CLIENT_ENV = ("DATABASE_URL", "REDIS_URL", "CHORDLINE_DATA_DIR", *SETTINGS)


def _two_tenants() -> list[str]:
    from tests.conftest import new_tenant

    return [new_tenant(), new_tenant()]


@pytest.fixture(scope="package")
def rig() -> Iterator[Rig]:
    from shared.db.migrations import migrate
    from shared.tools.stack.services import reset_process_state

    saved = {name: os.environ.get(name) for name in CLIENT_ENV}
    data_dir = fresh_data_dir()
    postgres = Postgres(data_dir)
    redis = Valkey(data_dir / "valkey")
    pg_proxy = redis_proxy = None
    cluster = None
    supervision = contextlib.ExitStack()
    try:
        postgres.start()
        redis.start()
        pg_proxy = TcpProxy(postgres.port).start()
        redis_proxy = TcpProxy(redis.port).start()
        marker = new_marker()
        # The test process is the client: it talks to the servers directly, with the
        # suite's deadlines; the workers go through the proxies.
        os.environ.update(
            {**SETTINGS, "CHORDLINE_DATA_DIR": str(data_dir)},
            DATABASE_URL=postgres.url,
            REDIS_URL=redis.url,
        )
        reset_process_state()
        migrate()
        cluster = Cluster(
            env=worker_env(
                data_dir=data_dir,
                pg_url=pg_proxy.url_for(postgres.url, postgres.port),
                redis_url=redis_proxy.url_for(redis.url, redis.port),
                marker=marker,
            ),
            log_dir=ARTIFACTS / f"fault-logs-{os.getpid()}",
        )
        supervision.enter_context(cluster.supervised())  # starts them all
        cluster.wait_ready()
        yield Rig(
            data_dir=data_dir,
            postgres=postgres,
            redis=redis,
            pg_proxy=pg_proxy,
            redis_proxy=redis_proxy,
            cluster=cluster,
            marker=marker,
            tenants=_two_tenants(),
        )
    finally:
        supervision.close()  # stops the supervisor, then every process
        if cluster is not None:
            cluster.stop_all()
        from shared.dispatch import flush_dispatch

        flush_dispatch(5.0)
        for proxy in (pg_proxy, redis_proxy):
            if proxy is not None:
                proxy.close()
        redis.stop()
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_process_state()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("fault injection: every accepted turn ends exactly once")
    header = f"{'scenario':<44} {'accepted':>8} {'completed':>9} {'failed':>6} {'lost':>4} {'worst s':>7}"
    terminalreporter.write_line(header)
    for row in write_report():
        terminalreporter.write_line(
            f"{row['scenario']!s:<44} {row['accepted']!s:>8} {row['completed']!s:>9} "
            f"{row['failed_with_reason']!s:>6} {row['lost']!s:>4} {row['worst_end_s']!s:>7}"
        )


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get(OPT_IN_ENV) == "1":
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        return
    skip = pytest.mark.skip(reason="fault-injection suite: `make test-faults` runs it")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)

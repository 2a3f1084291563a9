"""`chordline bench --via http`: the bench's arrivals posted through the HTTP API.

A `web` process from the Procfile runs on a free loopback port; each topology's turns are
posted over one keep-alive connection with a key of the bench tenant, as a backend in
another language would, and end as the client path's turns do (read from Postgres). The
web process's CPU counts as its own kind beside the workers', Postgres's and Redis's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shared.db.session import session_scope
from shared.errors import TransientError
from shared.schemas import Topology
from shared.tools.bench.cpu_time import Processes
from shared.tools.bench.turns import (
    HTTP_RATE_LIMIT,
    HTTP_SUFFIX,
    Submit,
    System,
    prepare_bench_tenants,
)
from shared.tools.stack.processes import ProcessGroup
from shared.tools.stack.procfile import read_procfile


@dataclass(frozen=True)
class WebUnderTest:
    base: str
    pid: int


@contextlib.contextmanager
def running_web(*, log_dir: Any) -> Iterator[WebUnderTest]:
    """The Procfile's ``web`` on a free loopback port, until it answers /healthz."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    group = ProcessGroup(log_dir=log_dir)
    env = {
        **os.environ,
        "CHORDLINE_WEB_HOST": "127.0.0.1",
        "CHORDLINE_WEB_PORT": str(port),
        "CHORDLINE_WEB_RATE_LIMIT": str(HTTP_RATE_LIMIT),
    }
    process = group.start("web", read_procfile()["web"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise TransientError(f"web exited with code {process.returncode}; see {log_dir}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TransientError(f"web did not answer on {base} within 60 s; see {log_dir}")
            time.sleep(0.2)
        yield WebUnderTest(base=base, pid=process.pid)
    finally:
        group.stop_all()


def http_submit(client: Any, tag: str) -> Submit:
    """POST each turn to the API, as a backend in another language would."""

    def submit(index: int, message: str) -> str:
        response = client.post(
            f"/v1/conversations/bench-{tag}-{index}/turns", json={"message": message}
        )
        if response.status_code != 202:
            raise TransientError(f"web answered {response.status_code}: {response.text[:300]}")
        return str(response.json()["turn_id"])

    return submit


def http_systems(client_systems: list[System], web: WebUnderTest) -> list[System]:
    """Each client-path system again, its turns posted through the API with a key of its
    tenant; the web process's CPU counts as its own kind."""
    import httpx

    from shared.db.api_keys import create_key

    tenants = prepare_bench_tenants()
    systems = []
    for system in client_systems:
        topology = Topology(system.name)
        with session_scope() as session:
            key = create_key(session, tenant_id=tenants[topology], label="bench").secret
        client = httpx.Client(
            base_url=web.base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        systems.append(
            System(
                name=f"{system.name}{HTTP_SUFFIX}",
                submit=http_submit(client, f"{uuid.uuid4().hex[:8]}-{system.name}-http"),
                wait=system.wait,
                ended=system.ended,
                processes={**system.processes, "web": Processes((web.pid,))},
                writes_wal=system.writes_wal,
            )
        )
    return systems

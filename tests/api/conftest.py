"""The HTTP API as it runs in production: `chordline web` from the Procfile, a process of its
own on a loopback port, against the test session's Postgres, Redis and workers; requests go
over real HTTP with httpx."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from shared.tools.stack.processes import ProcessGroup
from shared.tools.stack.procfile import read_procfile
from tests.conftest import ARTIFACTS, new_tenant


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WebProcess:
    base: str
    group: ProcessGroup

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30, **kwargs)


def start_web(name: str, env: dict[str, str] | None = None) -> WebProcess:
    """`web` from the Procfile on a free loopback port; returns once /healthz answers."""
    port = free_port()
    group = ProcessGroup(log_dir=ARTIFACTS / "web-logs")
    group.start(
        name,
        read_procfile()["web"],
        env={
            **os.environ,
            "CHORDLINE_WEB_HOST": "127.0.0.1",
            "CHORDLINE_WEB_PORT": str(port),
            "CHORDLINE_WEB_HEARTBEAT_S": "0.3",
            **(env or {}),
        },
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc = group.processes[name]
        if proc.poll() is not None:
            group.stop_all()
            raise AssertionError(f"web exited with {proc.returncode}; see {ARTIFACTS}/web-logs")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return WebProcess(base=base, group=group)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    group.stop_all()
    raise AssertionError("web did not answer /healthz within 60 s")


@pytest.fixture(scope="session")
def web(workers: None) -> Iterator[WebProcess]:
    process = start_web("web")
    try:
        yield process
    finally:
        process.group.stop_all()


def new_key(tenant: str) -> str:
    from shared.db.api_keys import create_key
    from shared.db.session import session_scope

    with session_scope() as session:
        return create_key(session, tenant_id=tenant).secret


@dataclass
class Tenant:
    id: str
    key: str


@pytest.fixture
def api_tenant(services: None) -> Tenant:
    tenant = new_tenant()
    return Tenant(tenant, new_key(tenant))


@dataclass
class SseEvent:
    kind: str
    data: dict[str, object]
    id: str | None = None


@dataclass
class SseReader:
    """Server-sent events parsed from a streaming httpx response, comments kept apart."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)

    def events(self) -> Iterator[SseEvent]:
        kind, data, event_id = "message", "", None
        for line in self.response.iter_lines():
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line == "":
                if data:
                    yield SseEvent(kind, json.loads(data), event_id)
                kind, data, event_id = "message", "", None

"""API keys from the command line, the per-key rate limit shared by web processes, and the
reply stream's heartbeats, timeout and end read from Postgres."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.streaming import stream_key
from tests.api.conftest import SseReader, Tenant, WebProcess, new_key, start_web
from tests.api.test_http_api import assert_problem, post_turn, stream_events
from tests.conftest import accept_unpublished_turn, new_tenant

pytestmark = pytest.mark.integration

CHORDLINE = str(Path(sys.executable).parent / "chordline")
RATE_LIMIT = 5
RATE_WINDOW_S = 600


def chordline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHORDLINE, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def limited_pair(workers: None) -> Iterator[tuple[WebProcess, WebProcess]]:
    """Two web processes with a small rate limit and a short stream timeout."""
    env = {
        "CHORDLINE_WEB_RATE_LIMIT": str(RATE_LIMIT),
        "CHORDLINE_WEB_RATE_WINDOW_S": str(RATE_WINDOW_S),
        "CHORDLINE_WEB_STREAM_TIMEOUT_S": "2",
    }
    first = start_web("web-limited-1", env)
    try:
        second = start_web("web-limited-2", env)
        try:
            yield first, second
        finally:
            second.group.stop_all()
    finally:
        first.group.stop_all()


def test_key_create_prints_the_key_once_and_list_and_revoke_work(web: WebProcess) -> None:
    tenant = new_tenant(with_demo_kb=False)
    created = chordline("key", "create", "--tenant", tenant, "--label", "billing backend")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("chl_") and len(key.splitlines()) == 1
    prefix = key.split("_")[1]
    assert f"API key {prefix} of tenant {tenant}" in created.stderr

    listed = chordline("key", "list", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    assert prefix in listed.stdout and "billing backend" in listed.stdout
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout

    with web.client(key) as client:
        assert_problem(client.get("/v1/conversations/none-yet"), 404)  # authenticated
        revoked = chordline("key", "revoke", prefix)
        assert revoked.returncode == 0 and f"revoked API key {prefix}" in revoked.stdout
        refused = client.get("/v1/conversations/none-yet")
        assert "unknown or revoked" in assert_problem(refused, 401, field="Authorization")["detail"]
    again = chordline("key", "revoke", prefix)
    assert f"API key {prefix} was already revoked" in again.stdout
    assert '"revoked_at": null' not in chordline("key", "list", "--json", "--tenant", tenant).stdout

    unknown = chordline("key", "create", "--tenant", "nosuch-tenant")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: tenant: unknown tenant 'nosuch-tenant'")
    assert len(unknown.stderr.strip().splitlines()) == 1
    bad = chordline("key", "revoke", "zz")
    assert bad.returncode == 2 and "error: prefix: 'zz' is not a key prefix" in bad.stderr


def test_the_rate_limit_counts_a_key_across_web_processes(
    limited_pair: tuple[WebProcess, WebProcess], api_tenant: Tenant
) -> None:
    first, second = limited_pair
    left = RATE_WINDOW_S - time.time() % RATE_WINDOW_S
    if left < 10:  # do not straddle two windows
        time.sleep(left + 0.1)
    with first.client(api_tenant.key) as a, second.client(api_tenant.key) as b:
        answered = [c.get("/v1/conversations/none").status_code for c in (a, b, a, b, a)]
        assert answered == [404] * RATE_LIMIT
        limited = b.get("/v1/conversations/none")
        body = assert_problem(limited, 429)
        assert body["limit"] == RATE_LIMIT and "CHORDLINE_WEB_RATE_LIMIT" in body["detail"]
        retry_after = int(limited.headers["retry-after"])
        assert 0 < retry_after <= RATE_WINDOW_S
        assert_problem(a.get("/v1/conversations/none"), 429)
    with first.client(
        new_key(api_tenant.id)
    ) as c:  # another key of the same tenant has its own count
        assert_problem(c.get("/v1/conversations/none"), 404)


def test_a_quiet_stream_sends_heartbeats_then_times_out_resumably(
    limited_pair: tuple[WebProcess, WebProcess],
) -> None:
    tenant = new_tenant(with_demo_kb=False)
    turn_id = accept_unpublished_turn(tenant)  # never runs: its stream stays empty
    with (
        limited_pair[0].client(new_key(tenant)) as client,
        client.stream("GET", f"/v1/turns/{turn_id}/stream") as response,
    ):
        reader = SseReader(response)
        events = list(reader.events())
    assert [e.kind for e in events] == ["timeout"]
    assert events[0].data == {"resume_after": "0"}
    assert len(reader.comments) >= 3 and set(reader.comments) == {": heartbeat"}


def test_a_stream_gone_from_redis_ends_with_the_reply_of_record(
    web: WebProcess, api_tenant: Tenant, services: None
) -> None:
    from shared.redis_conn import get_redis

    with web.client(api_tenant.key) as client:
        turn_id = post_turn(client, "c-expired", "Do you support SSO?").json()["turn_id"]
        stream_events(client, turn_id)
        get_redis().delete(stream_key(turn_id))  # as after CHORDLINE_STREAM_TTL_S
        events = stream_events(client, turn_id)
        reply = client.get(f"/v1/turns/{turn_id}").json()["reply"]
    assert [e.kind for e in events] == ["end"] and events[0].id is None
    assert events[0].data["reply"] == reply and reply


def test_the_web_command_names_a_taken_port(services: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**os.environ, "CHORDLINE_WEB_PORT": str(port)}
        result = subprocess.run(
            [CHORDLINE, "web"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: CHORDLINE_WEB_PORT: 127.0.0.1:{port} is taken by another program; "
        "choose another port"
    )

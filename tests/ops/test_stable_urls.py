"""The embedded servers of a data dir keep their ports from one start to the next, so a
service on the same machine can stay pointed at them, and `chordline up` writes the URLs
it serves to ``<data dir>/env`` for such a service to source."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from shared.tools.stack.devstack import moved_ports, write_env_file
from shared.tools.stack.embedded import EmbeddedServices, ensure_services, stop_postgres, stop_redis
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = ROOT / ".chordline" / f"stable-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:  # whatever still runs on the data dir, should a test fail half way
        stop_redis(path)
        stop_postgres(path)
        shutil.rmtree(path, ignore_errors=True)


def _connect_to_both(services: EmbeddedServices) -> list[psycopg.Connection[Any] | redis.Redis]:
    """Open connections to both servers. Left open while the servers stop, they are closed
    by the servers, which leaves them in TIME_WAIT on the servers' own ports."""
    assert services.postgres is not None and services.redis is not None
    opened: list[psycopg.Connection[Any] | redis.Redis] = []
    for _ in range(3):
        conn = psycopg.connect(services.postgres.url.replace("+psycopg", ""))
        assert conn.execute("SELECT 1").fetchone() == (1,)
        client = redis.Redis.from_url(services.redis.url)
        assert client.ping()
        opened += [conn, client]
    return opened


def _sourced(env_file: Path) -> dict[str, str]:
    """The variables a shell gets from ``set -a; . env_file``."""
    out = subprocess.run(
        ["/bin/sh", "-c", f'set -a; . "{env_file}"; echo "$DATABASE_URL"; echo "$REDIS_URL"'],
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {"DATABASE_URL": out[0], "REDIS_URL": out[1]}


def test_two_starts_on_one_data_dir_get_the_same_ports_and_the_env_file_works(
    data_dir: Path,
) -> None:
    first = ensure_services(data_dir=data_dir, need_postgres=True, need_redis=True)
    assert first.postgres and first.redis and first.postgres.started_here
    connections = _connect_to_both(first)
    ports = (first.postgres.port, first.redis.port)
    first.stop_started()
    for connection in connections:
        connection.close()

    second = ensure_services(data_dir=data_dir, need_postgres=True, need_redis=True)
    assert second.postgres and second.redis and second.redis.started_here
    assert (second.postgres.port, second.redis.port) == ports
    assert moved_ports(second) == []

    env_file = write_env_file(
        data_dir, {"DATABASE_URL": second.postgres.url, "REDIS_URL": second.redis.url}
    )
    assert env_file == data_dir / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    urls = _sourced(env_file)
    assert urls == {"DATABASE_URL": second.postgres.url, "REDIS_URL": second.redis.url}
    with psycopg.connect(urls["DATABASE_URL"].replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("chordline",)
    assert redis.Redis.from_url(urls["REDIS_URL"]).ping()
    second.stop_started()


def test_a_port_taken_by_another_program_moves_and_says_so(data_dir: Path) -> None:
    first = ensure_services(data_dir=data_dir, need_postgres=False, need_redis=True)
    assert first.redis is not None
    old = first.redis.port
    first.stop_started()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        moved = ensure_services(data_dir=data_dir, need_postgres=False, need_redis=True)
    assert moved.redis is not None and moved.redis.port != old
    assert moved.redis.moved_from == old
    (line,) = moved_ports(moved)
    assert line == (
        f"redis: port {old} of this data dir is taken by another program; "
        f"now on {moved.redis.port} (kept for next time)"
    )
    moved.stop_started()
    again = ensure_services(data_dir=data_dir, need_postgres=False, need_redis=True)
    assert again.redis is not None and again.redis.port == moved.redis.port  # the new one stays
    again.stop_started()

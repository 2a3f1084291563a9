"""The bench's view of Redis forks, against real Valkey servers of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.tools.bench.redis_forks import (
    compact_append_only_file,
    fork_warning,
    forks,
    forks_between,
)
from tests.faults.servers import Valkey


@pytest.fixture
def valkey(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Valkey]:
    server = Valkey(tmp_path / "valkey")
    server.start(appendonly=request.param)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("valkey", [True], indirect=True)
def test_compacting_the_append_only_file_forks_once_and_waits_for_the_rewrite(
    valkey: Valkey,
) -> None:
    client = valkey.client()
    for index in range(2_000):
        client.set(f"key:{index}", "x" * 100)
    before = forks(client)
    assert before is not None

    assert compact_append_only_file(client)

    after = forks(client)
    assert after is not None and after.count == before.count + 1
    state = client.info("persistence")
    assert state["aof_rewrite_in_progress"] == 0 and state["aof_rewrites"] >= 1
    window = forks_between(before, after)
    assert window is not None and window["during_run"] == 1
    warning = fork_warning(window)
    assert warning is not None and "forked 1 time during the measured rounds" in warning


@pytest.mark.parametrize("valkey", [False], indirect=True)
def test_a_server_without_an_append_only_file_is_left_alone(valkey: Valkey) -> None:
    client = valkey.client()
    before = forks(client)

    assert not compact_append_only_file(client)

    assert forks(client) == before
    assert fork_warning(forks_between(before, forks(client))) is None

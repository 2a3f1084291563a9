"""A Valkey that loads a large append-only file accepts connections at once but answers
every command with LOADING until its data is in memory: chordline hands out its URL only
once it serves commands, so the first command of whoever asked does not fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.tools.stack.embedded import ensure_redis, stop_redis
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = 400_000


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = ROOT / ".chordline" / f"loading-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        stop_redis(path)
        shutil.rmtree(path, ignore_errors=True)


def _fill(url: str) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for index in range(KEYS):
        pipe.set(f"k{index}", "v" * 40)
        if index % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    client.close()


def test_the_first_command_after_a_start_that_loads_data_succeeds(data_dir: Path) -> None:
    first = ensure_redis(data_dir)
    _fill(first.url)
    stop_redis(data_dir)  # SIGTERM: the AOF is flushed; the next start replays it

    again = ensure_redis(data_dir)
    client = redis.Redis.from_url(again.url)
    try:
        assert client.dbsize() == KEYS  # not "Valkey is loading the dataset in memory"
    finally:
        client.close()

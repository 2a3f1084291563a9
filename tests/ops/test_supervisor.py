"""`chordline up` keeps the stack running when one process dies: that process is started
again (with a backoff, said on the console), the others keep their PIDs, and Ctrl-C still
stops everything. It also writes the URLs it serves to ``<data dir>/env``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time

import psutil
import pytest

from shared.tools.stack.supervisor import Backoff, describe_exit
from tests.conftest import ARTIFACTS, ROOT
from tests.ops.test_dev_stack import CHORDLINE, stop_leftovers, wait_for_line


def test_backoff_doubles_to_its_ceiling_and_resets_after_a_good_run() -> None:
    backoff = Backoff(initial_s=1, max_s=30, reset_after_s=60)
    delays: list[float] = []
    previous = None
    for _ in range(7):
        previous = backoff.next_delay(previous, uptime_s=2)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(30, uptime_s=60) == 1  # it stayed up a minute: start over


def test_exit_codes_name_their_signal() -> None:
    assert describe_exit(-9) == "code -9 (SIGKILL)"
    assert describe_exit(78) == "code 78"


def _pids(text: str, name: str) -> list[int]:
    return [int(p) for p in re.findall(rf"\b{name} started \(pid[ =](\d+)\)", text)]


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_rest_keeps_running(services: None) -> None:
    data_dir = ROOT / ".chordline" / f"supervised-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    # The session's Postgres and Redis (their URLs are set), a data dir of its own.
    env = {**os.environ, "CHORDLINE_DATA_DIR": str(data_dir)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "chordline-up-supervised.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [CHORDLINE, "up", "--only", "orchestrator,merge"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    processes: list[psutil.Process] = []
    try:
        wait_for_line(log, r"chordline is up", proc=up, timeout_s=180)
        text = log.read_text()
        # The URLs it serves, in a file a service on this machine can source.
        env_file = data_dir / "env"
        assert f"env file        {env_file}" in text
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert env_file.read_text() == (
            f"DATABASE_URL={os.environ['DATABASE_URL']}\nREDIS_URL={os.environ['REDIS_URL']}\n"
        )
        (victim,), (bystander,) = _pids(text, "orchestrator"), _pids(text, "merge")
        bystander_started = psutil.Process(bystander).create_time()

        os.kill(victim, signal.SIGKILL)
        wait_for_line(
            log,
            r"orchestrator exited with code -9 \(SIGKILL\); restarting in 1 s \(\d\d:\d\d:\d\d\)",
            proc=up,
            timeout_s=30,
        )
        deadline = time.monotonic() + 30
        while len(_pids(log.read_text(), "orchestrator")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = _pids(log.read_text(), "orchestrator")
        assert len(pids) == 2 and pids[1] != victim, pids
        restarted = psutil.Process(pids[1])
        time.sleep(3)  # it stays up: a Celery worker, not a process that exits at once
        assert restarted.is_running() and restarted.status() != psutil.STATUS_ZOMBIE
        assert "celery" in " ".join(restarted.cmdline())
        # The rest kept running, untouched.
        assert psutil.Process(bystander).create_time() == bystander_started
        assert up.poll() is None
        assert _pids(log.read_text(), "merge") == [bystander]

        processes = psutil.Process(up.pid).children(recursive=True)
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C still stops everything
        assert up.wait(timeout=60) == 130
        _gone, alive = psutil.wait_procs(processes, timeout=30)
        leftovers = [(p.pid, p.name()) for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, f"left running after Ctrl-C: {leftovers}"
    finally:
        stop_leftovers(up, processes)
        shutil.rmtree(data_dir, ignore_errors=True)

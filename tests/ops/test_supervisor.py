"""`chordline up` keeps the stack running when one process dies: that process is started
again (with a backoff, said on the console), the others keep their PIDs, and Ctrl-C still
stops everything. It also writes the URLs it serves to ``<data dir>/env``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from shared.tools.stack import processes
from shared.tools.stack.processes import ProcessGroup, describe_exit
from shared.tools.stack.supervisor import Backoff, Supervisor
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


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _python(code: str) -> str:
    return f"{sys.executable} -c {shlex.quote(code)}"


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_process_that_keeps_exiting_is_started_again_with_a_growing_backoff() -> None:
    said: list[str] = []
    output: list[tuple[str, str]] = []
    supervisor = Supervisor(
        group=ProcessGroup(output=lambda name, line: output.append((name, line))),
        commands={"flaky": _python("print('up', flush=True); raise SystemExit(3)")},
        env=dict(os.environ),
        say=said.append,
        backoff=Backoff(initial_s=0.05, max_s=0.2, reset_after_s=60),
        tick_s=0.01,
    )
    with supervisor.in_background():
        _wait_until(lambda: supervisor.restarts >= 4)
    exits = [line for line in said if line.startswith("flaky exited")]
    assert [line.split("restarting in ")[1].split(" s")[0] for line in exits[:4]] == [
        "0.05",
        "0.1",
        "0.2",
        "0.2",
    ]
    assert exits[0].startswith("flaky exited with code 3;")
    assert sum(line.startswith("flaky started (pid ") for line in said) >= 5
    assert output.count(("flaky", "up")) >= 4  # each run's output, under its name
    assert supervisor.pids() == {}  # all stopped with the block


def test_a_held_process_stays_down_while_the_others_are_started_again() -> None:
    group = ProcessGroup()
    supervisor = Supervisor(
        group=group,
        commands={"a": "sleep 30", "b": "sleep 30"},
        env=dict(os.environ),
        say=lambda _: None,
        held={"a"},
        tick_s=60,  # no ticks of its own: revive() decides
    )
    with supervisor.in_background():
        first = group.running()
        group.kill("a")
        group.kill("b")
        assert supervisor.revive() == ["b"]
        assert not group.alive("a") and group.alive("b")
        assert group.pid("b") != first["b"]
        supervisor.held.clear()
        assert supervisor.revive() == ["a"]
        assert group.alive("a")
    assert not group.processes


def test_a_log_past_its_limit_is_moved_aside_when_a_new_group_starts_its_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "LOG_ROTATE_BYTES", 100)
    log, older = tmp_path / "worker.log", tmp_path / "worker.log.1"

    def run(group: ProcessGroup, word: str, *, again: bool = False) -> None:
        command = _python(f"print({word!r}, flush=True)")
        proc = group.start_again("worker") if again else group.start("worker", command, env={})
        proc.wait(timeout=10)

    log.write_bytes(b"x" * 101)  # a long log from an earlier run
    first = ProcessGroup(log_dir=tmp_path)
    run(first, "one")
    assert older.read_bytes() == b"x" * 101
    assert log.read_text() == "one\n"
    log.write_bytes(b"y" * 150)
    run(first, "one", again=True)  # a restart by the same group appends
    assert log.read_bytes() == b"y" * 150 + b"one\n"
    run(ProcessGroup(log_dir=tmp_path), "two")  # the next run moves it aside
    assert older.read_bytes() == b"y" * 150 + b"one\n"
    assert log.read_text() == "two\n"
    run(ProcessGroup(log_dir=tmp_path), "three")  # a short log is kept
    assert log.read_text() == "two\nthree\n"


def test_stopping_kills_a_process_that_ignores_sigterm_and_its_children() -> None:
    group = ProcessGroup()
    ignores_term = _python(
        "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen(['sleep', '30']); time.sleep(30)"
    )
    proc = group.start("stubborn", ignores_term, env=dict(os.environ))
    time.sleep(0.3)  # its child is started
    killed: list[str] = []
    group.stop_all(0.3, on_kill=killed.append)
    assert killed == ["stubborn"]
    assert proc.returncode == -signal.SIGKILL
    _wait_until(lambda: _group_gone(proc.pid))  # its child went with it (once reaped)


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

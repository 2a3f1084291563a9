"""A wrong DATABASE_URL or REDIS_URL, as a user meets it: the real `chordline` command says
in one line which setting is wrong and what failed, exits non-zero, and does so within
seconds (no traceback, no retry loop, no workers started against a dead server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.ops.test_flower import free_port

pytestmark = pytest.mark.integration

CHORDLINE = str(Path(sys.executable).parent / "chordline")
# Generous for a busy 2-core machine (a failing command takes 1-3 s there); before the
# fix a closed Redis port took 13 s or more, and `up` ran on for 30 s.
WITHIN_S = 10.0


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr_lines: list[str]
    elapsed_s: float
    stdout: str = ""


def run_chordline(*args: str, env: dict[str, str], timeout_s: float = 60.0) -> Outcome:
    """Run the command in its own session; whatever it started is killed if it overruns."""
    began = time.monotonic()
    proc = subprocess.Popen(
        [CHORDLINE, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    elapsed = time.monotonic() - began
    lines = [line for line in stderr.splitlines() if line.strip()]
    return Outcome(proc.returncode, lines, elapsed, stdout)


def session_env(**overrides: str) -> dict[str, str]:
    """This session's servers (set by the `services` fixture), with some settings changed."""
    return {
        **os.environ,
        "CHORDLINE_LOG_FORMAT": "console",
        "CHORDLINE_PROVIDERS": "offline",
        **overrides,
    }


def assert_one_line_naming(outcome: Outcome, setting: str, problem: str) -> None:
    assert outcome.code != 0, outcome
    assert len(outcome.stderr_lines) == 1, "\n".join(outcome.stderr_lines[-40:])
    line = outcome.stderr_lines[0]
    assert line.startswith(f"error: {setting}: "), line
    assert problem in line, line
    assert outcome.elapsed_s < WITHIN_S, f"took {outcome.elapsed_s:.1f} s: {line}"


COMMANDS = {
    "migrate": ("migrate",),
    "turn": ("turn", "Does it have a REST API?", "--tenant", "acme", "--conversation", "c1"),
    "kb ingest": (
        "kb",
        "ingest",
        str(ROOT / "shared" / "tools" / "demo" / "demo_kb"),
        "--tenant",
        "acme",
    ),
    "kb search": ("kb", "search", "webhooks", "--tenant", "acme"),
    "up": ("up",),
    "demo": ("demo", "--latency", "none"),
    "bench": ("bench", "--rate", "5", "--duration", "1"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_closed_database_port_is_one_line_naming_database_url(
    services: None, command: str
) -> None:
    port = free_port()
    outcome = run_chordline(
        *COMMANDS[command], env=session_env(DATABASE_URL=f"postgresql://u:pw@127.0.0.1:{port}/x")
    )
    assert_one_line_naming(
        outcome, "DATABASE_URL", f"cannot connect to 127.0.0.1:{port} (connection refused)"
    )
    assert "pw" not in outcome.stderr_lines[0]


@pytest.mark.parametrize("command", ["turn", "kb ingest", "up", "demo", "bench"])
def test_a_closed_redis_port_is_one_line_naming_redis_url(services: None, command: str) -> None:
    port = free_port()
    outcome = run_chordline(
        *COMMANDS[command], env=session_env(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    )
    assert_one_line_naming(
        outcome, "REDIS_URL", f"cannot connect to 127.0.0.1:{port} (connection refused)"
    )


@pytest.mark.parametrize("command", ["migrate", "kb search", "up", "doctor"])
def test_a_database_url_that_is_not_a_url_is_refused_at_settings_load(
    services: None, command: str
) -> None:
    outcome = run_chordline(
        *COMMANDS.get(command, (command,)), env=session_env(DATABASE_URL="not-a-url")
    )
    assert_one_line_naming(
        outcome, "DATABASE_URL", "'not-a-url' is not a URL; expected postgresql://"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not-a-url", "'not-a-url' is not a Redis URL"),
        ("redis://127.0.0.1:99999/0", "the port of 'redis://127.0.0.1:99999/0' is not a number"),
        ("http://:secret@127.0.0.1:6379/0", "'http://:***@127.0.0.1:6379/0' is not a Redis URL"),
    ],
)
def test_a_malformed_redis_url_is_refused_at_settings_load(
    services: None, url: str, problem: str
) -> None:
    outcome = run_chordline(*COMMANDS["turn"], env=session_env(REDIS_URL=url))
    assert_one_line_naming(outcome, "REDIS_URL", problem)
    assert "secret" not in outcome.stderr_lines[0]


def test_a_bad_value_of_another_setting_is_one_line_naming_it() -> None:
    outcome = run_chordline("migrate", env=session_env(CHORDLINE_KB_CHUNK_CHARS="5"))
    assert_one_line_naming(
        outcome, "CHORDLINE_KB_CHUNK_CHARS", "greater than or equal to 100; got '5'"
    )


def test_a_worker_with_a_closed_redis_port_says_so_in_one_line_while_it_waits(
    services: None,
) -> None:
    """A worker waits for a Redis that may be (re)starting (its supervisor would restart it
    anyway); it says at once, in one line naming REDIS_URL, what it waits for."""
    port = free_port()
    env = session_env(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    proc = subprocess.Popen(
        [CHORDLINE, "proc", "merge"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        began = time.monotonic()
        waiting: list[str] = []
        for line in iter(proc.stderr.readline, ""):
            if "REDIS_URL" in line or time.monotonic() - began > WITHIN_S:
                waiting.append(line)
                break
        assert waiting and waiting[0].strip().endswith(
            f"REDIS_URL: cannot connect to 127.0.0.1:{port} (connection refused); "
            "waiting up to 30 s for it"
        ), waiting
        assert time.monotonic() - began < WITHIN_S
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

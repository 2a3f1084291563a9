"""`chordline up` as a new user runs it: everything starts, a turn goes through, Flower shows
every queue, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import psutil
import pytest

from shared.tools.stack.procfile import read_procfile
from tests.conftest import ARTIFACTS, ROOT
from tests.ops.test_flower import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHORDLINE = str(Path(sys.executable).parent / "chordline")


def worker_queues() -> set[str]:
    queues: set[str] = set()
    for command in read_procfile().values():
        match = re.search(r" worker .*-Q\s+(\S+)", command)
        if match:
            queues.update(match.group(1).split(","))
    return queues


def wait_for_line(
    log: Path, pattern: str, *, proc: subprocess.Popen[bytes], timeout_s: float
) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = re.search(pattern, text)
        if match:
            return match.group(0)
        assert proc.poll() is None, f"chordline up exited early:\n{text[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not seen in {log} within {timeout_s:.0f} s")


def chordline(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [CHORDLINE, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stop_leftovers(up: subprocess.Popen[bytes], processes: list[psutil.Process]) -> None:
    """After a failed assertion: stop `chordline up` and all it started (its processes run
    in sessions of their own, out of reach of a signal to its group)."""
    if up.poll() is None:
        with contextlib.suppress(psutil.Error):
            processes += psutil.Process(up.pid).children(recursive=True)
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()
    for process in processes:
        if process.is_running():
            process.kill()


def test_chordline_up_runs_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    data_dir = ROOT / ".chordline" / f"up-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    ports = {name: free_port() for name in ("UPSTREAM", "UI", "METRICS")}
    web_port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "FLOWER_BASIC_AUTH")
    }
    env.update(
        {
            "CHORDLINE_DATA_DIR": str(data_dir),
            **{f"CHORDLINE_FLOWER_{name}_PORT": str(port) for name, port in ports.items()},
            "CHORDLINE_WEB_PORT": str(web_port),
            "CHORDLINE_OTEL_ENABLED": "true",
            "CHORDLINE_OTEL_EXPORTER": "console",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "chordline-up.log"
    with log.open("wb") as out:
        # its own process group, as a terminal's foreground job; Ctrl-C signals the group
        up = subprocess.Popen(
            [CHORDLINE, "up"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    processes: list[psutil.Process] = []
    try:
        wait_for_line(log, r"chordline is up", proc=up, timeout_s=240)
        login = wait_for_line(log, r"flower login\s+chordline:\S+", proc=up, timeout_s=5)
        credentials = login.split()[-1]
        text = log.read_text()
        for expected in ("postgres ", "redis ", "flower UI ", "flower metrics "):
            assert expected in text
        assert f"http://127.0.0.1:{ports['UI']}/" in text

        chordline("tenant", "create", "acme", env=env)
        view = json.loads(
            chordline(
                "turn",
                "Does it have a REST API?",
                "--tenant",
                "acme",
                "--conversation",
                "c1",
                "--json",
                env=env,
            )
        )
        assert view["status"] == "completed", view

        # the HTTP API it started, on the demo tenant it set up: a key, a turn posted, its
        # reply streamed, its page; another tenant's key does not see it
        assert f"http://127.0.0.1:{web_port}/" in text
        assert re.search(r"demo tenant +demo \(6 documents\)", text), text
        key = chordline("key", "create", "--tenant", "demo", env=env).strip()
        chordline("tenant", "create", "globex", env=env)
        other = chordline("key", "create", "--tenant", "globex", env=env).strip()
        api = f"http://127.0.0.1:{web_port}"
        created = httpx.post(
            f"{api}/v1/conversations/c2/turns",
            json={"message": "Does it have a REST API?"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert created.status_code == 202, created.text
        turn_id = created.json()["turn_id"]
        with httpx.stream(
            "GET",
            f"{api}/v1/turns/{turn_id}/stream",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event:")]
        assert "event: token" in events and events[-1] == "event: end"
        foreign = httpx.get(
            f"{api}/v1/turns/{turn_id}", headers={"Authorization": f"Bearer {other}"}
        )
        assert foreign.status_code == 404
        page = httpx.get(f"{api}/turns/{turn_id}", headers={"Authorization": f"Bearer {key}"})
        assert page.status_code == 200 and "id=waterfall" in page.text
        assert 'data-stage="researcher"' in page.text and "ACCURATE" in page.text

        # Flower, through its gate, lists every queue the Procfile's workers consume
        request = urllib.request.Request(f"http://127.0.0.1:{ports['UI']}/broker")
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(credentials.encode()).decode()
        )
        broker_page = urllib.request.urlopen(request, timeout=30).read().decode()
        for queue in worker_queues():
            assert f'<tr id="{queue}">' in broker_page, queue

        # OpenTelemetry, turned on by configuration: the turn's stages in one trace
        trace_id = "0x" + view["id"].replace("-", "")
        wait_for_line(log, re.escape(f'"trace_id": "{trace_id}"'), proc=up, timeout_s=60)
        stages = set(re.findall(r'"chordline\.stage": "(\w+)"', log.read_text()))
        assert {"orchestrator", "researcher", "merge", "agent"} <= stages

        processes = psutil.Process(up.pid).children(recursive=True)
        names = {p.name() for p in processes}
        assert {"postgres", "valkey-server", "celery"} <= names, names

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        assert up.wait(timeout=90) in (0, 130)
        _gone, alive = psutil.wait_procs(processes, timeout=30)
        leftovers = [(p.pid, p.name()) for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, f"left running after Ctrl-C: {leftovers}"
    finally:
        stop_leftovers(up, processes)
        shutil.rmtree(data_dir, ignore_errors=True)

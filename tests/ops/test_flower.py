"""Flower from the Procfile, behind its gate, against the live stack, in a real browser."""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from shared.client import enqueue_turn, wait_for_turn
from shared.contract import MAINTENANCE_QUEUE, RELAY_TASK, SWEEP_TASK
from shared.dispatch import dispatch_app
from shared.tools.stack.processes import ProcessGroup
from shared.tools.stack.procfile import read_procfile, start_workers
from tests.conftest import ARTIFACTS, new_tenant
from tests.ops.browser import headless_chromium

pytestmark = pytest.mark.integration

RUNNING_WORKERS = ("orchestrator", "researcher", "merge", "agents", "maintenance")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queues_of(process: str) -> list[str]:
    match = re.search(r"-Q\s+(\S+)", read_procfile()[process])
    assert match, process
    return match.group(1).split(",")


@dataclass
class Flower:
    ui: str
    metrics: str
    upstream_port: int
    credentials: str
    group: ProcessGroup

    def get(self, url: str, *, auth: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(url)
        if auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def task_events_reach(flower: Flower, tenant: str) -> bool:
    """Whether Flower learns of a turn's tasks: workers start without task events, and
    Flower turns them on for the workers it watches, every few seconds."""
    turn_id = enqueue_turn(tenant, f"probe-{secrets.token_hex(4)}", "Is the Pro plan monthly?")
    wait_for_turn(turn_id, timeout=90)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        status, body = flower.get(f"{flower.ui}/api/tasks?limit=1000", auth=flower.credentials)
        if status == 200 and turn_id in body:
            return True
        time.sleep(0.3)
    return False


@pytest.fixture(scope="module")
def flower(workers: None) -> Iterator[Flower]:
    import os

    credentials = f"ops:{secrets.token_urlsafe(12)}"
    ports = {name: free_port() for name in ("UPSTREAM", "UI", "METRICS")}
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": credentials,
        **{f"CHORDLINE_FLOWER_{name}_PORT": str(port) for name, port in ports.items()},
    }
    group = start_workers(["flower", "flower-gate"], env=env, log_dir=ARTIFACTS / "worker-logs")
    flower = Flower(
        ui=f"http://127.0.0.1:{ports['UI']}",
        metrics=f"http://127.0.0.1:{ports['METRICS']}",
        upstream_port=ports["UPSTREAM"],
        credentials=credentials,
        group=group,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, body = flower.get(f"{flower.ui}/api/workers?refresh=1", auth=credentials)
                if status == 200 and all(f'"{w}@' in body for w in RUNNING_WORKERS):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Flower did not see the workers in time"
            time.sleep(0.5)
        probes = new_tenant()
        while not task_events_reach(flower, probes):
            assert time.monotonic() < deadline, "Flower did not turn the workers' events on"
        yield flower
    finally:
        group.stop_all()


def test_flower_is_never_served_without_auth_and_its_metrics_only_privately(
    flower: Flower,
) -> None:
    status, _ = flower.get(f"{flower.ui}/")
    assert status == 401
    assert flower.get(f"{flower.ui}/", auth="ops:wrong")[0] == 401
    assert flower.get(f"{flower.ui}/tasks", auth="nobody:" + flower.credentials)[0] == 401
    assert flower.get(f"{flower.ui}/", auth=flower.credentials)[0] == 200
    # /metrics is not on the UI's port, with or without credentials ...
    assert flower.get(f"{flower.ui}/metrics", auth=flower.credentials)[0] == 404
    # ... but on the private metrics port, which serves nothing else
    status, body = flower.get(f"{flower.metrics}/metrics")
    assert status == 200 and "flower_events_total" in body
    assert flower.get(f"{flower.metrics}/")[0] == 404
    assert flower.get(f"{flower.metrics}/tasks")[0] == 404
    # Flower itself listens on loopback only
    flower_pid = flower.group.processes["flower"].pid
    listening = [
        c.laddr
        for c in psutil.Process(flower_pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert {addr.port for addr in listening} == {flower.upstream_port}
    # the password reaches Flower through its environment, never its command line (`ps`)
    password = flower.credentials.split(":", 1)[1]
    assert not any(password in arg for arg in psutil.Process(flower_pid).cmdline())


def test_flower_shows_chordline_tasks_and_queues_in_a_browser(flower: Flower) -> None:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tenant = new_tenant()
    turn_ids = [
        enqueue_turn(tenant, "c1", "Does Halyard have a REST API and webhooks for stock changes?"),
        enqueue_turn(tenant, "c2", "How much does the Pro plan cost per warehouse?"),
    ]
    agent_of = {t: wait_for_turn(t, timeout=90).next_agent for t in turn_ids}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def names_of(turn_id: str) -> list[str]:
        stages = ["chordline.orchestrator", "chordline.researcher", "chordline.merge"]
        return sorted([*stages, f"chordline.agent.{agent_of[turn_id]}"])

    with headless_chromium(basic_auth=flower.credentials) as browser:
        browser.get(f"{flower.ui}/tasks")
        expected = {name for t in turn_ids for name in names_of(t)}

        def tasks_listed(driver: object) -> bool:
            text = browser.find_element(By.ID, "tasks-table").text
            return all(name in text for name in expected)

        def names_shown() -> list[str]:
            rows = browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr[id]")
            cells = [row.find_element(By.TAG_NAME, "td") for row in rows]
            return sorted(cell.get_attribute("textContent").strip() for cell in cells)

        WebDriverWait(browser, 60, poll_frequency=0.5).until(tasks_listed)
        # The table shows no arguments, but its search finds one turn's tasks by its id:
        # exactly that turn's four tasks, not the other turn's.
        search = browser.find_element(By.CSS_SELECTOR, "#tasks-table_filter input")
        search.send_keys(f"kwargs:turn_id={turn_ids[0]}")
        try:
            WebDriverWait(
                browser,
                30,
                poll_frequency=0.5,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(lambda _: names_shown() == names_of(turn_ids[0]))
        except TimeoutException:
            raise AssertionError(
                f"searching Flower for turn {turn_ids[0]} showed {names_shown()}, "
                f"expected {names_of(turn_ids[0])}"
            ) from None
        browser.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))

        browser.get(f"{flower.ui}/broker")
        rows = {
            row.get_attribute("id"): row.get_attribute("textContent").split()
            for row in browser.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")
        }
        browser.save_screenshot(str(ARTIFACTS / "flower-broker.png"))
        for process in RUNNING_WORKERS:
            for queue in queues_of(process):
                assert queue in rows, f"queue {queue} missing from Flower's broker page: {rows}"
                assert rows[queue][0] == queue and rows[queue][1].isdigit(), rows[queue]

        browser.get(f"{flower.ui}/workers")
        WebDriverWait(browser, 30).until(
            lambda _: all(f"{w}@" in browser.page_source for w in RUNNING_WORKERS)
        )
        browser.save_screenshot(str(ARTIFACTS / "flower-workers.png"))
    assert (ARTIFACTS / "flower-tasks.png").stat().st_size > 10_000


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def _exchange(sock: socket.socket, request: bytes) -> http.client.HTTPResponse:
    """Send one raw request on ``sock`` and read its whole response."""
    sock.sendall(request)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


def test_a_refused_request_with_a_body_leaves_its_kept_alive_connection_in_step(
    flower: Flower,
) -> None:
    port = int(flower.ui.rsplit(":", 1)[1])
    body = b"draw=1&start=0&length=15&search%5Bvalue%5D=&order%5B0%5D%5Bdir%5D=desc"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        refused = _exchange(
            sock,
            b"POST /tasks/datatable HTTP/1.1\r\nHost: flower\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert refused.status == 401
        assert refused.getheader("Connection") != "close"  # the gate read the body
        # the next request on the same connection is answered as itself
        second = _exchange(
            sock,
            b"GET /api/workers HTTP/1.1\r\nHost: flower\r\nAuthorization: %s\r\n\r\n"
            % _basic(flower.credentials).encode(),
        )
        assert second.status == 200, second.status
    # a body the gate does not read (chunked) closes the connection after the refusal
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        refused = _exchange(
            sock,
            b"POST /tasks/datatable HTTP/1.1\r\nHost: flower\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\ndraw=\r\n0\r\n\r\n",
        )
        assert refused.status == 401 and refused.getheader("Connection") == "close"
        assert sock.recv(1) == b""  # closed: the chunks were never taken for a request


# DataTables reports a failed load of its rows ("Ajax error") with alert(): record them.
RECORD_ALERTS = "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"


def test_the_tasks_page_loads_its_rows_with_credentials_given_after_a_401(
    flower: Flower,
) -> None:
    """Credentials in the URL: the browser sends them only once refused, so the table's
    POST /tasks/datatable is first refused with its body unread, then sent again on the
    same connection."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tenant = new_tenant()
    wait_for_turn(enqueue_turn(tenant, "c1", "Does Halyard have a REST API?"), timeout=90)
    user, password = flower.credentials.split(":", 1)
    with headless_chromium() as browser:
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_ALERTS})
        browser.get(f"http://{user}:{password}@{flower.ui.removeprefix('http://')}/tasks")

        def alerts() -> list[str]:
            return list(browser.execute_script("return window.__alerts || []"))

        def rows() -> int:
            return len(browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr[id]"))

        WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda _: alerts() or rows() >= 4)
        assert alerts() == []
        browser.find_element(By.CSS_SELECTOR, "#tasks-table_filter input").send_keys("agent")
        time.sleep(2)  # a second load of the rows, after a search, must work as well
        assert alerts() == [] and rows() >= 1


def test_the_outbox_relay_and_the_sweeper_stay_out_of_flowers_task_list(flower: Flower) -> None:
    app = dispatch_app()
    worker = next(
        name
        for reply in app.control.ping(timeout=1) or []
        for name in reply
        if name.startswith("maintenance@")
    )

    def runs() -> dict[str, int]:
        stats = app.control.inspect(destination=[worker], timeout=2).stats() or {}
        info = stats.get(worker)
        return dict(info.get("total", {})) if info is not None else {}

    before = runs()
    for _ in range(3):  # as beat sends them, with the worker's task events on (by Flower)
        for name in (RELAY_TASK, SWEEP_TASK):
            app.send_task(name, queue=MAINTENANCE_QUEUE)
    deadline = time.monotonic() + 30
    while any(runs().get(n, 0) < before.get(n, 0) + 3 for n in (RELAY_TASK, SWEEP_TASK)):
        assert time.monotonic() < deadline, f"the maintenance worker ran {runs()}"
        time.sleep(0.3)
    # a turn's tasks, run after them, still reach Flower's list ...
    assert task_events_reach(flower, new_tenant(with_demo_kb=False))
    # ... and the maintenance tasks are not in it
    for name in (RELAY_TASK, SWEEP_TASK):
        status, body = flower.get(f"{flower.ui}/api/tasks?taskname={name}", auth=flower.credentials)
        assert status == 200 and json.loads(body) == {}, (name, body[:300])

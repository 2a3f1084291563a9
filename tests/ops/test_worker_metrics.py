"""Each worker serves Prometheus metrics on a private port; turns show up in them."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.client import enqueue_turn, wait_for_turn
from shared.config import get_settings
from shared.contract import INGEST_QUEUE, INGEST_TASK
from shared.metrics import scrape_targets
from tests.conftest import ARTIFACTS, new_tenant

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def targets() -> dict[str, str]:
    return scrape_targets(get_settings().data_dir / "metrics")


def target_of(process: str, *, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker, url in targets().items():
            if worker.split("@", 1)[0] == process:
                return url
        time.sleep(0.2)
    raise AssertionError(f"no metrics target for {process}: {targets()}")


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(check: Callable[[], bool], *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.3)


def json_lines(path: Path) -> list[dict[str, object]]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def test_every_turn_worker_serves_metrics_on_loopback(workers: None) -> None:
    for process in ("orchestrator", "researcher", "merge", "agents", "maintenance"):
        url = target_of(process)
        assert url.startswith("http://127.0.0.1:"), url
        assert "chordline_tasks_total" in urllib.request.urlopen(url, timeout=10).read().decode()


def test_turns_are_measured_per_stage_per_queue_and_per_turn(workers: None) -> None:
    agents, orchestrator, researcher = (
        target_of(p) for p in ("agents", "orchestrator", "researcher")
    )
    before = {url: scrape(url) for url in (agents, orchestrator, researcher)}
    tenant = new_tenant()
    turn_ids = [
        enqueue_turn(tenant, "c1", "Does Halyard have a REST API and webhooks for stock changes?"),
        enqueue_turn(tenant, "c2", "Can it connect to our on-prem SAP R/3 system over RFC?"),
    ]
    views = [wait_for_turn(t, timeout=90) for t in turn_ids]
    assert {v.kb_information_level for v in views} == {"ACCURATE", "MISSING"}

    def delta(url: str, name: str, **labels: str) -> float:
        return value(scrape(url), name, **labels) - value(before[url], name, **labels)

    # per turn: observed off the task's thread, so it may land a moment after the reply
    for view in views:

        def turn_observed(next_agent: str = view.next_agent or "") -> bool:
            return (
                delta(
                    agents,
                    "chordline_turn_duration_seconds_count",
                    topology="parallel",
                    agent=next_agent,
                )
                >= 1
            )

        eventually(turn_observed)
    assert delta(agents, "chordline_kb_level_total", kb_information_level="ACCURATE") >= 1
    assert delta(agents, "chordline_kb_level_total", kb_information_level="MISSING") >= 1
    assert delta(agents, "chordline_turns_total", status="completed") >= 2
    # per task, where it ran
    assert (
        delta(
            orchestrator,
            "chordline_stage_duration_seconds_count",
            stage="orchestrator",
            task="chordline.orchestrator",
        )
        >= 2
    )
    assert delta(researcher, "chordline_queue_wait_seconds_count", queue="researcher") >= 2
    assert (
        delta(researcher, "chordline_tasks_total", task="chordline.researcher", state="SUCCESS")
        >= 2
    )
    latency_sum = delta(
        agents,
        "chordline_turn_duration_seconds_sum",
        topology="parallel",
        agent=views[0].next_agent or "",
    )
    assert 0 < latency_sum <= (views[0].latency_ms or 0) / 1000 * 1.01 + 60

    # logs: every stage of the turn, with the stable keys, tenant included
    logs = ARTIFACTS / "worker-logs"
    recorded = [
        e
        for e in json_lines(logs / "agents.log")
        if e.get("action") == "stage_recorded" and e.get("turn_id") == turn_ids[0]
    ]
    assert {e["stage"] for e in recorded} == {"orchestrator", "researcher", "merge", "agent"}
    assert all(e["tenant_id"] == tenant for e in recorded)
    finished = [
        e
        for e in json_lines(logs / "orchestrator.log")
        if e.get("action") == "task_finished" and e.get("turn_id") == turn_ids[0]
    ]
    assert finished and finished[0]["stage"] == "orchestrator"
    assert finished[0]["queue"] == "orchestrator"


@pytest.fixture(scope="module")
def ingest_worker(services: None) -> Iterator[None]:
    from shared.tools.stack.procfile import running_workers

    with running_workers(["ingest"], log_dir=ARTIFACTS / "worker-logs"):
        yield


def test_a_prefork_pool_serves_what_its_children_recorded(ingest_worker: None) -> None:
    from shared.dispatch import dispatch_app

    url = target_of("ingest")
    name = "chordline_tasks_total"
    before = value(scrape(url), name, task=INGEST_TASK, state="FAILURE")
    # a payload the task refuses at the door: recorded in a pool child, served by the parent
    dispatch_app().send_task(INGEST_TASK, kwargs={"unexpected": 1}, queue=INGEST_QUEUE)
    eventually(lambda: value(scrape(url), name, task=INGEST_TASK, state="FAILURE") >= before + 1)

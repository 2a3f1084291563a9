"""The turn and conversation pages in headless Chromium, behind the same API keys; the
screenshots are kept in test-artifacts/pages/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Tenant, WebProcess, new_key
from tests.api.test_http_api import post_turn, stream_events
from tests.conftest import ARTIFACTS, new_tenant
from tests.ops.browser import headless_chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHOTS = ARTIFACTS / "pages"
MESSAGE = "Does it integrate with NetSuite? <script>alert(1)</script> & <b>thanks</b>"


def bar_span(driver: Any, stage: str) -> tuple[float, float]:
    """The horizontal extent of a stage's running bar on the page, in pixels."""
    from selenium.webdriver.common.by import By

    bar = driver.find_element(By.CSS_SELECTOR, f'[data-stage="{stage}"] .bar')
    rect = bar.rect
    return rect["x"], rect["x"] + rect["width"]


def log_in(driver: Any, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "open").click()


def test_the_turn_page_shows_the_waterfall_routing_hits_and_memory(
    web: WebProcess, api_tenant: Tenant
) -> None:
    from selenium.webdriver.common.by import By

    SHOTS.mkdir(parents=True, exist_ok=True)
    with web.client(api_tenant.key) as client:
        turn_id = post_turn(client, "c-page", MESSAGE).json()["turn_id"]
        assert stream_events(client, turn_id)[-1].data["status"] == "completed"
        turn = client.get(f"/v1/turns/{turn_id}").json()
        trace = client.get(f"/v1/turns/{turn_id}/trace").json()

    with headless_chromium() as driver:
        driver.get(f"{web.base}/turns/{turn_id}")
        assert driver.find_elements(By.ID, "key"), "no key: the page asks for one"
        driver.save_screenshot(str(SHOTS / "login.png"))
        log_in(driver, "chl_00000000_" + "x" * 43)
        assert "unknown or revoked" in driver.find_element(By.ID, "problem").text
        log_in(driver, api_tenant.key)

        waterfall = driver.find_element(By.ID, "waterfall")
        stages = [
            row.get_attribute("data-stage")
            for row in waterfall.find_elements(By.CSS_SELECTOR, "[data-stage]")
        ]
        assert stages == ["orchestrator", "researcher", "merge", "agent"]
        orchestrator, researcher = bar_span(driver, "orchestrator"), bar_span(driver, "researcher")
        # side by side: the two bars overlap on the time axis, as their spans did
        assert min(orchestrator[1], researcher[1]) > max(orchestrator[0], researcher[0])
        merge, agent = bar_span(driver, "merge"), bar_span(driver, "agent")
        assert merge[0] >= max(orchestrator[1], researcher[1]) - 2
        assert agent[0] >= merge[0]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".parallel [data-stage]")) == 2
        waited = driver.find_element(By.CSS_SELECTOR, ".row.waited").get_attribute("data-stage")
        assert waited == trace["waited_on"]

        assert driver.find_element(By.ID, "routing").text == turn["routing_reason"]
        assert driver.find_element(By.ID, "level").text == turn["kb_information_level"]
        hits = driver.find_elements(By.CSS_SELECTOR, "#hits tr")
        assert len(hits) > 1  # a header and at least one passage
        memory = driver.find_element(By.ID, "memory").text
        assert '"topics"' in memory and turn["memory_written"]["last_agent"] in memory
        assert driver.find_element(By.ID, "reply").text == turn["reply"].strip()
        assert MESSAGE in driver.page_source.replace("&lt;", "<").replace("&gt;", ">").replace(
            "&amp;", "&"
        )
        assert not driver.find_elements(By.TAG_NAME, "script")  # shown as text, never run
        driver.save_screenshot(str(SHOTS / "turn.png"))

        driver.find_element(By.LINK_TEXT, "c-page").click()
        rows = driver.find_elements(By.CSS_SELECTOR, "#turns tr")
        assert len(rows) == 2
        assert driver.find_element(By.ID, "qualification").text
        driver.save_screenshot(str(SHOTS / "conversation.png"))
        rows[1].find_element(By.TAG_NAME, "a").click()
        assert driver.find_element(By.ID, "waterfall")

        # another tenant's key sees no such turn
        driver.delete_all_cookies()
        driver.get(f"{web.base}/turns/{turn_id}")
        log_in(driver, new_key(new_tenant(with_demo_kb=False)))
        assert driver.find_element(By.ID, "problem").text == f"turn {turn_id} does not exist"
        assert not driver.find_elements(By.ID, "waterfall")

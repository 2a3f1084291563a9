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


def wait_for(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 20).until(
        expected_conditions.presence_of_element_located((By.ID, element_id))
    )


def is_detached(element: Any) -> bool:
    """Whether ``element`` left the document once the page re-rendered.

    Chromium reports a detached node either as a stale element reference or, from some
    driver versions on, as a generic error saying the node does not belong to the
    document; both mean the same thing here.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return True
        raise
    return False


def log_in(driver: Any, key: str, *, then_shows: str) -> Any:
    """Submit the key in the page's form; the element with id ``then_shows`` once loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    form = driver.find_element(By.ID, "key")
    form.send_keys(key)
    driver.find_element(By.ID, "open").click()
    WebDriverWait(driver, 20).until(lambda _: is_detached(form))
    return WebDriverWait(driver, 20).until(
        expected_conditions.presence_of_element_located((By.ID, then_shows))
    )


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
        problem = log_in(driver, "chl_00000000_" + "x" * 43, then_shows="problem")
        assert "unknown or revoked" in problem.text
        waterfall = log_in(driver, api_tenant.key, then_shows="waterfall")
        stages = [
            row.get_attribute("data-stage")
            for row in waterfall.find_elements(By.CSS_SELECTOR, "[data-stage]")
        ]
        assert stages == ["orchestrator", "researcher", "merge", "agent"]
        orchestrator, researcher = bar_span(driver, "orchestrator"), bar_span(driver, "researcher")
        # side by side: the two bars overlap on the page exactly when their spans did
        overlap_px = min(orchestrator[1], researcher[1]) - max(orchestrator[0], researcher[0])
        if trace["overlap_ms"] > 0.02 * trace["latency_ms"]:
            assert overlap_px > 0
        elif trace["overlap_ms"] == 0:
            assert overlap_px <= 1
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
        rows = wait_for(driver, "turns").find_elements(By.TAG_NAME, "tr")
        assert len(rows) == 2
        assert driver.find_element(By.ID, "qualification").text
        driver.save_screenshot(str(SHOTS / "conversation.png"))
        rows[1].find_element(By.TAG_NAME, "a").click()
        assert wait_for(driver, "waterfall")

        # another tenant's key sees no such turn
        driver.delete_all_cookies()
        driver.get(f"{web.base}/turns/{turn_id}")
        problem = log_in(driver, new_key(new_tenant(with_demo_kb=False)), then_shows="problem")
        assert problem.text == f"turn {turn_id} does not exist"
        assert not driver.find_elements(By.ID, "waterfall")

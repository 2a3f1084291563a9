"""The README's JavaScript, run by node against the service: fetch for the POST, the event
stream read from fetch's body."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.api.conftest import Tenant, WebProcess
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "stream_reply.mjs"


def test_the_javascript_example_posts_a_turn_and_reads_its_reply(
    web: WebProcess, api_tenant: Tenant
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "node is not installed (apt-get install nodejs): the JavaScript example is not run"
        )
    result = subprocess.run(
        [node, str(EXAMPLE), web.base, api_tenant.key, "c-node", "Does it have a REST API?"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["end"]["status"] == "completed"
    assert outcome["reply"] == outcome["end"]["reply"] and outcome["reply"]
    assert result.stderr == outcome["reply"]  # the tokens, as they came
    with web.client(api_tenant.key) as client:
        turn = client.get(f"/v1/turns/{outcome['turn_id']}").json()
        assert turn["reply"] == outcome["reply"] and turn["conversation_id"] == "c-node"
        bad_key = subprocess.run(
            [node, str(EXAMPLE), web.base, "chl_00000000_" + "x" * 43, "c-node", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert bad_key.returncode != 0 and "401 Authorization: the API key is unknown" in bad_key.stderr

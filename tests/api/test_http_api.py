"""The HTTP API over real HTTP: a turn posted and its reply streamed, resumed after a dropped
connection, tenants kept apart, idempotency, and bad input answered as problem+json."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.streaming import stream_key
from tests.api.conftest import SseEvent, SseReader, Tenant, WebProcess, new_key
from tests.conftest import new_tenant

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def post_turn(
    client: httpx.Client, conversation: str, message: str, *, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(
        f"/v1/conversations/{conversation}/turns", json={"message": message}, headers=headers
    )


def stream_events(
    client: httpx.Client, turn_id: str, *, last_event_id: str | None = None
) -> list[SseEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/turns/{turn_id}/stream", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(SseReader(response).events())


def reply_text(events: list[SseEvent]) -> str:
    text = ""
    for event in events:
        if event.kind == "restart":
            text = ""
        elif event.kind == "token":
            text += str(event.data["text"])
    return text


def assert_problem(
    response: httpx.Response, status: int, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"].startswith("urn:chordline:problem:")
    assert body["detail"] and "Traceback" not in body["detail"]
    if field is not None:
        assert body["field"] == field, body
        assert body["detail"].startswith(f"{field}:"), body
    return body


def test_a_turn_posted_over_http_streams_its_reply_and_reads_back(
    web: WebProcess, api_tenant: Tenant
) -> None:
    with web.client(api_tenant.key) as client:
        created = post_turn(client, "c-http-1", "Does it have a REST API?")
        assert created.status_code == 202, created.text
        turn_id = created.json()["turn_id"]
        assert created.headers["location"] == f"/v1/turns/{turn_id}"
        events = stream_events(client, turn_id)
        assert events[-1].kind == "end"
        assert [e.kind for e in events[:-1]] and {e.kind for e in events[:-1]} <= {
            "token",
            "restart",
        }
        assert all(e.id for e in events)  # every event resumable
        end = events[-1].data
        assert end["status"] == "completed"
        assert reply_text(events) == end["reply"]

        turn = client.get(f"/v1/turns/{turn_id}").json()
        assert turn["status"] == "completed"
        assert turn["reply"] == end["reply"] and turn["agent"] == end["agent"]
        assert turn["kb_information_level"] in {"ACCURATE", "PARTIAL", "MISSING"}
        assert turn["routing_reason"]
        assert turn["conversation_id"] == "c-http-1"
        timings = turn["timings_ms"]
        assert 0 < timings["routed"] <= timings["completed"]

        trace = client.get(f"/v1/turns/{turn_id}/trace").json()
        assert {s["stage"] for s in trace["stages"]} == {
            "orchestrator",
            "researcher",
            "merge",
            "agent",
        }
        assert trace["waited_on"] in {"orchestrator", "researcher"}


def test_a_dropped_stream_resumes_from_last_event_id(
    web: WebProcess, api_tenant: Tenant, services: None
) -> None:
    from shared.redis_conn import get_redis

    with web.client(api_tenant.key) as client:
        turn_id = post_turn(client, "c-http-2", "How do webhooks retry?").json()["turn_id"]
        with client.stream("GET", f"/v1/turns/{turn_id}/stream") as response:
            first = next(SseReader(response).events())  # then the connection is dropped
        assert first.kind in {"token", "restart"} and first.id
        rest = stream_events(client, turn_id, last_event_id=first.id)
    entries = get_redis().xrange(stream_key(turn_id))
    assert entries is not None
    ids = [entry_id for entry_id, _ in entries]
    assert [e.id for e in rest] == ids[ids.index(first.id) + 1 :]  # exactly what came after
    assert rest[-1].kind == "end"
    assert reply_text([first, *rest]) == rest[-1].data["reply"]


def test_a_key_sees_only_its_own_tenant(web: WebProcess, api_tenant: Tenant) -> None:
    other_key = new_key(new_tenant(with_demo_kb=False))
    with web.client(api_tenant.key) as owner, web.client(other_key) as other:
        turn_id = post_turn(owner, "c-private", "What does it cost?").json()["turn_id"]
        stream_events(owner, turn_id)
        assert owner.get("/v1/conversations/c-private").status_code == 200
        for path in (
            f"/v1/turns/{turn_id}",
            f"/v1/turns/{turn_id}/trace",
            f"/v1/turns/{turn_id}/stream",
        ):
            foreign = assert_problem(other.get(path), 404)
            unknown_id = str(uuid.uuid4())
            unknown = assert_problem(other.get(path.replace(turn_id, unknown_id)), 404)
            # answered exactly as a turn that does not exist
            assert foreign["detail"] == f"turn {turn_id} does not exist"
            assert unknown["detail"] == f"turn {unknown_id} does not exist"
        assert_problem(other.get("/v1/conversations/c-private"), 404)


def test_the_same_idempotency_key_is_the_same_turn_and_another_body_a_409(
    web: WebProcess, api_tenant: Tenant
) -> None:
    with web.client(api_tenant.key) as client:
        first = post_turn(client, "c-idem", "Is there an SLA?", key="req-1")
        again = post_turn(client, "c-idem", "Is there an SLA?", key="req-1")
        assert first.status_code == again.status_code == 202
        assert first.json()["turn_id"] == again.json()["turn_id"]
        conflict = post_turn(client, "c-idem", "Is there a free trial?", key="req-1")
        body = assert_problem(conflict, 409, field="Idempotency-Key")
        assert "'req-1'" in body["detail"] and first.json()["turn_id"] in body["detail"]
        assert "message" in body["detail"]
        elsewhere = post_turn(client, "c-idem-2", "Is there an SLA?", key="req-1")
        assert "conversation" in assert_problem(elsewhere, 409, field="Idempotency-Key")["detail"]
        turns = client.get("/v1/conversations/c-idem").json()["turns"]
        assert [t["id"] for t in turns] == [first.json()["turn_id"]]  # nothing else written


def test_requests_without_a_valid_key_are_401(web: WebProcess, api_tenant: Tenant) -> None:
    path = f"/v1/turns/{uuid.uuid4()}"
    with web.client() as anonymous:
        missing = anonymous.get(path)
        assert_problem(missing, 401, field="Authorization")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "chordline key create" in missing.json()["detail"]
        wrong = anonymous.get(path, headers={"Authorization": "Bearer chl_00000000_" + "x" * 43})
        assert "unknown or revoked" in assert_problem(wrong, 401, field="Authorization")["detail"]
        garbage = anonymous.get(path, headers={"Authorization": "Bearer nonsense"})
        assert_problem(garbage, 401, field="Authorization")
        basic = anonymous.get(path, headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert_problem(basic, 401, field="Authorization")


def test_bad_input_is_a_problem_naming_the_field_and_the_limit(
    web: WebProcess, api_tenant: Tenant
) -> None:
    with web.client(api_tenant.key) as client:
        assert_problem(client.get(f"/v1/turns/{uuid.uuid4()}"), 404)
        body = assert_problem(client.get("/v1/turns/12ab"), 422, field="turn_id")
        assert "'12ab' is not a UUID" in body["detail"]
        assert_problem(client.get("/v1/turns/12ab/trace"), 422, field="turn_id")
        assert_problem(client.get("/v1/turns/12ab/stream"), 422, field="turn_id")
        assert_problem(post_turn(client, "bad id!", "hello"), 422, field="conversation_id")
        assert_problem(client.get("/v1/conversations/nosuch"), 404)

        missing = client.post("/v1/conversations/c1/turns", json={})
        assert_problem(missing, 422, field="message")
        extra = client.post("/v1/conversations/c1/turns", json={"message": "hi", "x": 1})
        assert_problem(extra, 422, field="x")
        not_json = client.post(
            "/v1/conversations/c1/turns",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert_problem(not_json, 422, field="body")
        not_utf8 = client.post(
            "/v1/conversations/c1/turns",
            content=b'{"message": "\xff\xfe"}',
            headers={"Content-Type": "application/json"},
        )
        assert assert_problem(not_utf8, 422, field="body")["detail"] == "body: is not JSON in UTF-8"
        assert_problem(post_turn(client, "c1", "   "), 422, field="message")
        too_long = assert_problem(post_turn(client, "c1", "x" * 8001), 422, field="message")
        assert "the limit is 8000" in too_long["detail"]
        bad_key = post_turn(client, "c1", "hello", key="has spaces")
        assert_problem(bad_key, 422, field="Idempotency-Key")

        oversize = client.post(
            "/v1/conversations/c1/turns", content=b'{"message": "' + b"x" * 70_000 + b'"}'
        )
        body = assert_problem(oversize, 413, field="body")
        assert body["limit"] == 65_536 and "CHORDLINE_WEB_MAX_BODY_BYTES" in body["detail"]

        # no Content-Length: the limit holds while the body arrives
        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b"x" * 4096

        chunked = client.post("/v1/conversations/c1/turns", content=chunks())
        assert_problem(chunked, 413, field="body")

        turn_id = post_turn(client, "c1", "hello").json()["turn_id"]
        resume = client.get(f"/v1/turns/{turn_id}/stream", headers={"Last-Event-ID": "abc"})
        assert_problem(resume, 422, field="Last-Event-ID")
        beyond = client.get(  # the form of an entry id, but past what Redis can hold
            f"/v1/turns/{turn_id}/stream", headers={"Last-Event-ID": "47496232698663744145-2"}
        )
        assert_problem(beyond, 422, field="Last-Event-ID")
        assert_problem(client.get(f"/v1/turns/{turn_id}/stream?after=x"), 422, field="after")
        assert client.get("/v1/conversations/c1").json()["turns"][0]["id"] == turn_id

        unknown_route = client.get("/v2/turns")
        assert_problem(unknown_route, 404)
        assert_problem(client.delete(f"/v1/turns/{turn_id}"), 405)


def test_a_conversation_lists_its_turns_memory_and_qualification(
    web: WebProcess, api_tenant: Tenant
) -> None:
    with web.client(api_tenant.key) as client:
        ids = []
        for message in ("Hi, we run three warehouses.", "Does it integrate with NetSuite?"):
            turn_id = post_turn(client, "c-conv", message).json()["turn_id"]
            assert stream_events(client, turn_id)[-1].data["status"] == "completed"
            ids.append(turn_id)
        conversation = client.get("/v1/conversations/c-conv").json()
    assert conversation["id"] == "c-conv"
    assert [t["id"] for t in conversation["turns"]] == ids
    assert [t["seq"] for t in conversation["turns"]] == [1, 2]
    assert all(t["reply"] and t["agent"] for t in conversation["turns"])
    assert conversation["qualification_status"]
    assert conversation["memory"]  # written by the agents


def test_health_readiness_and_the_openapi_schema(web: WebProcess) -> None:
    assert httpx.get(f"{web.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{web.base}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": "ok", "migrations": "ok", "redis": "ok"}
    schema = httpx.get(f"{web.base}/openapi.json").json()
    assert {
        "/v1/conversations/{conversation_id}/turns",
        "/v1/turns/{turn_id}",
        "/v1/turns/{turn_id}/stream",
        "/v1/turns/{turn_id}/trace",
        "/v1/conversations/{conversation_id}",
        "/healthz",
        "/readyz",
    } <= set(schema["paths"])
    post = schema["paths"]["/v1/conversations/{conversation_id}/turns"]["post"]
    assert "application/problem+json" in post["responses"]["409"]["content"]
    assert "Problem" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_readiness_names_a_schema_behind_the_latest_migration(services: None) -> None:
    from shared.api.app import readiness_checks
    from shared.db.migrations import schema_heads

    assert readiness_checks(schema_heads()) == {"postgres": "ok", "migrations": "ok", "redis": "ok"}
    behind = readiness_checks({"9999"})
    assert behind["postgres"] == "ok" and behind["redis"] == "ok"
    assert behind["migrations"].endswith("the latest is 9999; run `chordline migrate`")


def test_a_busy_conversation_under_the_reject_policy_is_a_409(web: WebProcess) -> None:
    from tests.conftest import accept_unpublished_turn

    tenant = new_tenant({"in_flight_policy": "reject"}, with_demo_kb=False)
    accept_unpublished_turn(tenant, conversation="c-busy")  # in flight, never ends
    with web.client(new_key(tenant)) as client:
        busy = post_turn(client, "c-busy", "And the price?")
        body = assert_problem(busy, 409, field="conversation")
        assert body["detail"] == "conversation: 'c-busy' already has a turn in flight"
        assert post_turn(client, "c-free", "And the price?").status_code == 202

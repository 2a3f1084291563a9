"""Small HTTP servers on loopback that speak the parts of the OpenAI and Cohere APIs that
chordline uses, with scripted behaviours (errors, slowness, malformed bodies).

OpenAI (base URL ``http://127.0.0.1:<port>/v1``): ``POST /chat/completions`` (structured
output, and SSE streaming with a final usage chunk; a request whose ``response_format`` is
the ``customer_facts`` JSON schema is the route ``facts``, answered with the facts the
offline patterns read, every other field null, or with a scripted refusal or content), ``POST /embeddings``, ``GET /models``.
Cohere (base URL ``http://127.0.0.1:<port>``): ``POST /v2/rerank``, ``GET /v1/models/<name>``.

A normal answer is computed by chordline's offline providers (the local classifier, embedder
and reranker), so a turn on the fake APIs routes and grades the knowledge base the way an
offline turn does. Tests queue ``Reply`` objects per route to script anything else, or
answer every request of a route whose body holds a given text with a fixed ``Reply``
(``fail_requests_containing``); the server records every request (headers and JSON body)
for the test to inspect.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import struct
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.customer_facts import facts_in
from shared.providers.base import ConversationContext, Usage
from shared.providers.intent import classify
from shared.providers.local import LocalEmbedder, LocalReranker
from shared.providers.prompts import FACTS_SCHEMA, FACTS_SCHEMA_NAME

OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")
COHERE_MODELS = ("rerank-v3.5", "rerank-english-v3.0")
EMBEDDING_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


@dataclass
class Reply:
    """One scripted answer. Unset fields mean: answer normally."""

    status: int = 200
    body: Any = None  # a dict is sent as JSON, a str as it is (malformed JSON, say)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line: a slow answer
    drop: bool = False  # close the connection without answering: a connection reset
    content: str | None = None  # chat: this message content instead of the normal one
    refusal: str | None = None  # chat: a refusal instead of content
    finish_reason: str = "stop"
    stall_after_chunks: int | None = None  # stream: stop sending after this many chunks
    stall_s: float = 0.0
    token_delay_s: float = 0.002  # stream: the pause between two tokens


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def _words(text: str) -> int:
    return max(1, len(text.split()))


def is_facts_request(body: Any) -> bool:
    """A chat completion that asks for the customer's facts (the agent stage's extraction)."""
    if not isinstance(body, dict):
        return False
    schema = (body.get("response_format") or {}).get("json_schema") or {}
    return bool(schema.get("name") == FACTS_SCHEMA_NAME)


def rate_limited(retry_after_s: float) -> Reply:
    return Reply(
        status=429,
        headers={"retry-after": f"{retry_after_s:g}"},
        body={"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
    )


def server_error() -> Reply:
    return Reply(
        status=500, body={"error": {"message": "The server had an error", "type": "server_error"}}
    )


def malformed() -> Reply:
    return Reply(status=200, body='{"id": "x", "choices": [ {"index": 0, "mess')


class FakeAPI:
    """A scripted API server on 127.0.0.1, in a thread of the test process."""

    def __init__(self, kind: str, *, api_key: str) -> None:
        assert kind in ("openai", "cohere")
        self.kind, self.api_key = kind, api_key
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._rules: list[tuple[str, str, Reply]] = []  # (route, text in the body, reply)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}" + ("/v1" if self.kind == "openai" else "")

    def start(self) -> FakeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, route: str, *replies: Reply) -> None:
        """Answer the next calls of ``route`` (chat, stream, embeddings, models, rerank)."""
        with self._lock:
            self._scripts[route].extend(replies)

    def fail_requests_containing(self, route: str, needle: str, reply: Reply) -> None:
        """Answer every call of ``route`` whose JSON body contains ``needle`` with ``reply``."""
        with self._lock:
            self._rules.append((route, needle, reply))

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._rules.clear()
            self.requests.clear()

    def calls(self, route_path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(route_path)]

    def sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops."""
        self._stopping.wait(seconds)

    def _next(self, route: str, body: Any) -> Reply:
        with self._lock:
            if self._rules:
                raw = json.dumps(body)
                for rule_route, needle, reply in self._rules:
                    if rule_route == route and needle in raw:
                        return reply
            queue = self._scripts.get(route)
            return queue.popleft() if queue else Reply()

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; close ends a body

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                self._serve("GET", None)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                self._serve("POST", body)

            def _serve(self, method: str, body: Any) -> None:
                api._record(
                    Recorded(
                        method, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    api._dispatch(self, method, body)

        return Handler

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str, body: Any) -> None:
        route = self._route(method, h.path, body)
        if route is None:
            self._send(h, Reply(status=404, body={"error": {"message": f"no route {h.path}"}}))
            return
        reply = self._next(route, body)
        if reply.delay_s:
            self.sleep(reply.delay_s)
        if reply.drop:
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if reply.status != 200 or reply.body is not None:
            self._send(h, reply)
            return
        problem = self._auth_or_model_problem(h, route, body)
        if problem is not None:
            self._send(h, problem)
            return
        if route == "stream":
            self._stream(h, body, reply)
            return
        self._send(h, Reply(body=self._normal(route, h.path, body, reply)))

    def _route(self, method: str, path: str, body: Any) -> str | None:
        path = path.split("?", 1)[0]
        if self.kind == "openai":
            if method == "POST" and path == "/v1/chat/completions":
                if isinstance(body, dict) and body.get("stream"):
                    return "stream"
                return "facts" if is_facts_request(body) else "chat"
            if method == "POST" and path == "/v1/embeddings":
                return "embeddings"
            if method == "GET" and path == "/v1/models":
                return "models"
            return None
        if method == "POST" and path == "/v2/rerank":
            return "rerank"
        if method == "GET" and path.startswith("/v1/models/"):
            return "models"
        return None

    def _auth_or_model_problem(
        self, h: BaseHTTPRequestHandler, route: str, body: Any
    ) -> Reply | None:
        given = (h.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if given != self.api_key:
            # Like the real APIs, echo the rejected key (here in full, to prove it never
            # reaches chordline's errors, logs or rows).
            message = (
                f"Incorrect API key provided: {given}. You can find your API key in your account."
            )
            return Reply(
                status=401,
                body={
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                }
                if self.kind == "openai"
                else {"message": message},
            )
        model = body.get("model") if isinstance(body, dict) else None
        if route == "models" and self.kind == "cohere":
            model = h.path.rsplit("/", 1)[-1]
        known = OPENAI_MODELS if self.kind == "openai" else COHERE_MODELS
        if model is not None and model not in known:
            if self.kind == "openai":
                return Reply(
                    status=404,
                    body={
                        "error": {
                            "message": f"The model `{model}` does not exist or you do not have access to it.",
                            "type": "invalid_request_error",
                            "code": "model_not_found",
                        }
                    },
                )
            return Reply(
                status=404,
                body={
                    "message": f"model '{model}' not found, make sure the correct model ID was used"
                },
            )
        return None

    def _send(self, h: BaseHTTPRequestHandler, reply: Reply) -> None:
        payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = payload.encode()
        h.send_response(reply.status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for name, value in reply.headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)

    # ------------------------------------------------------------------ normal answers

    def _normal(self, route: str, path: str, body: Any, reply: Reply) -> dict[str, Any]:
        if route in ("chat", "facts"):
            return self._completion(body, reply)
        if route == "embeddings":
            return self._embeddings(body)
        if route == "rerank":
            return self._rerank(body)
        if self.kind == "cohere":
            return {"name": path.rsplit("/", 1)[-1], "endpoints": ["rerank"], "finetuned": False}
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                for m in OPENAI_MODELS
            ],
        }

    @staticmethod
    def _last_user_message(body: dict[str, Any]) -> str:
        users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
        return str(users[-1]) if users else ""

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        return sum(_words(str(m.get("content", ""))) for m in body.get("messages", []))

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message = self._last_user_message(body)
        if reply.content is not None:
            content: str | None = reply.content
        elif reply.refusal is not None:
            content = None
        elif is_facts_request(body):
            found: dict[str, Any] = dict(facts_in(message))
            content = json.dumps({key: found.get(key) for key in FACTS_SCHEMA["properties"]})
        else:
            route = classify(ConversationContext(tenant_id="-", message=message))
            content = json.dumps(
                {
                    "phase": route.phase.value,
                    "intent": route.intent,
                    "proposed_agent": route.proposed_agent.value,
                    "confidence": route.confidence,
                    "handoff": route.handoff,
                }
            )
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": self._prompt_tokens(body),
                "completion_tokens": 17,
                "total_tokens": self._prompt_tokens(body) + 17,
            },
        }

    @staticmethod
    def reply_text(body: dict[str, Any]) -> str:
        """The fake agent's answer: it names the first source it was given."""
        docs = [
            m["content"]
            for m in body.get("messages", [])
            if str(m.get("content", "")).startswith("Documentation:")
        ]
        title = re.search(r"\[1\] ([^\n]+)", docs[0]).group(1) if docs else "our product"  # type: ignore[union-attr]
        return f"Thanks for asking. According to {title}, here is the short answer you need."

    def _stream(self, h: BaseHTTPRequestHandler, body: dict[str, Any], reply: Reply) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        text = reply.content if reply.content is not None else self.reply_text(body)
        tokens = re.findall(r"\S+\s*", text)

        def event(delta: dict[str, Any], *, finish: str | None = None, usage: Any = None) -> None:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": []
                if usage is not None
                else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                chunk["usage"] = usage
            h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            h.wfile.flush()

        event({"role": "assistant", "content": ""})
        for number, token in enumerate(tokens, 1):
            if reply.stall_after_chunks is not None and number > reply.stall_after_chunks:
                self.sleep(reply.stall_s)
                return
            event({"content": token})
            self.sleep(reply.token_delay_s)
        event({}, finish="stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = self._prompt_tokens(body)
            event(
                {},
                usage={
                    "prompt_tokens": prompt,
                    "completion_tokens": len(tokens),
                    "total_tokens": prompt + len(tokens),
                },
            )
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = int(body.get("dimensions") or EMBEDDING_DIMS.get(body["model"], 1536))
        local = LocalEmbedder().embed(texts)
        data = []
        for index, vector in enumerate(local):
            # The local vectors, zero-padded: cosine similarity is unchanged.
            full = (vector + [0.0] * dim)[:dim]
            encoded: Any = full
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dim}f", *full)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(_words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @staticmethod
    def _rerank(body: dict[str, Any]) -> dict[str, Any]:
        scores = LocalReranker().rerank(
            query=body["query"],
            documents=body["documents"],
            model="local",
            usage=Usage(),
            deadline=0,
        )
        ranked = sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)
        return {
            "id": "rerank-fake",
            "results": [{"index": i, "relevance_score": s} for i, s in ranked],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }

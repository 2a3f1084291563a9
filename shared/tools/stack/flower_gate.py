"""The gate in front of Flower: its UI with basic auth, its /metrics on a private port only.

Flower serves its Prometheus ``/metrics`` (and ``/healthcheck``) without authentication on
the same port as its UI, and its UI can shut workers down and revoke tasks. So Flower
itself listens on loopback only (the Procfile pins ``--address=127.0.0.1``), and this gate,
a small reverse proxy, is what anything else reaches:

- the UI listener (``CHORDLINE_FLOWER_UI_HOST``:``UI_PORT``) checks basic auth against
  ``FLOWER_BASIC_AUTH`` itself (Flower checks it again) and forwards every path except
  ``/metrics``, which it refuses;
- the metrics listener (``CHORDLINE_FLOWER_METRICS_HOST``:``METRICS_PORT``) forwards
  ``GET /metrics`` and nothing else. Bind it to an address only the scraper reaches (a pod
  IP behind a NetworkPolicy, a private interface, or loopback beside the scraper).

The gate refuses to start without ``FLOWER_BASIC_AUTH``, so Flower's UI is never served
unauthenticated. Connections are kept alive (HTTP/1.1), so a refused request's body is read
and dropped before the answer; one the gate will not read (chunked, over ``MAX_BODY_BYTES``,
a malformed length) gets ``Connection: close`` instead, never a reply the client would take
for the answer to its next request.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import http.client
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from shared.config import FlowerSettings
from shared.errors import InvalidInput

log = logging.getLogger(__name__)

# RFC 9110 7.6.1: hop-by-hop fields, which a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
UPSTREAM_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 1_000_000
PUBLIC_PATHS = frozenset({"/healthcheck"})  # liveness probes need no credentials


def parse_credentials(value: str | None) -> list[str]:
    """FLOWER_BASIC_AUTH as Flower reads it: ``user:password[,user:password...]``."""
    if not value or not value.strip():
        raise InvalidInput(
            "FLOWER_BASIC_AUTH", "must be set to user:password; Flower never runs without auth"
        )
    pairs = [p.strip() for p in value.split(",") if p.strip()]
    for pair in pairs:
        user, _, password = pair.partition(":")
        if not user or not password:
            raise InvalidInput("FLOWER_BASIC_AUTH", "each entry must be user:password")
    return pairs


def authorised(header: str | None, credentials: list[str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    # compare against every entry, so the time taken does not tell which one matched
    matches = [hmac.compare_digest(given.encode(), c.encode()) for c in credentials]
    return any(matches)


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int


def _body_length(handler: BaseHTTPRequestHandler) -> int | None:
    """The request body's length from Content-Length (0 without a body), or None when the
    gate cannot know it: a chunked body, or a length that is not a number."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        return None
    raw = handler.headers.get("Content-Length")
    if raw is None:
        return 0
    try:
        length = int(raw)
    except ValueError:
        return None
    return length if length >= 0 else None


def discard_body(handler: BaseHTTPRequestHandler) -> bool:
    """Read and drop the body of a request the gate refuses, so that the next request on
    the kept-alive connection starts where the client sends it. False when the body cannot
    be read safely (unknown length, too large, cut short): the connection must close."""
    length = _body_length(handler)
    if length is None or length > MAX_BODY_BYTES:
        return False
    while length:
        chunk = handler.rfile.read(min(length, 65_536))
        if not chunk:
            return False
        length -= len(chunk)
    return True


def _forward(handler: BaseHTTPRequestHandler, upstream: Upstream) -> None:
    length = _body_length(handler)
    if length is None:  # send_error closes the connection: the body is never read
        handler.send_error(411, "a request body needs a valid Content-Length")
        return
    if length > MAX_BODY_BYTES:
        handler.send_error(413, "request body too large")
        return
    body = handler.rfile.read(length) if length else None
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
    connection = http.client.HTTPConnection(
        upstream.host, upstream.port, timeout=UPSTREAM_TIMEOUT_S
    )
    try:
        connection.request(handler.command, handler.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    except OSError as exc:
        handler.send_error(502, f"Flower is not answering: {exc}")
        return
    finally:
        connection.close()
    handler.send_response(response.status, response.reason)
    for key, value in response.getheaders():
        if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(payload)


def refresh_workers(handler: BaseHTTPRequestHandler, upstream: Upstream) -> None:
    """Have Flower ask the workers which queues they consume, before it lists queues.

    Flower learns a Redis broker's queue names from the workers' ``active_queues`` (the
    management API behind ``--broker_api`` is RabbitMQ's), and asks only at its start or
    on a refresh; workers that came up after Flower would be missing from its broker page.
    """
    connection = http.client.HTTPConnection(upstream.host, upstream.port, timeout=10)
    try:
        connection.request(
            "GET",
            "/api/workers?refresh=1",
            headers={"Authorization": handler.headers.get("Authorization", "")},
        )
        connection.getresponse().read()
    except OSError:
        pass  # the broker page then shows what Flower already knows
    finally:
        connection.close()


def _path_only(raw: str) -> str:
    """The request's path, decoded and with repeated slashes collapsed, for the rules."""
    path = unquote(raw.split("?", 1)[0].split("#", 1)[0])
    return re.sub(r"/{2,}", "/", path)


class _GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chordline-flower-gate"
    upstream: Upstream
    decide: Callable[[BaseHTTPRequestHandler], tuple[int, str] | None]

    def _handle(self) -> None:
        refusal = type(self).decide(self)
        if refusal is None:
            if self.command == "GET" and _path_only(self.path).rstrip("/") == "/broker":
                refresh_workers(self, type(self).upstream)
            _forward(self, type(self).upstream)
            return
        status, message = refusal
        in_step = discard_body(self)
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="flower"')
        if not in_step:
            self.send_header("Connection", "close")
            self.close_connection = True
        body = message.encode()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has no body, whatever its length says
            self.wfile.write(body)

    # http.server dispatches on these names
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format % args, extra={"action": "flower_gate_request"})


def ui_rules(credentials: list[str]) -> Callable[[BaseHTTPRequestHandler], tuple[int, str] | None]:
    def decide(request: BaseHTTPRequestHandler) -> tuple[int, str] | None:
        path = _path_only(request.path)
        if path.rstrip("/") == "/metrics":
            return 404, "metrics are served on the private metrics port only"
        if path in PUBLIC_PATHS:
            return None
        if not authorised(request.headers.get("Authorization"), credentials):
            return 401, "Access denied"
        return None

    return decide


def metrics_rules(request: BaseHTTPRequestHandler) -> tuple[int, str] | None:
    if _path_only(request.path) != "/metrics":
        return 404, "only /metrics is served here"
    if request.command not in ("GET", "HEAD"):
        return 405, "only GET /metrics"
    return None


def _server(
    host: str,
    port: int,
    *,
    upstream: Upstream,
    decide: Callable[[BaseHTTPRequestHandler], tuple[int, str] | None],
) -> ThreadingHTTPServer:
    handler = type(
        "Handler", (_GateHandler,), {"upstream": upstream, "decide": staticmethod(decide)}
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


@dataclass
class Gate:
    ui: ThreadingHTTPServer
    metrics: ThreadingHTTPServer

    def serve_forever(self) -> None:
        threading.Thread(target=self.metrics.serve_forever, daemon=True).start()
        try:
            self.ui.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        self.metrics.shutdown()  # its loop runs on a thread; the UI's ran on ours
        for server in (self.ui, self.metrics):
            server.server_close()


def open_gate(settings: FlowerSettings) -> Gate:
    credentials = parse_credentials(
        settings.basic_auth.get_secret_value() if settings.basic_auth else None
    )
    upstream = Upstream("127.0.0.1", settings.upstream_port)
    return Gate(
        ui=_server(
            settings.ui_host, settings.ui_port, upstream=upstream, decide=ui_rules(credentials)
        ),
        metrics=_server(
            settings.metrics_host, settings.metrics_port, upstream=upstream, decide=metrics_rules
        ),
    )

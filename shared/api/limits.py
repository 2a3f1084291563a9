"""Request bodies are bounded before any route reads them (``CHORDLINE_WEB_MAX_BODY_BYTES``).

A declared ``Content-Length`` over the limit is refused at once; a body sent without one
(chunked) is read up to the limit and refused as soon as it passes it. Either way the
answer is a 413 problem naming the limit, and the route never runs. The refused body is read
and dropped (up to 4 MiB) before the answer, so the client gets to read it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.problems import chordline_problem
from shared.errors import BodyTooLarge

BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
DRAIN_BYTES = 4 * 1024 * 1024


class BodyLimit:
    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        declared = self._declared_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _declared_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        response = chordline_problem(BodyTooLarge(size, self.limit), instance=scope.get("path"))
        if not await self._drained(receive):
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _drained(self, receive: Receive) -> bool:
        """Read and drop the rest of a refused body, up to DRAIN_BYTES: a server that closes
        with unread bytes makes the kernel reset the connection, and the client may never
        see the answer. False when the body went on past that (the connection is closed)."""
        dropped = 0
        while dropped <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return False
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

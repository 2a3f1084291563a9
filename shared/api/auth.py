"""Who is calling: a bearer API key names its tenant; each key's requests are counted.

``Authorization: Bearer chl_...`` on every ``/v1`` route. A missing, malformed, unknown or
revoked key is a 401 whose detail says which. A key sees only its tenant: another tenant's
turn or conversation is answered exactly as one that does not exist (404), so a key cannot
learn what other tenants have.

The rate limit is a fixed window per key in Redis (``CHORDLINE_WEB_RATE_LIMIT`` requests per
``CHORDLINE_WEB_RATE_WINDOW_S``), one INCR and one EXPIRE in a single round trip, so every
web process shares the count; over it, 429 with ``Retry-After`` (the seconds left in the
window).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.config import get_settings
from shared.db.api_keys import Caller, caller_of
from shared.db.direct import direct_connection
from shared.db.session import transient_database_failures
from shared.errors import RateLimited, Unauthenticated
from shared.redis_conn import get_redis

KEY_COOKIE = "chordline_key"  # the pages' login stores the key here (HttpOnly)
HOW_TO_GET_ONE = "create one with `chordline key create --tenant TENANT`"

bearer = HTTPBearer(
    auto_error=False,
    description="A tenant's API key: `chordline key create --tenant TENANT` prints one.",
)


def rate_key(prefix: str, window: int) -> str:
    return f"chordline:api-rate:{prefix}:{window}"


def count_request(caller: Caller) -> None:
    """Count one request of this key; RateLimited when it is over the window's limit."""
    web = get_settings().web
    now = time.time()
    window = int(now // web.rate_window_s)
    key = rate_key(caller.key_prefix, window)
    pipe = get_redis().pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, web.rate_window_s + 1)
    count, _ = pipe.execute()
    if int(count) > web.rate_limit:
        retry_after = max(1, int((window + 1) * web.rate_window_s - now + 0.999))
        raise RateLimited(
            f"API key {caller.key_prefix}: more than {web.rate_limit} requests in "
            f"{web.rate_window_s} s (CHORDLINE_WEB_RATE_LIMIT); retry after {retry_after} s",
            retry_after_s=retry_after,
            limit=web.rate_limit,
        )


def authenticate(key: str | None) -> Caller:
    if not key:
        raise Unauthenticated(
            f"Authorization: no API key; send `Authorization: Bearer <key>` ({HOW_TO_GET_ONE})"
        )
    with transient_database_failures(), direct_connection() as conn:
        caller = caller_of(conn, key)
    if caller is None:
        raise Unauthenticated(
            f"Authorization: the API key is unknown or revoked ({HOW_TO_GET_ONE})"
        )
    return caller


def api_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The tenant of the request's bearer key, its request counted."""
    caller = authenticate(None if credentials is None else credentials.credentials)
    count_request(caller)
    return caller


def page_caller(request: Request) -> Caller | None:
    """A page's visitor: the bearer key, or the key the login form stored in a cookie; None
    when neither is there (the page then asks for a key)."""
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else None
    key = key or request.cookies.get(KEY_COOKIE)
    if not key:
        return None
    caller = authenticate(key)
    count_request(caller)
    return caller


ApiCaller = Annotated[Caller, Depends(api_caller)]

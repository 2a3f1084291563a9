"""`chordline web` (the HTTP API) and `chordline key ...` (its per-tenant API keys)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging.config
import socket
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.table import Table

from shared.config import get_settings
from shared.errors import InvalidSetting
from shared.tools.cli.common import START, CommandGroup, TenantOpt, console, needed_services


class KeyCommands(CommandGroup):
    order = ("create", "list", "revoke")


key_app = typer.Typer(
    cls=KeyCommands, help="API keys of the HTTP API, per tenant.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command(rich_help_panel=START)(web)
    app.add_typer(key_app, name="key", rich_help_panel=START)


def listening_socket(host: str, port: int) -> socket.socket:
    """The API's socket, bound here so a taken port is one line naming the setting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
    # on accepted sockets whose protocol says TCP, and they inherit it from this one. With
    # Nagle on, a response written in two parts waited for the client's delayed ACK: about
    # 40 ms on every request after the first of a keep-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = (
            "is taken by another program"
            if exc.errno == errno.EADDRINUSE
            else f"cannot be bound ({exc.strerror})"
        )
        raise InvalidSetting(
            "CHORDLINE_WEB_PORT", f"{host}:{port} {why}; choose another port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def web_services() -> Iterator[None]:
    """Configured Postgres and Redis as they are (the release entry migrates them); with a
    URL unset, the embedded servers, migrated, as every other command does."""
    from shared.tools.stack.services import services

    settings = get_settings()
    if settings.database_url and settings.redis_url:
        with services():
            yield
        return
    with needed_services():
        yield


def web_logging(level: str, fmt: str) -> dict[str, Any]:
    """chordline's log format for uvicorn's own loggers too: one line per request."""
    from shared.logs import logging_config

    config = logging_config(level=level, fmt=fmt)
    for name in ("uvicorn.error", "uvicorn.access"):
        config["loggers"][name] = {"level": level, "handlers": ["stderr"], "propagate": False}
    return config


def web(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (CHORDLINE_WEB_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (CHORDLINE_WEB_PORT).", min=1, max=65535)
    ] = None,
) -> None:
    """Serve the HTTP API: turns in, replies streamed out, per-tenant keys.

    The OpenAPI schema is at /openapi.json, its pages at /docs."""
    import uvicorn

    from shared.api.app import create_app

    settings = get_settings()
    host = host or settings.web.host
    port = port or settings.web.port
    sock = listening_socket(host, port)
    with web_services():
        logging.config.dictConfig(web_logging(settings.log_level, settings.log_format))
        config = uvicorn.Config(
            create_app(),
            log_config=None,
            access_log=True,
            timeout_graceful_shutdown=5,
            proxy_headers=True,
        )
        console.print(
            f"chordline API at http://{host}:{sock.getsockname()[1]}/ "
            "(OpenAPI at /openapi.json, /docs)",
            highlight=False,
        )
        uvicorn.Server(config).run(sockets=[sock])


@key_app.command("create")
def key_create(
    tenant: TenantOpt,
    label: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
) -> None:
    """Make an API key for a tenant and print it, once: only its hash is stored."""
    from shared.db.api_keys import create_key
    from shared.db.session import session_scope
    from shared.validation import check_slug

    check_slug("tenant", tenant)
    with needed_services(redis=False), session_scope() as session:
        key = create_key(session, tenant_id=tenant, label=label)
    console.print(key.secret, markup=False, highlight=False, soft_wrap=True)
    typer.echo(
        f"API key {key.prefix} of tenant {tenant}; it is shown only now: store it. "
        f"Revoke it with `chordline key revoke {key.prefix}`.",
        err=True,
    )


@key_app.command("list")
def key_list(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's keys.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List API keys: prefix, tenant, label, created, revoked (never the keys)."""
    from shared.db.api_keys import list_keys
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.validation import check_slug

    with needed_services(redis=False), session_scope() as session:
        if tenant is not None:
            require_tenant(session, check_slug("tenant", tenant))
        keys = list_keys(session, tenant_id=tenant)
    if as_json:
        for key in keys:
            print(json.dumps(key.as_dict()))
        return
    table = Table(box=None, pad_edge=False, header_style="bold underline")
    for column in ("prefix", "tenant", "label", "created", "revoked"):
        table.add_column(column, no_wrap=True)
    for key in keys:
        table.add_row(
            key.prefix,
            key.tenant_id,
            key.label or "-",
            key.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "-" if key.revoked_at is None else key.revoked_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


@key_app.command("revoke")
def key_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, as `key list` shows it.")],
) -> None:
    """Revoke an API key: requests with it are refused (401) from now on."""
    from shared.db.api_keys import revoke_key
    from shared.db.session import session_scope

    with needed_services(redis=False), session_scope() as session:
        revoked = revoke_key(session, prefix)
    said = f"revoked API key {prefix}" if revoked else f"API key {prefix} was already revoked"
    console.print(said, markup=False, highlight=False)

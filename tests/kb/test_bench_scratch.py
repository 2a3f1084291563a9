"""The kb benchmark's scratch database is reached with everything the configured URL says:
credentials, host and query parameters such as ``sslmode``; only the database differs."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import make_url, text

from shared.config import get_settings
from shared.db.session import session_scope
from shared.tools.bench.kb import scratch_database, scratch_url
from shared.tools.stack.services import reset_process_state


def test_the_scratch_url_keeps_credentials_host_and_query() -> None:
    base = "postgresql+psycopg://app:p%40ss%2Fword@db.internal:6543/chordline?sslmode=require"
    url = make_url(scratch_url(base, "kb_bench_1234"))
    assert url.database == "kb_bench_1234"
    assert (url.username, url.password) == ("app", "p@ss/word")  # not masked as ***
    assert (url.host, url.port) == ("db.internal", 6543)
    assert dict(url.query) == {"sslmode": "require"}
    socket = scratch_url("postgresql+psycopg://app@/chordline?host=/run/postgresql", "kb_x")
    assert make_url(socket).query == {"host": "/run/postgresql"}
    assert make_url(socket).database == "kb_x"


@pytest.mark.integration
def test_the_scratch_database_is_reached_with_the_query_parameters(services: None) -> None:
    configured = os.environ["DATABASE_URL"]
    with_query = make_url(configured).update_query_dict({"application_name": "kb-bench-scratch"})
    os.environ["DATABASE_URL"] = with_query.render_as_string(hide_password=False)
    reset_process_state()
    try:
        with scratch_database() as name:
            url = make_url(get_settings().database_url or "")
            assert url.database == name
            assert url.query["application_name"] == "kb-bench-scratch"
            with session_scope() as session:
                reached = session.execute(
                    text("SELECT current_database(), current_setting('application_name')")
                ).one()
            assert tuple(reached) == (name, "kb-bench-scratch")
    finally:
        os.environ["DATABASE_URL"] = configured
        reset_process_state()

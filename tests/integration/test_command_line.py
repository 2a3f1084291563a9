"""The `chordline` command as a person meets it: help ordered by what one does first, a
version, tenants listed and created with a word about what happened, a turn's message from
a file or standard input, one turn shown, and one-line errors naming what was wrong."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from shared.db.models import Conversation, Turn
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.kb.ingest import list_documents
from shared.rescoring.context import contexts_before
from shared.tools.cli.main import app
from shared.tools.cli.turns import message_from
from tests.conftest import new_tenant

ROOT = Path(__file__).resolve().parents[2]
BORDER = "│"


def chordline(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """The installed command, as a person runs it, against this session's servers if any."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "chordline"), *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": str(columns), "CHORDLINE_LOG_FORMAT": "console"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run(*args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --------------------------------------------------------------------------- help


def broken_wraps(help_text: str) -> list[tuple[str, str]]:
    """Pairs of lines in a help panel where a cell's text went on to the next line although
    its next word would have fitted on the first: a line break kept from a docstring."""
    found = []
    lines = help_text.splitlines()
    for first, second in itertools.pairwise(lines):
        if not (first.startswith(BORDER) and second.startswith(BORDER)):
            continue
        upper, lower = first[1 : first.rindex(BORDER)], second[1 : second.rindex(BORDER)]
        words = lower.lstrip()
        if not words or not upper.strip() or words.startswith("["):  # Typer's [default: x]
            continue
        starts = [m.start(1) for m in re.finditer(r"(?:^|  )(\S)", upper)]
        if len(upper) - len(words) < max(starts, default=0):
            continue  # the lower line starts a new row
        room = len(upper) - len(upper.rstrip()) - 2  # one space before the word, one after
        if len(words.split()[0]) <= room:
            found.append((first, second))
    return found


def panels(help_text: str) -> dict[str, list[str]]:
    """Each help panel's title and the commands it lists, in order."""
    found: dict[str, list[str]] = {}
    title = None
    for line in help_text.splitlines():
        if line.startswith("╭─ "):
            title = line.removeprefix("╭─ ").split(" ─")[0]
            found[title] = []
        elif title and line.startswith(f"{BORDER} ") and not line.startswith(f"{BORDER}  "):
            found[title].append(line.split()[1])
    return found


def test_the_help_lists_what_a_person_does_first_and_wraps_at_80_columns() -> None:
    result = chordline("--help")
    assert result.returncode == 0, result.stderr
    listed = panels(result.stdout)
    commands = [name for title, names in listed.items() if title != "Options" for name in names]
    assert commands[:5] == ["demo", "up", "turn", "tenant", "kb"], commands
    assert list(listed)[1:] == ["Start here", "Look into turns", "Operate", "Benchmarks"]
    assert listed["Benchmarks"] == ["bench", "bench-recovery"]
    assert set(commands) >= {"trace", "critical-path", "rescore", "usage", "doctor", "migrate"}
    for args in (
        [],
        ["turn"],
        ["tenant"],
        ["kb"],
        ["conversation"],
        ["rescore"],
        ["trace"],
        ["up"],
    ):
        shown = chordline(*args, "--help")
        assert shown.returncode == 0, shown.stderr
        assert all(len(line) <= 80 for line in shown.stdout.splitlines())
        assert broken_wraps(shown.stdout) == [], (args, broken_wraps(shown.stdout))


def test_version_prints_the_installed_version() -> None:
    result = chordline("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"chordline {version('chordline')}\n"


# --------------------------------------------------------------------------- errors


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.integration
def test_critical_path_of_an_unknown_tenant_says_so(services: None) -> None:
    tenant = f"nosuch-{uuid.uuid4().hex[:8]}"
    line = one_line_error(chordline("critical-path", "--tenant", tenant))
    assert f"unknown tenant '{tenant}'" in line


@pytest.mark.integration
def test_turn_show_of_an_unknown_or_malformed_id_names_it(services: None) -> None:
    unknown = str(uuid.uuid4())
    assert one_line_error(chordline("turn", "show", unknown)) == (
        f"error: turn {unknown} does not exist"
    )
    assert one_line_error(chordline("turn", "show", "12ab")) == (
        "error: turn id: '12ab' is not a UUID"
    )


def test_a_turn_message_comes_from_one_place_and_is_checked_before_anything_starts(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nothing.txt"
    line = one_line_error(chordline("turn", "--file", str(missing), "-t", "acme", "-c", "c1"))
    assert line == f"error: --file: {missing} does not exist"
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    for argument, file, field in (
        ("hello", tmp_path, "--file"),  # both given
        (None, None, "message"),  # neither
        (None, tmp_path, "--file"),  # a folder
        (None, latin, "--file"),  # not UTF-8
    ):
        with pytest.raises(InvalidInput) as refused:
            message_from(argument, file)
        assert refused.value.field == field
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"^message: must not be empty"):
        message_from(None, empty)


@pytest.mark.integration
def test_re_scoring_and_the_trace_read_the_memory_a_turn_kept_not_a_replay(
    workers: None,
) -> None:
    tenant = new_tenant()
    first = json.loads(run("turn", "We run three warehouses.", "-t", tenant, "-c", "c1", "--json"))
    second = json.loads(
        run("turn", "What does the Pro plan cost?", "-t", tenant, "-c", "c1", "--json")
    )
    assert first["status"] == second["status"] == "completed"
    # What a model may have read in the first message, beyond what patterns find in it: a
    # replay with patterns could not come to this.
    as_a_model_read_it = {
        **conversation_memory(tenant, "c1"),
        "facts": {"company": "Northwind Freight", "sites": 3},
    }
    with session_scope() as session:
        first_turn = session.get(Turn, uuid.UUID(first["id"]))
        second_turn = session.get(Turn, uuid.UUID(second["id"]))
        assert first_turn is not None and second_turn is not None
        first_turn.memory_after = as_a_model_read_it
    with session_scope() as session:
        second_turn = session.get(Turn, uuid.UUID(second["id"]))
        assert second_turn is not None
        before_second = contexts_before(session, [second_turn])[second_turn.id].memory
    assert before_second.facts == {"company": "Northwind Freight", "sites": 3}
    shown = json.loads(run("turn", "show", first["id"], "--json"))
    assert shown["memory_written"] == as_a_model_read_it


# --------------------------------------------------------------------------- tenants


@pytest.mark.integration
def test_tenant_create_says_whether_it_created_the_tenant(services: None) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    created = chordline("tenant", "create", tenant, "--name", "Acme Corp")
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[0] == f"created tenant {tenant} (Acme Corp)"
    again = chordline("tenant", "create", tenant)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"tenant {tenant} already exists; left as it was"
    changed = chordline("tenant", "create", tenant, "--set", "top_k=7")
    assert changed.stdout.splitlines()[0] == f"tenant {tenant} already exists; set top_k"
    assert json.loads("\n".join(changed.stdout.splitlines()[1:]))["top_k"] == 7

    listed = {t["id"]: t for t in json.loads(run("tenant", "list", "--json"))}
    assert listed[tenant] == {"id": tenant, "name": "Acme Corp", "documents": 0, "turns": 0}


# --------------------------------------------------------------------------- turns


def conversation_memory(tenant: str, conversation: str) -> dict[str, object]:
    with session_scope() as session:
        memory = session.scalar(
            select(Conversation.contextual_memory).where(
                Conversation.tenant_id == tenant, Conversation.external_id == conversation
            )
        )
    assert memory is not None
    return dict(memory)


@pytest.mark.integration
def test_turns_from_a_file_and_stdin_then_shown_and_counted(workers: None, tmp_path: Path) -> None:
    tenant = new_tenant()
    question = tmp_path / "question.txt"
    question.write_text("Does Halyard have a REST API\nfor stock changes?\n", encoding="utf-8")
    first = json.loads(run("turn", "--file", str(question), "-t", tenant, "-c", "c1", "--json"))
    assert first["status"] == "completed", first
    assert first["message"] == "Does Halyard have a REST API\nfor stock changes?"
    memory_after_first = conversation_memory(tenant, "c1")

    piped = "How much does the Pro plan cost per warehouse?\n"
    second = json.loads(run("turn", "-", "-t", tenant, "-c", "c1", "--json", input=piped))
    assert second["message"] == piped.rstrip("\n") and second["status"] == "completed"

    shown = [json.loads(run("turn", "show", view["id"], "--json")) for view in (first, second)]
    assert shown[0]["memory_written"] == memory_after_first
    with session_scope() as session:  # each turn keeps the memory its agent left
        kept = [session.get(Turn, uuid.UUID(view["id"])) for view in (first, second)]
        assert [t.memory_after for t in kept if t] == [
            memory_after_first,
            conversation_memory(tenant, "c1"),
        ]
    assert shown[1]["memory_written"] == conversation_memory(tenant, "c1")
    assert shown[0]["memory_written"] != shown[1]["memory_written"]
    with session_scope() as session:
        for summary in shown:
            turn = session.get(Turn, uuid.UUID(summary["id"]))
            assert turn is not None
            assert summary["reply"] == turn.agent_response
            assert summary["agent"] == turn.next_agent
            assert summary["kb_information_level"] == turn.kb_information_level
            assert summary["routing_reason"] == turn.routing_reason
            assert summary["status"] == "completed" and summary["conversation"] == "c1"
            assert turn.completed_at is not None
            timings = summary["timings_ms"]
            assert timings["completed"] == pytest.approx(
                (turn.completed_at - turn.accepted_at) * 1000, abs=0.1
            )
            assert 0 < timings["routed"] <= timings["completed"]
        documents = len(list_documents(session, tenant))

    text = run("turn", "show", second["id"])
    assert second["agent_response"] in text
    for label in ("memory written", "kb level", "why", "timings", "status"):
        assert label in text

    listed = {t["id"]: t for t in json.loads(run("tenant", "list", "--json"))}
    assert listed[tenant] == {"id": tenant, "name": None, "documents": documents, "turns": 2}
    table = run("tenant", "list")
    row = next(line for line in table.splitlines() if f" {tenant} " in line)
    assert row.split() == [BORDER, tenant, BORDER, "-", BORDER, str(documents), BORDER, "2", BORDER]

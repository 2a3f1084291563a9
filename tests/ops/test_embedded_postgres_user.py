"""The embedded Postgres started by root: it runs as user and group ``chordline`` without
root's groups, and a data dir under a folder that user cannot enter is refused in one line
naming CHORDLINE_DATA_DIR and the folder, which is left as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.tools.stack import embedded
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged Postgres user is root's"),
]


@pytest.fixture
def private_parent() -> Iterator[Path]:
    """A folder of mode 0700 owned by root, in a place every user can reach."""
    parent = ROOT / ".chordline" / f"private-{uuid.uuid4().hex[:8]}"
    parent.mkdir(parents=True)
    parent.chmod(0o700)
    try:
        yield parent
    finally:
        if (parent / "data").exists():
            embedded.stop_postgres(parent / "data")
        shutil.rmtree(parent, ignore_errors=True)


def chordline_migrate(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "chordline"), "migrate"],
        cwd=ROOT,
        env={**env, "CHORDLINE_DATA_DIR": str(data_dir), "CHORDLINE_LOG_FORMAT": "console"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def status_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    ids: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(n) for n in value.split()]
    return ids


def test_a_data_dir_under_a_private_folder_is_refused_in_one_line(private_parent: Path) -> None:
    result = chordline_migrate(private_parent / "data")

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: CHORDLINE_DATA_DIR: the embedded Postgres runs as user 'chordline', which "
        f"cannot enter {private_parent} (mode 0700, owner root); let it through (chmod o+x "
        f"{private_parent}), set CHORDLINE_DATA_DIR to a folder outside it, or set DATABASE_URL"
    ]
    assert (private_parent.stat().st_mode & 0o777) == 0o700  # the user's folder, untouched


def test_postgres_runs_as_chordline_without_the_root_group(private_parent: Path) -> None:
    private_parent.chmod(0o701)  # what the message above says to do
    server = embedded.ensure_postgres(private_parent / "data")
    try:
        assert server.started_here
        ids = status_ids(server.pid)
        import grp
        import pwd

        chordline_uid = pwd.getpwnam("chordline").pw_uid
        chordline_gid = grp.getgrnam("chordline").gr_gid
        assert set(ids["Uid"]) == {chordline_uid}
        assert set(ids["Gid"]) == {chordline_gid} and chordline_gid != 0
        assert 0 not in ids["Groups"]
        assert ids["Groups"] in ([], [chordline_gid])
    finally:
        embedded.stop_postgres(private_parent / "data")

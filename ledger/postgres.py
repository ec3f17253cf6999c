"""A private PostgreSQL cluster built from the installed server binaries.

Used when no DSN is configured, and by the tests. The cluster listens on 127.0.0.1 at a free
port and on a unix socket inside its data directory, with `trust` authentication: only local
processes can reach it, which is what a private development cluster is for. `initdb --no-sync`
only skips flushing the freshly created files; the running server keeps fsync and
synchronous_commit on, so every commit is durable.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import ProvisioningError

SUPERUSER = "postgres"
OWNER_ROLE = "ledger_owner"
SWITCH_ROLE = "ledger_switch"
DATABASE = "ledger"
# How long the backends of connections a process has just closed may take to exit.
OWN_BACKENDS_EXIT_MS = 2_000
_INSTALL_HINT = "install the PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql)"


def find_binary(name: str) -> Path:
    """Locate a PostgreSQL server binary on PATH or under /usr/lib/postgresql/*/bin."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return Path(candidates[0])
    found = shutil.which(name)
    if found is None:
        raise ProvisioningError(
            f"{name} not found on PATH or in /usr/lib/postgresql: {_INSTALL_HINT}"
        )
    return Path(found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_user() -> str | None:
    """PostgreSQL refuses to run as root: pick an unprivileged OS user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ProvisioningError("running as root and neither 'postgres' nor 'nobody' exists")


def run_as(
    args: Sequence[str],
    *,
    user: str | None,
    timeout_ms: int,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a server-side tool as `user` (None: as ourselves); its stdout, or ProvisioningError
    with its stderr."""
    try:
        # Binaries found by find_binary or shutil.which; arguments are ours, never user input.
        done = subprocess.run(  # noqa: S603
            args,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_ms / 1000,
            user=user,
            cwd="/",
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        output = exc.stderr.strip() or exc.stdout.strip()
        raise ProvisioningError(f"{Path(args[0]).name} failed: {output}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProvisioningError(f"{Path(args[0]).name} timed out") from exc
    return done.stdout


def run_psql(
    sql: str, *, host: str, port: int, database: str, user: str | None, timeout_ms: int
) -> str:
    """One statement as the superuser, its rows unaligned."""
    return run_as(
        [
            str(find_binary("psql")), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
            "-h", host, "-p", str(port), "-U", SUPERUSER, "-d", database, "-c", sql,
        ],
        user=user,
        timeout_ms=timeout_ms,
    )  # fmt: skip


def create_roles_and_database(psql: Callable[[str, str], str]) -> None:
    """The owner and switch roles and the ledger's database owned by the owner, through
    `psql(statement, database)` as the superuser; what exists already is left as it is."""
    # Role and database names are module constants, not input.
    roles = f"""
    DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
        CREATE ROLE {OWNER_ROLE} LOGIN CREATEROLE;
      END IF;
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SWITCH_ROLE}') THEN
        CREATE ROLE {SWITCH_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
      END IF;
    END $$;"""  # noqa: S608
    psql(roles, "postgres")
    owner = psql(
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DATABASE}'",  # noqa: S608
        "postgres",
    ).strip()
    if not owner:
        psql(f"CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE}", "postgres")
    elif owner != OWNER_ROLE:  # made by another tool (pg_autoctl creates it as the superuser)
        psql(f"ALTER DATABASE {DATABASE} OWNER TO {OWNER_ROLE}", "postgres")


def give_to(path: Path, user: str | None) -> None:
    """Make `path` the service user's (when we run as root and hand the server to it)."""
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """How to reach a running private cluster."""

    data_dir: Path
    port: int

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def dsn(self, user: str, database: str = DATABASE) -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}"

    @property
    def superuser_dsn(self) -> str:
        return self.dsn(SUPERUSER)

    @property
    def owner_dsn(self) -> str:
        return self.dsn(OWNER_ROLE)

    @property
    def switch_dsn(self) -> str:
        return self.dsn(SWITCH_ROLE)


class LocalCluster:
    """initdb once into `data_dir`, start with pg_ctl, stop what we started."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._user = service_user()
        self._started_here = False
        self.info: ClusterInfo | None = None

    def _run(self, *args: str, timeout_ms: int) -> str:
        return run_as(args, user=self._user, timeout_ms=timeout_ms)

    @property
    def started_here(self) -> bool:
        return self._started_here

    def _initdb(self, *, timeout_ms: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        give_to(self.data_dir, self._user)
        self._run(
            str(find_binary("initdb")),
            "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            timeout_ms=timeout_ms,
        )  # fmt: skip

    def _running_port(self) -> int | None:
        """The port of a server already running on this data directory, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        try:
            os.kill(int(lines[0]), 0)
        except (ProcessLookupError, ValueError, IndexError):
            return None
        return int(lines[3])

    def start(self, *, timeout_ms: int = 60_000) -> ClusterInfo:
        """Create the cluster if needed, start it unless it already runs, create roles and db."""
        deadline = time.monotonic() + timeout_ms / 1000
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(timeout_ms=timeout_ms)
        port = self._running_port()
        if port is None:
            port = free_port()
            self._pg_ctl_start(port, deadline)
            self._started_here = True
        self.info = ClusterInfo(self.data_dir, port)
        self._create_roles_and_database(timeout_ms=_remaining_ms(deadline))
        return self.info

    def _pg_ctl_start(self, port: int, deadline: float) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories='{self.data_dir}' -c max_connections=200 "
            "-c fsync=on -c synchronous_commit=on"
        )
        self._run(
            str(find_binary("pg_ctl")), "start", "-D", str(self.data_dir), "-w",
            "-t", str(max(1, int(deadline - time.monotonic()))),
            "-l", str(self.data_dir / "server.log"), "-o", options,
            timeout_ms=_remaining_ms(deadline),
        )  # fmt: skip

    def restart(self, *, down_ms: int, timeout_ms: int = 60_000) -> None:
        """An outage on purpose: stop (fast: clients are cut off mid-transaction), stay down for
        `down_ms`, start again on the same port so clients can reconnect."""
        assert self.info is not None
        assert self._started_here, "only a cluster this object started is restarted"
        deadline = time.monotonic() + timeout_ms / 1000
        self._run(
            str(find_binary("pg_ctl")), "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
            timeout_ms=_remaining_ms(deadline),
        )  # fmt: skip
        time.sleep(down_ms / 1000)
        self._pg_ctl_start(self.info.port, deadline)

    def psql(self, sql: str, *, database: str, timeout_ms: int) -> str:
        assert self.info is not None
        return run_psql(
            sql, host=str(self.info.socket_dir), port=self.info.port, database=database,
            user=self._user, timeout_ms=timeout_ms,
        )  # fmt: skip

    def _create_roles_and_database(self, *, timeout_ms: int) -> None:
        create_roles_and_database(
            lambda sql, database: self.psql(sql, database=database, timeout_ms=timeout_ms)
        )

    def create_database(self, name: str, *, timeout_ms: int = 30_000) -> str:
        """Create (or recreate) a scratch database, e.g. for pgbench; returns a superuser DSN."""
        assert self.info is not None
        assert name.isidentifier(), name
        assert name != DATABASE, name
        self.psql(f"DROP DATABASE IF EXISTS {name}", database="postgres", timeout_ms=timeout_ms)
        self.psql(f"CREATE DATABASE {name}", database="postgres", timeout_ms=timeout_ms)
        return self.info.dsn(SUPERUSER, name)

    def stop(self, *, timeout_ms: int = 60_000) -> None:
        """Stop the server if this object started it (fast shutdown: clients are cut off)."""
        if not self._started_here:
            return
        self.stop_running(timeout_ms=timeout_ms)

    def stop_running(self, *, timeout_ms: int = 60_000) -> None:
        """Stop the server on this data directory, whoever started it (`python -m ledger cluster
        --stop`); a directory with no server running is left as it is."""
        if self._running_port() is not None:
            self._run(
                str(find_binary("pg_ctl")), "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                timeout_ms=timeout_ms,
            )  # fmt: skip
        self._started_here = False

    def stop_unless_used(self, *, timeout_ms: int = 60_000) -> int:
        """Stop the server if this object started it and no other process is connected to it;
        the clients that keep it running (0: stopped, or not ours to stop).

        Several switch processes may share one private cluster: the one that started it must
        not cut the others off when it exits. Its own connections are closed by now, but a
        backend takes a moment to exit after its client has gone, so the count is read again
        for up to `OWN_BACKENDS_EXIT_MS` before others are assumed."""
        if not self._started_here:
            return 0
        deadline = time.monotonic() + OWN_BACKENDS_EXIT_MS / 1000
        while (others := self._other_clients(timeout_ms=timeout_ms)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        if others:
            return others
        self.stop(timeout_ms=timeout_ms)
        return 0

    def _other_clients(self, *, timeout_ms: int) -> int:
        # The superuser's psql asking is itself a client backend: not counted.
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return int(self.psql(sql, database="postgres", timeout_ms=timeout_ms).strip())


def _remaining_ms(deadline: float) -> int:
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms <= 0:
        raise ProvisioningError("starting the private cluster took too long")
    return remaining_ms


@contextlib.contextmanager
def running_cluster(data_dir: Path, *, timeout_ms: int = 60_000) -> Iterator[ClusterInfo]:
    """Start (or reuse) the private cluster for the block; stop it after if we started it."""
    cluster = LocalCluster(data_dir)
    info = cluster.start(timeout_ms=timeout_ms)
    try:
        yield info
    finally:
        cluster.stop(timeout_ms=timeout_ms)

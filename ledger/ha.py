"""A ledger that survives losing its primary: pg_auto_failover's monitor, a primary and a
synchronous secondary, all local under one directory (`python -m ledger cluster --ha`).

Under the root: `monitor/`, `node1/` and `node2/` (data directories), each `pg_autoctl run`'s log
(`<name>.log`), and pg_autoctl's own files (`config/`, `share/`, `run/`, through XDG_*: not the
service user's home, which every other cluster on the machine shares). Each node's
`pg_autoctl run` supervises its PostgreSQL and follows the monitor's orders: it restarts a
server that died, promotes the secondary when the primary is lost, and rewinds an old primary
into the new secondary. The switch connects with a multi-host DSN and
`target_session_attrs=read-write`, so its pool finds whichever node is primary.

pg_autoctl refuses to run as root: like initdb and pg_ctl, it runs as the service user.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ledger.errors import ProvisioningError
from ledger.postgres import (
    DATABASE,
    OWNER_ROLE,
    SUPERUSER,
    SWITCH_ROLE,
    create_roles_and_database,
    find_binary,
    free_port,
    give_to,
    run_as,
    run_psql,
    service_user,
)

MONITOR = "monitor"
NODES = ("node1", "node2")
FORMATION = "default"
HOST = "127.0.0.1"
_INSTALL_HINT = (
    "install pg_auto_failover (Debian/Ubuntu: apt-get install postgresql-15-auto-failover"
    " pg-auto-failover-cli)"
)
# The monitor's defaults wait about 30 s before promoting (a node is unhealthy after 20 s
# without a report and failed health checks, then the old primary gets 30 s to demote itself).
# Here every node is on one host: a server that fails its checks for seconds is dead, not behind
# a slow network (on a machine shared with others, one second is not enough to be sure). A
# shorter demote timeout is safe because commits are synchronous: an old primary still running,
# cut off from the others, acknowledges no commit without its standby.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",  # ms; default 5000
    "pgautofailover.health_check_timeout": "2000",  # ms; default 5000
    "pgautofailover.health_check_max_retries": "1",  # default 2
    "pgautofailover.health_check_retry_delay": "500",  # ms; default 2000
    "pgautofailover.node_considered_unhealthy_timeout": "5000",  # ms; default 20000
    "pgautofailover.primary_demote_timeout": "5000",  # ms; default 30000
}
# pg_autoctl sizes each server for the whole machine (shared_buffers a quarter of its memory);
# three servers on one shared machine get a small share each.
SERVER_SETTINGS = {
    "shared_buffers": "32MB",
    "effective_cache_size": "256MB",
    "maintenance_work_mem": "16MB",
    "work_mem": "4MB",
    "wal_keep_size": "256MB",
    "max_connections": "100",
}
# archive_mode takes a restart, so the data nodes have it from the start; archiving goes
# nowhere until `python -m ledger backup --ha` points archive_command at the repository (no
# restore reaches before the first backup anyway).
ARCHIVE_SETTINGS = {"archive_mode": "on", "archive_command": "/bin/true"}

_SYNCHRONOUS_PRIMARY = (
    "SELECT NOT pg_is_in_recovery() AND EXISTS"
    " (SELECT 1 FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))"
)


@dataclass(frozen=True, slots=True)
class Node:
    """A data node as the monitor reports it."""

    name: str
    port: int
    reported_state: str
    assigned_state: str


@dataclass(frozen=True, slots=True)
class HaInfo:
    """How to reach the formation: every node, the primary found by the client."""

    hosts: str  # host:port,host:port as pg_autoctl gives them

    def dsn(self, user: str, database: str = DATABASE) -> str:
        return f"postgresql://{user}@{self.hosts}/{database}?target_session_attrs=read-write"

    @property
    def owner_dsn(self) -> str:
        return self.dsn(OWNER_ROLE)

    @property
    def switch_dsn(self) -> str:
        return self.dsn(SWITCH_ROLE)


class HaCluster:
    """The monitor and two nodes under `root`: created on first start, reused after."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._user = service_user()
        found = shutil.which("pg_autoctl")
        if found is None:
            raise ProvisioningError(f"pg_autoctl not found on PATH: {_INSTALL_HINT}")
        self._binary = found
        self._env = {
            "PATH": f"{find_binary('pg_ctl').parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "share"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
        }

    def data_dir(self, name: str) -> Path:
        return self.root / name

    def autoctl(self, *args: str, timeout_ms: int = 60_000) -> str:
        return run_as([self._binary, *args], user=self._user, timeout_ms=timeout_ms, env=self._env)

    def start(self, *, timeout_ms: int = 180_000) -> HaInfo:
        """Create what is missing, start what is not running, and wait for a primary with a
        synchronous secondary; the roles and the database are made on the primary."""
        deadline = time.monotonic() + timeout_ms / 1000
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        give_to(self.root, self._user)
        if not self._created(MONITOR):
            self._create_monitor()
        self.run_node(MONITOR)
        self._wait(lambda: self._monitor_uri() is not None, "the monitor to answer", deadline)
        for name in NODES:
            if not self._created(name):
                self._create_node(name, deadline)
            self.run_node(name)
        self._wait(self.settled, "a primary and a synchronous secondary", deadline)
        port = self.primary().port
        create_roles_and_database(lambda sql, database: self.sql(port, sql, database=database))
        return self.info()

    def info(self) -> HaInfo:
        uri = self._uris()[FORMATION]
        return HaInfo(urlsplit(uri).netloc)

    def nodes(self) -> list[Node]:
        text = self.autoctl("show", "state", "--pgdata", str(self.data_dir(MONITOR)), "--json")
        return [
            Node(row["nodename"], row["nodeport"], row["current_group_state"],
                 row["assigned_group_state"])
            for row in json.loads(text)
        ]  # fmt: skip

    def primary(self) -> Node:
        """The node taking writes (with a standby or, in wait_primary, without)."""
        nodes = self.nodes()
        writable = [n for n in nodes if n.reported_state in ("primary", "wait_primary")]
        if len(writable) != 1:
            states = ", ".join(f"{n.name} {n.reported_state}" for n in nodes)
            raise ProvisioningError(f"no single primary in {self.root}: {states}")
        return writable[0]

    def running(self, name: str) -> bool:
        try:
            self.autoctl("status", "--pgdata", str(self.data_dir(name)), timeout_ms=10_000)
        except ProvisioningError:
            return False
        return True

    def run_node(self, name: str) -> None:
        """`pg_autoctl run` for the node, in the background and its own process group (which
        outlives this process), unless it runs already."""
        if self.running(name):
            return
        with (self.root / f"{name}.log").open("ab") as log:
            # The binary was found on PATH; the arguments are ours.
            subprocess.Popen(  # noqa: S603
                [self._binary, "run", "--pgdata", str(self.data_dir(name))],
                user=self._user, env=self._env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def supervisor_pid(self, name: str) -> int:
        status = json.loads(self.autoctl("status", "--pgdata", str(self.data_dir(name)), "--json"))
        pid = status["pg_autoctl"]["pid"]
        assert isinstance(pid, int)
        return pid

    def stop(self, *, timeout_ms: int = 120_000) -> None:
        """Secondaries first (stopping the primary first would promote one), then the primary,
        then the monitor; each waits until its server is down."""
        deadline = time.monotonic() + timeout_ms / 1000
        order: list[str] = list(NODES)
        if self.running(MONITOR):
            by_state = sorted(self.nodes(), key=lambda n: n.reported_state == "primary")
            order = [n.name for n in by_state]
        for name in [*order, MONITOR]:
            if not self.running(name):
                continue
            self.autoctl("stop", "--pgdata", str(self.data_dir(name)))
            self._wait(functools.partial(self._stopped, name), f"{name} to stop", deadline)

    def _stopped(self, name: str) -> bool:
        return not self.running(name) and not (self.data_dir(name) / "postmaster.pid").exists()

    def _created(self, name: str) -> bool:
        return (self.data_dir(name) / "PG_VERSION").exists()

    def _create_monitor(self) -> None:
        pgdata = str(self.data_dir(MONITOR))
        self.autoctl(
            "create", "monitor", "--pgdata", pgdata, "--pgctl", str(find_binary("pg_ctl")),
            "--pgport", str(free_port()), "--hostname", HOST, "--auth", "trust", "--no-ssl",
        )  # fmt: skip
        self.autoctl("config", "set", "--pgdata", pgdata, "postgresql.listen_addresses", HOST)
        self._append_settings(MONITOR, SERVER_SETTINGS | MONITOR_SETTINGS)

    def _create_node(self, name: str, deadline: float) -> None:
        monitor_uri = self._monitor_uri()
        assert monitor_uri is not None
        self.autoctl(
            "create", "postgres", "--pgdata", str(self.data_dir(name)),
            "--pgctl", str(find_binary("pg_ctl")), "--pgport", str(free_port()),
            "--listen", HOST, "--hostname", HOST, "--name", name, "--dbname", DATABASE,
            "--username", SUPERUSER, "--auth", "trust", "--no-ssl", "--monitor", monitor_uri,
            timeout_ms=_left_ms(deadline),
        )  # fmt: skip
        if name == NODES[0]:  # the others are copies of it (pg_basebackup), settings and all
            self._append_settings(name, SERVER_SETTINGS | ARCHIVE_SETTINGS)

    def _append_settings(self, name: str, settings: Mapping[str, str]) -> None:
        """After pg_autoctl's own file: postgresql.auto.conf is read last, so these win."""
        lines = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        with (self.data_dir(name) / "postgresql.auto.conf").open("a") as conf:
            conf.write(lines)

    def _uris(self) -> dict[str, str]:
        text = self.autoctl("show", "uri", "--pgdata", str(self.data_dir(MONITOR)), "--json")
        rows: list[dict[str, Any]] = json.loads(text)
        return {row["name"]: row["uri"] for row in rows}

    def _monitor_uri(self) -> str | None:
        try:
            return self._uris().get(MONITOR)
        except ProvisioningError:
            return None

    def settled(self) -> bool:
        """The monitor says primary and secondary (what it says may be from before a restart),
        and the primary itself confirms: writable, with a synchronous standby streaming. Not
        while the monitor does not answer."""
        try:
            nodes = [n for n in self.nodes() if n.reported_state == n.assigned_state]
        except ProvisioningError:
            return False
        if sorted(n.reported_state for n in nodes) != ["primary", "secondary"]:
            return False
        try:
            return self.sql(self.primary().port, _SYNCHRONOUS_PRIMARY).strip() == "t"
        except ProvisioningError:
            return False

    def wait_settled(self, *, timeout_ms: int) -> None:
        """Until the formation can take its next loss (`settled`), or ProvisioningError."""
        self._wait(self.settled, "a primary and a synchronous secondary", _deadline(timeout_ms))

    def sql(self, port: int, statement: str, *, database: str = "postgres") -> str:
        """One statement as the superuser on the node at `port`."""
        return run_psql(
            statement, host=HOST, port=port, database=database, user=self._user,
            timeout_ms=10_000,
        )  # fmt: skip

    def _wait(self, done: Callable[[], bool], what: str, deadline: float) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise ProvisioningError(f"timed out waiting for {what} (logs in {self.root})")
            time.sleep(0.2)


def _left_ms(deadline: float) -> int:
    left_ms = int((deadline - time.monotonic()) * 1000)
    if left_ms <= 0:
        raise ProvisioningError("starting the HA cluster took too long")
    return left_ms


def _deadline(timeout_ms: int) -> float:
    return time.monotonic() + timeout_ms / 1000

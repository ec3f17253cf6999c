"""Backups of the private cluster with pgBackRest, and restores to a point in time.

One directory (`--repo`, default `pgbackrest` next to the data directory) holds everything of
pgBackRest's: the config file this module writes (`pgbackrest.conf`), its log and lock
directories, and the repository proper (`archive/`, `backup/`). The cluster's WAL goes there
continuously (archive_command = pgbackrest archive-push, set on the first backup), so a restore
can stop at any moment after the first backup ended.

pgBackRest runs as the server's OS user, as initdb and pg_ctl do, because it reads the data
directory and the server runs its archive_command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from ledger.errors import BackupError, ProvisioningError
from ledger.ha import HaCluster
from ledger.postgres import SUPERUSER, LocalCluster, give_to, run_as, service_user

STANZA = "ledger"
CONFIG_FILE = "pgbackrest.conf"
BackupType = Literal["full", "incr"]
_INSTALL_HINT = "install pgBackRest (Debian/Ubuntu: apt-get install pgbackrest)"


@dataclass(frozen=True, slots=True)
class Backup:
    label: str
    backup_type: str
    started_at: datetime
    stopped_at: datetime


def default_repo(data_dir: Path) -> Path:
    return data_dir.resolve().parent / "pgbackrest"


@dataclass(frozen=True, slots=True)
class Server:
    """A PostgreSQL server pgBackRest reads: its data directory and where its socket is."""

    data_dir: Path
    socket_dir: Path
    port: int | None = None  # None: given on each command line


def config_text(repo: Path, servers: Sequence[Server]) -> str:
    """pgBackRest's settings for this repository and the servers (one, or each node of the HA
    formation: pgBackRest backs up whichever is primary). The private cluster's port is not
    here: it picks a free one at each start, so it is given on each command line."""
    lines = [
        "[global]",
        f"repo1-path={repo}",
        # Two full backups and the WAL since the older one are kept: a restore reaches any
        # moment since then.
        "repo1-retention-full=2",
        f"log-path={repo / 'log'}",
        f"lock-path={repo / 'lock'}",  # not /tmp/pgbackrest, which other clusters share
        "log-level-console=warn",
        "log-level-file=info",
        "start-fast=y",  # an immediate checkpoint: the backup starts now, not at the next one
        "compress-type=lz4",  # cheap on CPU, which the database needs more
        "",
        f"[{STANZA}]",
    ]
    for number, server in enumerate(servers, start=1):
        lines += [
            f"pg{number}-path={server.data_dir}",
            f"pg{number}-socket-path={server.socket_dir}",
            f"pg{number}-user={SUPERUSER}",
        ]
        if server.port is not None:
            lines.append(f"pg{number}-port={server.port}")
    return "\n".join([*lines, ""])


def archive_command(pgbackrest: Path, config: Path) -> str:
    """What a server runs per WAL segment. pgBackRest reads a relative %p under pg1-path, and
    the config lists every node of a formation: each names its own data directory, which is
    the command's working directory. The command is the same on every node, as it must be:
    pg_rewind and pg_basebackup copy postgresql.auto.conf from one node to another."""
    config_option = shlex.quote(f"--config={config}")
    return (
        f'{shlex.quote(str(pgbackrest))} {config_option} --pg1-path="$(pwd -P)"'
        f" --stanza={STANZA} archive-push %p"
    )


def parse_backups(info_json: str) -> list[Backup]:
    """The stanza's backups, oldest first, from `pgbackrest info --output=json`."""
    stanzas = json.loads(info_json)
    found = [s for s in stanzas if s["name"] == STANZA]
    if not found:
        return []
    return [
        Backup(
            label=entry["label"],
            backup_type=entry["type"],
            started_at=datetime.fromtimestamp(entry["timestamp"]["start"], UTC),
            stopped_at=datetime.fromtimestamp(entry["timestamp"]["stop"], UTC),
        )
        for entry in found[0].get("backup", [])
    ]


def restore_target(to: datetime, backups: list[Backup], repo: Path) -> str:
    """pgBackRest's --target for `to`, or BackupError when no backup can reach it."""
    assert to.tzinfo is not None, "a restore time carries its zone"
    if not backups:
        raise BackupError(f"no backup in {repo}: run `python -m ledger backup` first")
    first = backups[0]
    # pgBackRest keeps a backup's stop time in whole seconds and wants it strictly before the
    # target's whole second: a target in the second the first backup ended cannot be reached.
    if to < first.stopped_at + timedelta(seconds=1):
        raise BackupError(
            f"{to.isoformat()} is before the first backup ({first.label}) ended at"
            f" {first.stopped_at.isoformat()}: a restore can only reach a moment from the next"
            " second on"
        )
    return to.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


class Repository:
    """pgBackRest's directory, as the service user sees it."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.config = self.path / CONFIG_FILE
        self._user = service_user()
        self._binary = _find_pgbackrest()

    def prepare(self, servers: Sequence[Server]) -> None:
        """Create the directories (the server's user's) and write the config for `servers`."""
        try:
            for directory in (self.path, self.path / "log", self.path / "lock"):
                directory.mkdir(parents=True, exist_ok=True, mode=0o750)
                give_to(directory, self._user)
            self.config.write_text(config_text(self.path, servers))
            give_to(self.config, self._user)
        except OSError as exc:
            raise BackupError(f"backup repository {self.path}: {exc.strerror}") from None
        if self._user is None and not os.access(self.path, os.W_OK | os.X_OK):
            raise BackupError(f"backup repository {self.path}: not writable")

    def run(self, *args: str, timeout_ms: int) -> str:
        try:
            return run_as(
                [str(self._binary), f"--config={self.config}", f"--stanza={STANZA}", *args],
                user=self._user,
                timeout_ms=timeout_ms,
            )
        except ProvisioningError as exc:
            raise BackupError(str(exc)) from None

    def backups(self, *, timeout_ms: int) -> list[Backup]:
        if not self.config.exists():
            return []
        return parse_backups(self.run("--output=json", "info", timeout_ms=timeout_ms))

    @property
    def archive_command(self) -> str:
        return archive_command(self._binary, self.config)


def _find_pgbackrest() -> Path:
    found = shutil.which("pgbackrest")
    if found is None:
        raise BackupError(f"pgbackrest not found on PATH: {_INSTALL_HINT}")
    return Path(found)


def backup(data_dir: Path, repo_path: Path, backup_type: BackupType, *, timeout_ms: int) -> Backup:
    """Back up the private cluster under `data_dir` (started for it unless running), archiving
    its WAL from now on; the stanza is created on first use."""
    repo = Repository(repo_path)
    data_dir = data_dir.resolve()
    repo.prepare([Server(data_dir, data_dir)])
    cluster = LocalCluster(data_dir)
    info = cluster.start(timeout_ms=timeout_ms)
    try:
        _archive_to(repo, cluster, timeout_ms=timeout_ms)
        port = f"--pg1-port={info.port}"  # a restart above keeps it
        repo.run(port, "stanza-create", timeout_ms=timeout_ms)
        repo.run(port, f"--type={backup_type}", "backup", timeout_ms=timeout_ms)
        return repo.backups(timeout_ms=timeout_ms)[-1]
    finally:
        cluster.stop(timeout_ms=timeout_ms)


def _archive_to(repo: Repository, cluster: LocalCluster, *, timeout_ms: int) -> None:
    """Point the cluster's archive_command at the repository. archive_mode takes a restart:
    done when this command started the cluster, refused (by name) when someone else did."""
    mode, command = (
        cluster.psql(
            "SELECT current_setting('archive_mode') || '|' || current_setting('archive_command')",
            database="postgres",
            timeout_ms=timeout_ms,
        )
        .strip()
        .split("|", 1)
    )
    if command != repo.archive_command:
        quoted = repo.archive_command.replace("'", "''")
        cluster.psql(
            f"ALTER SYSTEM SET archive_command = '{quoted}'", database="postgres",
            timeout_ms=timeout_ms,
        )  # fmt: skip
        cluster.psql("SELECT pg_reload_conf()", database="postgres", timeout_ms=timeout_ms)
    if mode == "on":
        return
    cluster.psql("ALTER SYSTEM SET archive_mode = on", database="postgres", timeout_ms=timeout_ms)
    if not cluster.started_here:
        raise BackupError(
            f"archive_mode is off on the cluster running in {cluster.data_dir} and takes a"
            " restart: stop what runs it (the switch) and run `python -m ledger backup` again,"
            " or restart it yourself"
        )
    cluster.restart(down_ms=0, timeout_ms=timeout_ms)


def backup_formation(
    root: Path, repo_path: Path, backup_type: BackupType, *, timeout_ms: int
) -> Backup:
    """Back up the HA formation under `root` (`cluster --ha`, running) from its primary; every
    node archives its WAL to the repository while it is primary, so a restore reaches past a
    failover. The stanza is created on first use."""
    cluster = HaCluster(root)
    try:
        nodes = cluster.nodes()
    except ProvisioningError as exc:
        raise BackupError(f"the formation under {cluster.root} is not running: {exc}") from None
    servers = [
        Server(cluster.data_dir(node.name), _socket_dir(cluster, node.port), node.port)
        for node in nodes
    ]
    repo = Repository(repo_path)
    repo.prepare(servers)
    for node in nodes:
        _archive_node(repo, cluster, node.name, node.port)
    repo.run("stanza-create", timeout_ms=timeout_ms)
    repo.run(f"--type={backup_type}", "backup", timeout_ms=timeout_ms)
    return repo.backups(timeout_ms=timeout_ms)[-1]


def _socket_dir(cluster: HaCluster, port: int) -> Path:
    try:
        directories = cluster.sql(port, "SHOW unix_socket_directories")
    except ProvisioningError as exc:
        raise BackupError(f"a node on port {port} does not answer: {exc}") from None
    return Path(directories.strip().split(",")[0].strip())


def _archive_node(repo: Repository, cluster: HaCluster, name: str, port: int) -> None:
    """Set the node's archive_command (a reload; a standby keeps it for when it is promoted).
    archive_mode is on from the node's creation, as it takes a restart."""
    mode, command = (
        cluster.sql(port, "SELECT current_setting('archive_mode') || '|' ||"
                    " current_setting('archive_command')")
        .strip()
        .split("|", 1)
    )  # fmt: skip
    if mode == "off":
        raise BackupError(
            f"archive_mode is off on {name} (a formation made before backups were set up): on"
            f" each node, secondary first, `ALTER SYSTEM SET archive_mode = on` and restart it"
            f" (`pg_autoctl stop` and `pg_autoctl run --pgdata {cluster.data_dir(name)}`)"
        )
    wanted = repo.archive_command
    if command != wanted:
        quoted = wanted.replace("'", "''")
        cluster.sql(port, f"ALTER SYSTEM SET archive_command = '{quoted}'")
        cluster.sql(port, "SELECT pg_reload_conf()")


def restore(repo_path: Path, target_dir: Path, to: datetime, *, timeout_ms: int) -> LocalCluster:
    """Restore into `target_dir` (new or empty) as the ledger was at `to`, start it and wait
    until it is promoted; the caller may stop it or leave it running. The restored cluster
    archives nothing: it is a copy, and its WAL must not mix with the original's in the
    repository."""
    deadline = time.monotonic() + timeout_ms / 1000
    repo = Repository(repo_path)
    if not repo.config.exists():
        raise BackupError(f"no backup repository at {repo.path} (no {CONFIG_FILE})")
    target = target_dir.resolve()
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: a restore goes to a new directory")
    target_text = restore_target(to, repo.backups(timeout_ms=timeout_ms), repo.path)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    give_to(target, service_user())
    try:
        repo.run(
            f"--pg1-path={target}", "--type=time", f"--target={target_text}",
            "--target-action=promote", "--archive-mode=off", "restore",
            timeout_ms=_left_ms(deadline),
        )  # fmt: skip
        _serve_alone(target)
        return _recover(target, deadline)
    except (BackupError, ProvisioningError) as exc:
        # Half a restore is no use to anyone: the directory goes back to how it was.
        shutil.rmtree(target) if created else _empty(target)
        raise BackupError(f"restore to {to.isoformat()} failed: {exc}") from None


# A restored copy serves alone: it waits for no standby (a copy of an HA node names one in its
# postgresql.auto.conf, and would never commit) and logs to server.log, where _recover reads a
# failed recovery's reason.
_ALONE_SETTINGS = {"synchronous_standby_names": "", "logging_collector": "off"}


def _serve_alone(target: Path) -> None:
    """After the restore, before the start: postgresql.auto.conf is read last, so these win."""
    lines = "".join(f"{key} = '{value}'\n" for key, value in _ALONE_SETTINGS.items())
    with (target / "postgresql.auto.conf").open("a") as conf:
        conf.write(lines)


def _recover(target: Path, deadline: float) -> LocalCluster:
    """Start the restored cluster (its socket in its own directory) and wait for its promotion
    at the target. PostgreSQL stops recovery at the first commit after the target: an archive
    with none after it ends recovery before the target, which is fatal."""
    cluster = LocalCluster(target)
    try:
        cluster.start(timeout_ms=_left_ms(deadline))
        while cluster.psql("SELECT pg_is_in_recovery()", database="postgres",
                           timeout_ms=_left_ms(deadline)).strip() == "t":  # fmt: skip
            time.sleep(0.1)
    except ProvisioningError:
        # A server that accepted connections in recovery (hot standby) exits by itself when
        # recovery fails; either way it is gone before its directory is removed.
        with contextlib.suppress(ProvisioningError):
            cluster.stop_running(timeout_ms=_left_ms(deadline))
        fatal = _fatal_line(target / "server.log")
        if fatal is None:
            raise
        raise BackupError(
            f"{fatal}: the archive holds no commit after that time yet (a later backup, or the"
            " next archived WAL segment, brings it)"
            if "before configured recovery target" in fatal
            else fatal
        ) from None
    return cluster


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _fatal_line(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    fatal = [line.split("FATAL:", 1)[1].strip() for line in lines if "FATAL:" in line]
    return fatal[-1] if fatal else None


def _left_ms(deadline: float) -> int:
    left_ms = int((deadline - time.monotonic()) * 1000)
    if left_ms <= 0:
        raise BackupError("the restore took too long")
    return left_ms

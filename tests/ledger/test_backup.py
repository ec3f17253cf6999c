"""Backups and point-in-time restore with pgBackRest, on a cluster of the test's own (archiving
and restoring the shared one would disturb the other tests)."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from ledger import audit, backup
from ledger.__main__ import main
from ledger.errors import BackupError
from ledger.migrations import migrate
from ledger.model import Outcome, Withdrawal
from ledger.postgres import LocalCluster
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store
from tests.ledger.factory import AUDIT, World, key
from tests.ledger.helpers import run

needs_pgbackrest = pytest.mark.skipif(
    shutil.which("pgbackrest") is None,
    reason="pgBackRest is not installed (Debian: apt-get install pgbackrest)",
)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """A directory the server's OS user reaches (pytest's tmp_path is private to us), with a
    short path: the server's unix socket goes in it."""
    path = Path(tempfile.mkdtemp(prefix="ledger-backup-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _backup(label: str, stopped_at: datetime) -> backup.Backup:
    return backup.Backup(label, "full", stopped_at - timedelta(seconds=5), stopped_at)


@pytest.mark.parametrize(
    ("to", "backups", "target"),
    [
        (T0 + timedelta(seconds=1), [_backup("F1", T0)], "2026-12-01 09:00:01.000000+00"),
        (
            T0 + timedelta(seconds=1, microseconds=250),
            [_backup("F1", T0)],
            "2026-12-01 09:00:01.000250+00",
        ),
        (
            datetime(2026, 12, 1, 13, 0, tzinfo=timezone(timedelta(hours=2))),
            [_backup("F1", T0)],
            "2026-12-01 11:00:00.000000+00",
        ),
        # Between two backups: the first reaches it (pgBackRest picks it).
        (
            T0 + timedelta(minutes=1),
            [_backup("F1", T0), _backup("F2", T0 + timedelta(hours=1))],
            "2026-12-01 09:01:00.000000+00",
        ),
    ],
)
def test_restore_target(to: datetime, backups: list[backup.Backup], target: str) -> None:
    assert backup.restore_target(to, backups, Path("/repo")) == target


@pytest.mark.parametrize(
    ("to", "backups", "message"),
    [
        (
            T0 - timedelta(seconds=1),
            [_backup("F1", T0), _backup("F2", T0 + timedelta(hours=1))],
            "2026-12-01T08:59:59+00:00 is before the first backup (F1) ended at"
            " 2026-12-01T09:00:00+00:00: a restore can only reach a moment from the next second on",
        ),
        # pgBackRest keeps stop times in whole seconds: the second the backup ended is refused.
        (
            T0 + timedelta(microseconds=250),
            [_backup("F1", T0)],
            "2026-12-01T09:00:00.000250+00:00 is before the first backup (F1) ended at"
            " 2026-12-01T09:00:00+00:00: a restore can only reach a moment from the next second on",
        ),
        (T0, [], "no backup in /repo: run `python -m ledger backup` first"),
    ],
)
def test_restore_target_refused(to: datetime, backups: list[backup.Backup], message: str) -> None:
    with pytest.raises(BackupError, match=f"^{re.escape(message)}$"):
        backup.restore_target(to, backups, Path("/repo"))


def test_parse_backups() -> None:
    text = (
        '[{"name": "ledger", "backup": ['
        '{"label": "20261201-090000F", "type": "full", "timestamp": {"start": 1796115600,'
        ' "stop": 1796115610}},'
        '{"label": "20261201-090000F_20261201-100000I", "type": "incr", "timestamp":'
        ' {"start": 1796119200, "stop": 1796119203}}]}]'
    )
    assert backup.parse_backups(text) == [
        backup.Backup("20261201-090000F", "full", T0, T0 + timedelta(seconds=10)),
        backup.Backup(
            "20261201-090000F_20261201-100000I", "incr",
            T0 + timedelta(hours=1), T0 + timedelta(hours=1, seconds=3),
        ),
    ]  # fmt: skip
    assert backup.parse_backups('[{"name": "ledger", "status": {"code": 1}}]') == []


def test_missing_pgbackrest_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BackupError, match=r"pgbackrest not found on PATH: .*apt-get install"):
        backup.backup(tmp_path / "pg", tmp_path / "repo", "full", timeout_ms=5_000)


@needs_pgbackrest
def test_an_unwritable_repository_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    repo = tmp_path / "file" / "repo"
    with pytest.raises(BackupError, match=f"backup repository {repo}: Not a directory"):
        backup.backup(tmp_path / "pg", repo, "full", timeout_ms=5_000)
    assert not (tmp_path / "pg").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--to", "yesterday"], "argument --to: an ISO 8601 time"),
        (["--to", "2026-12-01T09:00"], "no backup repository at /nonexistent-repo"),
    ],
)
@needs_pgbackrest
def test_restore_arguments(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--data-dir", str(tmp_path / "new"), "--repo", "/nonexistent-repo"]
    try:
        code = main(["restore", *argv, *common])
    except SystemExit as exit_:
        code = int(str(exit_.code))
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


async def _withdraw(store: LedgerStore, world: World, customers: range) -> list[int]:
    ids = []
    for index in customers:
        customer = world.customers[index]
        request = Withdrawal(
            customer.pan, key(world.terminals[0]), AUDIT, "20", 1_000 + index, world.currency
        )
        result = await run(store, request)
        assert result.outcome is Outcome.APPROVED
        assert result.entry_id is not None
        ids.append(result.entry_id)
    return ids


async def _present(dsn: str, ids: list[int]) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT transaction_id FROM ledger.transactions WHERE transaction_id = ANY($1)"
            " ORDER BY 1",
            ids,
        )
        report = await audit.verify(conn, timeout_ms=60_000, anchored={})
        assert report.ok, (report.damage, report.books)
    finally:
        await conn.close()
    return [row[0] for row in rows]


@needs_pgbackrest
@pytest.mark.slow
async def test_restore_to_a_time_keeps_what_was_acknowledged_before_it(
    server_tmp_path: Path,
) -> None:
    data_dir, repo = server_tmp_path / "pg", server_tmp_path / "pgbackrest"
    restored = server_tmp_path / "restored"
    world = World()
    cluster = LocalCluster(data_dir)
    info = cluster.start(timeout_ms=120_000)
    try:
        conn = await asyncpg.connect(info.owner_dsn)
        await migrate(conn, timeout_ms=60_000)
        await world.load(conn, customers=6)
        await conn.close()
        # archive_mode takes a restart, which a backup does not inflict on a cluster it did not
        # start.
        with pytest.raises(BackupError, match="archive_mode is off on the cluster running"):
            backup.backup(data_dir, repo, "full", timeout_ms=120_000)
    finally:
        cluster.stop(timeout_ms=60_000)
    first = backup.backup(data_dir, repo, "full", timeout_ms=120_000)
    assert first.backup_type == "full"

    # Before the first backup ended: refused, and the target is left alone.
    with pytest.raises(BackupError, match="before the first backup"):
        backup.restore(repo, restored, first.started_at, timeout_ms=60_000)
    assert not restored.exists()

    cluster = LocalCluster(data_dir)
    info = cluster.start(timeout_ms=120_000)
    try:
        settings = LedgerSettings(
            dsn=info.switch_dsn, owner_dsn=info.owner_dsn, pool_size_min=1, pool_size_max=2
        )
        store = await open_store(settings, timeout_ms=30_000)
        try:
            # A restore reaches only the seconds after the first backup's (see restore_target).
            wait_s = (first.stopped_at - datetime.now(UTC)).total_seconds() + 1.1
            await asyncio.sleep(max(0.0, wait_s))
            before = await _withdraw(store, world, range(3))
            restore_to = datetime.now(UTC)
            after = await _withdraw(store, world, range(3, 6))
        finally:
            await store.close(timeout_ms=10_000)
        # It archives the WAL with the later commits, which recovery needs to see to stop.
        assert backup.backup(data_dir, repo, "incr", timeout_ms=120_000).backup_type == "incr"
    finally:
        cluster.stop(timeout_ms=60_000)

    restored_cluster = backup.restore(repo, restored, restore_to, timeout_ms=120_000)
    try:
        assert restored_cluster.info is not None
        assert await _present(restored_cluster.info.owner_dsn, before + after) == before
    finally:
        restored_cluster.stop(timeout_ms=60_000)


def test_one_config_names_every_node_of_a_formation() -> None:
    repo = Path("/srv/ha/pgbackrest")
    nodes = [
        backup.Server(Path("/srv/ha/node1"), Path("/run/postgresql"), 5433),
        backup.Server(Path("/srv/ha/node2"), Path("/run/postgresql"), 5434),
    ]
    stanza = backup.config_text(repo, nodes).split("[ledger]\n", 1)[1]
    assert stanza.splitlines() == [
        "pg1-path=/srv/ha/node1",
        "pg1-socket-path=/run/postgresql",
        "pg1-user=postgres",
        "pg1-port=5433",
        "pg2-path=/srv/ha/node2",
        "pg2-socket-path=/run/postgresql",
        "pg2-user=postgres",
        "pg2-port=5434",
    ]
    # The private cluster's port changes at each start: given on each command line instead.
    single = backup.config_text(repo, [backup.Server(Path("/srv/pg"), Path("/srv/pg"))])
    assert "pg1-port" not in single


def test_the_archive_command_is_the_same_on_every_node() -> None:
    # pg_rewind and pg_basebackup copy postgresql.auto.conf between nodes: the command finds
    # its node's directory from its working directory, never names one.
    command = backup.archive_command(Path("/usr/bin/pgbackrest"), Path("/srv/ha/pgbackrest.conf"))
    assert command == (
        '/usr/bin/pgbackrest --config=/srv/ha/pgbackrest.conf --pg1-path="$(pwd -P)"'
        " --stanza=ledger archive-push %p"
    )

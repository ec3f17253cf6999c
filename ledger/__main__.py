"""`python -m ledger`: migrations, provisioning, and the auditors' tools.

Every command connects as the schema owner: `--dsn` (or LEDGER_DSN), or else the private
cluster under `--data-dir`, started for the command and stopped after it (unless it was
already running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import asyncpg

from ledger import (
    anchors,
    audit,
    authorisation,
    backup,
    balancing,
    cassettes,
    exports,
    ha,
    retention,
    rules,
    settlement,
    sla,
)
from ledger.anchors import AnchorError
from ledger.errors import DayNotOver, LedgerError
from ledger.fixtures import EntryError, load_fixtures, read_fixtures
from ledger.journal import Head
from ledger.migrations import Connection, migrate
from ledger.operations import init_connection
from ledger.postgres import LocalCluster, running_cluster
from ledger.settings import DSN_ENV, LedgerSettings, pan_hash_key_from_env
from ledger.sla_page import as_html

_TIMEOUT_MS = 600_000
Command = Callable[[Connection, argparse.Namespace], Awaitable[int]]


@contextlib.asynccontextmanager
async def _connect(args: argparse.Namespace) -> AsyncIterator[Connection]:
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            dsn = stack.enter_context(running_cluster(args.data_dir)).owner_dsn
        conn = await asyncpg.connect(dsn, timeout=args.timeout_ms / 1000)
        try:
            yield conn
        finally:
            await conn.close()


async def _migrate(conn: Connection, args: argparse.Namespace) -> int:
    applied = await migrate(conn, timeout_ms=args.timeout_ms)
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print("schema is current" if not applied else f"{len(applied)} migration(s) applied")
    return 0


async def _policy(conn: Connection, args: argparse.Namespace) -> int:
    """Shows the ledger's policy, after setting what the arguments name."""
    if args.pin_tries_max is not None:
        await conn.execute("UPDATE ledger.policy SET pin_tries_max = $1", args.pin_tries_max)
    if args.cross_customer_transfers is not None:
        await conn.execute(
            "UPDATE ledger.policy SET cross_customer_transfers = $1",
            args.cross_customer_transfers == "yes",
        )
    if args.business_day_cutover is not None:
        await conn.execute(
            "UPDATE ledger.policy SET business_day_cutover = $1", args.business_day_cutover
        )
    row = await conn.fetchrow(
        "SELECT pin_tries_max, cross_customer_transfers, business_day_cutover FROM ledger.policy"
    )
    assert row is not None
    print(f"pin_tries_max = {row['pin_tries_max']}")
    print(f"cross_customer_transfers = {str(row['cross_customer_transfers']).lower()}")
    print(f'business_day_cutover = "{row["business_day_cutover"]:%H:%M}"')
    return 0


async def _day_close(conn: Connection, args: argparse.Namespace) -> int:
    try:
        closed = await balancing.close_day(
            conn, args.date, by=args.by, timeout_s=args.timeout_ms / 1000
        )
    except DayNotOver as exc:
        print(f"refused: {str(exc).removeprefix('refused: ')}", file=sys.stderr)
        return 1
    print(f"business day {args.date} " + ("closed" if closed else "is already closed"))
    return 0


async def _settlement(conn: Connection, args: argparse.Namespace) -> int:
    try:
        report = await settlement.fetch(conn, args.date, timeout_s=args.timeout_ms / 1000)
    except settlement.DayNotClosed as exc:
        print(f"{exc}: close it first (python -m ledger day close --date {args.date})",
              file=sys.stderr)  # fmt: skip
        return 1
    print(settlement.as_csv(report) if args.format == "csv" else settlement.as_json(report), end="")
    return 0


async def _load(conn: Connection, args: argparse.Namespace) -> int:
    fixtures = read_fixtures(args.fixtures)
    try:
        summary = await load_fixtures(
            conn, fixtures.data, pan_hash_key=pan_hash_key_from_env(), timeout_ms=args.timeout_ms
        )
    except EntryError as exc:  # refused by the database: named by file and line too
        raise fixtures.locate(exc) from None
    print(
        f"loaded {summary.customers} customers, {summary.accounts} accounts,"
        f" {summary.cards} cards, {summary.terminals} terminals"
    )
    return 0


async def _verify(conn: Connection, args: argparse.Namespace) -> int:
    report = await audit.verify(conn, timeout_ms=args.timeout_ms, anchored=_anchored(args))
    if report.damage:
        print(f"FIRST BAD RECORD: {report.damage[0]}")
        for damage in report.damage[1:]:
            print(f"also: {damage}")
    for problem in report.books:
        print(f"BOOKS: {problem}")
    verdict = "OK" if report.ok else "DAMAGED"
    print(
        f"{verdict}: {report.records} transactions in {report.blocks} blocks"
        f" on {report.chains} chains checked"
    )
    return 0 if report.ok else 1


def _anchored(args: argparse.Namespace) -> dict[int, Head]:
    """Each lane's latest signed head from --anchors (signatures checked with --anchor-key)."""
    if args.anchors is None:
        return {}
    if args.anchor_key is None:
        raise AnchorError(
            "--anchors needs --anchor-key: the public key the anchors were signed for"
        )
    return anchors.latest_heads(
        anchors.read_anchors(args.anchors, anchors.load_public_key(args.anchor_key))
    )


async def _export(conn: Connection, args: argparse.Namespace) -> int:
    try:
        count = await exports.export(
            conn, sys.stdout, start=args.start, end=args.end, terminal_id=args.terminal,
            output_format=args.format, timeout_ms=args.timeout_ms,
        )  # fmt: skip
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped (`| head`): not an error. Further writes to stdout, including the
        # interpreter's flush at exit, must not fail either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"{count} transactions exported", file=sys.stderr)
    return 0


def _verify_export(args: argparse.Namespace) -> int:
    try:
        with args.file.open("rb") as lines:
            report = exports.verify_export(lines, _anchored(args))
    except OSError as exc:
        raise AnchorError(f"{args.file}: {exc.strerror}") from None
    for number, damage in enumerate(report.damage):
        print(f"{'FIRST BAD RECORD' if number == 0 else 'also'}: {damage}")
    verdict = "OK" if report.ok else "DAMAGED"
    print(f"{verdict}: {report.transactions} transactions in {report.blocks} blocks checked")
    return 0 if report.ok else 1


async def _publish_anchors(conn: Connection, args: argparse.Namespace) -> int:
    publisher = anchors.Publisher(anchors.load_private_key(args.key), args.anchors)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Ends the loop, so a private cluster this command started is stopped on the way out.
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    while not stop.is_set():
        if await publisher.publish_if_moved(conn, timeout_ms=args.timeout_ms):
            print(f"anchored {len(publisher.last)} chains at {datetime.now(UTC).isoformat()}")
        if args.once:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.interval_ms / 1000)
    return 0


async def _install_authorisation_key(conn: Connection, args: argparse.Namespace) -> int:
    """The key in hex on standard input (never an argument: it would show in `ps`)."""
    text = sys.stdin.readline().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise LedgerError("standard input: the authorisation key in hex") from None
    if len(key) != authorisation.KEY_BYTES:
        raise LedgerError(f"standard input: {authorisation.KEY_BYTES} bytes, got {len(key)}")
    installed = await authorisation.install(conn, key, replace=True, timeout_ms=args.timeout_ms)
    print(f"authorisation key installed, check value {installed}")
    return 0


def _anchor_keygen(args: argparse.Namespace) -> int:
    anchors.generate_key(args.private, args.public)
    print(f"private key: {args.private} (keep it off the database host)")
    print(f"public key: {args.public} (give it to auditors: audit verify --anchor-key)")
    return 0


async def _replenish(conn: Connection, args: argparse.Namespace) -> int:
    done = await cassettes.replenish(
        conn, args.terminal, args.cassette, args.notes, denomination_minor=args.denomination_minor,
        by=args.by, at=datetime.now(UTC), timeout_ms=args.timeout_ms,
    )  # fmt: skip
    print(
        f"terminal {done.terminal_id} cassette {done.cassette_no}: {done.loaded_notes} notes of"
        f" {done.denomination_minor} {done.currency} loaded (load {done.load_seq}); taken out"
        f" {done.previous_remaining_notes} left and {done.previous_rejected_notes} rejected;"
        f" {done.moved_minor} moved from the vault"
        + (f" (journal entry {done.transaction_id})" if done.transaction_id else "")
    )
    return 0


async def _cash_show(conn: Connection, args: argparse.Namespace) -> int:
    print(
        "terminal,cassette,currency,denomination_minor,loaded,dispensed,rejected,remaining,"
        "low_notes"
    )
    for c in await cassettes.cash_state(conn, timeout_ms=args.timeout_ms):
        if args.terminal in (None, c.terminal_id):
            print(
                f"{c.terminal_id},{c.cassette_no},{c.currency},{c.denomination_minor},"
                f"{c.loaded_notes},{c.dispensed_notes},{c.rejected_notes},"
                f"{c.remaining_notes},{c.low_notes}"
            )
    return 0


def _cash_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cash_parser = subparsers.add_parser("cash", help="ATM cassettes: replenish, show")
    cash_sub = cash_parser.add_subparsers(required=True, metavar="{replenish,show}")
    replenish = _subcommand(
        cash_sub, "replenish", _replenish,
        "replace a terminal's cassette with one of --notes notes: the notes taken out (left and"
        " rejected) go back to the vault, the difference is posted between the vault account"
        " and the terminal's cash account and journalled, the counts start again, and the"
        " replenishment is recorded",
    )  # fmt: skip
    replenish.add_argument("--terminal", required=True, help="terminal id")
    replenish.add_argument("--cassette", type=int, required=True, help="cassette slot, 1-8")
    replenish.add_argument("--notes", type=int, required=True, help="notes loaded")
    replenish.add_argument(
        "--denomination-minor", type=int,
        help="the notes' denomination in minor units: refused unless it is the cassette's",
    )  # fmt: skip
    replenish.add_argument(
        "--by", default=os.environ.get("USER", "operator"), help="who replenished (recorded)"
    )
    show = _subcommand(cash_sub, "show", _cash_show, "every cassette's counts (CSV)")
    show.add_argument("--terminal", help="only this terminal's cassettes")


async def _report(conn: Connection, args: argparse.Namespace) -> int:
    business_date = args.business_date or rules.business_day(datetime.now(UTC), args.cutover)
    # On stderr, so that stdout stays CSV; a report of the wrong day would otherwise look right.
    print(f"business day {business_date} (it starts at {args.cutover:%H:%M} UTC)", file=sys.stderr)
    days = await audit.terminal_report(conn, business_date, timeout_ms=args.timeout_ms)
    print(
        "terminal,currency,withdrawals,withdrawn_minor,reversals,reversed_minor,"
        "net_minor,posted_minor,reconciled"
    )
    for d in days:
        print(
            f"{d.terminal_id},{d.currency},{d.withdrawals},{d.withdrawn_minor},{d.reversals},"
            f"{d.reversed_minor},{d.net_minor},{d.posted_minor},{'yes' if d.reconciled else 'NO'}"
        )
    return 0 if all(d.reconciled for d in days) else 1


async def _sla(conn: Connection, args: argparse.Namespace) -> int:
    await init_connection(conn)
    report = await sla.fetch_report(
        conn, args.first_day, args.last_day, cutover=args.cutover, hours=args.hours,
        now=datetime.now(UTC), timeout_ms=args.timeout_ms,
    )  # fmt: skip
    render = {"csv": sla.as_csv, "json": sla.as_json, "html": as_html}[args.format]
    sys.stdout.write(render(report))
    return 0


async def _prune_events(conn: Connection, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    before = args.before if args.before is not None else now - timedelta(days=args.keep_days)
    if before > now:
        print(f"error: --before {before:%Y-%m-%d %H:%M} UTC is in the future", file=sys.stderr)
        return 2
    pruned = await retention.prune_operations(conn, before, timeout_ms=args.timeout_ms)
    print(
        f"pruned before {before:%Y-%m-%d %H:%M:%S} UTC: {pruned.events} terminal events,"
        f" {pruned.traffic} traffic rows, {pruned.alerts} resolved alerts,"
        f" {pruned.processes} switch processes"
    )
    return 0


def _keep_days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of days, 1 or more, got {text!r}")
    return int(text)


def _service_hours(text: str) -> sla.ServiceHours:
    try:
        return sla.ServiceHours.parse(text)
    except sla.ReportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time_of_day(text: str) -> time:
    try:
        return datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"a time of day HH:MM, got {text!r}") from None


def _timestamp(text: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an ISO 8601 time such as 2026-12-01T09:30:00+00:00, got {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn", default=os.environ.get(DSN_ENV),
        help=f"owner-role connection string (default: ${DSN_ENV}); without one, the private "
        "cluster under --data-dir is started for the command and stopped after it",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".var/pg"),
        help="data directory of the private PostgreSQL cluster (default: .var/pg)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout-ms", type=int, default=_TIMEOUT_MS,
        help=f"time limit for each database call in milliseconds (default: {_TIMEOUT_MS})",
    )  # fmt: skip


def _subcommand(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    help_text: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    _common(parser)
    parser.set_defaults(command=command)
    return parser


def _anchor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--anchors", type=Path,
        help="the append-only file of signed chain heads: every chain must still reach its"
        " latest anchor with the same hash",
    )  # fmt: skip
    parser.add_argument("--anchor-key", type=Path, help="the anchors' public key (PEM)")


def _anchor_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    anchor_parser = subparsers.add_parser(
        "anchors", help="sign the journal's chain heads outside the database"
    )
    anchor_sub = anchor_parser.add_subparsers(required=True, metavar="{keygen,publish}")
    keygen = anchor_sub.add_parser(
        "keygen", help="make an Ed25519 key pair for signing anchors",
        description="make an Ed25519 key pair for signing anchors (the private key file is"
        " created readable by its owner only, and never overwritten)",
    )  # fmt: skip
    keygen.add_argument("--private", type=Path, required=True, help="private key file (PEM)")
    keygen.add_argument("--public", type=Path, required=True, help="public key file (PEM)")
    keygen.set_defaults(offline=_anchor_keygen)
    publish = _subcommand(
        anchor_sub, "publish", _publish_anchors,
        "append the chain heads, signed, to the anchors file whenever they move",
    )  # fmt: skip
    publish.add_argument("--anchors", type=Path, required=True, help="the anchors file")
    publish.add_argument("--key", type=Path, required=True, help="the private key (PEM)")
    publish.add_argument(
        "--interval-ms", type=int, default=1_000,
        help="how often to look at the heads (default: 1000)",
    )  # fmt: skip
    publish.add_argument("--once", action="store_true", help="publish once, then exit")


def _audit_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit_parser = subparsers.add_parser("audit", help="auditors' tools for the audit journal")
    audit_sub = audit_parser.add_subparsers(required=True, metavar="{verify,export,verify-export}")
    verify = _subcommand(
        audit_sub, "verify", _verify,
        "check every transaction's leaf, every chain of blocks up to its head (and its signed "
        "anchor, with --anchors) and that balances equal the sum of postings; exit 1 and name "
        "the first bad record on damage",
    )  # fmt: skip
    _anchor_arguments(verify)
    export = _subcommand(
        audit_sub, "export", _export, "write audit records to stdout as CSV or JSON lines"
    )
    export.add_argument(
        "--from",
        dest="start",
        type=_timestamp,
        required=True,
        help="first record time, inclusive (ISO 8601; UTC if no zone)",
    )
    export.add_argument(
        "--to",
        dest="end",
        type=_timestamp,
        required=True,
        help="end time, exclusive (ISO 8601; UTC if no zone)",
    )
    export.add_argument(
        "--terminal",
        help="only this terminal's records (JSON lines: the blocks that hold them, whole)",
    )
    export.add_argument(
        "--format", choices=("csv", "jsonl"), default="csv",
        help="csv: transactions, for spreadsheets; jsonl: blocks and transactions, which"
        " `audit verify-export` checks alone (default: csv)",
    )  # fmt: skip
    verify_export = audit_sub.add_parser(
        "verify-export",
        help="recompute the leaves, blocks and links of a JSON-lines export, with no database",
        description="recompute the leaves, blocks and links of a JSON-lines export (from"
        " `audit export --format jsonl`), with no database; exit 1 and name the first bad"
        " record on damage",
    )
    verify_export.add_argument("file", type=Path, help="the export, JSON lines")
    _anchor_arguments(verify_export)
    verify_export.set_defaults(offline=_verify_export)


def _backup(args: argparse.Namespace) -> int:
    if args.ha:
        repo = args.repo or args.dir / "pgbackrest"
        done = backup.backup_formation(args.dir, repo, args.backup_type, timeout_ms=args.timeout_ms)
    else:
        repo = args.repo or backup.default_repo(args.data_dir)
        done = backup.backup(args.data_dir, repo, args.backup_type, timeout_ms=args.timeout_ms)
    print(f"backup {done.label} ({done.backup_type}) in {repo}, ended {done.stopped_at}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    repo = args.repo or backup.default_repo(args.data_dir)
    info = backup.restore(repo, args.data_dir, args.to, timeout_ms=args.timeout_ms).info
    assert info is not None
    print(f"restored to {args.to.isoformat()} in {info.data_dir}, running: {info.owner_dsn}")
    print(f"check it: python -m ledger audit verify --data-dir {info.data_dir}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    if not args.ha:
        return _private_cluster(args)
    cluster = ha.HaCluster(args.dir)
    if args.stop:
        cluster.stop(timeout_ms=args.timeout_ms)
        print(f"stopped the monitor and nodes under {cluster.root}")
        return 0
    info = cluster.start(timeout_ms=args.timeout_ms)
    asyncio.run(_migrate_at(info.owner_dsn, args))
    where = f"primary {cluster.primary().name}, synchronous secondary; logs in {cluster.root}"
    return _started(where, info.switch_dsn, info.owner_dsn)


def _started(where: str, switch_dsn: str, owner_dsn: str) -> int:
    """What `cluster` prints once it runs and is migrated: where, and the two DSNs."""
    print(where)
    print(f"switch ([ledger] dsn): {switch_dsn}")
    print(f"owner (--dsn): {owner_dsn}")
    return 0


def _private_cluster(args: argparse.Namespace) -> int:
    """The single-node private cluster, left running for several switch processes (each finds
    it running and leaves it so), or stopped whoever started it."""
    cluster = LocalCluster(args.data_dir)
    if args.stop:
        cluster.stop_running(timeout_ms=args.timeout_ms)
        print(f"stopped the private cluster under {cluster.data_dir}")
        return 0
    info = cluster.start(timeout_ms=args.timeout_ms)
    asyncio.run(_migrate_at(info.owner_dsn, args))
    where = f"running under {cluster.data_dir} until `python -m ledger cluster --stop`"
    return _started(where, info.switch_dsn, info.owner_dsn)


async def _migrate_at(dsn: str, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(dsn, timeout=args.timeout_ms / 1000)
    try:
        await _migrate(conn, args)
    finally:
        await conn.close()


def _backup_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    made = subparsers.add_parser(
        "backup", help="back up the private cluster, or with --ha the formation, with"
        " pgBackRest, archiving its WAL",
        description="back up the private cluster under --data-dir with pgBackRest; the first"
        " one sets up WAL archiving to the repository (a restart if the cluster was stopped)."
        " With --ha: back up the running pg_auto_failover formation under --dir from its"
        " primary, each node archiving its WAL while it is primary (repository default:"
        " pgbackrest under --dir)",
    )  # fmt: skip
    made.add_argument("--type", dest="backup_type", choices=("full", "incr"), default="full")
    made.add_argument("--ha", action="store_true", help="the pg_auto_failover formation")
    made.add_argument(
        "--dir", type=Path, default=Path(".var/ha"),
        help="with --ha: where the formation lives (default: .var/ha)",
    )  # fmt: skip
    made.set_defaults(offline=_backup)
    restore = subparsers.add_parser(
        "restore", help="restore a backup as of a time into a new data directory, and start it",
        description="restore into the new (or empty) --data-dir the ledger as it was at --to,"
        " from the backups and WAL in --repo, promote it and leave it running",
    )  # fmt: skip
    restore.add_argument(
        "--to", type=_timestamp, required=True,
        help="the moment to restore to (ISO 8601; UTC if no zone); after the first backup",
    )  # fmt: skip
    restore.set_defaults(offline=_restore)
    cluster = subparsers.add_parser(
        "cluster", help="start (or --stop) the private cluster, or with --ha a local monitor,"
        " primary and synchronous secondary",
        description="start the private cluster under --data-dir (created on first use), apply"
        " the migrations and print its DSNs; it keeps running until `cluster --stop`, which"
        " stops it whoever started it (a switch leaves a cluster it started running while"
        " other processes use it). With --ha: create on first use and start pg_auto_failover's"
        " monitor, a primary and a synchronous secondary under --dir, apply the migrations on"
        " the primary and print the multi-host DSNs; they keep running until"
        " `cluster --ha --stop`",
    )  # fmt: skip
    cluster.add_argument("--ha", action="store_true", help="the pg_auto_failover formation")
    cluster.add_argument("--stop", action="store_true", help="stop it instead")
    cluster.add_argument(
        "--dir", type=Path, default=Path(".var/ha"), help="where it lives (default: .var/ha)"
    )
    cluster.add_argument(
        "--data-dir", type=Path, default=Path(".var/pg"),
        help="without --ha: the private cluster's data directory (default: .var/pg)",
    )  # fmt: skip
    cluster.add_argument("--timeout-ms", type=int, default=_TIMEOUT_MS)
    cluster.set_defaults(offline=_cluster)
    for parser, data_dir in ((made, "the cluster to back up"), (restore, "the new one")):
        parser.add_argument(
            "--data-dir", type=Path, required=parser is restore, default=Path(".var/pg"),
            help=f"data directory: {data_dir} (default for backup: .var/pg)",
        )  # fmt: skip
        parser.add_argument(
            "--repo", type=Path,
            help="pgBackRest's directory (default: pgbackrest next to --data-dir)",
        )  # fmt: skip
        parser.add_argument("--timeout-ms", type=int, default=_TIMEOUT_MS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ledger", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="command")
    _subcommand(subparsers, "migrate", _migrate, "apply pending SQL migrations (idempotent)")
    load = _subcommand(
        subparsers, "load", _load,
        "create or update customers, accounts, cards and terminals (and their cassettes) from a "
        "TOML file (PANs are stored hashed with the key in $LEDGER_PAN_HASH_KEY, hex; "
        "development key if unset)",
    )  # fmt: skip
    load.add_argument("fixtures", type=Path, help="fixtures file, e.g. config/demo-fixtures.toml")
    policy = _subcommand(
        subparsers, "policy", _policy,
        "show (or set) the rules the database enforces whatever the switch asks: the PIN tries "
        "before a card is blocked, and whether a card may pay another customer's account. The "
        "switch refuses to start unless its [ledger] settings say the same",
    )  # fmt: skip
    policy.add_argument("--pin-tries-max", type=int, help="wrong PINs that block a card")
    policy.add_argument(
        "--cross-customer-transfers", choices=("yes", "no"),
        help="whether transfers to another customer's account are allowed",
    )  # fmt: skip
    policy.add_argument(
        "--business-day-cutover", type=_time_of_day,
        help="UTC time of day a business day starts, HH:MM (the switch's"
        " ledger.business_day_cutover must be the same): a day closes only after it",
    )  # fmt: skip
    _day_parsers(subparsers)
    _prune_parser(subparsers)
    _audit_parsers(subparsers)
    _anchor_parsers(subparsers)
    _cash_parsers(subparsers)
    _backup_parsers(subparsers)
    key_parser = subparsers.add_parser(
        "authorisation-key", help="the key that verifies the HSM's word on each approval"
    )
    key_sub = key_parser.add_subparsers(required=True, metavar="{install}")
    _subcommand(
        key_sub, "install", _install_authorisation_key,
        "replace the ledger's authorisation key with the one on standard input (hex; from "
        "`python -m hsm authorisation-key`); `migrate` installs the development key until then",
    )  # fmt: skip
    report_parser = subparsers.add_parser("report", help="reports for auditors")
    report_sub = report_parser.add_subparsers(required=True, metavar="{terminals,sla,settlement}")
    terminals = _subcommand(
        report_sub, "terminals", _report,
        "per terminal: withdrawals, reversals and net cash out for a business day, reconciled "
        "against the postings on its cash account (CSV; exit 1 if any does not reconcile)",
    )  # fmt: skip
    terminals.add_argument(
        "--business-date", type=date.fromisoformat,
        help="business day, YYYY-MM-DD (default: the current one, by --cutover)",
    )  # fmt: skip
    _cutover(terminals)
    _sla_parser(report_sub)
    settlement_parser = _subcommand(
        report_sub, "settlement", _settlement,
        "the settlement report of a closed business day: per terminal, host totals, the totals"
        " of its last 0500, their difference, the verdict, cassettes at open and close",
    )  # fmt: skip
    settlement_parser.add_argument(
        "--date", type=date.fromisoformat, required=True, help="business day, YYYY-MM-DD"
    )
    settlement_parser.add_argument("--format", choices=("csv", "json"), default="json")
    return parser


def _day_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    day_parser = subparsers.add_parser("day", help="business days: close")
    day_sub = day_parser.add_subparsers(required=True, metavar="{close}")
    close = _subcommand(
        day_sub, "close", _day_close,
        "close a business day that is over (by the database's clock and the policy's cutover):"
        " freeze its totals and cassette positions; postings dated on it are refused after."
        " Closing a closed day changes nothing",
    )  # fmt: skip
    close.add_argument(
        "--date", type=date.fromisoformat, required=True, help="business day, YYYY-MM-DD"
    )
    close.add_argument(
        "--by", default=os.environ.get("USER", "operator"), help="who closed it (recorded)"
    )


def _prune_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        subparsers, "prune-events", _prune_events,
        "delete terminal events, traffic, resolved alerts and stopped switch processes older "
        "than a retention, keeping what the fleet view and the SLA report still need (each "
        "terminal's latest sign-on on, and every open alert); never the journal",
    )  # fmt: skip
    cut_off = parser.add_mutually_exclusive_group(required=True)
    cut_off.add_argument(
        "--before", type=_timestamp,
        help="delete what is older than this (ISO 8601 date or date-time; UTC if no zone)",
    )  # fmt: skip
    cut_off.add_argument(
        "--keep-days", type=_keep_days, help="delete what is older than this many days"
    )


def _cutover(parser: argparse.ArgumentParser) -> None:
    cutover = LedgerSettings().business_day_cutover
    parser.add_argument(
        "--cutover", type=_time_of_day, default=cutover,
        help="UTC time of day a business day starts, HH:MM: the switch's"
        f" ledger.business_day_cutover (default: {cutover:%H:%M}, the switch's default too)",
    )  # fmt: skip


def _sla_parser(report_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        report_sub, "sla", _sla,
        "per terminal and business day: availability (signed-on time over scheduled time), "
        "requests and approval rate, financial latency p50/p99, 91/96 counts, alerts raised "
        "and mean time to acknowledge; from the durable terminal events and traffic",
    )  # fmt: skip
    parser.add_argument(
        "--from", dest="first_day", type=date.fromisoformat, required=True,
        help="first business day, YYYY-MM-DD",
    )  # fmt: skip
    parser.add_argument(
        "--to", dest="last_day", type=date.fromisoformat, required=True,
        help=f"last business day, inclusive, YYYY-MM-DD (at most {sla.DAYS_MAX} days in all)",
    )  # fmt: skip
    parser.add_argument(
        "--format", choices=("csv", "json", "html"), default="csv",
        help="csv, json, or an HTML page with an availability chart (default: csv)",
    )  # fmt: skip
    parser.add_argument(
        "--hours", type=_service_hours,
        help="scheduled service hours each day, HH:MM-HH:MM UTC (default: the whole day)",
    )  # fmt: skip
    _cutover(parser)


async def _run(args: argparse.Namespace) -> int:
    async with _connect(args) as conn:
        command: Command = args.command
        return await command(conn, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if "offline" in args:
            offline: Callable[[argparse.Namespace], int] = args.offline
            return offline(args)
        return asyncio.run(_run(args))
    except (LedgerError, OSError, asyncpg.PostgresError, sla.ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

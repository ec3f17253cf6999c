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
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path

import asyncpg

from ledger import audit, rules, sla
from ledger.errors import LedgerError
from ledger.fixtures import EntryError, load_fixtures, read_fixtures
from ledger.migrations import Connection, migrate
from ledger.operations import init_connection
from ledger.postgres import running_cluster
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
    row = await conn.fetchrow("SELECT pin_tries_max, cross_customer_transfers FROM ledger.policy")
    assert row is not None
    print(f"pin_tries_max = {row['pin_tries_max']}")
    print(f"cross_customer_transfers = {str(row['cross_customer_transfers']).lower()}")
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
    report = await audit.verify(conn, timeout_ms=args.timeout_ms)
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


async def _export(conn: Connection, args: argparse.Namespace) -> int:
    count = await audit.export(
        conn, sys.stdout, start=args.start, end=args.end, terminal_id=args.terminal,
        output_format=args.format, timeout_ms=args.timeout_ms,
    )  # fmt: skip
    print(f"{count} records exported", file=sys.stderr)
    return 0


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
    value = datetime.fromisoformat(text)
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


def _audit_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit_parser = subparsers.add_parser("audit", help="auditors' tools for the audit journal")
    audit_sub = audit_parser.add_subparsers(required=True, metavar="{verify,export}")
    _subcommand(
        audit_sub, "verify", _verify,
        "check every terminal's hash chain and that balances equal the sum of postings; "
        "exit 1 and name the first bad record on damage",
    )  # fmt: skip
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
    export.add_argument("--terminal", help="only this terminal's records")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                        help="output format (default: csv)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ledger", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="command")
    _subcommand(subparsers, "migrate", _migrate, "apply pending SQL migrations (idempotent)")
    load = _subcommand(
        subparsers, "load", _load,
        "create or update customers, accounts, cards and terminals from a TOML file "
        "(PANs are stored hashed with the key in $LEDGER_PAN_HASH_KEY, hex; development "
        "key if unset)",
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
    _audit_parsers(subparsers)
    report_parser = subparsers.add_parser("report", help="reports for auditors")
    report_sub = report_parser.add_subparsers(required=True, metavar="{terminals,sla}")
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
    return parser


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
        return asyncio.run(_run(args))
    except (LedgerError, OSError, asyncpg.PostgresError, sla.ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

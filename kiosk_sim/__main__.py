"""`python -m kiosk_sim`: the terminal simulator (also installed as `kiosk-sim`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from kiosk_sim import chart, load, soak
from kiosk_sim.demo import run_demo
from kiosk_sim.population import (
    CARDS_PER_CUSTOMER_MAX,
    CUSTOMERS_MAX,
    LedgerView,
    build,
    provision,
)
from kiosk_sim.report import Report, Summary
from kiosk_sim.serve import serve_demo
from ledger import backup
from ledger.errors import SchemaTooOld
from ledger.postgres import running_cluster
from switch.iso8583.response_codes import ResponseCode

# The likely cause of a declined sign-on or key change, and what to do about it.
DECLINE_HINTS: Mapping[str, str] = {
    "58": "the switch has no active terminal by that id: kiosk_sim provisioned its kiosks into"
    " another ledger; give it the switch's own (--dsn, or --data-dir as the switch's"
    " ledger.data_dir)",
    "91": "the switch could not reach its HSM or its ledger in time: see the switch's log; with"
    ' [hsm] backend = "network", start the HSM (python -m hsm serve) at hsm.addresses',
    "96": "the switch failed on it: see the switch's log",
    "30": "the switch could not read it: kiosk_sim speaks the default dialect; compare the"
    " switch's [listener] bitmap, binary_fields, length_header and tpdu",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kiosk_sim", description="Kiosk terminal simulator for the switch."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help=(
            "start PostgreSQL, the HSM and the switch and walk through every flow (what `make demo`"
            " runs)"
        ),
        description=(
            "Provision a fresh private PostgreSQL cluster, start the HSM and the switch as their"
            " own processes, drive them with simulated kiosks through every flow and a short"
            " load, verify the audit journal, then stop everything it started."
        ),
    )
    commands.add_parser(
        "serve",
        help="the demo ledger and a switch in the foreground, for a terminal of your own"
        " (what `make serve` runs)",
        description=(
            "Migrate the private PostgreSQL cluster under the switch's ledger.data_dir and load"
            " config/demo-fixtures.toml into it, print the switch's address, the demo terminal,"
            " its development TMK and a card, then run the switch (settings as `python -m switch"
            " serve` reads them) until Ctrl-C."
        ),
    )
    soak = commands.add_parser(
        "soak",
        help="break things on purpose and count what was lost (what `make soak` runs)",
        description=(
            "On a fresh private PostgreSQL cluster: SIGKILL the switch at random moments under"
            " kiosk_sim load and restart it, and one of two `--workers 2` workers (its parent"
            " restarts it), then check every account, the audit chains and the logs; fuzz the"
            " decoder with random and mutated frames. On a pg_auto_failover formation: kill the"
            " primary's postmaster under load (automatic failover), then restore a pgBackRest"
            " backup to a point in time and verify it. Prints one row per scenario: faults"
            " injected, requests, and lost / doubled / leaked, which must all be 0. Exits 1"
            " otherwise."
        ),
    )
    soak.add_argument("--kills", type=int, default=10, help="switch SIGKILLs (default 10)")
    soak.add_argument(
        "--worker-kills",
        type=int,
        default=10,
        help="SIGKILLs of one of two `--workers 2` workers (default 10)",
    )
    soak.add_argument("--outages", type=int, default=5, help="PostgreSQL restarts (default 5)")
    soak.add_argument(
        "--failovers",
        type=int,
        default=3,
        help="kills of the HA formation's primary, each failed over (default 3)",
    )
    soak.add_argument(
        "--tcp-frames",
        type=int,
        default=100_000,
        help="fuzzed frames to the live switch (default 10^5)",
    )
    soak.add_argument(
        "--fuzz-frames", type=int, default=1_000_000, help="decoder frames (default 10^6)"
    )
    soak.add_argument("--seed", type=int, default=7, help="seed of the run (default 7)")
    run = commands.add_parser(
        "run",
        help="load-test a running switch with simulated kiosks",
        description=(
            "Provision a seeded population (customers, cards, terminals with their own TMKs)"
            " through the ledger, drive the switch at --host/--port with it, then compare every"
            " account with what the answers said it should hold. The same --seed gives the same"
            " run."
        ),
    )
    run.add_argument(
        "--host", default="127.0.0.1", help="the switch's terminal listener (default 127.0.0.1)"
    )
    run.add_argument("--port", type=int, default=8583, help="its port (default 8583)")
    run.add_argument(
        "--terminals", type=int, default=8, metavar="N", help="simulated kiosks (default 8)"
    )
    run.add_argument(
        "--duration", type=float, default=10.0, metavar="S", help="seconds to run (default 10)"
    )
    run.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="stop after N sessions (with --duration: first of both)",
    )
    run.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="open loop: R sessions/s in all (default: closed loop)",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="K",
        help="seed for the population and the run (default 1)",
    )
    run.add_argument(
        "--mix",
        default=",".join(f"{k}={v}" for k, v in load.DEFAULT_MIX.items()),
        help=(
            f"session weights, e.g. withdrawal=5,balance=3; sessions: {', '.join(load.SESSIONS)} "
            f"(default: %(default)s)"
        ),
    )
    run.add_argument(
        "--faults",
        default="",
        help=(
            "chance per session of each fault, e.g. drop=0.01,garbage=0.005; faults: "
            + ", ".join(load.ALL_FAULTS)
            + " (drop: hang up mid-request; no_read: stop reading; garbage: an unreadable frame;"
            " slow: dribble the request out; the kiosk then reconnects and reverses what was"
            " left unanswered. With --cash: jam, per dispense, pays part of the notes and"
            " reverses the rest; reject, per note, diverts it to the reject bin; miscount=1"
            " makes one kiosk report wrong counters, which the host must answer 95)"
            " (default: none)"
        ),
    )
    run.add_argument(
        "--cash",
        action="store_true",
        help=(
            "kiosks with cassettes: they dispense the notes of F121, count them, and at the end"
            " balance every business date with an 0500 (each must be answered 00)"
        ),
    )
    run.add_argument(
        "--customers",
        type=int,
        metavar="N",
        help="customers (default 4 per terminal)",
    )
    run.add_argument(
        "--cards",
        type=int,
        metavar="M",
        help=(
            "cards in all, 1 to 10 per customer (default one each); a customer's other cards"
            " draw on the same accounts and go to other kiosks, so that customer is served at"
            " several at once"
        ),
    )
    run.add_argument(
        "--timeout-ms",
        type=int,
        default=5_000,
        help="a response slower than this is reversed (default 5000)",
    )
    run.add_argument(
        "--dsn",
        default=os.environ.get("LEDGER_DSN"),
        help="ledger owner-role DSN for provisioning and the end-state check (default $LEDGER_DSN)",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".var/pg"),
        help="without --dsn: the private cluster (default .var/pg)",
    )
    run.add_argument(
        "--no-verify", action="store_true", help="skip the end-state check against the ledger"
    )
    run.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help=(
            "also write the report: .json (with the per-second series), .md, or text; and beside"
            " it FILE's name with .png, a chart of latency and answers per second"
        ),
    )
    return parser


@contextlib.contextmanager
def owner_dsn(args: argparse.Namespace) -> Iterator[str]:
    if args.dsn:
        yield args.dsn
        return
    with running_cluster(args.data_dir) as info:
        yield info.owner_dsn


def show_progress(report: Report, elapsed_s: float) -> None:
    # The last whole second, not the run so far: a stall shows at once instead of being
    # averaged away.
    last = report.series.figures(int(elapsed_s) - 1)
    p99 = "-" if last.latency_p99_ms is None else f"{last.latency_p99_ms:.1f} ms"
    errors = sum(report.errors.values()) + report.timeouts
    print(
        (
            f"\r{elapsed_s:6.1f}s {report.answered:8d} answered, last second {last.answered:7d}"
            f" p99 {p99:>10}  errors {errors}"
        ),
        end="",
        file=sys.stderr,
        flush=True,
    )


def _customers(args: argparse.Namespace) -> int:
    customers: int = 4 * args.terminals if args.customers is None else args.customers
    return customers


def _population_error(args: argparse.Namespace) -> str | None:
    customers = _customers(args)
    if not 1 <= customers <= CUSTOMERS_MAX:
        return f"--customers must be 1 to {CUSTOMERS_MAX}, not {customers}"
    cards = args.cards
    if cards is not None and not customers <= cards <= CARDS_PER_CUSTOMER_MAX * customers:
        return (
            f"--cards must be {customers} to {CARDS_PER_CUSTOMER_MAX * customers}"
            f" for {customers} customers (1 to {CARDS_PER_CUSTOMER_MAX} each), not {cards}"
        )
    if max(customers, cards or 0) < args.terminals:
        return f"--terminals {args.terminals} needs at least as many cards"
    return None


class SwitchUnreachable(Exception):
    """Nothing accepts connections at the switch's address."""


async def _require_switch(host: str, port: int) -> None:
    """Checked before provisioning anything, so a typo in --port costs nothing."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise SwitchUnreachable(f"no switch at {host}:{port}: {exc.strerror or exc}") from None
    writer.close()


async def run_load(args: argparse.Namespace, dsn: str) -> Report:
    await _require_switch(args.host, args.port)
    population = build(args.seed, _customers(args), args.terminals, args.cards, cash=args.cash)
    await provision(dsn, population)
    plan = load.Plan(
        terminals=args.terminals,
        seed=args.seed,
        mix=load.parse_mix(args.mix),
        duration_s=args.duration,
        count=args.count,
        rate_per_s=args.rate,
        timeout_ms=args.timeout_ms,
        faults=load.parse_faults(args.faults),
        balance=args.cash,
    )

    view = None if args.no_verify else LedgerView(dsn)
    return await load.run(
        plan, population, args.host, args.port, ledger=view, progress=show_progress
    )


def run_soak(args: argparse.Namespace) -> int:
    started = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: decoder fuzz, {args.fuzz_frames:,} frames ...", file=sys.stderr, flush=True)
    rows = [soak.decoder_fuzz(args.fuzz_frames, args.seed)]
    print(f"soak: {args.kills} switch SIGKILLs under load ...", file=sys.stderr, flush=True)
    with soak.private_ledger() as (cluster, dsns):
        crashes = soak.crash_safety(dsns, work_dir, kills=args.kills, seed=args.seed)
        rows.append(asyncio.run(crashes))
        print(
            f"soak: {args.worker_kills} of two switch workers SIGKILLed under load ...",
            file=sys.stderr,
            flush=True,
        )
        worker_crashes = soak.worker_crashes(
            dsns, work_dir, kills=args.worker_kills, seed=args.seed
        )
        rows.append(asyncio.run(worker_crashes))
        print(
            f"soak: {args.outages} PostgreSQL outages under load ...", file=sys.stderr, flush=True
        )
        outages = soak.database_outages(
            cluster, dsns, work_dir, outages=args.outages, seed=args.seed
        )
        rows.append(asyncio.run(outages))
        print("soak: hostile clients ...", file=sys.stderr, flush=True)
        hostile = soak.hostile_clients(dsns, work_dir, frames=args.tcp_frames, seed=args.seed)
        rows.append(asyncio.run(hostile))
    rows += ha_soak_rows(args, work_dir)
    print(soak.table(rows))
    print(f"\n{time.monotonic() - started:.0f} s; switch logs in {work_dir}")
    return 0 if all(row.ok for row in rows) else 1


def ha_soak_rows(args: argparse.Namespace, work_dir: Path) -> list[soak.SoakRow]:
    """On a pg_auto_failover formation: a full backup, the primary's postmaster killed under load
    --failovers times, then a restore to a point after the failovers (the archive spans them)."""
    print(
        f"soak: {args.failovers} failovers under load, then backup and restore ...",
        file=sys.stderr,
        flush=True,
    )
    missing = soak.missing_ha_tools()
    if missing is not None:
        return [soak.SoakRow("failover, backup and restore", 0, 0, 0, 0, 0, 1, missing)]
    with soak.ha_ledger() as (cluster, dsns):
        repo = cluster.root / "pgbackrest"
        backup.backup_formation(cluster.root, repo, "full", timeout_ms=soak.RESTORE_TIMEOUT_MS)
        failovers = soak.failovers(
            cluster, dsns, work_dir, failovers=args.failovers, seed=args.seed
        )
        restored = soak.backup_and_restore(cluster, dsns, work_dir, repo=repo, seed=args.seed)
        return [asyncio.run(failovers), asyncio.run(restored)]


def write_report(report: Report, path: Path) -> Summary:
    """The report at `path` (.json, .md, or text) and its chart beside it, as the same name with
    .png; what was written, for the terminal."""
    assert path.suffix != ".png", "the chart is the .png"
    summary = report.summary()
    summary = dataclasses.replace(summary, chart=chart.draw(summary, path.with_suffix(".png")))
    render = {".json": Summary.json, ".md": Summary.markdown}.get(path.suffix, Summary.text)
    path.write_text(render(summary) + "\n")
    return summary


def publish(report: Report, path: Path | None) -> None:
    print(file=sys.stderr)  # ends the progress line
    summary = report.summary() if path is None else write_report(report, path)
    print(summary.text())


def explain_decline(exc: load.SignOnDeclined) -> str:
    try:
        meaning = ResponseCode(exc.code).name.lower().replace("_", " ")
    except ValueError:
        meaning = "not a response code the switch sends"
    hint = DECLINE_HINTS.get(exc.code, "see the switch's log")
    return f"{exc} ({meaning}): {hint}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return run_demo()
    if args.command == "serve":
        return serve_demo()
    if args.command == "soak":
        return run_soak(args)
    try:
        load.parse_mix(args.mix)
        faults = load.parse_faults(args.faults)
    except load.MixError as exc:
        print(f"kiosk_sim: {exc}", file=sys.stderr)
        return 2
    if not args.cash and any(faults[name] for name in (*load.DISPENSER_FAULTS, load.MISCOUNT)):
        print(
            "kiosk_sim: jam, reject and miscount are faults of kiosks with --cash", file=sys.stderr
        )
        return 2
    if args.cash and load.has_network_faults(faults):
        print(
            "kiosk_sim: --cash kiosks balance their day, which a request whose answer was lost"
            " would unbalance (the host counts it, the kiosk cannot): leave out "
            + ", ".join(load.FAULTS),
            file=sys.stderr,
        )
        return 2
    population_error = _population_error(args)
    if population_error is not None:
        print(f"kiosk_sim: {population_error}", file=sys.stderr)
        return 2
    if args.rate and load.has_network_faults(faults):
        print("kiosk_sim: --faults run in closed loop (leave out --rate)", file=sys.stderr)
        return 2
    if args.report is not None and args.report.suffix == ".png":
        print("kiosk_sim: --report takes .json, .md or text (the chart is .png)", file=sys.stderr)
        return 2
    try:
        with owner_dsn(args) as dsn:
            report = asyncio.run(run_load(args, dsn))
    except SchemaTooOld as exc:
        print(f"kiosk_sim: ledger: {exc}", file=sys.stderr)
        return 2
    except SwitchUnreachable as exc:
        print(f"kiosk_sim: {exc} (start one: python -m switch serve)", file=sys.stderr)
        return 2
    except load.SignOnDeclined as exc:
        print(f"kiosk_sim: {explain_decline(exc)}", file=sys.stderr)
        publish(exc.report, args.report)
        return 2
    publish(report, args.report)
    return 0 if not report.differences else 1


if __name__ == "__main__":
    sys.exit(main())

"""Break things on purpose and count what was lost: `make soak` (long) and the fast versions the
test suite runs. Each scenario gives one row: faults injected, requests, and the three numbers
that must be 0 — money lost, money moved twice, card data leaked — plus any other failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import asyncpg

from kiosk_sim import load
from kiosk_sim.client import SwitchConnectionClosed, TerminalClient, network_request
from kiosk_sim.demo import free_port
from kiosk_sim.population import LedgerView, Population, build, provision
from kiosk_sim.report import Report
from ledger import audit, backup
from ledger.errors import ProvisioningError
from ledger.ha import HaCluster
from ledger.migrations import migrate
from ledger.postgres import LocalCluster
from switch.iso8583 import DecodeError, Dialect, Message, decode, encode
from switch.iso8583.elements import OriginalData

STARTUP_TIMEOUT_S = 30.0
HELD_CONNECTIONS = 10_000
FUZZ_CONNECTIONS = 50


@dataclass(frozen=True, slots=True)
class SoakRow:
    scenario: str
    faults: int
    requests: int
    lost: int
    doubled: int
    leaked: int
    other_failures: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == self.doubled == self.leaked == self.other_failures == 0


def table(rows: list[SoakRow]) -> str:
    lines = [
        "| scenario | faults injected | requests | lost | doubled | leaked | other failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.scenario} | {r.faults} | {r.requests} | {r.lost} | {r.doubled} | {r.leaked} "
        f"| {r.other_failures}{' (' + r.note + ')' if r.note else ''} |"
        for r in rows
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LedgerDsns:
    owner: str  # provisioning and the end-state check
    switch: str  # what the switch connects as


class SwitchProcess:
    """`python -m switch serve` on a fixed port, killed and restarted at will, logging JSON;
    with `workers` above 1, a parent and its workers, whose workers can be killed one by one."""

    def __init__(
        self,
        dsns: LedgerDsns,
        port: int,
        log_path: Path,
        settings: Mapping[str, str] | None = None,
        *,
        workers: int = 1,
    ) -> None:
        """`settings`: more `SWITCH__TABLE__KEY` environment entries, over the ones set here."""
        self._dsns, self.port, self._log_path = dsns, port, log_path
        self._settings = dict(settings or {})
        self.workers = workers
        self._child: asyncio.subprocess.Process | None = None
        self._log_start = 0
        self.killed_workers: list[int] = []

    @property
    def pid(self) -> int:
        assert self._child is not None
        return self._child.pid

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.returncode is None

    async def start(self) -> None:
        env = {
            **os.environ,
            "SWITCH__LISTENER__MAX_CONNECTIONS": str(HELD_CONNECTIONS + 1_000),
            "SWITCH__LISTENER__PORT": str(self.port),
            "SWITCH__LEDGER__DSN": f'"{self._dsns.switch}"',
            "SWITCH__ADMIN__ENABLED": "false",
            "SWITCH__LOGGING__FORMAT": '"json"',
            **self._settings,
        }
        workers = ("--workers", str(self.workers)) if self.workers > 1 else ()
        with self._log_path.open("ab") as log_file:
            self._log_start = log_file.tell()
            child = self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "switch", "serve", *workers,
                stdout=log_file, stderr=log_file, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if child.returncode is not None:
                raise RuntimeError(
                    f"the switch exited with code {child.returncode} (log {self._log_path})"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                if self.workers == 1:
                    return
                await self.all_workers_ready(deadline)
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the switch did not come back")

    def events(self) -> list[dict[str, object]]:
        """The JSON lines logged since the last start (a line still being written is left out)."""
        with self._log_path.open("rb") as log_file:
            log_file.seek(self._log_start)
            lines = log_file.read().splitlines()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def ready_workers(self) -> set[int]:
        """The workers serving now, as their parent logged them."""
        ready: set[int] = set()
        for event in self.events():
            pid = event.get("pid")
            if event.get("event") == "worker_ready" and isinstance(pid, int):
                ready.add(pid)
            elif event.get("event") == "worker_exited":
                ready.discard(cast(int, pid))
        return ready

    async def all_workers_ready(self, deadline: float) -> set[int]:
        while time.monotonic() < deadline:
            ready = self.ready_workers()
            if len(ready) == self.workers:
                return ready
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the switch's workers were not all ready (log {self._log_path})")

    async def until_served(self, terminals: int) -> None:
        """Until `terminals` terminals have been answered (by any worker)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            answered = {
                event.get("terminal_id")
                for event in self.events()
                if event.get("event") == "message" and event.get("terminal_id")
            }
            if len(answered) >= terminals:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"fewer than {terminals} terminals served (log {self._log_path})")

    async def kill_worker(self, rng: random.Random) -> int:
        """Once every worker serves, SIGKILL one of them; its pid."""
        ready = await self.all_workers_ready(time.monotonic() + STARTUP_TIMEOUT_S)
        pid = rng.choice(sorted(ready))
        os.kill(pid, signal.SIGKILL)
        self.killed_workers.append(pid)
        return pid

    async def kill(self) -> None:
        assert self._child is not None
        self._child.send_signal(signal.SIGKILL)
        await self._child.wait()

    async def stop(self) -> int | None:
        """SIGTERM and its exit code (None: it was not running)."""
        if self._child is not None and self._child.returncode is None:
            self._child.terminate()
            return await asyncio.wait_for(self._child.wait(), 30)
        return None


def served_by(events: Sequence[Mapping[str, object]]) -> dict[int, set[str]]:
    """The terminals each worker answered a message for (its pid on every line it logs)."""
    served: dict[int, set[str]] = {}
    for event in events:
        pid, terminal_id = event.get("pid"), event.get("terminal_id")
        if event.get("event") == "message" and isinstance(pid, int) and terminal_id:
            served.setdefault(pid, set()).add(str(terminal_id))
    return served


def stranded(events: Sequence[Mapping[str, object]], killed: Sequence[int]) -> set[str]:
    """Terminals a killed worker served that no other worker answered after it was killed."""
    left: set[str] = set()
    for pid in killed:
        last = max((i for i, event in enumerate(events) if event.get("pid") == pid), default=-1)
        later = served_by(events[last + 1 :])
        elsewhere = set().union(*(ids for other, ids in later.items() if other != pid))
        left |= served_by(events[: last + 1]).get(pid, set()) - elsewhere
    return left


async def crash_safety(dsns: LedgerDsns, work_dir: Path, *, kills: int, seed: int) -> SoakRow:
    """SIGKILL the switch at random moments under load, restarting it each time. Afterwards every
    approved withdrawal is in the ledger exactly once, every unanswered one is absent or reversed
    (the kiosks reverse what went unanswered), the audit chains verify and the books balance."""

    async def kill_and_restart(switch: SwitchProcess) -> None:
        await switch.kill()
        await switch.start()

    return await _under_faults(
        "switch SIGKILLed under load, restarted",
        dsns,
        work_dir,
        faults=kills,
        seed=seed,
        fault=kill_and_restart,
    )


async def worker_crashes(dsns: LedgerDsns, work_dir: Path, *, kills: int, seed: int) -> SoakRow:
    """`serve --workers 2`: SIGKILL one of the two workers at random moments under load. The
    parent restarts it; its kiosks reconnect, to the other worker or the new one, and carry on
    (keys and PIN tries are in the ledger); nothing is lost or doubled."""
    rng = random.Random(seed)

    async def kill_one(switch: SwitchProcess) -> None:
        await switch.kill_worker(rng)

    return await _under_faults(
        "one of two switch workers killed under load",
        dsns,
        work_dir,
        faults=kills,
        seed=seed + 2,
        fault=kill_one,
        workers=2,
        recovery_s=FAULT_RECOVERY_S + WORKER_RESTART_S,
    )


async def database_outages(
    cluster: LocalCluster, dsns: LedgerDsns, work_dir: Path, *, outages: int, seed: int
) -> SoakRow:
    """Stop PostgreSQL under load (connections cut mid-transaction) and start it again: the
    switch answers 91 while it is down, reconnects by itself, and nothing is half-posted."""
    rng = random.Random(seed)

    async def outage(_switch: SwitchProcess) -> None:
        await asyncio.to_thread(cluster.restart, down_ms=rng.randrange(300, 1_500))

    return await _under_faults(
        "PostgreSQL stopped and restarted under load",
        dsns,
        work_dir,
        faults=outages,
        seed=seed + 1,
        fault=outage,
    )


async def failovers(
    cluster: HaCluster, dsns: LedgerDsns, work_dir: Path, *, failovers: int, seed: int
) -> SoakRow:
    """SIGKILL the primary's node under load, each time once the formation has settled again
    (the old primary rejoined as a synchronous standby): pg_auto_failover promotes the standby,
    the switch's pool finds it through the multi-host DSN, requests get 91 meanwhile, and
    nothing acknowledged is lost."""
    without_primary_s: list[float] = []

    async def fail_over(_switch: SwitchProcess) -> None:
        await asyncio.to_thread(cluster.wait_settled, timeout_ms=HA_SETTLE_MS_MAX)
        without_primary_s.append(await asyncio.to_thread(_kill_primary, cluster))

    def describe(report: Report) -> str:
        gaps = ", ".join(f"{gap_s:.1f}" for gap_s in without_primary_s)
        unavailable = report.response_codes["91"]
        # Kiosks in closed loop start their next session at once after a 91, so the count
        # grows with the load, not with the customers turned away: per second says more.
        per_s = unavailable / max(sum(without_primary_s), 0.1)
        return f"no primary for {gaps} s; {unavailable} answered 91 ({per_s:,.0f}/s without one)"

    return await _under_faults(
        "the primary killed under load (pg_autoctl and postmaster), automatic failover",
        dsns,
        work_dir,
        faults=failovers,
        seed=seed + 3,
        fault=fail_over,
        recovery_s=HA_RECOVERY_S,
        describe=describe,
    )


def missing_ha_tools() -> str | None:
    """Why the failover and backup rows cannot run here, if they cannot."""
    missing = [name for name in ("pg_autoctl", "pgbackrest") if shutil.which(name) is None]
    if not missing:
        return None
    return (
        f"not run: {' and '.join(missing)} not found (Debian: apt-get install"
        " postgresql-15-auto-failover pg-auto-failover-cli pgbackrest)"
    )


def _kill_primary(cluster: HaCluster) -> float:
    """SIGKILL the primary's node, its pg_autoctl and its postmaster, as when its host is lost;
    the seconds until the monitor names another node primary (taking writes, alone at first).
    Then the node comes back and rejoins as the new secondary. The postmaster alone would be
    restarted in place by its pg_autoctl, often before the monitor noticed: no failover."""
    old = cluster.primary().name
    postmaster_pid = int((cluster.data_dir(old) / "postmaster.pid").read_text().split()[0])
    os.killpg(cluster.supervisor_pid(old), signal.SIGKILL)
    os.kill(postmaster_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    deadline = killed_at + HA_SETTLE_MS_MAX / 1000
    while not any(node.name != old and node.reported_state in WRITABLE for node in cluster.nodes()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no node was promoted (logs in {cluster.root})")
        time.sleep(0.1)
    without_primary_s = time.monotonic() - killed_at
    cluster.run_node(old)
    return without_primary_s


async def backup_and_restore(
    cluster: HaCluster, dsns: LedgerDsns, work_dir: Path, *, repo: Path, seed: int
) -> SoakRow:
    """After a full backup of the formation (taken by the caller, before its failovers): load,
    then a moment T, more load, an incremental backup, and a restore to T into a new directory.
    The copy must hold exactly the transactions committed before T (lost: missing ones;
    doubled: later ones), its audit chains must verify, and both loads must end balanced."""
    population = build(seed=seed, customers=16, terminals=BACKUP_TERMINALS)
    await provision(dsns.owner, population)
    log_path = work_dir / f"switch-backup-{seed}.log"
    switch = SwitchProcess(dsns, free_port(), log_path)
    await switch.start()

    async def burst(burst_seed: int) -> Report:
        plan = load.Plan(
            terminals=BACKUP_TERMINALS, seed=burst_seed, duration_s=BACKUP_BURST_S,
            mix={"withdrawal": 4, "reversal": 1, "balance": 1}, timeout_ms=5_000,
        )  # fmt: skip
        view = LedgerView(dsns.owner)
        return await load.run(plan, population, "127.0.0.1", switch.port, ledger=view)

    try:
        reports = [await burst(seed)]
        # The first burst has ended (every request answered, or reversed by its kiosk): what
        # the ledger holds now was committed before T.
        before = await _transaction_ids(dsns.owner)
        restore_to = datetime.now(UTC)
        await asyncio.sleep(1.1)  # pgBackRest's targets are whole seconds: the next is past T
        reports.append(await burst(seed + 1))
    finally:
        await switch.stop()
    # The incremental backup switches the WAL segment: the commits after T are archived, which
    # recovery needs to see to stop at T.
    await asyncio.to_thread(
        backup.backup_formation, cluster.root, repo, "incr", timeout_ms=RESTORE_TIMEOUT_MS
    )
    restored = await asyncio.to_thread(
        backup.restore, repo, cluster.root / f"restored-{seed}", restore_to,
        timeout_ms=RESTORE_TIMEOUT_MS,
    )  # fmt: skip
    try:
        assert restored.info is not None
        present = await _transaction_ids(restored.info.owner_dsn)
        verified = await _verify(restored.info.owner_dsn)
    finally:
        await asyncio.to_thread(restored.stop, timeout_ms=60_000)
        shutil.rmtree(restored.data_dir, ignore_errors=True)
    discrepancies = [v for r in reports for v in (r.discrepancies or {}).values()]
    unresolved = sum(len(r.differences or []) - len(r.discrepancies or {}) for r in reports)
    notes = [f"restored to {restore_to:%H:%M:%S.%f}: {len(present)} transactions"]
    if not verified.ok:
        notes.append(f"audit verify: {(verified.damage or verified.books)[0]}")
    return SoakRow(
        "backup, restore to a point in time, audit verify",
        1,
        sum(r.answered for r in reports),
        lost=len(before - present) + sum(1 for v in discrepancies if v > 0),
        doubled=len(present - before) + sum(1 for v in discrepancies if v < 0),
        leaked=_pans_in(log_path.read_text(errors="replace"), population),
        other_failures=unresolved + (0 if verified.ok else 1),
        note="; ".join(notes),
    )


async def _transaction_ids(owner_dsn: str) -> set[int]:
    conn = await asyncpg.connect(owner_dsn)
    try:
        rows = await conn.fetch("SELECT transaction_id FROM ledger.transactions")
    finally:
        await conn.close()
    return {row["transaction_id"] for row in rows}


Fault = Callable[[SwitchProcess], Awaitable[None]]
# The kiosks of the runs under faults.
FAULT_TERMINALS = 8
# A kiosk's request timeout (2 s) and a switch's restart (about 1 s).
FAULT_RECOVERY_S = 3.0
# A worker is killed only once both serve: the killed one's replacement must have started
# (a few seconds on a busy 2-core machine) before the next kill.
WORKER_RESTART_S = 5.0
# A failover (3-12 s here) and the old primary's rejoining (pg_rewind, catching up) before the
# next kill: a formation that has not settled promotes nothing.
HA_RECOVERY_S = 25.0
HA_SETTLE_MS_MAX = 90_000
WRITABLE = ("primary", "wait_primary")  # wait_primary: taking writes without a standby yet
BACKUP_TERMINALS = 4
BACKUP_BURST_S = 3.0
RESTORE_TIMEOUT_MS = 180_000


async def _under_faults(
    scenario: str,
    dsns: LedgerDsns,
    work_dir: Path,
    *,
    faults: int,
    seed: int,
    fault: Fault,
    workers: int = 1,
    recovery_s: float = FAULT_RECOVERY_S,
    describe: Callable[[Report], str] | None = None,
) -> SoakRow:
    """Kiosks run withdrawals, partial dispenses and reversals while `fault` strikes `faults`
    times at random moments; then the model, the audit chains and the logs are checked. With
    several workers, each killed worker's kiosks must have been served again by another.
    `describe` adds what the scenario measured to the row's note."""
    population = build(seed=seed, customers=32, terminals=FAULT_TERMINALS)
    await provision(dsns.owner, population)
    log_path = work_dir / f"switch-{seed}.log"
    switch = SwitchProcess(dsns, free_port(), log_path, workers=workers)
    await switch.start()
    rng = random.Random(seed)
    pauses_s = [rng.uniform(0.4, 1.2) for _ in range(faults)]
    plan = load.Plan(
        terminals=FAULT_TERMINALS,
        seed=seed,
        mix={"withdrawal": 4, "partial": 1, "reversal": 1, "balance": 1},
        # After each fault the kiosks wait out their timeout and reconnect: the run outlasts that,
        # so the load has resumed before it ends and the row counts load, not the outage.
        duration_s=sum(pauses_s) + faults * recovery_s + 2.0,
        timeout_ms=2_000,
    )

    async def strike() -> None:
        # The simulator gives up on a kiosk whose first sign-on is cut off: the faults begin
        # once every kiosk has been answered (on a busy machine that takes a while).
        await switch.until_served(FAULT_TERMINALS)
        for pause_s in pauses_s:
            await asyncio.sleep(pause_s)
            await fault(switch)

    striking = asyncio.create_task(strike())
    try:
        report = await load.run(
            plan, population, "127.0.0.1", switch.port, ledger=LedgerView(dsns.owner)
        )
        await striking
    finally:
        # A run that failed must not leave a fault behind to start a switch after this stop.
        striking.cancel()
        await asyncio.gather(striking, return_exceptions=True)
        exit_code = await switch.stop()
    verified = await _verify(dsns.owner)
    discrepancies = report.discrepancies or {}
    unresolved = len(report.differences or []) - len(discrepancies)
    notes = [] if describe is None else [describe(report)]
    if not verified.ok:
        notes.append(f"audit verify: {(verified.damage or verified.books)[0]}")
    left = stranded(switch.events(), switch.killed_workers)
    if left:
        notes.append(f"never served again after their worker was killed: {sorted(left)}")
    if workers > 1 and exit_code != 0:
        notes.append(f"the parent exited {exit_code} on SIGTERM")
    return SoakRow(
        scenario,
        faults,
        report.answered,
        lost=sum(1 for v in discrepancies.values() if v > 0),
        doubled=sum(1 for v in discrepancies.values() if v < 0),
        leaked=_pans_in(log_path.read_text(errors="replace"), population),
        other_failures=unresolved
        + (0 if verified.ok else 1)
        + len(left)
        + (workers > 1 and exit_code != 0),
        note="; ".join(notes),
    )


async def hostile_clients(dsns: LedgerDsns, work_dir: Path, *, frames: int, seed: int) -> SoakRow:
    """10,000 held connections, then fuzzed and garbage frames from many more, while one
    terminal keeps echoing: the switch stays up, serves it, and its memory stays bounded."""
    switch = SwitchProcess(dsns, free_port(), work_dir / f"switch-hostile-{seed}.log")
    await switch.start()
    rss_start = _rss_mb(switch.pid)
    held: list[asyncio.StreamWriter] = []
    missed = 0
    try:
        for _ in range(0, HELD_CONNECTIONS, 500):
            opened = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", switch.port) for _ in range(500))
            )
            held += [writer for _reader, writer in opened]
        rss_held = _rss_mb(switch.pid)
        bystander = await TerminalClient.connect("127.0.0.1", switch.port)
        rng = random.Random(seed)
        per_connection = max(1, frames // FUZZ_CONNECTIONS)
        fuzzing = asyncio.gather(
            *(
                fuzz_connection(switch.port, random.Random(rng.random()), per_connection)
                for _ in range(FUZZ_CONNECTIONS)
            )
        )
        echoes = 0
        while not fuzzing.done():
            echo = network_request("301", stan=f"{echoes % 999_999 + 1:06d}", now=datetime.now(UTC))
            try:
                missed += (await bystander.request(echo, timeout_ms=5_000)).response_code != "00"
            except (TimeoutError, SwitchConnectionClosed):
                missed += 1
            echoes += 1
            await asyncio.sleep(0.01)
        await fuzzing
        await bystander.close()
        rss_peak = _rss_mb(switch.pid)
        alive = switch.alive
    finally:
        for writer in held:
            writer.close()
        await switch.stop()
    note = (
        f"RSS {rss_start:.0f} MB, {rss_held:.0f} MB with {len(held)} held,"
        f" {rss_peak:.0f} MB after fuzzing"
    )
    return SoakRow(
        "10,000 held connections + fuzzed frames, a bystander echoing",
        len(held) + per_connection * FUZZ_CONNECTIONS,
        echoes,
        0,
        0,
        0,
        missed + (0 if alive else 1),
        note,
    )


async def fuzz_connection(port: int, rng: random.Random, frames: int) -> None:
    """Send `frames` hostile writes: mostly mutated frames behind a valid length header, one in
    ten raw garbage; when the switch cuts the connection off, open another."""
    corpus = [wire for wire, dialect in decoder_corpus() if dialect.length_header == "2b"]
    sent = 0
    while sent < frames:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            while sent < frames and not reader.at_eof():
                if rng.random() < 0.1:
                    data = rng.randbytes(rng.randrange(1, 40))  # not even a length header
                else:
                    payload = mutate(rng.choice(corpus), rng)
                    data = struct.pack(">H", len(payload)) + payload
                writer.write(data)
                await writer.drain()
                sent += 1
        except OSError:
            pass  # the switch closed this connection: open another
        finally:
            writer.close()


def rss_bytes(pid: int) -> int:
    """A running process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _rss_mb(pid: int) -> float:
    return rss_bytes(pid) / 2**20


def _pans_in(text: str, population: Population) -> int:
    return sum(text.count(card.pan) + text.count(card.chip.pan) for card in population.cards)


async def _verify(owner_dsn: str) -> audit.VerifyReport:
    conn = await asyncpg.connect(owner_dsn)
    try:
        return await audit.verify(conn, timeout_ms=300_000)
    finally:
        await conn.close()


def decoder_corpus() -> list[tuple[bytes, Dialect]]:
    withdrawal = Message(
        "0200",
        {2: "4761739001010119", 3: "012000", 4: "000000002000", 7: "1123101500", 11: "000042",
         41: "KIOSK001", 49: "978", 52: "0123456789ABCDEF", 53: "FFFF9876543210E00001",
         64: "1122334455667788"},
    )  # fmt: skip
    reversal = withdrawal.replace(
        {90: OriginalData("0200", "000041", "1123101400").encode(), 128: "1122334455667788"},
        drop=[52, 53, 64],
    )
    echo = Message("0800", {7: "1123101500", 11: "000001", 70: "301"})
    dialects = [Dialect(), Dialect(bitmap="hex", binary_fields="hex"), Dialect(tpdu=True)]
    return [(encode(m, d), d) for m in (withdrawal, reversal, echo) for d in dialects]


def mutate(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        kind = rng.random()
        if kind < 0.4 and at < len(data):
            data[at] = rng.randrange(256)
        elif kind < 0.6:
            data.insert(at, rng.randrange(256))
        elif kind < 0.8 and at < len(data):
            del data[at]
        else:
            del data[at:]
    return bytes(data)


def decoder_fuzz(frames: int, seed: int) -> SoakRow:
    """Random and mutated frames: each decodes or raises DecodeError, nothing else, ever."""
    rng = random.Random(seed)
    corpus = decoder_corpus()
    crashes: collections.Counter[str] = collections.Counter()
    for _ in range(frames):
        frame, dialect = rng.choice(corpus)
        wire = rng.randbytes(rng.randrange(64)) if rng.random() < 0.1 else mutate(frame, rng)
        try:
            decode(wire, dialect)
        except DecodeError:
            pass
        except Exception as exc:  # the property under test: nothing but DecodeError escapes
            crashes[type(exc).__name__] += 1
    note = ", ".join(f"{name} ×{n}" for name, n in crashes.items())
    return SoakRow(
        "decoder fuzz (random and mutated frames)",
        frames,
        frames,
        0,
        0,
        0,
        sum(crashes.values()),
        note,
    )


@contextlib.contextmanager
def private_ledger() -> Iterator[tuple[LocalCluster, LedgerDsns]]:
    """A fresh private cluster for a soak run, migrated, removed afterwards."""
    # Its own top-level temporary directory: the cluster may run as another OS user.
    data_dir = Path(tempfile.mkdtemp(prefix="soak-pg-"))
    cluster = LocalCluster(data_dir)
    info = cluster.start(timeout_ms=120_000)
    try:
        asyncio.run(_migrate_at(info.owner_dsn))
        yield cluster, LedgerDsns(info.owner_dsn, info.switch_dsn)
    finally:
        cluster.stop(timeout_ms=60_000)
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def ha_ledger() -> Iterator[tuple[HaCluster, LedgerDsns]]:
    """A fresh pg_auto_failover formation (a monitor, a primary and a synchronous secondary),
    migrated, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="soak-ha-"))
    root.chmod(0o755)  # its servers run as the service user
    try:
        cluster = HaCluster(root)
        try:
            info = cluster.start(timeout_ms=180_000)
            asyncio.run(_migrate_at(info.owner_dsn))
            yield cluster, LedgerDsns(info.owner_dsn, info.switch_dsn)
        finally:
            with contextlib.suppress(ProvisioningError):
                cluster.stop(timeout_ms=120_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _migrate_at(owner_dsn: str) -> None:
    conn = await asyncpg.connect(owner_dsn)
    try:
        await migrate(conn, timeout_ms=120_000)
    finally:
        await conn.close()

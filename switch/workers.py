"""`python -m switch serve --workers N`: a parent process and N worker processes on one port.

Each worker is `python -m switch serve` as one process runs it, with its listener and its
operations app bound with SO_REUSEPORT, so the kernel spreads new connections over the workers.
A terminal's connection lives in one worker; its keys and PIN tries are in the ledger, so a
terminal that reconnects to another worker carries on.

The parent serves nothing itself. Before the first worker starts it:
- holds both ports, bound with SO_REUSEPORT and never listening (a bound socket gets no
  connections): port 0 becomes one port for every worker, and the port stays this service's
  while a worker restarts;
- starts the private PostgreSQL cluster when there is no `[ledger] dsn`, and hands the workers
  its DSNs: the parent owns the cluster, no worker starts or stops it;
- creates a private PROMETHEUS_MULTIPROC_DIR, so that a scrape answered by any worker sums
  every worker's metrics; it marks an exited worker dead there and removes the directory last.

It restarts a worker that exits (with a backoff that grows while workers keep exiting soon
after they start: `RestartPolicy`), and gives up on a crash loop: a worker slot whose workers
keep exiting before they are ready. A worker that exits before any worker was ready stops the
parent at once, with the worker's exit code, as a single process that cannot start does.
SIGTERM or SIGINT reaches the parent, which passes SIGTERM to every worker (each drains as a
single process does) and exits 0 when all have exited 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.multiprocess import mark_process_dead

from ledger.errors import ProvisioningError
from ledger.postgres import LocalCluster
from switch.app import (
    StartupError,
    cannot_listen,
    local_formation,
    report_cluster_left_running,
)
from switch.metrics import MULTIPROCESS_ENV
from switch.settings import ENV_PREFIX, Settings

log = structlog.get_logger("switch.workers")

READY = b"R"
# Beyond shutdown.grace_ms, what a draining worker may take to close its pools and exit.
STOP_MARGIN_MS = 15_000
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a worker that exited is started again, and when the parent gives up."""

    # The first restart's delay; it doubles with each worker of the slot that exited within
    # `stable_ms` of its start, up to `backoff_max_ms`.
    backoff_ms: int = 100
    backoff_max_ms: int = 15_000
    stable_ms: int = 30_000
    # Workers of one slot in a row that exited before they were ready: a crash loop.
    failed_starts_max: int = 8

    def __post_init__(self) -> None:
        assert 0 < self.backoff_ms <= self.backoff_max_ms
        assert self.stable_ms > 0
        assert self.failed_starts_max > 0


@dataclass(frozen=True, slots=True)
class SlotHistory:
    """What one worker slot's recent workers did: exits in a row soon after their start, and
    exits in a row before they were ready."""

    quick_exits: int = 0
    failed_starts: int = 0


@dataclass(frozen=True, slots=True)
class Exit:
    """A worker that exited: its return code (negative: the signal), how long it ran, and
    whether it had become ready."""

    returncode: int
    ran_ms: float
    was_ready: bool

    @property
    def stopped_cleanly(self) -> bool:
        """Drained and exited 0, or stopped while it was still starting (it served nothing)."""
        return self.returncode == 0 or (not self.was_ready and self.returncode == -signal.SIGTERM)

    @property
    def status(self) -> str:
        if self.returncode < 0:
            return f"signal {signal.Signals(-self.returncode).name}"
        return f"exit {self.returncode}"


# A slot asked to stop while it waited to restart its worker: stopped cleanly.
NOTHING_TO_DRAIN = Exit(0, 0.0, was_ready=False)


def after_exit(
    policy: RestartPolicy, history: SlotHistory, exited: Exit
) -> tuple[SlotHistory, int | None]:
    """The slot's history once its worker has exited, and the delay before its next worker
    starts; None: a crash loop, give up."""
    quick = exited.ran_ms < policy.stable_ms
    history = SlotHistory(
        quick_exits=history.quick_exits + 1 if quick else 0,
        failed_starts=0 if exited.was_ready else history.failed_starts + 1,
    )
    if history.failed_starts >= policy.failed_starts_max:
        return history, None
    doublings = min(max(history.quick_exits - 1, 0), 30)
    return history, min(policy.backoff_ms * 2**doublings, policy.backoff_max_ms)


@dataclass(frozen=True, slots=True)
class Worker:
    slot: int
    process: asyncio.subprocess.Process
    ready_fd: int
    started_s: float


class Supervisor:
    """Starts `count` workers from `argv` and `env`, restarts them, drains them on `stop`."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        count: int,
        grace_ms: int,
        metrics_dir: Path,
        policy: RestartPolicy = RestartPolicy(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: seconds, for how long each worker ran."""
        self._argv, self._env, self._count, self._clock = list(argv), dict(env), count, clock
        self._grace_ms, self._metrics_dir, self._policy = grace_ms, metrics_dir, policy
        self.stop = asyncio.Event()
        self._ever_ready = False
        # Set by the first reason to give up: 1 a crash loop, or the code of a worker that
        # exited before any worker was ready.
        self._exit_code: int | None = None

    async def run(self) -> int:
        """Until `stop` is set or a slot gives up; every worker has exited when this returns."""
        last = await asyncio.gather(*(self._run_slot(slot) for slot in range(self._count)))
        if self._exit_code is not None:
            return self._exit_code
        # Asked to stop: 0 when every worker drained and exited cleanly.
        return 0 if all(exited.stopped_cleanly for exited in last) else 1

    def _give_up(self, code: int) -> None:
        if self._exit_code is None:
            self._exit_code = code
        self.stop.set()

    async def _run_slot(self, slot: int) -> Exit:
        """Keep one worker running; how its last worker exited. Its restarts are bounded by
        the policy: at most one per `backoff_max_ms` once they come fast, and none after
        `failed_starts_max` failed starts in a row."""
        history = SlotHistory()
        while True:
            worker = await self._start(slot)
            exited = await self._watch(worker)
            with contextlib.suppress(FileNotFoundError):
                mark_process_dead(worker.process.pid, str(self._metrics_dir))
            if self.stop.is_set():
                log.info("worker_exited", slot=slot, pid=worker.process.pid, status=exited.status)
                return exited
            history, delay_ms = after_exit(self._policy, history, exited)
            self._log_exit(worker, exited, history, delay_ms)
            if not exited.was_ready and not self._ever_ready:
                # The service never came up: exit as a single process would have, with its
                # code (its reason is on stderr already).
                self._give_up(exited.returncode if exited.returncode > 0 else 1)
                return exited
            if delay_ms is None:
                self._give_up(1)
                return exited
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay_ms / 1000)
            if self.stop.is_set():
                return NOTHING_TO_DRAIN

    def _log_exit(
        self, worker: Worker, exited: Exit, history: SlotHistory, delay_ms: int | None
    ) -> None:
        fields = {
            "slot": worker.slot,
            "pid": worker.process.pid,
            "status": exited.status,
            "ran_ms": round(exited.ran_ms),
            "was_ready": exited.was_ready,
        }
        if delay_ms is None:
            log.error(
                "worker_crash_loop",
                **fields,
                failed_starts=history.failed_starts,
                action="stopping every worker: see the workers' own lines above for why",
            )
        else:
            log.warning("worker_exited", **fields, restart_in_ms=delay_ms)

    async def _start(self, slot: int) -> Worker:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                "--worker-of", str(os.getpid()), "--ready-fd", str(write_fd),
                env=self._env,
                pass_fds=(write_fd,),
                # Its own process group: a terminal's Ctrl-C reaches the parent only, which
                # passes it on, once.
                process_group=0,
            )  # fmt: skip
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        log.info("worker_started", slot=slot, pid=process.pid)
        return Worker(slot, process, read_fd, self._clock())

    async def _watch(self, worker: Worker) -> Exit:
        """Until the worker exits; on `stop`, SIGTERM it and wait for it to drain."""
        ready = asyncio.ensure_future(_readiness(worker.ready_fd))
        exited = asyncio.ensure_future(worker.process.wait())
        stopping = asyncio.ensure_future(self.stop.wait())
        was_ready = False
        try:
            pending: set[asyncio.Future[Any]] = {ready, exited, stopping}
            while pending and not exited.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if ready in done and ready.result():
                    was_ready = self._ever_ready = True
                    log.info("worker_ready", slot=worker.slot, pid=worker.process.pid)
                if stopping in done:
                    await self._drain(worker)
            returncode = await exited
        finally:
            for task in (ready, stopping):
                task.cancel()
            await asyncio.gather(ready, stopping, return_exceptions=True)
            os.close(worker.ready_fd)
        return Exit(returncode, 1000 * (self._clock() - worker.started_s), was_ready)

    async def _drain(self, worker: Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.process.wait(), (self._grace_ms + STOP_MARGIN_MS) / 1000)
        except TimeoutError:
            log.error("worker_killed", slot=worker.slot, pid=worker.process.pid,
                      reason="still running after shutdown.grace_ms and its margin")  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()


async def _readiness(fd: int) -> bool:
    """True when the worker writes READY on its pipe; False when it closes it (it exited)."""
    loop = asyncio.get_running_loop()
    said: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        if not said.done():
            said.set_result(os.read(fd, 1) == READY)

    loop.add_reader(fd, readable)
    try:
        return await said
    finally:
        loop.remove_reader(fd)


# The worker's side.


def announce_ready(fd: int) -> None:
    """Tell the parent this worker serves (once); the pipe closes with it."""
    os.write(fd, READY)
    os.close(fd)


def die_with_parent(parent_pid: int) -> None:
    """A worker whose parent is gone (killed, crashed) drains and exits: SIGTERM on its death."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise StartupError(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent_pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def as_worker(settings: Settings) -> Settings:
    """A worker's settings: its listeners share their ports with the other workers'."""
    return replace(
        settings,
        listener=replace(settings.listener, reuse_port=True),
        admin=replace(settings.admin, reuse_port=True),
    )


# The parent's side.


@contextlib.contextmanager
def held_port(table: str, host: str, port: int) -> Iterator[int]:
    """Bind `host:port` (its first address) with SO_REUSEPORT and never listen: the port the
    workers share (port 0: one the system picks), this service's until the block ends."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise cannot_listen(table, host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise cannot_listen(table, host, port, exc) from None
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def worker_argv(settings: Settings, config: Path | None, listener_port: int) -> list[str]:
    """The command a worker runs (the parent adds `--worker-of` and `--ready-fd`)."""
    argv = [sys.executable, "-m", "switch", "serve"]
    if config is not None:
        argv += ["--config", str(config)]
    return [*argv, "--host", settings.listener.host, "--port", str(listener_port)]


def worker_env(
    env: Mapping[str, str],
    *,
    admin_port: int,
    metrics_dir: Path,
    ledger_dsns: tuple[str, str] | None,
) -> dict[str, str]:
    """The parent's environment, with the shared admin port, the metrics directory and (when
    the parent runs the private cluster) its DSNs: the switch role's and the journal's."""
    overrides = {
        f"{ENV_PREFIX}ADMIN__PORT": str(admin_port),
        MULTIPROCESS_ENV: str(metrics_dir),
    }
    if ledger_dsns is not None:
        switch_dsn, journal_dsn = ledger_dsns
        overrides[f"{ENV_PREFIX}LEDGER__DSN"] = f'"{switch_dsn}"'
        overrides[f"{ENV_PREFIX}LEDGER__AUDIT_DSN"] = f'"{journal_dsn}"'
        overrides[f"{ENV_PREFIX}LEDGER__HA"] = "false"  # the parent started it: a dsn now
    return {**env, **overrides}


@contextlib.contextmanager
def owned_cluster(settings: Settings) -> Iterator[tuple[str, str] | None]:
    """With no `[ledger] dsn`: the private cluster, started unless it runs already, and its
    switch and owner DSNs; stopped at the end if started here and no other process uses it.
    With `ha = true`, the local formation's DSNs; it is left running."""
    if settings.ledger.ha and settings.ledger.dsn is None:
        formation = local_formation(settings).ledger
        assert formation.dsn is not None
        assert formation.audit_dsn is not None
        yield formation.dsn, formation.audit_dsn
        return
    if settings.ledger.dsn is not None:
        yield None
        return
    cluster = LocalCluster(settings.ledger.data_dir)
    try:
        info = cluster.start()
    except ProvisioningError as exc:
        raise StartupError(f"ledger: {exc}") from None
    try:
        # The journal as the workers of one process would read it: ledger.audit_dsn, else the
        # cluster's owner.
        yield info.switch_dsn, settings.ledger.audit_dsn or info.owner_dsn
    finally:
        report_cluster_left_running(settings, cluster.stop_unless_used())


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """A private, empty PROMETHEUS_MULTIPROC_DIR for one run of the workers, removed after."""
    path = Path(tempfile.mkdtemp(prefix="switch-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_workers(settings: Settings, config: Path | None) -> int:
    """The parent: hold the ports, own the cluster and the metrics directory, supervise."""
    admin = settings.admin
    with (
        held_port("listener", settings.listener.host, settings.listener.port) as port,
        held_port("admin", admin.host, admin.port)
        if admin.enabled
        else contextlib.nullcontext(admin.port) as admin_port,
        owned_cluster(settings) as ledger_dsns,
        metrics_directory() as metrics_dir,
    ):
        env = worker_env(
            os.environ, admin_port=admin_port, metrics_dir=metrics_dir, ledger_dsns=ledger_dsns
        )
        log.info(
            "workers_starting",
            workers=settings.workers,
            port=port,
            admin_port=admin_port,
            metrics_dir=str(metrics_dir),
        )
        argv = worker_argv(settings, config, port)
        return asyncio.run(_supervise(settings, argv, env, metrics_dir))


async def _supervise(
    settings: Settings, argv: list[str], env: dict[str, str], metrics_dir: Path
) -> int:
    supervisor = Supervisor(
        argv,
        env,
        count=settings.workers,
        grace_ms=settings.shutdown_grace_ms,
        metrics_dir=metrics_dir,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.stop.set)
    code = await supervisor.run()
    log.info("workers_stopped", exit_code=code)
    return code

"""Builds the running switch from settings and runs it until SIGTERM or SIGINT.

Start-up order: HSM, ledger (starting the private PostgreSQL cluster when no DSN is set), the
operations store (a pool of its own), the terminal listener, the operations side (activity
writer, alerting, notifications, journal check), the operations app. Shutdown runs in reverse,
each part closed only if it started, so the listener's disconnects are written before the
activity writer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import resource
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import structlog
from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from hsm.api import HSM
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.errors import HsmError
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole, Lmk, StoredKey, load_lmk
from hsm.local import LocalHSM
from hsm.tls import client_context
from ledger.errors import LedgerError, LedgerUnavailable, ProvisioningError, SchemaTooOld
from ledger.ha import HaCluster
from ledger.operations import OperationsStore, open_operations
from ledger.postgres import LocalCluster
from ledger.store import LedgerStore, open_store
from switch.admin import create_admin_app
from switch.auditor_api import JournalSettings
from switch.flows import RequestProcessor
from switch.metrics import multiprocess
from switch.monitor import Monitor
from switch.operations import (
    CertificateWatch,
    Operations,
    activity_recorder,
    certificate_watch,
    running_operations,
)
from switch.server import ListenError, SwitchServer
from switch.settings import ENV_PREFIX, Settings

log = structlog.get_logger("switch")
READY_PROBE_TIMEOUT_MS = 1_000
# The collector's youngest generation is collected when tracked objects allocated outnumber
# those freed by this many. At Python's 700, the objects of the requests in flight (dozens
# each) crossed it back and forth: under 256 kiosks, 2,000 collections per 20,000 withdrawals,
# 0.9 s of CPU (~40 us a withdrawal), most of it in second-generation passes over requests
# still in flight. At 20,000: 4 in a like run of 25,800 withdrawals, 0.035 s in all (each
# pause ~10 ms, against 180 second-generation pauses of ~3 ms before).
GC_YOUNG_THRESHOLD = 20_000


class StartupError(Exception):
    """The switch cannot start: says what is wrong and what to do."""


def raise_open_file_limit() -> None:
    """Each terminal is a socket: let the process use every descriptor the system allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cannot_listen(table: str, host: str, port: int, error: OSError) -> StartupError:
    """A listener that cannot bind, as one line naming the setting to change and where."""
    name = "port" if error.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
    key = f"{table}.{name}"
    places = [f"{key} in the config file", f"{ENV_PREFIX}{table.upper()}__{name.upper()}"]
    if table == "listener":
        places.append(f"--{name}")
    change = f"set another with {', '.join(places[:-1])} or {places[-1]}"
    if error.errno == errno.EADDRINUSE:
        return StartupError(f"{key}: {host}:{port} is already in use (another switch?); {change}")
    # A name that does not resolve has a negative errno (getaddrinfo's own codes).
    code = error.errno or 0
    reason = os.strerror(code).lower() if code > 0 else error.strerror or str(error)
    return StartupError(f"{key}: cannot listen on {host}:{port} ({reason}); {change}")


@contextlib.asynccontextmanager
async def open_hsm(settings: Settings) -> AsyncIterator[HSM]:
    production = settings.environment == "production"
    section = settings.hsm
    if section.backend == "local":
        try:
            lmk = load_lmk(lmk_file=section.lmk_file, production=production)
        except (HsmError, OSError) as exc:
            raise StartupError(f"HSM: {exc}") from None
        log.info("hsm_local", lmk_kcv=lmk.kcv, development_lmk=lmk.is_development)
        try:
            yield LocalHSM(lmk, production=production, pan_hash_key=_pan_hash_key(settings, lmk))
        except HsmError as exc:
            raise StartupError(f"HSM ({settings.source}: hsm.pan_hash_key): {exc}") from None
        return
    addresses = [
        (host, int(port)) for host, _, port in (a.rpartition(":") for a in section.addresses)
    ]
    tls = None
    if section.tls is not None:
        try:
            tls = client_context(
                ca_file=section.tls.ca_file,
                cert_file=section.tls.cert_file,
                key_file=section.tls.key_file,
            )
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(f"HSM TLS ({settings.source}: hsm.tls): {exc}") from None
    async with NetworkHSM(
        addresses, pool_size=section.pool_size, timeout_ms=section.timeout_ms, tls=tls
    ) as hsm:
        log.info("hsm_network", addresses=list(section.addresses), tls=tls is not None)
        yield hsm


def _pan_hash_key(settings: Settings, lmk: Lmk) -> StoredKey:
    """The local HSM's PAN-hash key (PHK): configured, or in development the development key
    (the ledger's development hashes and the development authorisation key follow from it)."""
    if settings.hsm.pan_hash_key is not None:
        return StoredKey.from_text(settings.hsm.pan_hash_key)
    if settings.environment == "production":
        raise StartupError(
            f"{settings.source}: hsm.pan_hash_key: a PHK key block under the LMK in production"
        )
    return lmk.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY)


async def require_same_authorisation_key(hsm: HSM, ledger: LedgerStore) -> None:
    """The ledger refuses every approval whose word its key does not verify: a switch whose HSM
    derives another key would decline everything, so it does not start."""
    theirs = await ledger.authorisation_check_value(timeout_ms=READY_PROBE_TIMEOUT_MS * 5)
    ours = await hsm.authorisation_check_value(timeout_ms=READY_PROBE_TIMEOUT_MS * 5)
    if theirs != ours:
        raise StartupError(
            f"the ledger's authorisation key (check value {theirs}) is not the HSM's ({ours}):"
            " install the HSM's with `python -m ledger authorisation-key install`"
        )


def local_formation(settings: Settings) -> Settings:
    """With `[ledger] ha = true`: the pg_auto_failover formation under ha_dir, created on first
    use and started unless it runs, and the settings pointing at it (its multi-host DSN, and
    its owner for the journal unless audit_dsn says otherwise). It outlives the switch: other
    processes may use it, and `python -m ledger cluster --ha --stop` stops it."""
    section = settings.ledger
    if not section.ha or section.dsn is not None:
        return settings
    try:
        cluster = HaCluster(section.ha_dir)
        info = cluster.start()
        primary = cluster.primary().name
    except ProvisioningError as exc:
        raise StartupError(f"ledger.ha: {exc}") from None
    log.info(
        "ha_formation",
        ha_dir=str(section.ha_dir),
        primary=primary,
        stop_with=f"python -m ledger cluster --ha --stop --dir {section.ha_dir}",
    )
    section = replace(section, dsn=info.switch_dsn, audit_dsn=section.audit_dsn or info.owner_dsn)
    return replace(settings, ledger=section)


def migrate_command(settings: Settings) -> str:
    """How to bring this switch's ledger up to date: migrations run as the schema owner."""
    if settings.ledger.ha:
        return f"python -m ledger cluster --ha --dir {settings.ledger.ha_dir}"
    if settings.ledger.dsn is not None:
        return "python -m ledger migrate --dsn <the owner role's DSN>"
    return f"python -m ledger migrate --data-dir {settings.ledger.data_dir}"


@contextlib.asynccontextmanager
async def open_ledger(settings: Settings) -> AsyncIterator[LedgerStore]:
    try:
        store = await open_store(settings.ledger)
    except SchemaTooOld as exc:
        raise StartupError(f"ledger: {exc.problem}: run `{migrate_command(settings)}`") from None
    except LedgerUnavailable as exc:
        raise StartupError(f"ledger: {exc}: check [ledger] dsn") from None
    except LedgerError as exc:
        raise StartupError(f"ledger: {exc}") from None
    try:
        yield store
    finally:
        report_cluster_left_running(settings, await store.close())


def report_cluster_left_running(settings: Settings, other_clients: int) -> None:
    """A private cluster this process started and did not stop, because `other_clients` still
    use it (none: nothing to say): it stays up until `ledger cluster --stop`."""
    if other_clients:
        log.info(
            "cluster_left_running",
            data_dir=str(settings.ledger.data_dir),
            other_clients=other_clients,
            stop_with=f"python -m ledger cluster --stop --data-dir {settings.ledger.data_dir}",
        )


@contextlib.asynccontextmanager
async def open_operations_store(settings: Settings) -> AsyncIterator[OperationsStore]:
    """After `open_ledger`: the same database as the switch role, on a pool of its own."""
    dsn = settings.ledger.dsn
    if dsn is None:  # the private cluster open_ledger started: found running, left running
        dsn = (await asyncio.to_thread(LocalCluster(settings.ledger.data_dir).start)).switch_dsn
    section = settings.operations
    store = await open_operations(
        dsn,
        pool_size=section.pool_size,
        connect_timeout_ms=section.timeout_ms,
        statement_timeout_ms=section.timeout_ms,
    )
    try:
        yield store
    finally:
        await store.close(timeout_ms=section.timeout_ms)


def watched_certificates(settings: Settings, monitor: Monitor) -> CertificateWatch | None:
    try:
        return certificate_watch(settings.listener.tls, monitor.fleet)
    except ValueError:
        tls = settings.listener.tls
        assert tls is not None
        raise StartupError(
            f"listener.tls.cert_file: {tls.cert_file} holds no PEM certificate"
        ) from None


def ledger_figures(ledger: LedgerStore) -> Mapping[str, float]:
    """Database calls and the requests they carried (their ratio is the mean batch size), the
    writes decided again because their customer changed meanwhile, and the time requests
    waited for a call and calls took (per request and per call, divided by those counts)."""
    figures = ledger.batch_figures()
    return {
        "ledger_read_calls_total": figures.read_calls,
        "ledger_reads_total": figures.reads,
        "ledger_write_calls_total": figures.write_calls,
        "ledger_writes_total": figures.writes,
        "ledger_writes_decided_again_total": figures.decided_again,
        "ledger_read_wait_seconds_total": figures.read_wait_s,
        "ledger_read_call_seconds_total": figures.read_call_s,
        "ledger_write_wait_seconds_total": figures.write_wait_s,
        "ledger_write_call_seconds_total": figures.write_call_s,
    }


async def readiness(hsm: HSM, ledger: LedgerStore) -> Mapping[str, bool]:
    checks = {"database": True, "hsm": True}
    try:
        await ledger.terminal_keys("", timeout_ms=READY_PROBE_TIMEOUT_MS)
    except LedgerUnavailable:
        checks["database"] = False
    if isinstance(hsm, NetworkHSM):
        try:
            await hsm.health(timeout_ms=READY_PROBE_TIMEOUT_MS)
        except HsmError:
            checks["hsm"] = False
    return checks


async def journal_dsn(settings: Settings) -> str | None:
    """Where the auditor API and the journal check read the journal: ledger.audit_dsn, else
    the private cluster's schema owner (as `python -m ledger audit` does), else nowhere."""
    if settings.ledger.audit_dsn is not None or settings.ledger.dsn is not None:
        return settings.ledger.audit_dsn
    # The ledger started the cluster already: this finds it running and only reads its port.
    try:
        info = await asyncio.to_thread(LocalCluster(settings.ledger.data_dir).start)
    except ProvisioningError as exc:
        raise StartupError(f"ledger: {exc}") from None
    return info.owner_dsn


@contextlib.asynccontextmanager
async def running_admin(
    settings: Settings,
    monitor: Monitor,
    server: SwitchServer,
    hsm: HSM,
    ledger: LedgerStore,
    *,
    operations: Operations,
) -> AsyncIterator[None]:
    if not settings.admin.enabled:
        yield
        return
    dsn = await journal_dsn(settings)
    journal = None if dsn is None else JournalSettings(dsn, settings.ledger.business_day_cutover)
    app = create_admin_app(
        settings.admin.keys,
        monitor=monitor,
        stats=server.stats,
        readiness=lambda: readiness(hsm, ledger),
        ledger_figures=lambda: {**ledger_figures(ledger), **operations.figures()},
        journal=journal,
        operations=operations,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.admin.host,
            settings.admin.port,
            reuse_port=settings.admin.reuse_port or None,
        )
        try:
            await site.start()
        except OSError as exc:
            raise cannot_listen("admin", settings.admin.host, settings.admin.port, exc) from None
        log.info(
            "admin_listening",
            host=settings.admin.host,
            port=runner.addresses[0][1],
            api_keys=len(settings.admin.keys),
            # Off with a ledger.dsn and no ledger.audit_dsn: its routes answer 503.
            auditor_api=journal is not None,
        )
        yield
    finally:
        await runner.cleanup()


async def start_listener(server: SwitchServer) -> None:
    try:
        await server.start()
    except ListenError as exc:
        raise cannot_listen("listener", exc.host, exc.port, exc.error) from None


async def serve(settings: Settings, *, ready: Callable[[], None] = lambda: None) -> None:
    """Run until SIGTERM or SIGINT. `ready` is called once terminals and the operations app
    are served (a worker of `--workers` tells its parent so)."""
    raise_open_file_limit()
    settings = await asyncio.to_thread(local_formation, settings)
    clock = partial(datetime.now, UTC)
    recorder = activity_recorder(settings.operations, time.time)
    monitor = Monitor(clock, recorder)
    async with (
        open_hsm(settings) as hsm,
        open_ledger(settings) as ledger,
        open_operations_store(settings) as operations_store,
    ):
        await require_same_authorisation_key(hsm, ledger)
        processor = RequestProcessor(
            hsm=hsm,
            ledger=ledger,
            settings=settings.pipeline,
            dialect=settings.listener.dialect,
            wall_clock=clock,
            count_error=monitor.metrics.count_error,
            time_step=monitor.metrics.observe_step,
            write_timeout_ms=settings.ledger.statement_timeout_ms + 1_000,
        )
        server = SwitchServer(settings.listener, processor, observer=monitor)
        async with (
            running_operations(
                settings.operations,
                settings.alerts,
                recorder=recorder,
                store=operations_store,
                probe=lambda: readiness(hsm, ledger),
                cutover=settings.ledger.business_day_cutover,
                audit_dsn=await journal_dsn(settings),
                clock=clock,
                certificates=watched_certificates(settings, monitor),
            ) as operations,
            _stop_on_signal() as stop,
        ):
            # Signals are handled from here on: a terminal served as soon as the listener opens
            # may be done, and its operator send SIGINT, before the admin app has started.
            await start_listener(server)
            try:
                async with running_admin(
                    settings, monitor, server, hsm, ledger, operations=operations
                ):
                    # What start-up built lives as long as the process: out of the collector's
                    # sight, a full collection walks only what requests made, and no longer
                    # pauses every request in flight for the whole heap (~55,000 objects,
                    # 15-20 ms).
                    gc.freeze()
                    gc.set_threshold(GC_YOUNG_THRESHOLD)
                    ready()
                    await stop.wait()
                    log.info("shutdown_requested", grace_ms=settings.shutdown_grace_ms)
            finally:
                await server.shutdown(settings.shutdown_grace_ms)
                if multiprocess():
                    # Its connection and in-flight gauges leave the sums the other processes
                    # serve.
                    mark_process_dead(os.getpid())


@contextlib.asynccontextmanager
async def _stop_on_signal() -> AsyncIterator[asyncio.Event]:
    """An event SIGTERM or SIGINT sets, for as long as the context lasts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

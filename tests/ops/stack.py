"""A whole switch with its operations side, for the alert, fleet and browser tests: the HSM
over its own TCP protocol and PostgreSQL each behind a proxy the test can cut, slow down or
blackhole, simulated kiosks, the operations app on loopback, and a local webhook receiver.

Several stacks can share one ledger (one switch process each), as several switch processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys
from hsm.engine import SoftHsm
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole
from hsm.server import HsmServer, ServerConfig
from kiosk_sim.client import TerminalClient
from kiosk_sim.epp import Epp
from kiosk_sim.terminal import Terminal
from ledger.activity import ProcessInfo
from ledger.operations import OperationsStore, open_operations
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, Role
from switch.admin import create_admin_app
from switch.app import readiness
from switch.monitor import Monitor
from switch.operations import (
    Operations,
    activity_recorder,
    certificate_watch,
    running_operations,
)
from switch.server import SwitchServer
from switch.settings import (
    AlertsSettings,
    OperationsSettings,
    TlsSettings,
    WebhookSection,
)
from tests.e2e.conftest import LMK, load_world, switch_processor
from tests.e2e.proxy import CuttableProxy
from tests.ledger.factory import World
from tests.ops.conftest import OpsDatabase
from tests.switch.conftest import LISTENER

# The operator's development key: the fleet page, alerts and reports are an operator's.
TOKEN = DEVELOPMENT_TOKENS[Role.OPERATOR]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_MINOR = 100_000

OPERATIONS = OperationsSettings(
    flush_interval_ms=100,
    traffic_flush_interval_ms=100,
    bucket_ms=200,
    events_queue_max=1_000,
    traffic_buckets_max=1_000,
    batch_max=100,
    # Three beats missed and a process is dead: generous, on two busy cores.
    beat_interval_ms=1_000,
    pool_size=2,
    timeout_ms=1_000,
    fleet_cache_ms=100,
)
ALERTS = AlertsSettings(
    evaluate_interval_ms=200,
    terminal_offline_after_ms=600,
    window_ms=2_000,
    baseline_ms=20_000,
    decline_ratio_min=0.5,
    decline_spike_factor=3.0,
    requests_min=5,
    unavailable_ratio_max=0.3,
    arqc_failure_ratio_max=0.3,
    latency_p99_slo_ms=300,
    dependency_for_ms=300,
    audit_interval_ms=86_400_000,
    audit_timeout_ms=60_000,
    webhook=WebhookSection(
        urls=(),
        timeout_ms=500,
        attempts_max=3,
        backoff_ms=50,
        backoff_max_ms=200,
        queue_max=100,
    ),
)


def now() -> datetime:
    return datetime.now(UTC)


class SlowProxy(CuttableProxy):
    """A CuttableProxy that can also hold every chunk for `delay_s` before passing it on."""

    delay_s = 0.0

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        delayed: asyncio.StreamReader = _Delayed(source, self)  # type: ignore[assignment]
        await super()._pipe(delayed, sink, both)


class _Delayed:
    def __init__(self, source: asyncio.StreamReader, proxy: SlowProxy) -> None:
        self._source = source
        self._proxy = proxy

    async def read(self, size: int) -> bytes:
        data = await self._source.read(size)
        if data and self._proxy.delay_s:
            await asyncio.sleep(self._proxy.delay_s)
        return data


@dataclass
class Receiver:
    """A local webhook receiver: keeps every JSON body it is sent. `mode`: "ok" (204),
    "error" (500) or "hang" (never answers)."""

    mode: str = "ok"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.mode == "hang":
            await asyncio.sleep(3_600)
        if self.mode == "error":
            return web.Response(status=500)
        self.bodies.append(await request.json())
        self._arrived.set()
        return web.Response(status=204)

    def matching(self, rule: str, state: str, subject: str | None = None) -> list[dict[str, Any]]:
        return [
            body
            for body in self.bodies
            if body["alert"]["rule"] == rule
            and body["state"] == state
            and (subject is None or body["alert"]["subject"] == subject)
        ]

    async def wait_for(
        self, rule: str, state: str, subject: str | None = None, *, timeout_s: float = 15.0
    ) -> dict[str, Any]:
        """The first notification of `rule` entering `state` (about `subject`)."""
        async with asyncio.timeout(timeout_s):
            while not (found := self.matching(rule, state, subject)):
                self._arrived.clear()
                await self._arrived.wait()
        return found[0]


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{secret}", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/s3cret"
    try:
        yield receiver
    finally:
        await runner.cleanup()


@dataclass
class OpsStack:
    db: OpsDatabase
    world: World
    owner: asyncpg.Connection
    server: SwitchServer
    store: LedgerStore
    operations: Operations
    hsm_proxy: SlowProxy
    db_proxy: SlowProxy
    admin: web.AppRunner
    admin_url: str
    # A terminal's clear TMK, as its EPP holds it.
    tmk: Callable[[str], bytes] = field(default=lambda _: b"")
    seed: int = 11
    _clients: list[TerminalClient] = field(default_factory=list)

    async def terminal(
        self, index: int = 0, *, keys: bool = True, tls: ssl.SSLContext | None = None
    ) -> Terminal:
        """A kiosk of the world, signed on (and through key change) over a new connection
        (over TLS with `tls`, the kiosk's client context)."""
        client = await TerminalClient.connect("127.0.0.1", self.server.port, tls=tls)
        self._clients.append(client)
        terminal = Terminal(
            self.world.terminals[index],
            Epp(self.tmk(self.world.terminals[index])),
            client,
            clock=now,
            rng=random.Random(self.seed + len(self._clients)),
        )
        assert (await terminal.sign_on()).approved
        if keys:
            assert (await terminal.change_keys()).approved
        return terminal

    async def stop_admin(self) -> None:
        """The operations app goes away, as when the switch stops."""
        await self.admin.cleanup()

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession(headers=AUTH) as http,
            http.get(self.admin_url + path) as reply,
        ):
            assert reply.status == 200, (path, reply.status, await reply.text())
            if reply.content_type == "application/json":
                return await reply.json()
            return await reply.text()

    async def alerts(self, **where: str) -> list[dict[str, Any]]:
        """The ledger's alerts, as the owner reads them."""
        rows = await self.owner.fetch("SELECT * FROM ledger.alerts ORDER BY alert_id")
        return [dict(row) for row in rows if all(row[key] == value for key, value in where.items())]

    async def close_clients(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients.clear()


@dataclass(frozen=True)
class Edges:
    """What a switch process talks to: the HSM and the ledger, each behind its proxy."""

    owner: asyncpg.Connection
    hsm: NetworkHSM
    hsm_proxy: SlowProxy
    db_proxy: SlowProxy
    store: LedgerStore
    operations_store: OperationsStore


async def _edges(stack: contextlib.AsyncExitStack, db: OpsDatabase) -> Edges:
    owner = await asyncpg.connect(db.owner_dsn)
    stack.push_async_callback(owner.close)
    # A development HSM: its PAN-hash key gives the ledger's development hashes and words.
    phk = LMK.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY)
    hsm_server = HsmServer(SoftHsm(LMK, pan_hash_key=phk), ServerConfig(host="127.0.0.1", port=0))
    await hsm_server.start()
    stack.push_async_callback(hsm_server.close)
    hsm_proxy = SlowProxy("127.0.0.1", hsm_server.port)
    db_proxy = SlowProxy("127.0.0.1", db.port)
    for proxy in (hsm_proxy, db_proxy):
        await proxy.start()
        stack.push_async_callback(proxy.close)
    hsm = NetworkHSM(
        [("127.0.0.1", hsm_proxy.port)], timeout_ms=1_000, attempt_timeout_ms=1_000,
        health_interval_ms=100,
    )  # fmt: skip
    stack.push_async_callback(hsm.close)
    store = await open_store(
        LedgerSettings(
            dsn=db.tcp_dsn(db_proxy.port),
            pool_size_max=8,
            statement_timeout_ms=3_000,
            connect_timeout_ms=1_000,
        ),
        timeout_ms=30_000,
    )
    stack.push_async_callback(store.close, timeout_ms=5_000)
    operations_store = await open_operations(
        db.tcp_dsn(db_proxy.port),
        pool_size=OPERATIONS.pool_size,
        connect_timeout_ms=OPERATIONS.timeout_ms,
        statement_timeout_ms=OPERATIONS.timeout_ms,
    )
    stack.push_async_callback(operations_store.close, timeout_ms=2_000)
    return Edges(owner, hsm, hsm_proxy, db_proxy, store, operations_store)


@contextlib.asynccontextmanager
async def ops_stack(
    db: OpsDatabase,
    keys: DevKeys,
    *,
    world: World | None = None,
    customers: int = 2,
    terminals: int = 2,
    cassettes: list[dict[str, int]] | None = None,
    receiver: Receiver | None = None,
    alerts: Mapping[str, Any] | None = None,
    operations: Mapping[str, Any] | None = None,
    process: ProcessInfo | None = None,
    tmk: Callable[[str], bytes] | None = None,
    audit_dsn: str | None = None,
    tls: TlsSettings | None = None,
) -> AsyncIterator[OpsStack]:
    """A switch process on `db`; loads a new world unless one is given (another process's).
    `alerts`, `operations`: [alerts] and [operations] settings to change; `tmk`: each
    terminal's clear TMK (default: the development keys' one, which every loaded world's
    terminals share); `audit_dsn`: where the journal check reads (none: no check); `tls`:
    the listener's (none: plain TCP)."""
    async with contextlib.AsyncExitStack() as stack:
        edges = await _edges(stack, db)
        if world is None:
            world = await load_world(edges.owner, keys, customers, terminals, cassettes)
        settings = replace(
            ALERTS,
            **(alerts or {}),
            webhook=replace(ALERTS.webhook, urls=(receiver.url,) if receiver else ()),
        )
        ops = await _switch(
            stack, edges, db=db, world=world, alerts=settings, process=process,
            settings=replace(OPERATIONS, **(operations or {})), audit_dsn=audit_dsn, tls=tls,
        )  # fmt: skip
        ops.tmk = tmk or (lambda _: bytes.fromhex(keys.tmk_clear_hex))
        yield ops


async def _switch(
    stack: contextlib.AsyncExitStack,
    edges: Edges,
    *,
    db: OpsDatabase,
    world: World,
    alerts: AlertsSettings,
    settings: OperationsSettings,
    process: ProcessInfo | None,
    audit_dsn: str | None,
    tls: TlsSettings | None,
) -> OpsStack:
    hsm, store = edges.hsm, edges.store
    recorder = activity_recorder(settings, time.time)
    monitor = Monitor(now, recorder)
    processor = switch_processor(hsm, store, monitor, now)
    server = SwitchServer(replace(LISTENER, tls=tls), processor, observer=monitor)
    operations = await stack.enter_async_context(
        running_operations(
            settings,
            alerts,
            recorder=recorder,
            store=edges.operations_store,
            probe=lambda: readiness(hsm, store),
            cutover=store.settings.business_day_cutover,
            audit_dsn=audit_dsn,
            clock=now,
            process=process,
            certificates=certificate_watch(tls, monitor.fleet),
        )
    )
    await server.start()
    stack.push_async_callback(server.shutdown, 1_000)
    app = create_admin_app(
        DEVELOPMENT_KEYS,
        monitor=monitor,
        stats=server.stats,
        readiness=lambda: readiness(hsm, store),
        ledger_figures=operations.figures,
        operations=operations,
    )
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ops = OpsStack(
        db, world, edges.owner, server, store, operations, edges.hsm_proxy, edges.db_proxy,
        runner, f"http://127.0.0.1:{runner.addresses[0][1]}",
    )  # fmt: skip
    stack.push_async_callback(ops.close_clients)
    return ops


async def eventually(
    check: Callable[[], Any], *, timeout_s: float = 15.0, interval_s: float = 0.1
) -> Any:
    """Await `check()` (a coroutine function) until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(interval_s)

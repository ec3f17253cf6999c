"""The whole switch for end-to-end tests: real PostgreSQL, the HSM over its own TCP protocol,
the switch on loopback, simulated terminals with their own EPPs.

Each test gets fresh customers and terminals (the cluster is shared; the audit journal cannot be
truncated). The switch reaches PostgreSQL through a proxy the test can cut.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from hsm.api import HSM, Ibm3624Method
from hsm.client import NetworkHSM
from hsm.devkeys import DevKeys, make_dev_keys
from hsm.engine import SoftHsm
from hsm.keys import DEVELOPMENT_LMK, Lmk
from hsm.local import LocalHSM
from hsm.server import HsmServer, ServerConfig
from kiosk_sim.client import TerminalClient
from kiosk_sim.epp import Epp
from kiosk_sim.terminal import Exchange, Terminal
from ledger.fixtures import load_fixtures
from ledger.postgres import DATABASE, SWITCH_ROLE
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY, LedgerSettings
from ledger.store import LedgerStore, open_store
from switch.flows import RequestProcessor
from switch.iso8583 import Dialect, Message
from switch.monitor import Monitor
from switch.server import SwitchServer
from switch.settings import PipelineSettings
from tests.conftest import PgCluster
from tests.e2e.proxy import CuttableProxy
from tests.ledger.factory import Customer, World
from tests.switch.conftest import LISTENER

PIN = "1234"
LMK = Lmk(DEVELOPMENT_LMK)
DEADLINE_MS = 1_500
ATC_JUMP_LOGGED = 100


def now() -> datetime:
    return datetime.now(UTC)


def switch_processor(
    hsm: HSM,
    store: LedgerStore,
    monitor: Monitor,
    wall_clock: Callable[[], datetime],
    *,
    require_mac: bool = True,
) -> RequestProcessor:
    """The switch's request flows as every end-to-end stack runs them: MACs required, unless a
    test says otherwise."""
    return RequestProcessor(
        hsm=hsm,
        ledger=store,
        settings=PipelineSettings(
            request_deadline_ms=DEADLINE_MS,
            require_mac=require_mac,
            slow_request_ms=1_000,
            atc_jump_logged=ATC_JUMP_LOGGED,
        ),
        dialect=Dialect(),
        wall_clock=wall_clock,
        count_error=monitor.metrics.count_error,
        time_step=monitor.metrics.observe_step,
        write_timeout_ms=4_000,
    )


@dataclass
class Stack:
    server: SwitchServer
    monitor: Monitor
    store: LedgerStore
    owner: asyncpg.Connection
    world: World
    keys: DevKeys
    hsm_servers: list[HsmServer]
    db_proxy: CuttableProxy
    owner_dsn: str = ""
    seed: int = 7
    _clients: list[TerminalClient] = field(default_factory=list)

    @property
    def customers(self) -> list[Customer]:
        return self.world.customers

    async def terminal(
        self, index: int = 0, *, sign_on: bool = True, keys: bool = True, mac: bool = True
    ) -> Terminal:
        client = await TerminalClient.connect("127.0.0.1", self.server.port)
        self._clients.append(client)
        terminal_id = self.world.terminals[index]
        terminal = Terminal(
            terminal_id,
            Epp(bytes.fromhex(self.keys.tmk_clear_hex)),
            client,
            clock=now,
            rng=random.Random(self.seed + len(self._clients)),
            mac=mac,
        )
        if sign_on:
            assert (await terminal.sign_on()).approved
        if keys:
            assert (await terminal.change_keys()).approved
        return terminal

    async def balance(self, account_number: str) -> int:
        value = await self.owner.fetchval(
            "SELECT balance_minor FROM ledger.accounts WHERE account_number = $1", account_number
        )
        assert isinstance(value, int)
        return value

    async def close_clients(self) -> None:
        for client in self._clients:
            await client.close()


async def until_answered(
    terminal: Terminal, build: Callable[[], Message], codes: frozenset[str], *, attempts: int = 50
) -> Exchange:
    """Send a fresh request from `build` every 100 ms until the switch answers one of `codes`
    (it is recovering from a fault); the last answer comes back either way."""
    for _ in range(attempts):
        answer = await terminal.send(build())
        if answer.code in codes:
            break
        await asyncio.sleep(0.1)
    return answer


async def pin_data(pan: str, keys: DevKeys) -> dict[str, Any]:
    offset = await LocalHSM(LMK).derive_pin_verification_data(keys.pvk, pan, PIN, Ibm3624Method())
    return {"method": "ibm3624", "pvk": keys.pvk.to_text(), "offset": offset, "pin_length": 4}


async def load_world(
    owner: asyncpg.Connection,
    keys: DevKeys,
    customers: int,
    terminals: int,
    cassettes: list[dict[str, int]] | None = None,
    **card: Any,
) -> World:
    world = World()
    data = world.fixtures(customers, terminals, card=card or None, cassettes=cassettes)
    for entry in data["customers"]:
        for card_entry in entry["cards"]:
            card_entry["pin"] = await pin_data(card_entry["pan"], keys)
    for terminal in data["terminals"]:
        terminal["tmk"] = keys.tmk.to_text()
    await load_fixtures(owner, data, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=30_000)
    return world


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture(scope="session")
def dev_keys() -> DevKeys:
    return make_dev_keys(LMK, seed=b"e2e tests")


def hsm_core(dev_keys: DevKeys) -> SoftHsm:
    """A development HSM: its PAN-hash key gives the ledger's development hashes and words."""
    return SoftHsm(LMK, pan_hash_key=dev_keys.phk)


@pytest.fixture
async def make_stack(pg_cluster: PgCluster, dev_keys: DevKeys) -> AsyncIterator[StackFactory]:
    """Builds a stack; `customers`, `terminals` (and their `cassettes`), card overrides, ledger
    settings and the switch's wall clock (the business day its requests are booked on) vary."""
    built: list[tuple[Stack, NetworkHSM]] = []

    async def build(
        customers: int = 2,
        terminals: int = 1,
        *,
        cross_customer: bool = False,
        hsms: int = 1,
        cassettes: list[dict[str, int]] | None = None,
        require_mac: bool = True,
        wall_clock: Callable[[], datetime] = now,
        **card: Any,
    ) -> Stack:
        owner = await asyncpg.connect(pg_cluster.owner_dsn)
        # The ledger enforces its own policy; set back after the test (the cluster is shared).
        await owner.execute(
            "UPDATE ledger.policy SET cross_customer_transfers = $1", cross_customer
        )
        world = await load_world(owner, dev_keys, customers, terminals, cassettes, **card)
        hsm_servers = [
            HsmServer(hsm_core(dev_keys), ServerConfig(host="127.0.0.1", port=0))
            for _ in range(hsms)
        ]
        for hsm_server in hsm_servers:
            await hsm_server.start()
        addresses = [("127.0.0.1", s.port) for s in hsm_servers]
        # Attempts time out well above normal latency, even on two busy cores: a slow answer
        # must not mark the surviving HSM down.
        hsm = NetworkHSM(
            addresses, timeout_ms=1_000, attempt_timeout_ms=1_000, health_interval_ms=100
        )
        proxy = CuttableProxy("127.0.0.1", pg_cluster.info.port)
        await proxy.start()
        store = await open_store(
            LedgerSettings(
                dsn=f"postgresql://{SWITCH_ROLE}@127.0.0.1:{proxy.port}/{DATABASE}",
                pool_size_max=8,
                cross_customer_transfers=cross_customer,
                statement_timeout_ms=3_000,
                connect_timeout_ms=1_000,
            ),
            timeout_ms=30_000,
        )
        monitor = Monitor(now)
        processor = switch_processor(hsm, store, monitor, wall_clock, require_mac=require_mac)
        server = SwitchServer(LISTENER, processor, observer=monitor)
        await server.start()
        stack = Stack(
            server, monitor, store, owner, world, dev_keys, hsm_servers, proxy, pg_cluster.owner_dsn
        )
        built.append((stack, hsm))
        return stack

    yield build
    for stack, hsm in built:
        await stack.close_clients()
        await stack.server.shutdown(2_000)
        await stack.store.close(timeout_ms=5_000)
        await hsm.close()
        for hsm_server in stack.hsm_servers:
            await hsm_server.close()
        await stack.db_proxy.close()
        await stack.owner.execute("UPDATE ledger.policy SET cross_customer_transfers = false")
        await stack.owner.close()

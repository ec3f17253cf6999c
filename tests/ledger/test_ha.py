"""Failover with pg_auto_failover, on real processes: a monitor, a primary and a synchronous
secondary of the test's own, the store posting through the multi-host DSN all along."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from ledger import audit
from ledger.__main__ import main
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.ha import HaCluster, HaInfo
from ledger.model import Outcome, Withdrawal
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store
from tests.conftest import needs_pg_auto_failover
from tests.ledger.factory import AUDIT, World, key
from tests.ledger.helpers import authorised, chip_authorised

pytestmark = [needs_pg_auto_failover, pytest.mark.slow]
REQUEST_TIMEOUT_MS = 3_000  # the switch's request deadline, about
TRICKLE_INTERVAL_S = 0.05
FAILOVER_S_MAX = 60
# A primary without a secondary (wait_primary) takes writes too, not waiting for a standby.
WRITABLE = ("primary", "wait_primary")


@dataclass
class Trickle:
    """Withdrawals one after another, each a new request: one that fails is never retried
    (in doubt, the terminal's reversal settles it)."""

    store: LedgerStore
    world: World
    # (when the request was sent, its transaction)
    acknowledged: list[tuple[float, int]] = field(default_factory=list)
    unavailable: list[tuple[float, str]] = field(default_factory=list)  # answered 91
    other_errors: list[str] = field(default_factory=list)
    slowest_s: float = 0.0  # the longest a request took to be answered, either way

    async def run(self, stop: asyncio.Event) -> None:
        # Each card's daily count allows five withdrawals; the run is bounded by them.
        customers = iter(list(range(len(self.world.customers))) * 5)
        while not stop.is_set():
            customer = self.world.customers[next(customers)]
            request = Withdrawal(
                customer.pan, key(self.world.terminals[0]), AUDIT, "20", 1_000, "EUR"
            )
            started = time.monotonic()
            try:
                result = await self.store.process(
                    request, authorise=authorised, authorise_chip=chip_authorised,
                    timeout_ms=REQUEST_TIMEOUT_MS,
                )  # fmt: skip
            except LedgerUnavailable as exc:
                self.unavailable.append((time.monotonic(), f"{exc!r} {exc.__cause__!r}"))
            except LedgerError as exc:
                self.other_errors.append(repr(exc))
            else:
                if result.outcome is not Outcome.APPROVED or result.entry_id is None:
                    self.other_errors.append(repr(result))
                else:
                    self.acknowledged.append((started, result.entry_id))
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            await asyncio.sleep(TRICKLE_INTERVAL_S)

    def __str__(self) -> str:
        return (
            f"{len(self.acknowledged)} acknowledged, {len(self.unavailable)} answered 91,"
            f" other errors {self.other_errors[:3]}, last 91s {self.unavailable[-3:]}"
        )

    def acknowledged_after(self, moment: float) -> int:
        """Acknowledged postings of requests sent after `moment`."""
        return sum(1 for at, _ in self.acknowledged if at > moment)

    def gap_s(self, moment: float) -> float:
        """From `moment` to the sending of the first request acknowledged after it."""
        return min(at for at, _ in self.acknowledged if at > moment) - moment


async def _until(
    condition: Callable[[], bool], what: str, cluster: HaCluster, trickle: Trickle
) -> None:
    deadline = time.monotonic() + FAILOVER_S_MAX
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}: nodes {_roles(cluster)}, {trickle}"
        )
        await asyncio.sleep(0.2)


def _roles(cluster: HaCluster) -> dict[str, str]:
    return {node.name: node.reported_state for node in cluster.nodes()}


def _rejoined(cluster: HaCluster, name: str) -> bool:
    """`name` is the secondary again, and the primary waits for it: until then (wait_primary)
    the monitor would not promote it, as it may lack commits the primary acknowledged alone."""
    return _roles(cluster)[name] == "secondary" and cluster.settled()


async def _switch_can_only_execute(cluster: HaCluster) -> None:
    """On every node the switch's role logs in (pg_hba) and reads no table (its grants)."""
    for node in cluster.nodes():
        conn = await asyncpg.connect(f"postgresql://ledger_switch@127.0.0.1:{node.port}/ledger")
        try:
            assert await conn.fetchval("SELECT current_user") == "ledger_switch"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT count(*) FROM ledger.transactions")
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def _trickling(trickle: Trickle) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(trickle.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def _verify(info: HaInfo, acknowledged: list[int]) -> None:
    conn = await asyncpg.connect(info.owner_dsn)
    try:
        present = await conn.fetchval(
            "SELECT count(*) FROM ledger.transactions WHERE transaction_id = ANY($1)",
            acknowledged,
        )
        assert present == len(acknowledged)
        report = await audit.verify(conn, timeout_ms=60_000, anchored={})
        assert report.ok, (report.damage, report.books)
    finally:
        await conn.close()


async def loaded_store(info: HaInfo, *, customers: int) -> tuple[World, LedgerStore]:
    """`customers` loaded through the formation's owner, and a store on its multi-host DSN."""
    world = World()
    conn = await asyncpg.connect(info.owner_dsn)
    await world.load(conn, customers=customers)
    await conn.close()
    settings = LedgerSettings(
        dsn=info.switch_dsn, owner_dsn=info.owner_dsn, pool_size_min=1, pool_size_max=4,
        connect_timeout_ms=2_000,
    )  # fmt: skip
    return world, await open_store(settings, timeout_ms=30_000)


async def _fail_over(
    cluster: HaCluster, trickle: Trickle, *, whole_node: bool
) -> tuple[str, float]:
    """Kill the primary (its postmaster, or its whole node with pg_autoctl), wait until the
    other node is primary and postings are acknowledged again; the killed node and the gap."""
    old = cluster.primary().name
    postmaster_pid = int((cluster.data_dir(old) / "postmaster.pid").read_text().split()[0])
    if whole_node:
        os.killpg(cluster.supervisor_pid(old), signal.SIGKILL)
    os.kill(postmaster_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await _until(
        lambda: (
            _roles(cluster).get(next(n for n in ("node1", "node2") if n != old)) in WRITABLE
            and trickle.acknowledged_after(killed_at) >= 5
        ),
        "the other node to be primary and acknowledge postings",
        cluster,
        trickle,
    )
    return old, trickle.gap_s(killed_at)


async def test_failover_keeps_every_acknowledged_posting(
    ha_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cluster", "--ha", "--dir", str(ha_root), "--timeout-ms", "180000"]
    assert await asyncio.to_thread(main, argv) == 0
    cluster = HaCluster(ha_root)
    info = cluster.info()
    assert f"switch ([ledger] dsn): {info.switch_dsn}" in capsys.readouterr().out
    assert info.switch_dsn.endswith("/ledger?target_session_attrs=read-write")
    primary = cluster.primary()
    # A commit waits for the standby.
    assert cluster.sql(primary.port, "SHOW synchronous_standby_names").strip() == (
        "ANY 1 (pgautofailover_standby_2)"
    )
    await _switch_can_only_execute(cluster)

    world, store = await loaded_store(info, customers=500)
    trickle = Trickle(store, world)
    try:
        async with _trickling(trickle):
            await asyncio.sleep(1)
            # The postmaster alone: its pg_autoctl reports it down, the monitor promotes the
            # secondary, and the old primary, its pg_autoctl still running, rejoins.
            first, first_gap_s = await _fail_over(cluster, trickle, whole_node=False)
            await _until(
                lambda: _rejoined(cluster, first),
                f"{first} to rejoin",
                cluster,
                trickle,
            )
            # The whole node (pg_autoctl too): the monitor's health checks find it gone.
            second, second_gap_s = await _fail_over(cluster, trickle, whole_node=True)
            cluster.run_node(second)
            await _until(
                lambda: _rejoined(cluster, second), f"{second} to rejoin", cluster,
                trickle,
            )  # fmt: skip
    finally:
        await store.close(timeout_ms=10_000)

    with capsys.disabled():
        print(
            f"\nfailover: postmaster killed {first_gap_s:.1f} s, node killed {second_gap_s:.1f} s"
            f" without an acknowledged posting; {len(trickle.acknowledged)} acknowledged,"
            f" {len(trickle.unavailable)} answered 91, slowest {trickle.slowest_s:.2f} s,"
            f" other errors {trickle.other_errors}"
        )
    assert trickle.other_errors == []
    # While there is no primary, terminals get 91 within the request deadline (and its grace).
    assert trickle.slowest_s < (REQUEST_TIMEOUT_MS + 1_000) / 1000
    await _verify(info, [entry for _, entry in trickle.acknowledged])
    await _switch_can_only_execute(cluster)

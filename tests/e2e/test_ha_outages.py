"""The formation's other losses, on real processes: the monitor down while the primary serves
(no interruption), and both data nodes down (91 within the deadline, /ready 503 naming the
database, everything back by itself when they return)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest

from ledger.__main__ import main
from ledger.ha import MONITOR, NODES, HaCluster
from tests.conftest import needs_pg_auto_failover
from tests.ledger.test_ha import (
    REQUEST_TIMEOUT_MS,
    Trickle,
    _trickling,
    _verify,
    loaded_store,
)
from tests.switch.test_workers import Serving

pytestmark = [needs_pg_auto_failover, pytest.mark.slow]

OUTAGE_S = 3.0
RECOVERY_S_MAX = 120.0


async def _stop(cluster: HaCluster, *names: str) -> None:
    """`pg_autoctl stop` each in turn, each until its server is down."""
    for name in names:
        await asyncio.to_thread(cluster.autoctl, "stop", "--pgdata", str(cluster.data_dir(name)))
        deadline = time.monotonic() + RECOVERY_S_MAX
        while (cluster.data_dir(name) / "postmaster.pid").exists():
            assert time.monotonic() < deadline, f"{name} did not stop"
            await asyncio.sleep(0.1)


async def _ready(admin_port: int) -> tuple[int, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{admin_port}/ready") as reply,
    ):
        return reply.status, (await reply.json())["checks"]


async def _until_ready(admin_port: int, status: int) -> object:
    deadline = time.monotonic() + RECOVERY_S_MAX
    while (found := await _ready(admin_port))[0] != status:
        assert time.monotonic() < deadline, f"/ready stayed {found}"
        await asyncio.sleep(0.2)
    return found[1]


async def test_monitor_down_serves_and_both_nodes_down_answer_91_then_recover(
    ha_root: Path, tmp_path: Path
) -> None:
    argv = ["cluster", "--ha", "--dir", str(ha_root), "--timeout-ms", "180000"]
    assert await asyncio.to_thread(main, argv) == 0
    cluster = HaCluster(ha_root)
    info = cluster.info()
    world, store = await loaded_store(info, customers=100)
    env = {"SWITCH__LEDGER__DSN": f'"{info.switch_dsn}"', "SWITCH__ADMIN__PORT": "0"}
    try:
        async with Serving.run(tmp_path / "switch.log", "--port", "0", env=env) as switch:
            (admin,) = await switch.until("admin_listening")
            admin_port = int(str(admin["port"]))
            assert await _ready(admin_port) == (200, {"database": True, "hsm": True})

            # The monitor down: the primary keeps taking writes (nothing fails over meanwhile).
            await _stop(cluster, MONITOR)
            monitor_down = Trickle(store, world)
            async with _trickling(monitor_down):
                await asyncio.sleep(OUTAGE_S)
            assert monitor_down.acknowledged, str(monitor_down)
            assert (monitor_down.unavailable, monitor_down.other_errors) == ([], [])
            assert await _ready(admin_port) == (200, {"database": True, "hsm": True})
            cluster.run_node(MONITOR)
            await asyncio.to_thread(cluster.wait_settled, timeout_ms=int(RECOVERY_S_MAX * 1000))

            # Both nodes down (the secondary first, so nothing is promoted): every request
            # is answered unavailable (91) within the deadline, and /ready names the database.
            primary = await asyncio.to_thread(lambda: cluster.primary().name)
            await _stop(cluster, *[n for n in NODES if n != primary], primary)
            both_down = Trickle(store, world)
            async with _trickling(both_down):
                await asyncio.sleep(OUTAGE_S)
            assert both_down.unavailable, str(both_down)
            assert (both_down.acknowledged, both_down.other_errors) == ([], [])
            assert both_down.slowest_s < (REQUEST_TIMEOUT_MS + 1_000) / 1000
            assert await _until_ready(admin_port, 503) == {"database": False, "hsm": True}

            # They return: served again with nobody's help.
            for name in NODES:
                cluster.run_node(name)
            returned = Trickle(store, world)
            async with _trickling(returned):
                deadline = time.monotonic() + RECOVERY_S_MAX
                while len(returned.acknowledged) < 5:
                    assert time.monotonic() < deadline, str(returned)
                    await asyncio.sleep(0.2)
            assert returned.other_errors == []
            assert await _until_ready(admin_port, 200) == {"database": True, "hsm": True}
            assert await switch.stop() == 0
    finally:
        with contextlib.suppress(Exception):
            await store.close(timeout_ms=10_000)
    acknowledged = monitor_down.acknowledged + returned.acknowledged
    await _verify(info, [entry for _, entry in acknowledged])

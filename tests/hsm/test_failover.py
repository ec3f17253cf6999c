"""Networked HSM reliability: two `python -m hsm serve` processes on loopback; one is killed
with SIGKILL mid-run and calls fail over silently; with both dead, calls time out on deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from hsm import mac
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devserver import Process, spawn_dev_hsm
from hsm.errors import HsmTimeout
from hsm.keys import KeyRole
from hsm.server import HsmServer

from .support import LMK


@pytest.fixture
async def two_servers() -> AsyncIterator[list[tuple[Process, int]]]:
    servers = list(await asyncio.gather(spawn_dev_hsm(), spawn_dev_hsm()))
    yield servers
    for proc, _ in servers:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def kill(proc: Process) -> None:
    proc.kill()  # SIGKILL: no goodbye on the sockets it held
    await proc.wait()


TAK_CLEAR = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TAK = LMK.wrap(KeyRole.TAK, Algorithm.TDES, TAK_CLEAR)
DATA = b"0200 withdrawal"
MAC = mac.iso9797_alg3(TAK_CLEAR, DATA)


@pytest.mark.slow
async def test_failover_when_one_server_is_killed(two_servers: list[tuple[Process, int]]) -> None:
    addresses = [("127.0.0.1", port) for _, port in two_servers]
    async with NetworkHSM(
        addresses, pool_size=2, timeout_ms=3000, attempt_timeout_ms=500, health_interval_ms=100
    ) as client:
        for batch in range(20):
            if batch == 5:
                await kill(two_servers[0][0])
            results = await asyncio.gather(*(client.verify_mac(TAK, DATA, MAC) for _ in range(10)))
            assert all(results)
        assert await client.health() == LMK.kcv


@pytest.mark.slow
async def test_all_servers_down_times_out_on_deadline(
    two_servers: list[tuple[Process, int]],
) -> None:
    addresses = [("127.0.0.1", port) for _, port in two_servers]
    async with NetworkHSM(addresses, timeout_ms=3000, health_interval_ms=100) as client:
        assert await client.verify_mac(TAK, DATA, MAC)
        for proc, _ in two_servers:
            await kill(proc)
        start = time.monotonic()
        with pytest.raises(HsmTimeout):
            await client.verify_mac(TAK, DATA, MAC, timeout_ms=600)
        elapsed_s = time.monotonic() - start
        assert 0.6 <= elapsed_s < 0.6 + 0.5  # the deadline, plus scheduling slack


async def test_a_hung_server_is_skipped_within_the_deadline(hsm_server: HsmServer) -> None:
    """A server that accepts but never answers costs one attempt timeout, then fails over."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads until the client gives up; never answers
        writer.close()

    hung = await asyncio.start_server(swallow, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    addresses = [("127.0.0.1", hung_port), ("127.0.0.1", hsm_server.port)]
    try:
        async with NetworkHSM(addresses, timeout_ms=2000, attempt_timeout_ms=200) as client:
            start = time.monotonic()
            results = [await client.verify_mac(TAK, DATA, MAC) for _ in range(4)]
            assert all(results)
            assert time.monotonic() - start < 1.5
    finally:
        hung.close()
        await hung.wait_closed()

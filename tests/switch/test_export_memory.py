"""An export of a million journal records through the auditor API streams in constant memory:
the process's resident set, sampled while the records arrive, stays within a fixed bound while
hundreds of megabytes go through it.

The records are written straight into a private cluster of the test's own by owner SQL (they
need not verify: the export only reads them), so the shared test cluster keeps a journal that
verifies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ledger.migrations import migrate
from ledger.postgres import ClusterInfo, LocalCluster
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, Role
from switch.admin import create_admin_app
from switch.auditor_api import JournalSettings
from switch.monitor import Monitor
from switch.server import Stats

pytestmark = pytest.mark.slow

RECORDS = 1_000_000
# What the export may add to the process, whatever the journal's size: the cursor's prefetch
# (1,000 rows), one chunk of output, the client's read buffer, and the allocator's slack.
RSS_GROWTH_MAX_BYTES = 32 * 2**20
START = datetime(2026, 1, 1, tzinfo=UTC)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

# One row per millisecond from START, at 100 terminals, each as a request of its own would be.
_FILL = """
INSERT INTO ledger.transactions (
  transaction_id, customer_id, terminal_id, transmission_time, stan, message_class, kind,
  outcome, response_code, amount_minor, currency, requested_minor, requested_currency,
  business_date, recorded_at, pan_masked, mti, processing_code, rrn, lane, block_seq, leaf)
SELECT g, 0, 'MEM' || lpad((g % 100)::text, 5, '0'), lpad(g::text, 10, '0'),
       lpad((g % 1000000)::text, 6, '0'), '0200', 'inquiry', 'approved', '00', 0, 'EUR', 0, 'EUR',
       date '2026-01-01', $1::timestamptz + g * interval '1 millisecond',
       '400000******' || lpad((g % 10000)::text, 4, '0'), '0200', '311000',
       lpad(g::text, 12, '0'), g % 16, 1, sha256(g::text::bytea)
  FROM generate_series(1, $2::bigint) AS g
"""


@pytest.fixture(scope="module")
def filled_cluster() -> Iterator[ClusterInfo]:
    data_dir = tempfile.mkdtemp(prefix="ledger-mem-")
    cluster = LocalCluster(Path(data_dir))
    try:
        info = cluster.start(timeout_ms=120_000)
        asyncio.run(_fill(info.owner_dsn))
        yield info
    finally:
        cluster.stop(timeout_ms=60_000)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, timeout_ms=120_000)
        await conn.execute(_FILL, START, RECORDS, timeout=600)
        await conn.execute("ANALYZE ledger.transactions", timeout=600)
    finally:
        await conn.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


async def _ready() -> Mapping[str, bool]:
    return {}


@pytest.fixture
async def api(
    filled_cluster: ClusterInfo,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_admin_app(
        DEVELOPMENT_KEYS,
        monitor=Monitor(lambda: START),
        stats=lambda: Stats(0, 0, 0),
        readiness=_ready,
        journal=JournalSettings(filled_cluster.owner_dsn, datetime.min.time()),
    )
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.timeout(900)
async def test_an_export_of_a_million_records_streams_in_constant_memory(
    api: TestClient[web.Request, web.Application],
) -> None:
    headers = {"Authorization": f"Bearer {DEVELOPMENT_TOKENS[Role.AUDITOR]}"}
    lines = received = 0
    baseline = peak = 0
    started = time.monotonic()
    async with api.get("/journal/export", params={"format": "csv"}, headers=headers) as reply:
        assert reply.status == 200
        async for chunk in reply.content.iter_chunked(256 * 1024):
            lines += chunk.count(b"\n")
            received += len(chunk)
            # The first 50,000 records warm everything up (prepared statements, buffers).
            if not baseline and lines >= 50_000:
                baseline = peak = _rss_bytes()
            elif baseline:
                peak = max(peak, _rss_bytes())
    elapsed_s = time.monotonic() - started
    print(
        f"\nexported {lines - 1} records, {received / 2**20:.0f} MiB in {elapsed_s:.0f} s;"
        f" RSS {baseline / 2**20:.0f} MiB after 50,000, at most {peak / 2**20:.0f} MiB"
    )
    assert lines == RECORDS + 1  # and the header
    assert received > 200 * 2**20  # several times the bound: held whole, it would show
    assert peak - baseline < RSS_GROWTH_MAX_BYTES

"""GET /reports/settlement: the same document as `python -m ledger report settlement`, for a
closed day only, with bad parameters named."""

from __future__ import annotations

from datetime import date

import aiohttp
import asyncpg

from hsm.devkeys import DevKeys
from ledger import balancing, settlement
from switch.access import DEVELOPMENT_TOKENS, Role
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import ops_stack

# A day long past that nothing else books on: closing it disturbs no other test.
CLOSED_DAY = date(2004, 2, 29)
AUDITOR = {"Authorization": f"Bearer {DEVELOPMENT_TOKENS[Role.AUDITOR]}"}


async def test_the_http_report_is_the_clis(ops_db: OpsDatabase, dev_keys: DevKeys) -> None:
    async with ops_stack(ops_db, dev_keys, terminals=1) as stack:
        owner = await asyncpg.connect(ops_db.owner_dsn)
        try:
            await balancing.close_day(owner, CLOSED_DAY, by="test", timeout_s=30)
            report = await settlement.fetch(owner, CLOSED_DAY, timeout_s=30)
        finally:
            await owner.close()
        # What `python -m ledger report settlement` prints (tests/e2e/test_balancing.py runs it).
        printed = {"json": settlement.as_json(report), "csv": settlement.as_csv(report)}
        url = f"{stack.admin_url}/reports/settlement?date={CLOSED_DAY}"
        async with aiohttp.ClientSession(headers=AUDITOR) as http:
            for fmt, content_type in (("json", "application/json"), ("csv", "text/csv")):
                async with http.get(f"{url}&format={fmt}") as reply:
                    assert (reply.status, reply.content_type) == (200, content_type)
                    assert await reply.text() == printed[fmt]
            for query, status, problem in (
                ("date=2004-02-30", 400, "date: expected YYYY-MM-DD"),
                ("", 400, "date: required"),
                (f"date={CLOSED_DAY}&format=pdf", 400, "format: expected one of csv, json"),
                (f"date={CLOSED_DAY}&terminal=T1", 400, "terminal: no such parameter"),
                ("date=1999-12-31", 404, "business day 1999-12-31 is not closed"),
            ):
                async with http.get(f"{stack.admin_url}/reports/settlement?{query}") as reply:
                    assert reply.status == status, query
                    assert problem in (await reply.json())["error"]

"""The operations endpoints' answers to good and bad requests, the metrics they add, and the
Prometheus rules file that alerts on them (checked with promtool, from Debian's `prometheus`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hsm.devkeys import DevKeys
from switch.access import DEVELOPMENT_TOKENS, Role
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import AUTH, OpsStack, eventually, ops_stack

RULES_FILE = Path(__file__).parents[2] / "config" / "prometheus-alerts.yml"
RULES_TEST = Path(__file__).parent / "prometheus-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool: Debian's prometheus package (apt-get install prometheus)",
)


async def call(stack: OpsStack, method: str, path: str, **options: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, stack.admin_url + path, **options) as reply,
    ):
        body = await reply.json() if reply.content_type == "application/json" else None
        return reply.status, body


async def raise_alert(stack: OpsStack) -> int:
    """A kiosk dies: its offline alert (the alert loop resolves any alert whose condition
    does not hold, so a made-up one would not stay firing)."""
    terminal = await stack.terminal(0)
    await terminal.client.close()
    [alert] = await eventually(lambda: stack.alerts(rule="terminal_offline"))
    alert_id: int = alert["alert_id"]
    return alert_id


async def test_alerts_are_listed_filtered_and_acknowledged_once(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with ops_stack(ops_db, dev_keys, terminals=1) as stack:
        alert_id = await raise_alert(stack)
        stack.operations.reader.expire()
        status, body = await call(stack, "GET", "/alerts?state=firing")
        assert status == 200
        assert [a["alert_id"] for a in body["alerts"]] == [alert_id]
        status, body = await call(
            stack, "POST", f"/alerts/{alert_id}/acknowledge", json={"by": "olga"}
        )
        assert (status, body["alert"]["state"], body["alert"]["acknowledged_by"]) == (
            200, "acknowledged", "olga",
        )  # fmt: skip
        status, body = await call(stack, "POST", f"/alerts/{alert_id}/acknowledge")
        assert (status, body["alert"]["state"]) == (409, "acknowledged")
        status, body = await call(stack, "GET", "/alerts?state=open")
        assert [a["alert_id"] for a in body["alerts"]] == [alert_id]
        assert (await call(stack, "GET", "/alerts?state=firing"))[1] == {"alerts": []}


@pytest.mark.parametrize(
    "case",
    [
        ("GET", "/alerts?state=asleep", {}, 400, "state: expected one of"),
        ("POST", "/alerts/seven/acknowledge", {}, 400, "alert_id: expected an integer"),
        ("POST", "/alerts/999999/acknowledge", {}, 404, "no alert 999999"),
        ("POST", "/alerts/1/acknowledge", {"data": "{"}, 400, "body: expected JSON"),
        ("POST", "/alerts/1/acknowledge", {"json": {"by": "x" * 65}}, 400, "by: expected a name"),
        ("POST", "/alerts/1/acknowledge", {"json": ["olga"]}, 400, "by: expected a name"),
        ("POST", "/alerts/audit-verify", {}, 404, "no journal check: set [ledger] audit_dsn"),
    ],
)
async def test_bad_requests_name_what_is_wrong(
    ops_db: OpsDatabase, dev_keys: DevKeys, case: tuple[str, str, dict[str, Any], int, str]
) -> None:
    method, path, options, status, error = case
    async with ops_stack(ops_db, dev_keys, terminals=1) as stack:
        got, body = await call(stack, method, path, **options)
    assert got == status
    assert error in body["error"]


# The role matrix of the routes that read the operations (the rest: tests/switch/test_admin.py).
# Callers, in column order: operator, auditor, viewer, no key, a wrong secret.
EVENT_CALLERS: tuple[str | None, ...] = (
    DEVELOPMENT_TOKENS[Role.OPERATOR],
    DEVELOPMENT_TOKENS[Role.AUDITOR],
    DEVELOPMENT_TOKENS[Role.VIEWER],
    None,
    "dev-operator.not-its-secret",
)
EVENT_MATRIX: dict[tuple[str, str], tuple[int, int, int, int, int]] = {
    ("GET", "/fleet"): (200, 403, 200, 401, 401),
    ("GET", "/alerts"): (200, 403, 200, 401, 401),
    # No such alert, and no journal check configured: the operator is let through, and told so.
    ("POST", "/alerts/{alert_id}/acknowledge"): (404, 403, 403, 401, 401),
    ("POST", "/alerts/audit-verify"): (404, 403, 403, 401, 401),
    ("GET", "/reports/sla"): (200, 200, 403, 401, 401),
    # A day not closed: the operator and the auditor are let through, and told so.
    ("GET", "/reports/settlement"): (404, 404, 403, 401, 401),
    # No body: the operator is let through, and told what to send.
    ("POST", "/terminals/{terminal_id}/cassettes/{cassette}/replenish"): (
        400,
        403,
        403,
        401,
        401,
    ),
}
EVENT_TARGETS = {
    "/terminals/{terminal_id}/cassettes/{cassette}/replenish": (
        "/terminals/NOSUCH01/cassettes/1/replenish"
    ),
    "/alerts/{alert_id}/acknowledge": "/alerts/987654321/acknowledge",
    "/reports/sla": "/reports/sla?from=2026-11-23&to=2026-11-23",
    "/reports/settlement": "/reports/settlement?date=1999-12-31",
}


async def test_the_role_matrix_of_the_operations_routes(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with ops_stack(ops_db, dev_keys, terminals=1) as stack, aiohttp.ClientSession() as http:
        for (method, path), expected in EVENT_MATRIX.items():
            statuses = []
            for key in EVENT_CALLERS:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                url = stack.admin_url + EVENT_TARGETS.get(path, path)
                async with http.request(method, url, headers=headers) as reply:
                    await reply.read()
                    statuses.append(reply.status)
            assert tuple(statuses) == expected, (method, path)


async def test_the_endpoints_need_the_token(ops_db: OpsDatabase, dev_keys: DevKeys) -> None:
    async with ops_stack(ops_db, dev_keys, terminals=1) as stack, aiohttp.ClientSession() as http:
        for method, path in (
            ("GET", "/fleet"),
            ("GET", "/alerts"),
            ("POST", "/alerts/1/acknowledge"),
            ("POST", "/alerts/audit-verify"),
            ("GET", "/reports/sla"),
        ):
            async with http.request(method, stack.admin_url + path) as reply:
                assert reply.status == 401, path


async def test_every_metric_the_rules_file_uses_is_exposed(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with ops_stack(
        ops_db, dev_keys, terminals=1, audit_dsn=ops_db.owner_dsn, cassettes=[
            {"cassette": 1, "denomination_minor": 2_000, "notes": 10},
        ],
    ) as stack:  # fmt: skip
        checker = stack.operations.checker
        assert checker is not None
        assert checker.request()
        check = await checker.wait()
        assert check is not None
        assert check.outcome == "ok"
        terminal = await stack.terminal(0)
        assert (await terminal.echo()).approved

        async def read_with_the_terminal_up() -> str | None:
            stack.operations.reader.expire()
            text: str = await stack.get("/metrics")
            wanted = ("switch_terminals_up 1", "switch_audit_verify_ok 1")
            return text if all(line in text for line in wanted) else None

        text = await eventually(read_with_the_terminal_up)
    exposed = set(re.findall(r"^(switch_[a-z0-9_]+?)(?:_bucket|_count|_sum)?[{ ]", text, re.M))
    used = set(
        re.findall(r"\b(switch_[a-z0-9_]+?)(?:_bucket|_count|_sum)?\b", RULES_FILE.read_text())
    )
    assert used <= exposed, used - exposed
    for line in ("switch_terminal_events_dropped_total 0", "switch_terminals_never_seen 0"):
        assert line in text


async def test_the_journal_check_runs_on_its_own_every_interval(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    every_second = {"audit_interval_ms": 1_000}
    async with ops_stack(
        ops_db, dev_keys, terminals=1, alerts=every_second, audit_dsn=ops_db.owner_dsn
    ) as stack:
        checker = stack.operations.checker
        assert checker is not None
        assert checker.runs == 0  # not at start-up

        async def recorded() -> list[dict[str, Any]]:
            rows = await stack.owner.fetch("SELECT outcome FROM ledger.audit_checks")
            return [dict(row) for row in rows]

        checks = await eventually(recorded)
        assert {check["outcome"] for check in checks} == {"ok"}
        assert checker.runs >= len(checks)


@needs_promtool
def test_the_prometheus_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    outputs = []
    for command in (
        [PROMTOOL, "check", "rules", str(RULES_FILE)],
        [PROMTOOL, "test", "rules", RULES_TEST.name],
    ):
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=RULES_TEST.parent, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    assert "SUCCESS: 12 rules found" in outputs[0]

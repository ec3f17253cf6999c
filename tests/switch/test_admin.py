"""The operations app over real HTTP on loopback, fed by a real switch; who may call what."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, time

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from kiosk_sim.client import TerminalClient, network_request
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, Role
from switch.admin import EVENT_ROUTES, ROUTES, create_admin_app
from switch.auditor_api import JournalSettings
from switch.iso8583 import Message
from switch.iso8583.response_codes import ResponseCode
from switch.monitor import Monitor
from switch.responses import respond
from switch.server import ConnectionView, Stats, SwitchServer
from tests.conftest import PgCluster
from tests.ops.test_api import EVENT_MATRIX
from tests.switch.conftest import LISTENER, signing_on
from tests.switch.scraped import by_label

VIEWER = {"Authorization": f"Bearer {DEVELOPMENT_TOKENS[Role.VIEWER]}"}
SEEN_AT = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


async def approve_small(request: Message, _connection: ConnectionView) -> Message:
    code = (
        ResponseCode.APPROVED
        if (request.amount_minor or 0) < 5000
        else ResponseCode.INSUFFICIENT_FUNDS
    )
    return respond(request, code)


class Stack:
    def __init__(self, server: SwitchServer, base_url: str, monitor: Monitor) -> None:
        self.server = server
        self.base_url = base_url
        self.monitor = monitor
        self.ready = {"database": True, "hsm": True}


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    monitor = Monitor(lambda: SEEN_AT)
    server = SwitchServer(LISTENER, signing_on(approve_small), observer=monitor)
    await server.start()
    holder: dict[str, Stack] = {}

    async def readiness() -> Mapping[str, bool]:
        return holder["stack"].ready

    app = create_admin_app(
        DEVELOPMENT_KEYS, monitor=monitor, stats=server.stats, readiness=readiness
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    holder["stack"] = Stack(server, f"http://127.0.0.1:{port}", monitor)
    try:
        yield holder["stack"]
    finally:
        await runner.cleanup()
        await server.shutdown(1_000)


async def drive(port: int) -> None:
    client = await TerminalClient.connect("127.0.0.1", port)
    await client.request(network_request("001", stan="000001", now=SEEN_AT, terminal_id="KIOSK001"))
    for stan, amount in (("000002", 1000), ("000003", 9000), ("000004", 2000)):
        fields = {3: "010000", 4: f"{amount:012d}", 7: "1123101500", 11: stan, 41: "KIOSK001"}
        await client.request(Message("0200", fields))
    await client.close()


async def test_health_and_readiness_are_open(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.base_url}/health") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "ok"})
        async with http.get(f"{stack.base_url}/ready") as reply:
            assert reply.status == 200
        stack.ready = {"database": False, "hsm": True}
        async with http.get(f"{stack.base_url}/ready") as reply:
            assert reply.status == 503
            assert await reply.json() == {
                "ready": False,
                "checks": {"database": False, "hsm": True},
            }


@pytest.mark.parametrize("path", ["/metrics", "/terminals"])
@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer wrong",
        "Bearer dev-viewer.wrong",
        f"Basic {DEVELOPMENT_TOKENS[Role.VIEWER]}",
        DEVELOPMENT_TOKENS[Role.VIEWER],
        "Bearer unknown.development-only-viewer-key",
    ],
)
async def test_protected_endpoints_refuse_without_a_good_key(
    stack: Stack, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(stack.base_url + path, headers=headers) as reply,
    ):
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert (await reply.json())["error"] == "unauthorized"


async def test_metrics_and_terminals_reflect_what_happened(stack: Stack) -> None:
    await drive(stack.server.port)
    async with aiohttp.ClientSession(headers=VIEWER) as http:
        async with http.get(f"{stack.base_url}/metrics") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await reply.text()
        async with http.get(f"{stack.base_url}/terminals") as reply:
            fleet = await reply.json()
    assert 'switch_requests_total{mti="0200",response_code="00"} 2.0' in text
    assert 'switch_requests_total{mti="0200",response_code="51"} 1.0' in text
    assert 'switch_requests_total{mti="0800",response_code="00"} 1.0' in text
    assert "switch_request_latency_seconds_count 4.0" in text
    assert 'switch_request_latency_seconds_bucket{le="+Inf"} 4.0' in text
    assert 'switch_dependency_errors_total{component="database"} 0.0' in text
    assert "switch_connections 0.0" in text
    assert 'switch_tls_handshake_failures_total{reason="protocol"} 0.0' in text
    assert "switch_tls_client_certificate_days_left_min" not in text  # no client certificate
    assert fleet == {
        "terminals": [
            {
                "terminal_id": "KIOSK001",
                "signed_on": False,  # the connection closed
                "last_seen": "2026-11-23T10:15:00+00:00",
                "requests": 4,
                "financial_requests": 3,
                "approved": 2,
                "approval_rate": 0.6667,
                "certificate_expires_at": None,  # plain TCP: no client certificate
                "certificate_days_left": None,
            }
        ]
    }


async def test_fleet_page_is_served_without_data(stack: Stack) -> None:
    await drive(stack.server.port)
    async with aiohttp.ClientSession() as http, http.get(f"{stack.base_url}/") as reply:
        page = await reply.text()
    assert reply.status == 200
    assert "Terminal fleet" in page
    assert "KIOSK001" not in page


# The role matrix. Callers, in column order: a key of each role, no key, a wrong secret.
CALLERS: tuple[str | None, ...] = (
    DEVELOPMENT_TOKENS[Role.OPERATOR],
    DEVELOPMENT_TOKENS[Role.AUDITOR],
    DEVELOPMENT_TOKENS[Role.VIEWER],
    None,
    "dev-auditor.not-its-secret",
)
# What each caller gets from each route: operator, auditor, viewer, no key, wrong key.
MATRIX: dict[tuple[str, str], tuple[int, int, int, int, int]] = {
    ("GET", "/health"): (200, 200, 200, 200, 200),
    ("GET", "/ready"): (200, 200, 200, 200, 200),
    ("GET", "/"): (200, 200, 200, 200, 200),
    ("GET", "/openapi.json"): (200, 200, 200, 200, 200),
    ("GET", "/metrics"): (200, 403, 200, 401, 401),
    ("GET", "/terminals"): (200, 403, 200, 401, 401),
    ("GET", "/journal"): (403, 200, 403, 401, 401),
    ("GET", "/journal/export"): (403, 200, 403, 401, 401),
    ("POST", "/journal/verifications"): (403, 202, 403, 401, 401),
    # No job of that id: the auditor is let through, and told so.
    ("GET", "/journal/verifications/{job_id}"): (403, 404, 403, 401, 401),
    ("GET", "/journal/verifications/{job_id}/events"): (403, 404, 403, 401, 401),
    ("GET", "/reports/terminals"): (403, 200, 403, 401, 401),
}
# Where each route is called (a path parameter filled, a narrow range to keep it small).
TARGETS = {
    "/journal": "/journal?limit=1",
    "/journal/export": "/journal/export?from=2000-01-01&to=2000-01-02",
    "/journal/verifications/{job_id}": "/journal/verifications/0123456789abcdef",
    "/journal/verifications/{job_id}/events": "/journal/verifications/0123456789abcdef/events",
}


async def _ready() -> Mapping[str, bool]:
    return {"database": True, "hsm": True}


def _app(pg_cluster: PgCluster | None, monitor: Monitor | None = None) -> web.Application:
    journal = None if pg_cluster is None else JournalSettings(pg_cluster.owner_dsn, time(0, 0))
    return create_admin_app(
        DEVELOPMENT_KEYS,
        monitor=monitor or Monitor(lambda: SEEN_AT),
        stats=lambda: Stats(0, 0, 0),
        readiness=_ready,
        journal=journal,
        wall_clock=lambda: SEEN_AT,
    )


@pytest.fixture
async def ops(pg_cluster: PgCluster) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(_app(pg_cluster))) as client:
        yield client


def test_the_matrix_names_every_route_of_the_app() -> None:
    """The matrix here covers every route an app without operations serves; the fleet, alert
    and report routes have theirs in tests/ops/test_api.py, against a running operations."""
    app = _app(None)
    registered = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert registered == set(MATRIX)
    events = {(route.method, route.path) for route in EVENT_ROUTES}
    assert {(route.method, route.path) for route in ROUTES} == set(MATRIX) | events
    assert events == set(EVENT_MATRIX)


@pytest.mark.parametrize(("method", "path"), list(MATRIX))
async def test_role_matrix(
    ops: TestClient[web.Request, web.Application], method: str, path: str
) -> None:
    statuses = []
    for key in CALLERS:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with ops.request(method, TARGETS.get(path, path), headers=headers) as reply:
            await reply.read()
            statuses.append(reply.status)
    assert tuple(statuses) == MATRIX[(method, path)]


async def test_refusals_are_logged_without_the_secret_and_counted() -> None:
    monitor = Monitor(lambda: SEEN_AT)
    secret = "not-its-secret-" + "x" * 20
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(_app(None, monitor))) as client:
            calls = [
                ("/metrics", None),
                ("/metrics", f"dev-viewer.{secret}"),
                ("/metrics", f"nobody.{secret}"),
                ("/metrics", "Basic abc"),
                ("/journal", DEVELOPMENT_TOKENS[Role.VIEWER]),
            ]
            for path, key in calls:
                headers = {"Authorization": key if " " in key else f"Bearer {key}"} if key else {}
                async with client.get(path, headers=headers) as reply:
                    await reply.read()
    refused = [event for event in logs if event["event"] == "api_refused"]
    assert [(e["reason"], e["status"], e["key_id"], e["path"]) for e in refused] == [
        ("no_key", 401, None, "/metrics"),
        ("wrong_secret", 401, "dev-viewer", "/metrics"),
        ("unknown_key", 401, "nobody", "/metrics"),
        ("malformed", 401, None, "/metrics"),
        ("wrong_role", 403, "dev-viewer", "/journal"),
    ]
    assert refused[-1]["role"] == "viewer"
    assert secret not in str(logs)
    counted = by_label(monitor.metrics, "switch_api_refusals_total", "reason")
    assert counted == {
        ("no_key",): 1,
        ("malformed",): 1,
        ("unknown_key",): 1,
        ("wrong_secret",): 1,
        ("wrong_role",): 1,
    }


async def test_a_flood_of_refusals_is_logged_a_few_lines_a_minute_and_counted_whole() -> None:
    monitor = Monitor(lambda: SEEN_AT)
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(_app(None, monitor))) as client:
            for _ in range(30):
                async with client.get("/metrics") as reply:
                    assert reply.status == 401
    assert len([event for event in logs if event["event"] == "api_refused"]) == 20
    assert by_label(monitor.metrics, "switch_api_refusals_total", "reason")[("no_key",)] == 30


async def test_every_call_of_an_operator_or_auditor_is_logged_with_its_key_id(
    ops: TestClient[web.Request, web.Application],
) -> None:
    calls = [
        ("/terminals", Role.OPERATOR),
        ("/journal?limit=1", Role.AUDITOR),
        ("/journal?limit=0", Role.AUDITOR),
        ("/metrics", Role.VIEWER),
    ]
    with structlog.testing.capture_logs() as logs:
        for path, role in calls:
            headers = {"Authorization": f"Bearer {DEVELOPMENT_TOKENS[role]}"}
            async with ops.get(path, headers=headers) as reply:
                await reply.read()
    access = [event for event in logs if event["event"] == "api_access"]
    assert [(e["key_id"], e["role"], e["path"], e["status"], e["log_level"]) for e in access] == [
        ("dev-operator", "operator", "/terminals", 200, "info"),
        ("dev-auditor", "auditor", "/journal", 200, "info"),
        ("dev-auditor", "auditor", "/journal", 400, "info"),
        # A viewer's (Prometheus scraping) only at debug level.
        ("dev-viewer", "viewer", "/metrics", 200, "debug"),
    ]
    assert access[1]["query"] == "limit=1"
    assert not [token for token in DEVELOPMENT_TOKENS.values() if token in str(logs)]


async def test_a_route_added_without_its_roles_is_nobodys() -> None:
    app = _app(None)

    async def extra(_request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app.router.add_get("/extra", extra)
    async with TestClient(TestServer(app)) as client:
        for key in DEVELOPMENT_TOKENS.values():
            headers = {"Authorization": f"Bearer {key}"}
            async with client.get("/extra", headers=headers) as reply:
                assert reply.status == 403
        async with client.get("/nowhere") as reply:
            assert reply.status == 404


async def test_the_openapi_document_is_valid_and_has_every_route_with_its_roles() -> None:
    app = _app(None)
    async with TestClient(TestServer(app)) as client, client.get("/openapi.json") as reply:
        assert reply.status == 200
        spec = await reply.json()
    validate(spec)
    documented = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
    }
    registered = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert registered <= documented
    for route in ROUTES:
        operation = spec["paths"][route.path][route.method.lower()]
        assert operation["x-roles"] == sorted(route.roles)
        if route.open:
            assert operation["security"] == []
        else:
            assert operation["security"] == [{"apiKey": []}]
            assert {"401", "403"} <= set(operation["responses"])
        for parameter in route.parameters:
            assert parameter.name in [p["name"] for p in operation["parameters"]]

"""The operations HTTP app over real HTTP on loopback, fed by a real switch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from kiosk_sim.client import TerminalClient, network_request
from switch.admin import create_admin_app
from switch.iso8583 import Message
from switch.monitor import Monitor
from switch.response_codes import ResponseCode
from switch.responses import respond
from switch.server import Link, SwitchServer
from tests.switch.conftest import LISTENER, signing_on

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEEN_AT = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


async def approve_small(request: Message, _link: Link) -> Message:
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

    app = create_admin_app(token=TOKEN, monitor=monitor, stats=server.stats, readiness=readiness)
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
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
async def test_protected_endpoints_refuse_without_the_token(
    stack: Stack, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(stack.base_url + path, headers=headers) as reply,
    ):
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == "Bearer"


async def test_metrics_and_terminals_reflect_what_happened(stack: Stack) -> None:
    await drive(stack.server.port)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{stack.base_url}/metrics") as reply:
            assert reply.status == 200
            text = await reply.text()
        async with http.get(f"{stack.base_url}/terminals") as reply:
            fleet = await reply.json()
    assert 'switch_requests_total{mti="0200",response_code="00"} 2' in text
    assert 'switch_requests_total{mti="0200",response_code="51"} 1' in text
    assert 'switch_requests_total{mti="0800",response_code="00"} 1' in text
    assert "switch_request_latency_seconds_count 4" in text
    assert 'switch_request_latency_seconds_bucket{le="+Inf"} 4' in text
    assert 'switch_dependency_errors_total{component="database"} 0' in text
    assert "switch_connections 0" in text
    assert 'switch_tls_handshake_failures_total{reason="protocol"} 0' in text
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

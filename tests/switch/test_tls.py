"""Mutual TLS on a listener, with certificates from CAs the test generates (P-256).

Refused handshakes are run on both event loops the switch may use (asyncio and uvloop): each is
refused, logged with the peer's address and its reason, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
import uvloop
from aiohttp.test_utils import TestClient, TestServer

from kiosk_sim.client import SwitchConnectionClosed, TerminalClient, network_request
from kiosk_sim.pki import Authority, Issued, client_context
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, Role
from switch.admin import create_admin_app
from switch.iso8583 import Dialect, LengthHeader, Message, frame, wire_of
from switch.iso8583.response_codes import ResponseCode
from switch.monitor import Monitor
from switch.responses import respond
from switch.server import ConnectionView, SwitchServer
from switch.settings import TlsSettings
from switch.tls import HandshakeFailure, HandshakeRefusal, handshake_refusal
from tests.switch.conftest import LISTENER, signing_on
from tests.switch.scraped import by_label, value

NOW = dt.datetime(2026, 11, 23, 10, 15, tzinfo=dt.UTC)
TOKEN = DEVELOPMENT_TOKENS[Role.VIEWER]


async def approve(request: Message, _connection: ConnectionView) -> Message:
    return respond(request, ResponseCode.APPROVED)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    terminals = Authority(tmp_path, "terminal-ca")
    stranger = Authority(tmp_path, "stranger-ca")
    return {
        "ca": terminals.issued,
        "server": terminals.issue("switch", "switch", server=True),
        "terminal": terminals.issue("KIOSK001", "KIOSK001"),
        "other": terminals.issue("KIOSK002", "KIOSK002"),
        "nameless": terminals.issue("nameless"),
        "expired": terminals.issue("expired", "KIOSK001", ended_ago=dt.timedelta(hours=1)),
        "stranger": stranger.issue("KIOSK666", "KIOSK666"),
    }


def tls_settings(pki: dict[str, Issued], **overrides: Any) -> TlsSettings:
    settings = TlsSettings(
        cert_file=pki["server"].cert,
        key_file=pki["server"].key,
        client_ca_file=pki["ca"].cert,
        handshake_timeout_ms=2_000,
        require_subject_match=False,
        certificate_expiry_warning_days=0,
        refused_log_lines_max=10,
        refused_log_interval_ms=60_000,
    )
    return replace(settings, **overrides)


Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def events(logs: Logs, name: str) -> Logs:
    return [event for event in logs if event["event"] == name]


def refusals(monitor: Monitor, reason: HandshakeFailure) -> int:
    return int(value(monitor.metrics, "switch_tls_handshake_failures_total", reason=reason))


def subject_mismatches(monitor: Monitor) -> float:
    return value(monitor.metrics, "switch_tls_subject_mismatches_total")


async def until_counted(
    monitor: Monitor, reason: HandshakeFailure, count: int, *, polls_max: int = 300
) -> None:
    """The server logs and counts a refusal once its handshake task resumes, a moment after
    the client has seen the connection close."""
    for _ in range(polls_max):
        if refusals(monitor, reason) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{reason} not counted {count} times within 3 s")


@contextlib.asynccontextmanager
async def tls_switch(
    tls: TlsSettings, monitor: Monitor, **server_options: Any
) -> AsyncIterator[SwitchServer]:
    server = SwitchServer(
        replace(LISTENER, tls=tls), signing_on(approve), observer=monitor, **server_options
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1_000)


def echo_frame(stan: str) -> bytes:
    request = network_request("301", stan=stan, now=NOW)
    return frame(wire_of(request, Dialect()), LengthHeader.of("2b"))


async def refused_attempt(port: int, context: ssl.SSLContext | None) -> str:
    """Connect from a port of our own, send an echo and see the connection closed unanswered.
    Returns the client's address, as the switch should log it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # TLS 1.3 finishes the client's side of the handshake before the server has checked the
    # client's certificate: the refusal shows on the first read.
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=context, server_hostname="127.0.0.1" if context else None
    )
    try:
        writer.write(echo_frame("000009"))
        assert await asyncio.wait_for(reader.read(), 3) == b""
    except (ssl.SSLError, ConnectionError):
        pass  # the alert the server sent, or its reset
    finally:
        writer.close()
    return address


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_on(loop: str, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_refused_handshakes_are_logged_with_peer_and_reason_and_counted(
    pki: dict[str, Issued], logs: Logs, loop: str
) -> None:
    cases = [
        (client_context(pki["ca"], pki["stranger"]), HandshakeFailure.UNKNOWN_CA),
        (client_context(pki["ca"], None), HandshakeFailure.NO_CERTIFICATE),
        (client_context(pki["ca"], pki["expired"]), HandshakeFailure.EXPIRED),
        (None, HandshakeFailure.PROTOCOL),  # plain TCP on the TLS port
    ]
    monitor = Monitor(lambda: NOW)

    async def scenario() -> None:
        async with tls_switch(tls_settings(pki), monitor) as server:
            for context, reason in cases:
                peer = await refused_attempt(server.port, context)
                await until_counted(monitor, reason, 1)
                [logged] = [e for e in events(logs, "tls_handshake_refused") if e["peer"] == peer]
                assert (logged["reason"], logged["log_level"]) == (reason.value, "warning")
            # A terminal of the CA is served, its echo sent at once after the handshake.
            good = await TerminalClient.connect(
                "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["terminal"])
            )
            echo = network_request("301", stan="000001", now=NOW)
            assert (await good.request(echo)).response_code == "00"
            await good.close()

    run_on(loop, scenario)
    for reason in HandshakeFailure:
        assert refusals(monitor, reason) == 1
    # None of them reached the codec: the only request answered is the good terminal's echo.
    requests = by_label(monitor.metrics, "switch_requests_total", "mti", "response_code")
    assert requests == {("0800", "00"): 1}


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


async def test_a_flood_of_refusals_is_logged_at_most_k_lines_per_interval(
    pki: dict[str, Issued], logs: Logs
) -> None:
    monitor = Monitor(lambda: NOW)
    clock = Clock()
    tls = tls_settings(pki, refused_log_lines_max=2, refused_log_interval_ms=10_000)
    async with tls_switch(tls, monitor, clock=clock) as server:
        for _ in range(5):
            await refused_attempt(server.port, None)
        await until_counted(monitor, HandshakeFailure.PROTOCOL, 5)
        assert [e["suppressed"] for e in events(logs, "tls_handshake_refused")] == [0, 0]
        clock.now_s += 10
        await refused_attempt(server.port, None)
        await until_counted(monitor, HandshakeFailure.PROTOCOL, 6)
    assert [e["suppressed"] for e in events(logs, "tls_handshake_refused")] == [0, 0, 3]


async def test_mutual_tls_admits_only_terminals_with_a_certificate_from_the_ca(
    pki: dict[str, Issued],
) -> None:
    monitor = Monitor(lambda: NOW)
    async with tls_switch(tls_settings(pki), monitor) as server:
        good = await TerminalClient.connect(
            "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["terminal"])
        )
        echo = network_request("301", stan="000001", now=NOW)
        assert (await good.request(echo)).response_code == "00"
        await good.close()

        for own in (None, pki["stranger"]):
            with pytest.raises((ssl.SSLError, ConnectionError, SwitchConnectionClosed)):
                await _echo_with(server.port, client_context(pki["ca"], own))
        await asyncio.sleep(0.1)
    assert by_label(monitor.metrics, "switch_requests_total", "mti", "response_code") == {
        ("0800", "00"): 1
    }


async def _echo_with(port: int, context: ssl.SSLContext) -> None:
    client = await TerminalClient.connect("127.0.0.1", port, tls=context)
    try:
        # TLS 1.3 reports a refused client certificate on the first read, not the handshake.
        await client.request(network_request("301", stan="000002", now=NOW), timeout_ms=2_000)
    finally:
        await client.close()


async def sign_on(client: TerminalClient, terminal_id: str, stan: str) -> str | None:
    request = network_request("001", stan=stan, now=NOW, terminal_id=terminal_id)
    return (await client.request(request)).response_code


async def test_a_certificate_naming_another_terminal_cannot_sign_on_as_this_one(
    pki: dict[str, Issued], logs: Logs
) -> None:
    monitor = Monitor(lambda: NOW)
    async with tls_switch(tls_settings(pki, require_subject_match=True), monitor) as server:
        client = await TerminalClient.connect(
            "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["other"])
        )
        assert await sign_on(client, "KIOSK001", "000001") == "58"
        # The connection stays usable for the terminal its certificate names.
        assert await sign_on(client, "KIOSK002", "000002") == "00"
        await client.close()
    [event] = events(logs, "security_event")
    assert event["event_kind"] == "certificate_subject_mismatch"
    assert (event["claimed_terminal_id"], event["certificate_terminal_id"]) == (
        "KIOSK001",
        "KIOSK002",
    )
    assert event["peer"].startswith("127.0.0.1:")
    assert subject_mismatches(monitor) == 1
    assert monitor.fleet.snapshot()[0]["terminal_id"] == "KIOSK002"


async def test_without_the_setting_any_certificate_of_the_ca_signs_on(
    pki: dict[str, Issued],
) -> None:
    monitor = Monitor(lambda: NOW)
    async with tls_switch(tls_settings(pki), monitor) as server:
        client = await TerminalClient.connect(
            "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["other"])
        )
        assert await sign_on(client, "KIOSK001", "000001") == "00"
        await client.close()
    assert subject_mismatches(monitor) == 0


async def test_a_certificate_naming_no_terminal_is_closed_when_a_match_is_required(
    pki: dict[str, Issued], logs: Logs
) -> None:
    monitor = Monitor(lambda: NOW)
    async with tls_switch(tls_settings(pki, require_subject_match=True), monitor) as server:
        client = await TerminalClient.connect(
            "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["nameless"])
        )
        await client.wait_closed_by_peer(timeout_ms=2_000)
        await client.close()
    [event] = events(logs, "security_event")
    assert event["event_kind"] == "certificate_subject_mismatch"
    assert subject_mismatches(monitor) == 1


async def scraped(monitor: Monitor, server: SwitchServer, name: str) -> float:
    """One value from GET /metrics of the operations app."""

    async def ready() -> Mapping[str, bool]:
        return {}

    app = create_admin_app(DEVELOPMENT_KEYS, monitor=monitor, stats=server.stats, readiness=ready)
    async with TestClient(TestServer(app)) as http:
        reply = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        text = await reply.text()
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(value)


async def test_days_left_on_the_certificate_are_in_the_fleet_and_warned_once_per_connection(
    pki: dict[str, Issued], logs: Logs
) -> None:
    now = dt.datetime.now(dt.UTC)
    monitor = Monitor(lambda: now)
    tls = tls_settings(pki, certificate_expiry_warning_days=30)
    async with tls_switch(tls, monitor, wall_clock=lambda: now) as server:
        client = await TerminalClient.connect(
            "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["terminal"])
        )
        assert await sign_on(client, "KIOSK001", "000001") == "00"
        assert await sign_on(client, "KIOSK001", "000002") == "00"
        [terminal] = monitor.fleet.snapshot()
        gauge = await scraped(monitor, server, "switch_tls_client_certificate_days_left_min")
        await client.close()
    assert terminal["certificate_days_left"] == pytest.approx(1.0, abs=0.1)
    assert gauge == pytest.approx(1.0, abs=0.1)
    assert isinstance(terminal["certificate_expires_at"], str)
    [warning] = events(logs, "tls_certificate_expiring")
    assert warning["certificate_terminal_id"] == "KIOSK001"
    assert warning["days_left"] == pytest.approx(1.0, abs=0.1)
    assert monitor.fleet.certificate_days_left_min() is None  # no terminal signed on now


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, reason)
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (_verify_error(20, "unable to get local issuer certificate"), "unknown_ca"),
        (_verify_error(18, "self-signed certificate"), "unknown_ca"),
        (_verify_error(7, "certificate signature failure"), "unknown_ca"),
        (_verify_error(10, "certificate has expired"), "expired"),
        (_verify_error(9, "certificate is not yet valid"), "protocol"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_certificate"),
        (_ssl_error("WRONG_VERSION_NUMBER"), "protocol"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "protocol"),  # the terminal refused *our* CA
        (ConnectionResetError(), "protocol"),
        (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "protocol"),
    ],
)
def test_handshake_errors_are_classified(raised: OSError, expected: str) -> None:
    refusal = handshake_refusal(raised)
    assert refusal.reason == expected
    assert refusal.detail


def test_details_are_openssl_words() -> None:
    assert handshake_refusal(_verify_error(10, "certificate has expired")) == HandshakeRefusal(
        HandshakeFailure.EXPIRED, "certificate has expired"
    )
    assert handshake_refusal(ConnectionResetError()).detail == "ConnectionResetError"

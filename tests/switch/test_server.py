"""The switch over real TCP on loopback: flows, pipelining, limits, hostile bytes, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from datetime import UTC, datetime

import iso8583
import iso8583.specs
import pytest

from kiosk_sim.client import SwitchConnectionClosed, TerminalClient, network_request
from switch.iso8583 import Message
from switch.iso8583.response_codes import ResponseCode
from switch.responses import respond
from switch.server import ConnectionView
from tests.switch.conftest import running_switch

NOW = datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)
TERMINAL = "KIOSK001"


async def approve(request: Message, _connection: ConnectionView) -> Message:
    return respond(request, ResponseCode.APPROVED)


async def sleep_by_amount(request: Message, _connection: ConnectionView) -> Message:
    """Takes F4 milliseconds, so responses come back in a different order from requests."""
    await asyncio.sleep((request.amount_minor or 0) / 1000)
    return respond(request, ResponseCode.APPROVED)


def inquiry(stan: str, amount_minor: int = 0) -> Message:
    return Message(
        "0200",
        {3: "310000", 4: f"{amount_minor:012d}", 7: "1123101500", 11: stan, 41: TERMINAL},
    )


async def signed_on(port: int, **kwargs: object) -> TerminalClient:
    client = await TerminalClient.connect("127.0.0.1", port)
    response = await client.request(
        network_request("001", stan="000001", now=NOW, terminal_id=TERMINAL)
    )
    assert response.response_code == "00"
    return client


async def test_sign_on_echo_sign_off() -> None:
    async with running_switch(approve) as server:
        client = await TerminalClient.connect("127.0.0.1", server.port)
        for stan, code in (("000001", "001"), ("000002", "301"), ("000003", "002")):
            response = await client.request(
                network_request(code, stan=stan, now=NOW, terminal_id=TERMINAL)
            )
            assert response.mti == "0810"
            assert dict(response.fields) == {
                7: "1123101500",
                11: stan,
                39: "00",
                41: TERMINAL,
                70: code,
            }
        await client.close()


async def test_financial_before_sign_on_is_refused_then_served_after() -> None:
    async with running_switch(approve) as server:
        client = await TerminalClient.connect("127.0.0.1", server.port)
        refused = await client.request(inquiry("000010"))
        assert (refused.mti, refused.response_code) == ("0210", "58")
        await client.request(network_request("001", stan="000011", now=NOW, terminal_id=TERMINAL))
        served = await client.request(inquiry("000012"))
        assert served.response_code == "00"
        await client.close()


async def test_pipelined_requests_are_answered_out_of_order() -> None:
    async with running_switch(sleep_by_amount) as server:
        client = await signed_on(server.port)
        arrivals: list[str] = []

        async def one(stan: str, delay_ms: int) -> None:
            response = await client.request(inquiry(stan, delay_ms))
            assert response.stan == stan
            arrivals.append(stan)

        await asyncio.gather(*(one(f"{100 + i:06d}", 250 - 50 * i) for i in range(5)))
        assert arrivals == ["000104", "000103", "000102", "000101", "000100"]
        await client.close()


async def test_in_flight_requests_per_connection_are_bounded() -> None:
    release = asyncio.Event()
    peak = 0

    async def held(request: Message, connection: ConnectionView) -> Message:
        nonlocal peak
        peak = max(peak, server.stats().in_flight)
        await release.wait()
        return respond(request, ResponseCode.APPROVED)

    async with running_switch(held, max_in_flight_per_connection=4) as server:
        client = await signed_on(server.port)
        pending = [
            asyncio.ensure_future(client.request(inquiry(f"{200 + i:06d}"))) for i in range(12)
        ]
        await asyncio.sleep(0.3)
        assert server.stats().in_flight == 4
        release.set()
        responses = await asyncio.gather(*pending)
        assert sorted(r.stan or "" for r in responses) == [f"{200 + i:06d}" for i in range(12)]
        assert peak <= 4
        await client.close()


async def test_oversize_length_header_closes_only_that_connection() -> None:
    async with running_switch(approve, max_frame_bytes=512) as server:
        bystander = await signed_on(server.port)
        attacker = await TerminalClient.connect("127.0.0.1", server.port)
        await attacker.send_raw(struct.pack(">H", 60_000) + b"0800")
        await attacker.wait_closed_by_peer(timeout_ms=2_000)
        echo = network_request("301", stan="000300", now=NOW)
        assert (await bystander.request(echo)).response_code == "00"
        await attacker.close()
        await bystander.close()


async def test_unreadable_frame_closes_the_connection() -> None:
    async with running_switch(approve) as server:
        client = await TerminalClient.connect("127.0.0.1", server.port)
        garbage = b"\x00\xffgarbage"
        await client.send_raw(struct.pack(">H", len(garbage)) + garbage)
        await client.wait_closed_by_peer(timeout_ms=2_000)
        with pytest.raises(SwitchConnectionClosed):
            await client.request(network_request("301", stan="000001", now=NOW))
        await client.close()


async def test_malformed_request_gets_format_error_and_the_connection_lives_on() -> None:
    async with running_switch(approve) as server:
        client = await TerminalClient.connect("127.0.0.1", server.port)
        bad = b"0800" + bytes.fromhex("8220000000000000") + bytes.fromhex("0400000000000000")
        bad += b"1123101500" + b"000001" + b"3X1"  # F70 must be digits
        await client.send_raw(struct.pack(">H", len(bad)) + bad)
        await asyncio.sleep(0.2)
        assert [(m.mti, m.response_code, m.stan) for m in client.unmatched] == [
            ("0810", "30", "000001")
        ]
        echo = await client.request(network_request("301", stan="000002", now=NOW))
        assert echo.response_code == "00"
        await client.close()


async def test_idle_connections_are_closed() -> None:
    async with running_switch(approve, idle_timeout_ms=200) as server:
        client = await signed_on(server.port)
        started = time.monotonic()
        await client.wait_closed_by_peer(timeout_ms=3_000)
        assert 0.15 < time.monotonic() - started < 2.0
        await client.close()


async def test_a_frame_dribbled_out_slowly_is_cut_off() -> None:
    """Slowloris: a byte every 100 ms keeps the connection from being idle, but the frame it
    started must be complete within the frame timeout."""
    async with running_switch(approve, frame_timeout_ms=500) as server:
        client = await TerminalClient.connect("127.0.0.1", server.port)
        started = time.monotonic()
        await client.send_raw(struct.pack(">H", 200))
        with contextlib.suppress(ConnectionError):
            while not client.closed_by_peer and time.monotonic() - started < 5:
                await client.send_raw(b"0")
                await asyncio.sleep(0.1)
        assert client.closed_by_peer
        assert 0.4 < time.monotonic() - started < 2.0
        await client.close()


async def test_pipelined_frames_arriving_steadily_are_not_cut_off() -> None:
    """Each read may end inside the next frame; only a frame that itself takes too long is."""
    # 25 frames of ~60 ms each take well over the 800 ms timeout in all; none alone comes near.
    async with running_switch(approve, frame_timeout_ms=800) as server:
        client = await signed_on(server.port)
        for i in range(25):
            wire = client.framed(inquiry(f"{700 + i:06d}"))
            await client.send_raw(wire[:-3])
            await asyncio.sleep(0.05)
            await client.send_raw(wire[-3:])
            assert (
                await client.request(network_request("301", stan=f"{800 + i:06d}", now=NOW))
            ).response_code == "00"
        assert not client.closed_by_peer
        await client.close()


async def test_connections_over_the_limit_are_closed_at_once() -> None:
    async with running_switch(approve, max_connections=2) as server:
        first = await signed_on(server.port)
        second = await TerminalClient.connect("127.0.0.1", server.port)
        await second.request(network_request("301", stan="000002", now=NOW))
        third = await TerminalClient.connect("127.0.0.1", server.port)
        await third.wait_closed_by_peer(timeout_ms=2_000)
        assert server.stats().refused_connections == 1
        for client in (first, second, third):
            await client.close()


async def test_a_thousand_concurrent_connections_each_echo() -> None:
    async with running_switch(approve) as server:
        clients = await asyncio.gather(
            *(TerminalClient.connect("127.0.0.1", server.port) for _ in range(1_000))
        )
        assert server.stats().connections == 1_000
        responses = await asyncio.gather(
            *(
                c.request(network_request("301", stan=f"{i:06d}", now=NOW), timeout_ms=20_000)
                for i, c in enumerate(clients)
            )
        )
        assert all(r.response_code == "00" for r in responses)
        assert [r.stan for r in responses] == [f"{i:06d}" for i in range(1_000)]
        await asyncio.gather(*(c.close() for c in clients))


async def test_shutdown_finishes_in_flight_requests_then_closes() -> None:
    async with running_switch(sleep_by_amount) as server:
        port = server.port
        client = await signed_on(port)
        pending = [
            asyncio.ensure_future(client.request(inquiry(f"{400 + i:06d}", 300))) for i in range(3)
        ]
        await asyncio.sleep(0.1)
        assert server.stats().in_flight == 3
        await server.shutdown(grace_ms=5_000)
        responses = await asyncio.gather(*pending)
        assert [r.response_code for r in responses] == ["00", "00", "00"]
        await client.wait_closed_by_peer(timeout_ms=2_000)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await client.close()


async def test_shutdown_is_bounded_when_work_does_not_finish() -> None:
    cancelled = asyncio.Event()

    async def stuck(request: Message, _connection: ConnectionView) -> Message:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with running_switch(stuck) as server:
        client = await signed_on(server.port)
        await client.send(inquiry("000500"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.shutdown(grace_ms=200)
        assert time.monotonic() - started < 2.0
        await asyncio.wait_for(cancelled.wait(), 2.0)
        await client.close()


def _independent_client_echo(port: int) -> dict[str, str]:
    """A client that shares no code with the switch: pyiso8583's stock spec, a plain socket."""
    request = {"t": "0800", "7": "1123101500", "11": "123456", "70": "301"}
    payload, _ = iso8583.encode(request, iso8583.specs.default)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack(">H", len(payload)) + payload)
        header = sock.recv(2, socket.MSG_WAITALL)
        body = sock.recv(struct.unpack(">H", header)[0], socket.MSG_WAITALL)
    decoded, _ = iso8583.decode(body, iso8583.specs.default)
    return decoded


async def test_an_independent_pyiso8583_client_gets_a_correct_0810() -> None:
    async with running_switch(approve) as server:
        decoded = await asyncio.to_thread(_independent_client_echo, server.port)
    assert decoded["t"] == "0810"
    assert (decoded["7"], decoded["11"], decoded["39"], decoded["70"]) == (
        "1123101500",
        "123456",
        "00",
        "301",
    )


async def test_a_handler_failure_answers_96_and_the_switch_keeps_serving() -> None:
    async def broken(request: Message, _connection: ConnectionView) -> Message:
        raise RuntimeError("boom")

    async with running_switch(broken) as server:
        client = await signed_on(server.port)
        assert (await client.request(inquiry("000600"))).response_code == "96"
        assert (
            await client.request(network_request("301", stan="000601", now=NOW))
        ).response_code == "00"
        await client.close()

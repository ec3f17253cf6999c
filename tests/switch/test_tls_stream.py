"""TLS over the plain transport (switch.tls_stream), on both event loops the switch may use:
records delivered in order across a paused read, a close_notify seen as the end, and a refused
handshake raised to the caller with the socket closed."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from kiosk_sim.pki import Authority, Issued, client_context
from switch.tls_stream import accept_tls

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class Recorder(asyncio.Protocol):
    """Pauses reading after its first chunk and resumes on the next loop turn."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.ended = asyncio.get_running_loop().create_future()
        self.paused_once = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += data
        if not self.paused_once:
            self.paused_once = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)
        self.transport.write(data)  # echoed back

    def eof_received(self) -> bool | None:
        if not self.ended.done():
            self.ended.set_result(bytes(self.received))
        return None


def _pki(directory: Path) -> dict[str, Issued]:
    ca = Authority(directory, "terminal-ca")
    stranger = Authority(directory, "stranger-ca")
    return {
        "ca": ca.issued,
        "server": ca.issue("switch", "switch", server=True),
        "terminal": ca.issue("KIOSK001", "KIOSK001"),
        "stranger": stranger.issue("KIOSK666", "KIOSK666"),
    }


def _server_context(pki: dict[str, Issued]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"].cert, pki["server"].key)
    context.load_verify_locations(pki["ca"].cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _accepted(listener: socket.socket) -> socket.socket:
    sock, _ = await asyncio.get_running_loop().sock_accept(listener)
    return sock


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_records_arrive_in_order_across_a_pause_and_close_notify_ends(
    tmp_path: Path, loop: str
) -> None:
    pki = _pki(tmp_path)
    payload = bytes(range(256)) * 400  # 100 KiB: several records

    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            port = listener.getsockname()[1]
            recorders: list[Recorder] = []

            def new_recorder() -> Recorder:
                recorders.append(Recorder())
                return recorders[-1]

            async def serve() -> None:
                sock = await _accepted(listener)
                await accept_tls(sock, _server_context(pki), new_recorder, handshake_timeout_s=5)

            server = asyncio.ensure_future(serve())
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki["ca"], pki["terminal"])
            )
            await server
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
            writer.close()
            [recorder] = recorders
            assert await asyncio.wait_for(recorder.ended, 5) == payload
            assert recorder.paused_once

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_refused_handshake_is_raised_and_the_socket_closed(tmp_path: Path, loop: str) -> None:
    pki = _pki(tmp_path)

    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            port = listener.getsockname()[1]

            async def serve() -> None:
                sock = await _accepted(listener)
                await accept_tls(sock, _server_context(pki), Recorder, handshake_timeout_s=5)

            server = asyncio.ensure_future(serve())
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki["ca"], pki["stranger"])
            )
            with pytest.raises(ssl.SSLCertVerificationError):
                await server
            # TLS 1.3: the client learns of the refusal (the server's alert) on its first read.
            with pytest.raises(ssl.SSLError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_silent_client_times_out_in_the_handshake(tmp_path: Path, loop: str) -> None:
    pki = _pki(tmp_path)

    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            port = listener.getsockname()[1]
            server = asyncio.ensure_future(_accepted(listener))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with pytest.raises(TimeoutError):
                await accept_tls(
                    await server, _server_context(pki), Recorder, handshake_timeout_s=0.2
                )
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())

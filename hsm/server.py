"""The networked HSM server: a thin asyncio adapter around ``wire``, ``access`` and ``commands``.

One request at a time per connection (clients pool connections for concurrency). Limits: frame
size (``wire.FRAME_MAX``), connection count, a TLS handshake timeout, and an idle timeout per
connection. With TLS, each connection's client certificate names the client whose profile
decides which commands it may run; without TLS (development only) every client may run all.
The handshake runs here rather than inside asyncio's listener, which would drop a refused one
without a word: each is logged with the peer's address, and counted.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import structlog

from hsm import wire
from hsm.access import UNAUTHENTICATED, AccessPolicy, Client, answer
from hsm.engine import SoftHsm
from hsm.errors import CommandNotPermittedError, PinRateLimitError, RequestError
from hsm.tls import ServerTls, server_context

log = structlog.get_logger("hsm.server")

# How long a closing connection may wait for its peer: one that never answers TLS's close (or
# whose handshake failed half-way) would otherwise hold its handler, and the server's close().
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 1500
    connections_max: int = 256
    idle_timeout_ms: int = 300_000
    tls: ServerTls | None = None
    access: AccessPolicy = field(default_factory=AccessPolicy)


@dataclass(frozen=True)
class ServerStats:
    """Counts since start. A refusal is also logged, with the client and the command."""

    connections_total: int  # past the TLS handshake
    handshakes_refused_total: int
    commands_total: int
    commands_not_permitted_total: int
    pin_verifications_limited_total: int


class HsmServer:
    def __init__(self, core: SoftHsm, config: ServerConfig) -> None:
        self._core = core
        self._config = config
        self._slots = asyncio.Semaphore(config.connections_max)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._ssl_context: ssl.SSLContext | None = None
        self._connections_total = 0
        self._handshakes_refused_total = 0
        self._commands_total = 0
        self._commands_not_permitted_total = 0
        self._pin_verifications_limited_total = 0

    @property
    def stats(self) -> ServerStats:
        return ServerStats(
            self._connections_total,
            self._handshakes_refused_total,
            self._commands_total,
            self._commands_not_permitted_total,
            self._pin_verifications_limited_total,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        tls = self._config.tls
        if tls is None:
            log.warning("hsm_tls_off", note="DEVELOPMENT ONLY: any client may run any command")
        else:
            self._ssl_context = server_context(tls)
        self._server = await asyncio.start_server(self._serve, self._config.host, self._config.port)
        log.info(
            "hsm_server_listening",
            host=self._config.host,
            port=self.port,
            lmk_kcv=self._core.lmk_kcv,
            tls=tls is not None,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            log.warning("hsm_connection_refused", reason="connections_max")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None, "a connection handler runs in a task"
        self._connections.add(task)
        async with self._slots:
            try:
                client = await self._admit(writer)
                if client is not None:
                    await self._requests(reader, writer, client)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
                pass  # the peer went away, idled out or broke TLS: nothing to answer
            except asyncio.CancelledError:
                pass  # server shutdown; this handler is the top of its task
            finally:
                self._connections.discard(task)
                writer.close()
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await writer.wait_closed()
                except (ConnectionError, ssl.SSLError, TimeoutError):
                    writer.transport.abort()

    async def _admit(self, writer: asyncio.StreamWriter) -> Client | None:
        """The client on this connection once TLS is up; None if its handshake failed."""
        tls = self._config.tls
        if tls is None:
            self._connections_total += 1
            return UNAUTHENTICATED
        assert self._ssl_context is not None, "start() built the context"
        try:
            await writer.start_tls(
                self._ssl_context, ssl_handshake_timeout=tls.handshake_timeout_ms / 1000
            )
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            self._handshakes_refused_total += 1
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning(
                "hsm_handshake_refused", peer=writer.get_extra_info("peername"), reason=reason
            )
            return None
        self._connections_total += 1
        return self._identify(writer)

    def _identify(self, writer: asyncio.StreamWriter) -> Client:
        ssl_object = writer.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True)
        assert certificate, "the handshake required a client certificate"
        client = self._config.access.identify(certificate)
        report = log.info if client.commands else log.warning
        report(
            "hsm_client_connected",
            client=client.name,
            profile=client.profile or "(none: not configured, or its pin does not match)",
            sha256=client.fingerprint,
            tls_version=ssl_object.version(),
        )
        return client

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: Client
    ) -> None:
        idle_s = self._config.idle_timeout_ms / 1000
        while True:
            header = await asyncio.wait_for(reader.readexactly(wire.LENGTH_HEADER), idle_s)
            payload = await asyncio.wait_for(reader.readexactly(wire.frame_length(header)), idle_s)
            try:
                request = wire.decode(payload)
            except RequestError:
                log.warning("hsm_malformed_frame", client=client.name, length=len(payload))
                return  # cannot echo a request id we could not read: drop the connection
            reply = answer(self._core, request, client)
            self._count(reply)
            writer.write(wire.encode(reply))
            await writer.drain()

    def _count(self, reply: wire.Message) -> None:
        self._commands_total += 1
        if reply.error == CommandNotPermittedError.code:
            self._commands_not_permitted_total += 1
        elif reply.error == PinRateLimitError.code:
            self._pin_verifications_limited_total += 1

"""The asyncio TCP server: a thin adapter between sockets and the sans-I/O wire layer.

Per connection: bytes → FrameBuffer → decode → route (in arrival order, no I/O) → either an
immediate reply or an async handler task. Responses go out as they complete, so a pipelined
connection may see them out of order (terminals match them by STAN). Every limit is enforced
here: connections, in-flight requests per connection, frame size, idle time, write backlog.

The server accepts sockets itself and opens each with `loop.connect_accepted_socket`; on a TLS
listener, under `switch.tls_stream.accept_tls`, which runs the handshake over the plain
transport and raises when it fails. With `loop.create_server(ssl=...)` a refused handshake
reaches neither the protocol nor the loop's exception handler (asyncio and uvloop both log it
at debug level only), and `start_tls` after a plain accept loses the first bytes under uvloop,
which starts reading after `connection_made` whatever the protocol asked. The loops' own TLS
also keeps a 256 KiB read buffer per connection, which `tls_stream` does without.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, cast

import structlog

from switch.dispatch import route
from switch.iso8583.codec import DecodeError, EncodeError, decode, wire_of
from switch.iso8583.framing import FrameBuffer, FramingError, LengthHeader, frame
from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode
from switch.iso8583.spec import ICC_DATA_FIELD
from switch.ratelimit import LogRateLimiter
from switch.responses import format_error, is_request_mti, respond
from switch.session import SecurityEvent, Session
from switch.settings import ListenerSettings
from switch.tls import (
    HandshakeFailure,
    HandshakeRefusal,
    PeerCertificate,
    handshake_refusal,
    peer_certificate,
    server_ssl_context,
)
from switch.tls_stream import accept_tls

log = structlog.get_logger("switch.server")

# A peer that stops reading gets this much response data buffered before we stop reading it.
WRITE_BUFFER_HIGH_BYTES = 64 * 1024
# Out of descriptors or buffers: accepting again at once would spin; asyncio waits as long.
ACCEPT_RETRY_DELAY_S = 1.0


class ConnectionView:
    """What a handler (and the observer) may see of the connection a request came in on."""

    session: Session
    peer: str
    # Numbers this process's connections in the order they opened (terminal events name it).
    seq: int
    # The terminal's verified client certificate (mutual TLS only).
    certificate: PeerCertificate | None


Handler = Callable[[Message, ConnectionView], Awaitable[Message | None]]


class Observer(Protocol):
    """Told of every opened connection, every answered message (with the connection it came
    on), every closed connection (with why), every refused TLS handshake and every certificate
    naming another terminal (metrics, fleet status, terminal events)."""

    def connected(self, connection: ConnectionView) -> None: ...

    def message(
        self,
        terminal_id: str | None,
        request_mti: str,
        response: Message,
        latency_ms: float,
        connection: ConnectionView,
        *,
        chip: bool,
    ) -> None: ...

    def disconnected(self, connection: ConnectionView, reason: str) -> None: ...

    def tls_refused(self, reason: HandshakeFailure) -> None: ...

    def subject_mismatch(self) -> None: ...


class ListenError(Exception):
    """The listener's address cannot be listened on: in use, not local, or not permitted."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host = host
        self.port = port
        self.error = error
        super().__init__(f"cannot listen on {host}:{port}: {error}")


@dataclass(frozen=True, slots=True)
class Stats:
    connections: int
    in_flight: int
    refused_connections: int


class TerminalConnection(asyncio.Protocol, ConnectionView):
    def __init__(self, server: SwitchServer) -> None:
        self._server = server
        listener = server.settings
        self._framer = FrameBuffer(
            LengthHeader.of(listener.dialect.length_header), listener.max_frame_bytes
        )
        self._header = LengthHeader.of(listener.dialect.length_header)
        self._transport: asyncio.Transport | None = None
        self._pending: collections.deque[tuple[bytes, float]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False
        self._last_activity = 0.0
        # When the frame now in the buffer began arriving; it must complete within the frame
        # timeout, or a peer could hold the connection by dribbling bytes (slowloris).
        self._frame_started: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self.session = Session()
        self.peer = "?"
        self.seq = server.next_connection_seq()
        self.certificate: PeerCertificate | None = None
        self._close_reason: str | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = _peer_name(transport.get_extra_info("peername"))
        self._server.register(self)
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        self._last_activity = self._server.clock()
        self._arm_timer(self._server.settings.idle_timeout_ms / 1000)
        log.debug("connection_open", peer=self.peer)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is not None:
            self._check_certificate(peer_certificate(der))

    def _check_certificate(self, certificate: PeerCertificate) -> None:
        """Before any byte is read: warn of a certificate near its end, and tie the session to
        the terminal the certificate names when the listener requires it."""
        tls = self._server.settings.tls
        assert tls is not None, "a client certificate comes with TLS"
        self.certificate = certificate
        days_left = certificate.days_left(self._server.wall_clock())
        if days_left < tls.certificate_expiry_warning_days:
            log.warning(
                "tls_certificate_expiring",
                peer=self.peer,
                certificate_terminal_id=certificate.terminal_id,
                days_left=round(days_left, 1),
                not_valid_after=certificate.not_valid_after.isoformat(),
            )
        if not tls.require_subject_match:
            return
        if certificate.terminal_id is None:
            self._server.security_event(
                SecurityEvent.CERTIFICATE_SUBJECT_MISMATCH,
                peer=self.peer,
                reason="the certificate's subject has no single CN to name a terminal",
            )
            self.close("client certificate names no terminal")
            return
        self.session = Session(certified_terminal_id=certificate.terminal_id)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._server.clock()
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            self.close(f"framing: {exc}")
            return
        now = self._server.clock()
        self._track_partial_frame(now, completed_any=bool(frames))
        self._pending.extend((payload, now) for payload in frames)
        self._drain_pending()

    def _track_partial_frame(self, now: float, *, completed_any: bool) -> None:
        if not self._framer.buffered_bytes:
            self._frame_started = None
        elif completed_any or self._frame_started is None:
            self._frame_started = now  # a new frame began in this read
            self._arm_timer(self._server.settings.frame_timeout_ms / 1000)

    def eof_received(self) -> bool | None:
        self.close("peer closed its side")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._close_reason is None:
            self._close_reason = f"connection lost: {exc}" if exc else "connection lost"
        self._server.release(self, self._close_reason)
        # In-flight handlers finish on their own (a posting is never cut in half); their
        # responses are dropped because there is nobody left to read them.
        log.debug(
            "connection_closed",
            peer=self.peer,
            terminal_id=self.session.terminal_id,
            error=str(exc) if exc else None,
        )

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # request flow
    def _drain_pending(self) -> None:
        limit = self._server.settings.max_in_flight_per_connection
        while self._pending and len(self._tasks) < limit and not self._closing:
            payload, received = self._pending.popleft()
            self._on_frame(payload, received)
        self._update_reading()

    def _on_frame(self, payload: bytes, received: float) -> None:
        dialect = self._server.settings.dialect
        try:
            request = decode(payload, dialect)
        except DecodeError as exc:
            self._on_decode_error(exc, received)
            return
        routing = route(self.session, request)
        self.session = routing.session
        if routing.security_event is not None:
            self._server.security_event(
                routing.security_event,
                peer=self.peer,
                reason=routing.reason,
                terminal_id=self.session.terminal_id,
                claimed_terminal_id=request.terminal_id,
                certificate_terminal_id=self.session.certified_terminal_id,
                stan=request.stan,
            )
        if routing.reply is not None:
            self._send(routing.reply, request, received, reason=routing.reason)
        elif routing.forward:
            task = asyncio.get_running_loop().create_task(self._handle(request, received))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        else:
            log.warning("message_dropped", peer=self.peer, mti=request.mti, reason=routing.reason)

    def _on_decode_error(self, exc: DecodeError, received: float) -> None:
        if exc.mti is None or not is_request_mti(exc.mti):
            self.close(f"undecodable frame: {exc}")
            return
        reply = format_error(exc.mti, exc.echo, exc.tpdu)
        self._write(reply)
        self._server.on_message(self, reply, exc.mti, received, reason=str(exc))

    async def _handle(self, request: Message, received: float) -> None:
        # The request's own task, so its own context: whatever it logs, here or in the flows,
        # the HSM client or the ledger, names its terminal and STAN without passing them on.
        structlog.contextvars.bind_contextvars(terminal_id=request.terminal_id, stan=request.stan)
        try:
            response = await self._server.handler(request, self)
        except Exception:
            log.exception("handler_failed", mti=request.mti)
            response = respond(request, ResponseCode.SYSTEM_MALFUNCTION)
        if response is not None:
            self._send(response, request, received)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._drain_pending()

    def _send(
        self, response: Message, request: Message, received: float, reason: str | None = None
    ) -> None:
        self._write(response)
        self._server.on_message(
            self, response, request.mti, received, reason=reason, request=request
        )

    def _write(self, response: Message) -> None:
        if self._closing or self._transport is None:
            return
        try:
            payload = wire_of(response, self._server.settings.dialect)
        except EncodeError as exc:
            log.error("response_unencodable", peer=self.peer, mti=response.mti, error=str(exc))
            return
        self._transport.write(frame(payload, self._header))

    # limits
    def _update_reading(self) -> None:
        if self._transport is None or self._closing:
            return
        limit = self._server.settings.max_in_flight_per_connection
        should_pause = self._writing_paused or len(self._tasks) >= limit or bool(self._pending)
        if should_pause and not self._reading_paused:
            self._transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._transport.resume_reading()
        self._reading_paused = should_pause

    def _arm_timer(self, delay_s: float) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(delay_s, self._check_timers)

    def _check_timers(self) -> None:
        """One timer for both limits: the idle timeout and the frame timeout."""
        now = self._server.clock()
        settings = self._server.settings
        if self._frame_started is not None:
            frame_s = now - self._frame_started
            if frame_s >= settings.frame_timeout_ms / 1000:
                self.close(f"frame not completed within {settings.frame_timeout_ms} ms")
                return
        idle_s = now - self._last_activity
        idle_timeout_s = settings.idle_timeout_ms / 1000
        if idle_s >= idle_timeout_s and not self._tasks:
            self.close(f"idle for {idle_s:.1f}s")
            return
        if self._closing:
            return
        next_s = idle_timeout_s - idle_s
        if self._frame_started is not None:
            next_s = min(next_s, settings.frame_timeout_ms / 1000 - (now - self._frame_started))
        self._arm_timer(max(next_s, 0.05))

    # shutdown
    def close(self, reason: str) -> None:
        if self._closing or self._transport is None:
            return
        log.info(
            "connection_closing",
            peer=self.peer,
            terminal_id=self.session.terminal_id,
            reason=reason,
        )
        self._closing = True
        self._close_reason = reason
        self._pending.clear()
        self._transport.close()

    def stop_reading(self) -> None:
        """Take no new requests; in-flight ones still get their responses."""
        self._pending.clear()
        if self._transport is not None and not self._reading_paused and not self._closing:
            self._transport.pause_reading()
            self._reading_paused = True

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def cancel_in_flight(self) -> None:
        for task in self._tasks:
            task.cancel()


class SwitchServer:
    """One listener. `start()` binds; `shutdown()` stops accepting, lets in-flight work finish
    within the grace period, then closes every connection."""

    def __init__(
        self,
        settings: ListenerSettings,
        handler: Handler,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.clock = clock
        # For certificate expiry only; every interval is measured on `clock`.
        self.wall_clock = wall_clock
        self._observer = observer
        self._connection_seqs = itertools.count(1)
        self._connections: set[TerminalConnection] = set()
        self._refused_connections = 0
        self._listening: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        # Accepted sockets whose connection (and TLS handshake) is being set up.
        self._opening: set[asyncio.Task[None]] = set()
        self._ssl_context: ssl.SSLContext | None = None
        tls = settings.tls
        self._refusal_log = (
            LogRateLimiter(tls.refused_log_lines_max, tls.refused_log_interval_ms / 1000)
            if tls is not None
            else None
        )

    @property
    def port(self) -> int:
        assert self._listening
        port: int = self._listening[0].getsockname()[1]
        return port

    def stats(self) -> Stats:
        return Stats(
            connections=len(self._connections),
            in_flight=sum(c.in_flight for c in self._connections),
            refused_connections=self._refused_connections,
        )

    async def start(self) -> None:
        """Bind the listener; raises `ListenError` when its address cannot be listened on."""
        tls = self.settings.tls
        loop = asyncio.get_running_loop()
        self._ssl_context = server_ssl_context(tls) if tls is not None else None
        try:
            self._listening = await _listen(
                self.settings.host,
                self.settings.port,
                min(self.settings.max_connections, 4096),
                reuse_port=self.settings.reuse_port,
            )
        except OSError as exc:
            raise ListenError(self.settings.host, self.settings.port, exc) from exc
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self._listening]
        log.info("listening", host=self.settings.host, port=self.port, tls=tls is not None)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except ConnectionAbortedError:
                continue  # the peer gave up while queued
            except OSError as exc:
                log.error("accept_failed", error=str(exc), retry_in_s=ACCEPT_RETRY_DELAY_S)
                await asyncio.sleep(ACCEPT_RETRY_DELAY_S)
                continue
            self._open(sock, _peer_name(address))

    def _open(self, sock: socket.socket, peer: str) -> None:
        # Connections still in their handshake count: a flood of them is refused before any
        # TLS work is spent on it.
        if len(self._connections) + len(self._opening) >= self.settings.max_connections:
            self._refused_connections += 1
            log.warning("connection_refused", peer=peer, reason="max_connections reached")
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(self._connect(sock, peer))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _connect(self, sock: socket.socket, peer: str) -> None:
        tls = self.settings.tls
        try:
            if tls is None or self._ssl_context is None:
                await asyncio.get_running_loop().connect_accepted_socket(
                    lambda: TerminalConnection(self), sock
                )
            else:
                await accept_tls(
                    sock,
                    self._ssl_context,
                    lambda: TerminalConnection(self),
                    handshake_timeout_s=tls.handshake_timeout_ms / 1000,
                )
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout: the socket is closed
            if tls is None:
                log.debug("connection_failed", peer=peer, error=str(exc))
                return
            self._refused_handshake(peer, handshake_refusal(exc))

    def _refused_handshake(self, peer: str, refusal: HandshakeRefusal) -> None:
        if self._observer is not None:
            self._observer.tls_refused(refusal.reason)
        assert self._refusal_log is not None, "handshakes are refused on TLS listeners only"
        allowance = self._refusal_log.admit(refusal.reason, self.clock())
        if allowance.log:
            log.warning(
                "tls_handshake_refused",
                peer=peer,
                reason=refusal.reason.value,
                detail=refusal.detail,
                suppressed=allowance.suppressed,
            )

    def security_event(self, kind: SecurityEvent, **context: str | None) -> None:
        log.warning("security_event", event_kind=kind.value, **context)
        if kind is SecurityEvent.CERTIFICATE_SUBJECT_MISMATCH and self._observer is not None:
            self._observer.subject_mismatch()

    def next_connection_seq(self) -> int:
        return next(self._connection_seqs)

    def register(self, connection: TerminalConnection) -> None:
        self._connections.add(connection)
        if self._observer is not None:
            self._observer.connected(connection)

    def release(self, connection: TerminalConnection, reason: str) -> None:
        if connection in self._connections and self._observer is not None:
            self._observer.disconnected(connection, reason)
        self._connections.discard(connection)

    def on_message(
        self,
        connection: TerminalConnection,
        response: Message,
        request_mti: str,
        received: float,
        *,
        reason: str | None = None,
        request: Message | None = None,
    ) -> None:
        latency_ms = (self.clock() - received) * 1000
        terminal_id = (request.terminal_id if request else None) or connection.session.terminal_id
        event = {
            "terminal_id": terminal_id,
            "stan": response.stan,
            "mti": request_mti,
            "processing_code": response.get(3),
            "network_code": response.network_code,
            "response_code": response.response_code,
            "latency_ms": round(latency_ms, 3),
            "reason": reason,
        }
        log.info("message", **{k: v for k, v in event.items() if v is not None})
        if self._observer is not None:
            chip = request is not None and ICC_DATA_FIELD in request
            self._observer.message(
                terminal_id, request_mti, response, latency_ms, connection, chip=chip
            )

    async def shutdown(self, grace_ms: int) -> None:
        if not self._listening:
            return
        await _cancel(self._accepting)
        for sock in self._listening:
            sock.close()
        # A handshake not finished by now would only be closed at once.
        await _cancel(self._opening)
        for connection in list(self._connections):
            connection.stop_reading()
        in_flight = [c.wait_idle() for c in self._connections if c.in_flight]
        if in_flight:
            log.info("draining", in_flight=self.stats().in_flight, grace_ms=grace_ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*in_flight), grace_ms / 1000)
        unfinished = self.stats().in_flight
        for connection in list(self._connections):
            # Past the grace period: cancelling rolls back any database transaction not yet
            # committed, so nothing is left half-posted.
            connection.cancel_in_flight()
            connection.close("switch shutting down")
        log.info("stopped", unfinished=unfinished)


async def _listen(host: str, port: int, backlog: int, *, reuse_port: bool) -> list[socket.socket]:
    """A listening socket per address `host` resolves to, as `loop.create_server` binds them;
    with `reuse_port`, other processes' sockets may listen on the same port (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listening: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
            sock = socket.create_server(
                address, family=family, backlog=backlog, reuse_port=reuse_port
            )
            listening.append(sock)
            sock.setblocking(False)
    except OSError:
        for sock in listening:
            sock.close()
        raise
    return listening


async def _cancel(tasks: Collection[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _peer_name(address: object) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

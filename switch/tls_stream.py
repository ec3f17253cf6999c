"""Server-side TLS over a plain transport: one `ssl.SSLObject` between two memory BIOs.

Why not `connect_accepted_socket(ssl=...)`: the loop's own TLS protocol keeps a 256 KiB read
buffer per connection (uvloop allocates it per connection; asyncio 3.11 even zero-fills it),
and with 10,000 idle kiosks its touched pages and bookkeeping cost more than the switch's whole
plain-TCP connection (docs/load-testing.md has the figures). Here the ciphertext arrives as the
plain transport's `bytes` and is decrypted in records of at most `READ_BYTES`; nothing is kept
per connection but OpenSSL's own state and the two BIOs.

The application protocol sees a transport from `connection_made` on, once the handshake is
done, as with the loop's TLS; a refused handshake is the exception `accept_tls` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

# One TLS record's plaintext at most: what one `SSLObject.read` hands to the application.
READ_BYTES = 16 * 1024


async def accept_tls(
    sock: socket.socket,
    context: ssl.SSLContext,
    app_factory: Callable[[], asyncio.Protocol],
    *,
    handshake_timeout_s: float,
) -> None:
    """Run the server side of the handshake on an accepted socket, then hand the connection to
    a protocol from `app_factory`. Raises what refused the handshake (`ssl.SSLError`, a reset,
    `TimeoutError`); the socket is closed then, and when cancelled."""
    loop = asyncio.get_running_loop()
    _, tls = await loop.connect_accepted_socket(
        lambda: _TlsProtocol(context, app_factory, loop.create_future()), sock
    )
    try:
        async with asyncio.timeout(handshake_timeout_s):
            await tls.handshake
    except BaseException:
        tls.abort()
        raise


class _TlsProtocol(asyncio.Protocol):
    """Faces the socket: ciphertext in and out, decrypted records to the application."""

    __slots__ = (
        "_app",
        "_app_factory",
        "_incoming",
        "_outgoing",
        "_reading_paused",
        "_ssl",
        "_transport",
        "handshake",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        handshake: asyncio.Future[None],
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._app_factory: Callable[[], asyncio.Protocol] | None = app_factory
        self._app: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._reading_paused = False
        # Done when the application has the connection; failed with what refused it.
        self.handshake = handshake

    # the socket's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._app is None:
            self._shake()
        else:
            self.deliver()

    def eof_received(self) -> bool | None:
        # The peer closed its side without a close_notify: for the application, an end all the
        # same (a handshake cut off here fails in connection_lost).
        if self._app is not None:
            self._app.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._app is not None:
            self._app.connection_lost(exc)
            self._app = None
        elif not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during handshake"))

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # TLS
    def _shake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return
        except ssl.SSLError as exc:
            self.flush()  # the alert that tells the peer why
            self.close()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            return
        self.flush()
        if self.handshake.done():  # timed out or cancelled meanwhile: the socket is closing
            return
        assert self._app_factory is not None, "the application is made once"
        self._app = self._app_factory()
        self._app_factory = None
        self.handshake.set_result(None)
        self._app.connection_made(TlsTransport(self))
        self.deliver()  # a request may have come with the handshake's last flight

    def deliver(self) -> None:
        """Decrypted records to the application, until the BIO is empty or it pauses us."""
        while self._app is not None and not self._reading_paused and not self.closing:
            try:
                data = self._ssl.read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                self._abort_with(exc)
                break
            if not data:  # the peer's close_notify (SSLObject.read gives b"" for it)
                self._app.eof_received()
                self.close()
                break
            self._app.data_received(data)
        self.flush()  # key updates, session tickets

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._abort_with(exc)
            return
        self.flush()

    def flush(self) -> None:
        if self._outgoing.pending and self._transport is not None:
            self._transport.write(self._outgoing.read())

    def pause_reading(self) -> None:
        self._reading_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._transport is not None:
            self._transport.resume_reading()
        # Records already decrypted-to-be wait in the BIO; not from inside the caller's frame.
        asyncio.get_running_loop().call_soon(self.deliver)

    def close(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._app is not None:
            # Queues our close_notify; the peer's is not waited for.
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
            self.flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _abort_with(self, exc: Exception) -> None:
        assert self._transport is not None
        self._transport.abort()
        if self._app is not None:
            self._app.connection_lost(exc)
            self._app = None

    @property
    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._ssl


class TlsTransport(asyncio.Transport):
    """Faces the application: what it writes is encrypted and sent at once."""

    __slots__ = ("_tls",)

    def __init__(self, tls: _TlsProtocol) -> None:
        super().__init__()
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.ssl_object
        if name == "peercert":
            return self._tls.ssl_object.getpeercert()
        if name == "cipher":
            return self._tls.ssl_object.cipher()
        return self._tls.transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(data)

    def is_closing(self) -> bool:
        return self._tls.transport.is_closing()

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls.abort()

    def pause_reading(self) -> None:
        self._tls.pause_reading()

    def resume_reading(self) -> None:
        self._tls.resume_reading()

    def is_reading(self) -> bool:
        return not self._tls.reading_paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        # Ciphertext waits in the socket's transport; its size is the plaintext's and a little.
        self._tls.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tls.transport.get_write_buffer_size()

"""A terminal's connection to the switch: frames out, frames in, responses matched by STAN.

Requests may be pipelined; each `request()` waits for the response carrying its STAN.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from datetime import datetime
from typing import cast

from switch.iso8583 import (
    DecodeError,
    Dialect,
    FrameBuffer,
    FramingError,
    LengthHeader,
    Message,
    decode,
    frame,
    wire_of,
)


class SwitchConnectionClosed(Exception):
    """The switch closed the connection (or it broke) before answering."""


class TerminalClient(asyncio.Protocol):
    """One connection, its events handled as they come (no reader task and stream between the
    socket and the waiting request: per response, that was a task switch and a copy more)."""

    def __init__(self, dialect: Dialect, *, max_frame_bytes: int) -> None:
        loop = asyncio.get_running_loop()
        self._dialect = dialect
        self._header = LengthHeader.of(dialect.length_header)
        self._framer = FrameBuffer(self._header, max_frame_bytes)
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._transport: asyncio.Transport | None = None
        self._tls = False
        # Done when nothing more will be read: the switch closed the connection, it broke, it
        # sent what is not a frame, or `close()`.
        self._ended: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._drained: asyncio.Future[None] | None = None  # while the transport's buffer is full
        self.unmatched: list[Message] = []

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        dialect: Dialect | None = None,
        tls: ssl.SSLContext | None = None,
        max_frame_bytes: int = 4096,
        timeout_ms: int = 5000,
    ) -> TerminalClient:
        client = cls(dialect or Dialect(), max_frame_bytes=max_frame_bytes)
        client._tls = tls is not None
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(lambda: client, host, port, ssl=tls), timeout_ms / 1000
        )
        return client

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._ended.done():
            return
        try:
            for payload in self._framer.feed(data):
                self._deliver(decode(payload, self._dialect))
        except (DecodeError, FramingError) as exc:
            self._end(SwitchConnectionClosed(f"connection broke: {exc}"))
            if self._transport is not None:
                self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._end(SwitchConnectionClosed("the switch closed the connection"))
        # Plain TCP stays half-open, so writes still go out as they did; TLS cannot.
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        error = f"connection broke: {exc}" if exc else "the switch closed the connection"
        self._end(SwitchConnectionClosed(error))
        if not self._lost.done():
            self._lost.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # requests
    def framed(self, message: Message) -> bytes:
        return frame(wire_of(message, self._dialect), self._header)

    async def send(self, message: Message) -> None:
        await self.send_raw(self.framed(message))

    async def send_raw(self, data: bytes) -> None:
        """Write `data`; wait while the socket's buffer is full. Raises ConnectionResetError
        once the connection is gone."""
        assert self._transport is not None, "connected"
        self._transport.write(data)
        if self._transport.is_closing():
            await asyncio.sleep(0)  # let a pending connection_lost run first
        if self._drained is not None:
            await self._drained
        if self._lost.done():
            raise ConnectionResetError("Connection lost")

    def stop_reading(self) -> None:
        """Behave like a terminal that no longer reads its socket (a fault on purpose)."""
        assert self._transport is not None, "connected"
        self._transport.pause_reading()

    def expect(self, stan: str) -> asyncio.Future[Message]:
        """Register for the response carrying `stan` before sending its request."""
        assert stan not in self._waiting, f"STAN {stan} already in flight"
        if self._ended.done():
            raise SwitchConnectionClosed("the switch closed the connection")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[stan] = future
        return future

    async def wait(self, stan: str, future: asyncio.Future[Message], *, timeout_ms: int) -> Message:
        try:
            # Cheaper than wait_for, which wraps the future; a timeout cancels it all the same.
            async with asyncio.timeout(timeout_ms / 1000):
                return await future
        finally:
            self._waiting.pop(stan, None)

    async def request(self, message: Message, *, timeout_ms: int = 5000) -> Message:
        stan = message.stan
        assert stan is not None, "a request carries a STAN"
        future = self.expect(stan)
        try:
            await self.send(message)
        except BaseException:
            self._waiting.pop(stan, None)
            raise
        return await self.wait(stan, future, timeout_ms=timeout_ms)

    def _deliver(self, response: Message) -> None:
        future = self._waiting.get(response.stan or "")
        if future is None or future.done():
            self.unmatched.append(response)
        else:
            future.set_result(response)

    def _end(self, error: SwitchConnectionClosed) -> None:
        """Nothing more will be read: every request still waiting gets `error`."""
        if self._ended.done():
            return
        self._ended.set_result(None)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    @property
    def closed_by_peer(self) -> bool:
        return self._ended.done()

    async def wait_closed_by_peer(self, *, timeout_ms: int) -> None:
        await asyncio.wait_for(asyncio.shield(self._ended), timeout_ms / 1000)

    async def close(self) -> None:
        """Hang up. Requests still waiting are left to their own timeouts."""
        if not self._ended.done():
            self._ended.set_result(None)
        if self._transport is not None:
            self._transport.close()
            await self._lost


def transmission_time(now: datetime) -> str:
    """Field 7, MMDDhhmmss (UTC)."""
    # Formatted field by field: strftime costs several times more, once per request.
    return f"{now.month:02d}{now.day:02d}{now.hour:02d}{now.minute:02d}{now.second:02d}"


def network_request(
    code: str, *, stan: str, now: datetime, terminal_id: str | None = None
) -> Message:
    """An 0800: 001 sign-on, 002 sign-off, 301 echo, 161 key change."""
    fields: Mapping[int, str] = {7: transmission_time(now), 11: stan, 70: code}
    if terminal_id is not None:
        fields = {**fields, 41: terminal_id.ljust(8)}
    return Message("0800", fields)

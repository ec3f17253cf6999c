"""A terminal's connection to the switch: frames out, frames in, responses matched by STAN.

Requests may be pipelined; each `request()` waits for the response carrying its STAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from datetime import datetime

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

READ_CHUNK_BYTES = 64 * 1024


class SwitchConnectionClosed(Exception):
    """The switch closed the connection (or it broke) before answering."""


class TerminalClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        dialect: Dialect,
        *,
        max_frame_bytes: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._dialect = dialect
        self._header = LengthHeader.of(dialect.length_header)
        self._framer = FrameBuffer(self._header, max_frame_bytes)
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._receiver = asyncio.get_running_loop().create_task(self._receive())
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
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, limit=READ_CHUNK_BYTES),
            timeout_ms / 1000,
        )
        return cls(reader, writer, dialect or Dialect(), max_frame_bytes=max_frame_bytes)

    def framed(self, message: Message) -> bytes:
        return frame(wire_of(message, self._dialect), self._header)

    async def send(self, message: Message) -> None:
        await self.send_raw(self.framed(message))

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def stop_reading(self) -> None:
        """Behave like a terminal that no longer reads its socket (a fault on purpose)."""
        transport = self._writer.transport
        assert isinstance(transport, asyncio.ReadTransport), "a TCP transport reads too"
        transport.pause_reading()

    def expect(self, stan: str) -> asyncio.Future[Message]:
        """Register for the response carrying `stan` before sending its request."""
        assert stan not in self._waiting, f"STAN {stan} already in flight"
        if self._receiver.done():
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

    async def _receive(self) -> None:
        error: Exception = SwitchConnectionClosed("the switch closed the connection")
        try:
            while data := await self._reader.read(READ_CHUNK_BYTES):
                for payload in self._framer.feed(data):
                    self._deliver(decode(payload, self._dialect))
        except (OSError, DecodeError, FramingError) as exc:
            error = SwitchConnectionClosed(f"connection broke: {exc}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    def _deliver(self, response: Message) -> None:
        future = self._waiting.get(response.stan or "")
        if future is None or future.done():
            self.unmatched.append(response)
        else:
            future.set_result(response)

    @property
    def closed_by_peer(self) -> bool:
        return self._receiver.done()

    async def wait_closed_by_peer(self, *, timeout_ms: int) -> None:
        await asyncio.wait_for(asyncio.shield(self._receiver), timeout_ms / 1000)

    async def close(self) -> None:
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


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

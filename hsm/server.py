"""The networked HSM server: a thin asyncio adapter around ``wire`` and ``commands.execute``.

One request at a time per connection (clients pool connections for concurrency). Limits: frame
size (``wire.FRAME_MAX``), connection count, and an idle timeout per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from hsm import wire
from hsm.commands import execute
from hsm.engine import SoftHsm
from hsm.errors import RequestError

log = structlog.get_logger("hsm.server")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 1500
    connections_max: int = 256
    idle_timeout_ms: int = 300_000


class HsmServer:
    def __init__(self, core: SoftHsm, config: ServerConfig) -> None:
        self._core = core
        self._config = config
        self._slots = asyncio.Semaphore(config.connections_max)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._config.host, self._config.port)
        log.info(
            "hsm_server_listening",
            host=self._config.host,
            port=self.port,
            lmk_kcv=self._core.lmk_kcv,
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
                await self._requests(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                pass  # the peer went away or idled out: nothing to answer
            except asyncio.CancelledError:
                pass  # server shutdown; this handler is the top of its task
            finally:
                self._connections.discard(task)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle_s = self._config.idle_timeout_ms / 1000
        while True:
            header = await asyncio.wait_for(reader.readexactly(wire.LENGTH_HEADER), idle_s)
            payload = await asyncio.wait_for(reader.readexactly(wire.frame_length(header)), idle_s)
            try:
                request = wire.decode(payload)
            except RequestError:
                log.warning("hsm_malformed_frame", length=len(payload))
                return  # cannot echo a request id we could not read: drop the connection
            writer.write(wire.encode(execute(self._core, request)))
            await writer.drain()

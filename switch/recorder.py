"""Writes the activity recorder's events and traffic to the ledger in the background, and says
the process is alive.

Every flush interval it takes what the recorder holds and writes it in batches on the
operations pool; the request path never waits for it. When the ledger is unavailable the batch
goes back to the recorder, whose bounds drop (and count) what cannot wait; a batch the ledger
refuses is dropped and counted at once, since sending it again would be refused again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from ledger import operations
from ledger.activity import ProcessInfo, TerminalEvent
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.operations import OperationsStore
from switch.activity import ActivityRecorder

log = structlog.get_logger("switch.recorder")


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    flush_interval_ms: int
    # Traffic less often than events: one row per active terminal each time, whatever the
    # rate (a fleet of 10,000 kiosks at 10 s is 1,000 rows a second).
    traffic_interval_ms: int
    # Items per database call.
    batch_max: int
    beat_interval_ms: int
    # Each database call's time limit.
    timeout_ms: int


class ActivityWriter:
    def __init__(
        self,
        recorder: ActivityRecorder,
        store: OperationsStore,
        process: ProcessInfo,
        settings: RecorderSettings,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._recorder = recorder
        self._store = store
        self._process = process
        self._settings = settings
        self._clock = clock
        self._last_beat_s = float("-inf")
        self._last_traffic_s = float("-inf")
        self._stopping = asyncio.Event()
        self.events_written = 0
        self.events_refused = 0
        self.write_failures = 0

    async def run(self) -> None:
        """Until `stop()`: it then returns between two flushes, so no batch is cut in half."""
        loop = asyncio.get_running_loop()
        settings = self._settings
        while not self._stopping.is_set():
            now_s = loop.time()
            beat_due = now_s - self._last_beat_s >= settings.beat_interval_ms / 1000
            if beat_due and await self._beat(stopped=False):
                self._last_beat_s = now_s
            traffic_due = now_s - self._last_traffic_s >= settings.traffic_interval_ms / 1000
            if await self._flush_events() and traffic_due:
                self._last_traffic_s = now_s
                await self._flush_traffic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), settings.flush_interval_ms / 1000)

    def stop(self) -> None:
        self._stopping.set()

    async def flush(self) -> None:
        """Write all the recorder holds; stop at the first failure (the rest waits)."""
        if await self._flush_events():
            await self._flush_traffic()

    async def _flush_events(self) -> bool:
        while events := self._recorder.take_events(self._settings.batch_max):
            if not await self._write_events(events):
                return False
        return True

    async def _flush_traffic(self) -> None:
        traffic = self._recorder.take_traffic()
        for start in range(0, len(traffic), self._settings.batch_max):
            batch = traffic[start : start + self._settings.batch_max]
            try:
                async with self._store.connection(timeout_ms=self._settings.timeout_ms) as conn:
                    await operations.record_traffic(
                        conn, self._process.process_id, batch, timeout_ms=self._settings.timeout_ms
                    )
            except LedgerUnavailable:
                self.write_failures += 1
                self._recorder.give_back_traffic(traffic[start:])
                return
            except LedgerError as exc:
                log.error("terminal_traffic_refused", buckets=len(batch), error=str(exc))
                self._recorder.traffic_dropped += sum(b.counts.requests for b in batch)

    async def _write_events(self, events: list[TerminalEvent]) -> bool:
        try:
            async with self._store.connection(timeout_ms=self._settings.timeout_ms) as conn:
                self.events_written += await operations.record_events(
                    conn, self._process.process_id, events, timeout_ms=self._settings.timeout_ms
                )
        except LedgerUnavailable:
            self.write_failures += 1
            self._recorder.give_back_events(events)
            return False
        except LedgerError as exc:
            log.error("terminal_events_refused", events=len(events), error=str(exc))
            self.events_refused += len(events)
        return True

    async def _beat(self, *, stopped: bool) -> bool:
        try:
            async with self._store.connection(timeout_ms=self._settings.timeout_ms) as conn:
                await operations.beat(
                    conn, self._process, self._clock(), stopped=stopped,
                    timeout_ms=self._settings.timeout_ms,
                )  # fmt: skip
        except LedgerError as exc:
            self.write_failures += 1
            log.warning("process_beat_failed", error=str(exc))
            return False
        return True

    async def close(self) -> None:
        """After the listener closed (its disconnects recorded): the last flush, then the
        process says it stopped, so its sessions end now rather than at its last beat."""
        await self.flush()
        await self._beat(stopped=True)


@contextlib.asynccontextmanager
async def running_writer(writer: ActivityWriter) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        yield
    finally:
        writer.stop()
        await task  # each call it may be in is bounded by its timeout
        await writer.close()

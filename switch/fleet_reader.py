"""Reads the fleet's snapshot from the ledger for the page and the alert rules, at most once
per cache period whoever asks (several operators' pages poll; one read serves them all), and
keeps the last good one for when the ledger cannot be read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from ledger import balancing, cassettes, operations
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.operations import OperationsStore
from ledger.rules import business_day
from switch.fleet_view import FleetSnapshot

# Open alerts are all listed; closed ones from this far back, at most this many in all.
ALERTS_SINCE = timedelta(hours=24)
ALERTS_MAX = 200


@dataclass(frozen=True, slots=True)
class Windows:
    """The recent window the rates and p99 are measured over, the baseline window before it,
    and how long a process may go without beating before its sessions count as ended."""

    recent: timedelta
    baseline: timedelta
    process_dead_after: timedelta


class FleetReader:
    def __init__(
        self,
        store: OperationsStore,
        *,
        windows: Windows,
        cutover: time,
        cache: timedelta,
        timeout_ms: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self.windows = windows
        self._cutover = cutover
        self._cache = cache
        self._timeout_ms = timeout_ms
        self._clock = clock
        self._last: FleetSnapshot | None = None
        self._expired = False
        self._failed: tuple[datetime, str] | None = None
        self._lock = asyncio.Lock()

    @property
    def last(self) -> FleetSnapshot | None:
        """The last snapshot read, however old."""
        return self._last

    def expire(self) -> None:
        """The next read goes to the ledger (after an alert changed: show it at once)."""
        self._expired = True

    async def read(self) -> FleetSnapshot:
        """A snapshot no older than the cache period. Raises ledger.errors.LedgerError
        (LedgerUnavailable when the ledger cannot be reached) when a new one was needed and
        could not be read."""
        async with self._lock:  # concurrent callers share one read
            now = self._clock()
            last, failed = self._last, self._failed
            if last is not None and not self._expired and now - last.read_at < self._cache:
                return last
            # Callers queued behind a read that failed learn it at once, rather than each
            # waiting out a time limit of its own on a ledger that is down.
            if failed is not None and now - failed[0] < self._cache:
                raise LedgerUnavailable(f"{failed[1]} (a moment ago)")
            try:
                # One budget for the whole read: the page and the alert loop wait no longer.
                async with asyncio.timeout(self._timeout_ms / 1000):
                    self._last = await self._read(now)
            except TimeoutError:
                self._failed = (now, f"no answer within {self._timeout_ms} ms")
                raise LedgerUnavailable(self._failed[1]) from None
            except LedgerError as exc:
                self._failed = (now, str(exc))
                raise
            self._expired = False
            self._failed = None
            return self._last

    async def _read(self, now: datetime) -> FleetSnapshot:
        windows = self.windows
        recent_start = now - windows.recent
        day_start = datetime.combine(business_day(now, self._cutover), self._cutover, now.tzinfo)
        # Buckets are stamped with their start: up to now includes the one being filled.
        end = now + timedelta(microseconds=1)
        timeout_ms = self._timeout_ms
        async with self._store.connection(timeout_ms=timeout_ms) as conn:
            terminals = await operations.fleet_state(conn, day_start, timeout_ms=timeout_ms)
            today = await operations.traffic_totals(conn, day_start, end, timeout_ms=timeout_ms)
            recent = await operations.traffic_totals(conn, recent_start, end, timeout_ms=timeout_ms)
            baseline = await operations.traffic_totals(
                conn, recent_start - windows.baseline, recent_start, timeout_ms=timeout_ms
            )
            alerts = await operations.alert_list(
                conn, now - ALERTS_SINCE, ALERTS_MAX, timeout_ms=timeout_ms
            )
            audit = await operations.latest_audit_check(conn, timeout_ms=timeout_ms)
            live = await operations.live_processes(
                conn, now - windows.process_dead_after, timeout_ms=timeout_ms
            )
            cash = await cassettes.cash_state(conn, timeout_ms=timeout_ms)
            # A terminal balances at the end of its day, so yesterday's 0500 is the latest one
            # for most of today.
            imbalances = await balancing.latest_imbalances(
                conn, day_start - timedelta(days=1), timeout_s=timeout_ms / 1000
            )
        return FleetSnapshot(
            now, terminals, today, recent, baseline, alerts, audit, live, cash, imbalances
        )

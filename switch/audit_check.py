"""`audit verify` run by the switch, periodically and on demand, for the journal alert.

It runs as `python -m ledger audit verify` in a child process: hashing the whole journal is
CPU work that would otherwise stall the event loop the requests share. The child connects with
the auditor's DSN (passed in its environment, never on its command line); it is killed past
its time limit; its output is read up to a bound. The result goes to ledger.audit_checks, where
every switch process's journal rule reads the latest one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from ledger import operations
from ledger.errors import LedgerError
from ledger.operations import AuditCheck, OperationsStore
from ledger.settings import DSN_ENV

log = structlog.get_logger("switch.audit_check")
OUTPUT_BYTES_MAX = 64 * 1024
DAMAGED_EXIT = 1


@dataclass(frozen=True, slots=True)
class AuditCheckSettings:
    # The auditor's (or owner's) DSN: the journal is read with table privileges the switch
    # role does not have.
    dsn: str
    interval: timedelta
    timeout_ms: int


def outcome_of(exit_code: int, stdout: str, stderr: str) -> tuple[str, int | None, str | None]:
    """(outcome, records checked, problem) from the CLI's exit code and output: its last line
    says "OK: N transactions…" or "DAMAGED: N transactions…", its first the first bad record."""
    lines = stdout.strip().splitlines()
    records = None
    if lines:
        words = lines[-1].split()
        if len(words) > 1 and words[1].isdigit():
            records = int(words[1])
    if exit_code == 0:
        return "ok", records, None
    if exit_code == DAMAGED_EXIT and lines:
        return "damaged", records, lines[0]
    problem = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {exit_code}"
    return "failed", records, problem


async def _read_bounded(stream: asyncio.StreamReader) -> str:
    """The first OUTPUT_BYTES_MAX bytes; the rest is read and dropped, so the child never
    blocks on a full pipe."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[: max(0, OUTPUT_BYTES_MAX - len(kept))]
    return kept.decode(errors="replace")


class AuditChecker:
    """One check at a time; `request()` starts one now unless one is running."""

    def __init__(
        self,
        settings: AuditCheckSettings,
        store: OperationsStore,
        process_id: str,
        *,
        clock: Callable[[], datetime],
        store_timeout_ms: int,
    ) -> None:
        self._settings = settings
        self._store = store
        self._process_id = process_id
        self._clock = clock
        self._store_timeout_ms = store_timeout_ms
        self._running: asyncio.Task[AuditCheck] | None = None
        self.runs = 0

    @property
    def running(self) -> bool:
        return self._running is not None and not self._running.done()

    def request(self) -> bool:
        """Start a check now; False when one is already running."""
        if self.running:
            return False
        self._running = asyncio.get_running_loop().create_task(self._check())
        return True

    async def wait(self) -> AuditCheck | None:
        """The result of the check running (or last run), if any."""
        return None if self._running is None else await self._running

    async def _check(self) -> AuditCheck:
        self.runs += 1
        outcome, records, problem = await self._run_cli()
        check = AuditCheck(self._clock(), outcome, records, problem)
        report = log.info if outcome == "ok" else log.error
        report("audit_check", outcome=outcome, records=records, problem=problem)
        try:
            async with self._store.connection(timeout_ms=self._store_timeout_ms) as conn:
                await operations.record_audit_check(
                    conn, self._process_id, check, timeout_ms=self._store_timeout_ms
                )
        except LedgerError as exc:
            log.error("audit_check_not_recorded", error=str(exc))
        return check

    async def _run_cli(self) -> tuple[str, int | None, str | None]:
        timeout_ms = self._settings.timeout_ms
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ledger", "audit", "verify", "--timeout-ms", str(timeout_ms),
                env={**os.environ, DSN_ENV: self._settings.dsn},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:  # out of processes or descriptors: a check that did not run
            return "failed", None, f"audit verify could not start: {exc}"
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                stdout, stderr = await asyncio.gather(
                    _read_bounded(child.stdout), _read_bounded(child.stderr)
                )
                exit_code = await child.wait()
        except TimeoutError:
            return "failed", None, f"did not finish within {timeout_ms} ms"
        finally:
            # Past its time limit, or the switch stopping: no child outlives its check.
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        return outcome_of(exit_code, stdout, stderr)

    async def run(self) -> None:
        """A check every interval, counted from the latest check any switch process recorded
        (so several processes do not each verify the whole journal). Never at start-up: a
        switch restarted under load does not spend a core on the journal then."""
        interval_s = self._settings.interval.total_seconds()
        due_in_s = interval_s
        while True:
            await asyncio.sleep(max(due_in_s, 1.0))
            latest = await self._latest()
            due_in_s = 0.0 if latest is None else interval_s - self._age_s(latest)
            if due_in_s <= 0 and self.request():
                await self.wait()
                due_in_s = interval_s

    def _age_s(self, check: AuditCheck) -> float:
        return (self._clock() - check.checked_at).total_seconds()

    async def _latest(self) -> AuditCheck | None:
        try:
            async with self._store.connection(timeout_ms=self._store_timeout_ms) as conn:
                return await operations.latest_audit_check(conn, timeout_ms=self._store_timeout_ms)
        except LedgerError:
            return None  # checked now, then: a check of a ledger that is down records "failed"

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running


@contextlib.asynccontextmanager
async def running_checker(checker: AuditChecker) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(checker.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await checker.close()

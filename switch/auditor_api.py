"""The auditor API: journal pages, streamed exports, chain verification jobs, the terminal report.

Everything here reads the ledger through the functions the auditors' CLI runs (`ledger.audit`)
and the paged reads of `ledger.journal_query`, over a small pool of its own, connected as the
role in `ledger.audit_dsn` with every transaction read-only. Memory is bounded whatever the
journal's size: a page holds at most `PAGE_ROWS_MAX` records, an export and a verification read
through a cursor, and an export writes each chunk to the client before it reads on (a client
that stops reading stops the export, and is cut off after `EXPORT_WRITE_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, time
from typing import Any, cast

import asyncpg
import structlog
from aiohttp import web

from ledger import audit, exports, journal_query
from ledger.migrations import Connection
from ledger.rules import business_day
from switch.access import Role
from switch.audit_query import (
    EXPORT_PARAMETERS,
    JOB_ID,
    JOURNAL_PARAMETERS,
    REPORT_PARAMETERS,
    BadParameter,
    ExportQuery,
    export_query,
    report_query,
)
from switch.audit_query import journal_query as parse_journal_query
from switch.routes import JSON, Reply, Route

log = structlog.get_logger("switch.auditor_api")

JOURNAL_CONNECTIONS_MAX = 4  # a verification, two exports and the pages and reports
EXPORTS_AT_ONCE_MAX = 2
ACQUIRE_TIMEOUT_S = 5.0
PAGE_TIMEOUT_MS = 10_000
REPORT_TIMEOUT_MS = 60_000
# Per statement of an export or a verification (each cursor fetch is one), as the CLI's.
SCAN_TIMEOUT_MS = 600_000
EXPORT_CHUNK_CHARS = 64 * 1024
EXPORT_WRITE_TIMEOUT_S = 60.0
JOBS_KEPT_MAX = 16
PROGRESS_INTERVAL_S = 1.0
# A damaged journal can name every record: the result shows the first ones and the count.
PROBLEMS_SHOWN_MAX = 100
NDJSON = "application/x-ndjson"
CSV = "text/csv"
# asyncpg's and the socket's errors when the database is down, refuses, or takes too long.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True)
class JournalSettings:
    dsn: str = field(repr=False)
    business_day_cutover: time


class _PacedConnection:
    """A connection whose cursors await `before_row` before handing out each row: the
    verification counts rows with it, the export writes its output to the client with it, so
    that `ledger.audit` runs unchanged and paced by its caller."""

    def __init__(self, conn: Connection, before_row: Callable[[], Awaitable[None]]) -> None:
        self._conn = conn
        self._before_row = before_row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self, query: str, *args: object, **kwargs: Any) -> _PacedCursor:
        return _PacedCursor(self._conn.cursor(query, *args, **kwargs), self._before_row)


class _PacedCursor:
    def __init__(self, rows: Any, before_row: Callable[[], Awaitable[None]]) -> None:
        self._rows = rows
        self._before_row = before_row

    async def __aiter__(self) -> AsyncIterator[asyncpg.Record]:
        async for row in self._rows:
            await self._before_row()
            yield row


def paced(conn: Connection, before_row: Callable[[], Awaitable[None]]) -> Connection:
    return cast(Connection, _PacedConnection(conn, before_row))


@dataclass
class VerificationJob:
    job_id: str
    started_at: datetime
    rows_estimated: int | None = None
    rows_read: int = 0
    finished_at: datetime | None = None
    report: audit.VerifyReport | None = None
    failure: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> str:
        if not self.done.is_set():
            return "running"
        if self.report is None:
            return "failed"
        return "ok" if self.report.ok else "damaged"

    def progress(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "started_at": self.started_at.isoformat(),
            "rows_read": self.rows_read,
            "rows_estimated": self.rows_estimated,
        }

    def as_json(self) -> dict[str, Any]:
        status = self.progress()
        status["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        status["failure"] = self.failure
        status["result"] = None if self.report is None else _result(self.report)
        return status


def _result(report: audit.VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "records": report.records,
        "blocks": report.blocks,
        "chains": report.chains,
        "damage_count": len(report.damage),
        "damage": [asdict(damage) for damage in report.damage[:PROBLEMS_SHOWN_MAX]],
        "books_count": len(report.books),
        "books": report.books[:PROBLEMS_SHOWN_MAX],
    }


class Journal:
    """The auditor API's side of the ledger: its pool, its export slots, its verification jobs
    (in this process: a job is read back from the process that started it)."""

    def __init__(
        self, pool: asyncpg.Pool, settings: JournalSettings, wall_clock: Callable[[], datetime]
    ) -> None:
        self._pool = pool
        self.settings = settings
        self.wall_clock = wall_clock
        self.exports = asyncio.Semaphore(EXPORTS_AT_ONCE_MAX)
        self._jobs: OrderedDict[str, VerificationJob] = OrderedDict()
        self._running: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            yield conn

    def job(self, job_id: str) -> VerificationJob | None:
        return self._jobs.get(job_id)

    def start_verification(self) -> VerificationJob:
        """A new job, or the one running: two at once would only read the journal twice."""
        for job in self._jobs.values():
            if not job.done.is_set():
                return job
        job = VerificationJob(secrets.token_hex(8), self.wall_clock())
        self._jobs[job.job_id] = job
        while len(self._jobs) > JOBS_KEPT_MAX:
            self._jobs.popitem(last=False)  # the oldest, finished: one runs at a time
        self._running = asyncio.create_task(self._verify(job))
        return job

    async def _verify(self, job: VerificationJob) -> None:
        async def count() -> None:
            job.rows_read += 1

        try:
            async with self.connection() as conn:
                job.rows_estimated = await _rows_estimated(conn)
                job.report = await audit.verify(paced(conn, count), timeout_ms=SCAN_TIMEOUT_MS)
        except DATABASE_ERRORS as exc:
            job.failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            # A job ends with a state whatever happens; a bug is logged whole, said briefly.
            log.exception("journal_verification_crashed", job_id=job.job_id)
            job.failure = f"internal error ({type(exc).__name__})"
        finally:
            job.finished_at = self.wall_clock()
            job.done.set()
            log.info(
                "journal_verification_finished",
                job_id=job.job_id,
                state=job.state,
                rows_read=job.rows_read,
                failure=job.failure,
            )

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running


async def _rows_estimated(conn: Connection) -> int | None:
    """The planner's count of journal records (no scan); None before the table's first
    analyze."""
    estimate = await conn.fetchval(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = 'ledger.transactions'::regclass",
        timeout=PAGE_TIMEOUT_MS / 1000,
    )
    return estimate if isinstance(estimate, int) and estimate >= 0 else None


@contextlib.asynccontextmanager
async def open_journal(
    settings: JournalSettings, wall_clock: Callable[[], datetime]
) -> AsyncIterator[Journal]:
    """The pool connects on first use (min_size 0): the app starts with the database down."""
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=0,
        max_size=JOURNAL_CONNECTIONS_MAX,
        server_settings={
            "default_transaction_read_only": "on",
            "application_name": "kiosk-switch auditor API",
        },
    )
    journal = Journal(pool, settings, wall_clock)
    try:
        yield journal
    finally:
        await journal.close()
        try:
            await asyncio.wait_for(pool.close(), ACQUIRE_TIMEOUT_S)
        except TimeoutError:
            pool.terminate()


JOURNAL_KEY: web.AppKey[Journal | None] = web.AppKey("journal")


def _journal(request: web.Request) -> Journal:
    journal = request.app[JOURNAL_KEY]
    if journal is None:
        raise web.HTTPServiceUnavailable(
            text=json.dumps(
                {
                    "error": "journal_unavailable",
                    "detail": "the auditor API has no database: set ledger.audit_dsn",
                }
            ),
            content_type=JSON,
        )
    return journal


def bad_parameter(error: BadParameter) -> web.HTTPBadRequest:
    body = {"error": "bad_parameter", "parameter": error.parameter, "expected": error.expected}
    return web.HTTPBadRequest(text=json.dumps(body), content_type=JSON)


def unavailable(error: BaseException) -> web.HTTPServiceUnavailable:
    log.warning("journal_database_error", error=f"{type(error).__name__}: {error}")
    body = {"error": "journal_unavailable", "detail": "the journal database did not answer"}
    return web.HTTPServiceUnavailable(text=json.dumps(body), content_type=JSON)


async def journal_records(request: web.Request) -> web.Response:
    try:
        query = parse_journal_query(request.query.items())
    except BadParameter as exc:
        raise bad_parameter(exc) from None
    journal = _journal(request)
    try:
        async with journal.connection() as conn:
            page = await journal_query.page(
                conn,
                query.journal_filter,
                after_id=query.after_id,
                limit=query.limit,
                timeout_ms=PAGE_TIMEOUT_MS,
            )
    except DATABASE_ERRORS as exc:
        raise unavailable(exc) from None
    records = [exports.transaction_record(row) for row in page.rows]
    next_cursor = str(records[-1]["transaction_id"]) if page.more else None
    return web.json_response({"records": records, "next_cursor": next_cursor})


async def journal_export(request: web.Request) -> web.StreamResponse:
    try:
        query = export_query(request.query.items())
    except BadParameter as exc:
        raise bad_parameter(exc) from None
    journal = _journal(request)
    if journal.exports.locked():
        body = {"error": "busy", "detail": f"{EXPORTS_AT_ONCE_MAX} exports run already"}
        raise web.HTTPTooManyRequests(
            text=json.dumps(body), content_type=JSON, headers={"Retry-After": "30"}
        )
    suffix = "csv" if query.output_format == "csv" else "jsonl"
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{CSV}; charset=utf-8" if suffix == "csv" else NDJSON,
            "Content-Disposition": f'attachment; filename="journal.{suffix}"',
        }
    )
    async with journal.exports:
        try:
            async with journal.connection() as conn:
                count = await _export(request, response, conn, query)
        except DATABASE_ERRORS as exc:
            if not response.prepared:
                raise unavailable(exc) from None
            # Not an HTTP error: aiohttp closes the connection, so the client sees the transfer
            # cut short (no final chunk), never a file that merely looks complete.
            log.warning("journal_export_cut_short", error=f"{type(exc).__name__}: {exc}")
            raise
    log.info("journal_exported", records=count, output_format=query.output_format)
    return response


async def _export(
    request: web.Request, response: web.StreamResponse, conn: Connection, query: ExportQuery
) -> int:
    """Writes the export to `response` a chunk at a time; returns the records written."""
    buffer = io.StringIO()

    async def send(at_least_chars: int) -> None:
        if buffer.tell() < at_least_chars:
            return
        if not response.prepared:
            await response.prepare(request)
        if buffer.tell() == 0:  # the end of an export of nothing
            return
        chunk = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        await asyncio.wait_for(response.write(chunk), EXPORT_WRITE_TIMEOUT_S)

    async def before_row() -> None:
        await send(EXPORT_CHUNK_CHARS)

    count = await exports.export(
        paced(conn, before_row),
        buffer,
        start=query.start,
        end=query.end,
        terminal_id=query.terminal_id,
        output_format=query.output_format,
        timeout_ms=SCAN_TIMEOUT_MS,
    )
    await send(0)
    await response.write_eof()
    return count


async def start_verification(request: web.Request) -> web.Response:
    job = _journal(request).start_verification()
    location = f"/journal/verifications/{job.job_id}"
    return web.json_response(job.as_json(), status=202, headers={"Location": location})


def _job(request: web.Request) -> VerificationJob:
    job = _journal(request).job(request.match_info["job_id"])
    if job is None:
        body = {"error": "not_found", "detail": "no such verification job in this process"}
        raise web.HTTPNotFound(text=json.dumps(body), content_type=JSON)
    return job


async def verification(request: web.Request) -> web.Response:
    return web.json_response(_job(request).as_json())


async def verification_events(request: web.Request) -> web.StreamResponse:
    """Progress lines each second while the job runs, then its whole status with the result."""
    job = _job(request)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    while True:
        finished = job.done.is_set()
        line = job.as_json() if finished else job.progress()
        await response.write(json.dumps(line).encode() + b"\n")
        if finished:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), PROGRESS_INTERVAL_S)
    await response.write_eof()
    return response


async def terminal_report(request: web.Request) -> web.Response:
    journal = _journal(request)
    today = business_day(journal.wall_clock(), journal.settings.business_day_cutover)
    try:
        business_date = report_query(request.query.items(), today)
    except BadParameter as exc:
        raise bad_parameter(exc) from None
    try:
        async with journal.connection() as conn:
            days = await audit.terminal_report(conn, business_date, timeout_ms=REPORT_TIMEOUT_MS)
    except DATABASE_ERRORS as exc:
        raise unavailable(exc) from None
    terminals = [asdict(day) | {"reconciled": day.reconciled} for day in days]
    return web.json_response({"business_date": business_date.isoformat(), "terminals": terminals})


_AUDITOR = frozenset({Role.AUDITOR})
_UNAVAILABLE = Reply(
    503, "No journal database configured (ledger.audit_dsn), or it did not answer."
)
_JOB_NOT_FOUND = Reply(404, "No such job in this process.")

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/journal",
        journal_records,
        _AUDITOR,
        "Journal records, filtered, one page at a time in transaction order.",
        (
            Reply(200, "`records` (as exported) and `next_cursor`, null on the last page."),
            _UNAVAILABLE,
        ),
        JOURNAL_PARAMETERS,
    ),
    Route(
        "GET",
        "/journal/export",
        journal_export,
        _AUDITOR,
        "The records of a time range as CSV or JSON lines, streamed (any size).",
        (
            Reply(200, "The records; a transfer cut short has no final chunk.", (CSV, NDJSON)),
            Reply(429, f"{EXPORTS_AT_ONCE_MAX} exports run already; retry later."),
            _UNAVAILABLE,
        ),
        EXPORT_PARAMETERS,
    ),
    Route(
        "POST",
        "/journal/verifications",
        start_verification,
        _AUDITOR,
        "Start verifying every chain and the books (or join the verification running).",
        (Reply(202, "The job: its id, state and progress; Location names it."), _UNAVAILABLE),
    ),
    Route(
        "GET",
        "/journal/verifications/{job_id}",
        verification,
        _AUDITOR,
        "A verification job's state, progress and, once finished, its result.",
        (Reply(200, "The job."), _JOB_NOT_FOUND, _UNAVAILABLE),
        (JOB_ID,),
    ),
    Route(
        "GET",
        "/journal/verifications/{job_id}/events",
        verification_events,
        _AUDITOR,
        "A verification's progress streamed as JSON lines, each second, then its result.",
        (
            Reply(200, "Progress lines, the last one the job with its result.", (NDJSON,)),
            _JOB_NOT_FOUND,
            _UNAVAILABLE,
        ),
        (JOB_ID,),
    ),
    Route(
        "GET",
        "/reports/terminals",
        terminal_report,
        _AUDITOR,
        "Per terminal, a business day's withdrawals and reversals reconciled with its cash"
        " account.",
        (Reply(200, "The business day and one entry per terminal and currency."), _UNAVAILABLE),
        REPORT_PARAMETERS,
    ),
)

"""The asyncpg edge of the ledger: one read (ledger.snapshot) and one write (ledger.apply).

Per request the switch calls `lookup` (one round trip, no locks), verifies the PIN at the HSM
outside any transaction, then calls `execute` or `record_pin_failure` (one round trip, one
transaction). The write re-checks under lock that the snapshot the decision was made on is
still current; if another request of the same customer committed first, the SQL function
returns a fresh snapshot in the same round trip and the decision is made again.

Under load, reads (and writes) that arrive while the store's calls are busy go to the database
together in the next call (`ledger.snapshot_all`, `ledger.apply_all`): one round trip and one
commit for the batch, each item with its own outcome.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger import codec, rules
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.migrations import Connection, require_current
from ledger.model import (
    RESPONSE_CODES,
    Card,
    Decision,
    Outcome,
    Request,
    Result,
    Snapshot,
)
from ledger.pan import mask_pan, pan_hash
from ledger.postgres import LocalCluster
from ledger.settings import LedgerSettings

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,
)


@dataclass(frozen=True, slots=True)
class Lookup:
    """The read for one request. `answered` is set when the request key was already answered."""

    request: Request
    pan_hash_hex: str
    snapshot: Snapshot

    @property
    def card(self) -> Card | None:
        return self.snapshot.card

    @property
    def answered(self) -> Result | None:
        stored = self.snapshot.answered
        return None if stored is None else codec.parse_result(stored, repeated=True)


@dataclass(frozen=True, slots=True)
class TerminalKeys:
    terminal_id: str
    status: str
    tmk: str | None
    bdk: str | None
    tpk: str | None
    tak: str | None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset, so no extra round trip per call.

    The store sets no session state: the admitted customer ids are transaction-local, and an
    open transaction is rolled back by the pool before this hook runs.
    """


class _Deadline:
    """One time budget across the steps of a call."""

    def __init__(self, timeout_ms: int) -> None:
        assert timeout_ms > 0, "timeout_ms"
        self.end = time.monotonic() + timeout_ms / 1000

    def left_ms(self) -> int:
        return max(1, int(self.left_s() * 1000))

    def left_s(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise LedgerUnavailable("ledger deadline passed")
        return left


_CANCEL_GRACE_S = 1.0


# Given a write's "stale" reply (its customer changed since its read), the write decided again on
# the state that reply carries; raises LedgerError when it may not be decided again.
DecideAgain = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class _Queued:
    payload: Mapping[str, Any]
    deadline: _Deadline
    reply: asyncio.Future[Any]
    again: DecideAgain | None
    queued_at: float = field(default_factory=time.monotonic)


class _Batches:
    """Calls of one batch function (`ledger.<function>(jsonb array)`), at most
    `calls_in_flight_max` at the database at once.

    A request that arrives while all those calls are busy waits in a queue and goes with the
    others queued, at most `batch_size_max` per call, as soon as a call ends. At light load a
    request therefore goes alone at once; under load the per-call cost is shared. Requests that
    lock a common customer never go to the database together, neither in one call nor in two at
    once: in one, all but the first would find the customer changed; in two, the second call
    would wait for the first's lock with all its other requests, and be decided again anyway.
    A write found stale is decided again at once, while its call ends, and goes first in the
    queue before its customers are free for others: decided on state read under the customer's
    lock, it cannot find its customer changed a second time. The queue is bounded by the
    switch's in-flight request limit, not here. A request that gave up while it was queued is
    not sent.
    """

    def __init__(
        self,
        connection: Callable[[_Deadline], contextlib.AbstractAsyncContextManager[Connection]],
        function: str,
        settings: LedgerSettings,
        customers: Callable[[Mapping[str, Any]], Iterable[int]],
    ) -> None:
        self._connection = connection
        self._customers = customers
        self._sql = f"SELECT ledger.{function}($1::jsonb)"
        self._calls_max = settings.calls_in_flight_max
        self._batch_max = settings.batch_size_max
        self._queue: collections.deque[_Queued] = collections.deque()
        self._calls_running = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the event loop keeps weak references only
        self._customers_in_calls: set[int] = set()
        self.calls_sent = 0
        self.requests_sent = 0
        self.wait_s = 0.0  # summed over requests: queued until their call started
        self.call_s = 0.0  # summed over calls: a connection from the pool, the call, its reply

    async def call(
        self, payload: Mapping[str, Any], deadline: _Deadline, *, again: DecideAgain | None = None
    ) -> Any:
        """The request's reply; `again` (writes): how to decide it again when it is stale."""
        left_s = deadline.left_s()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(payload, deadline, reply, again))
        self._start_calls()
        try:
            # The call's own timeout cancels its statement at the longest deadline in it; the
            # grace lets a call holding only this request report that (nothing committed)
            # before the request gives up not knowing. Giving up cancels `reply`: not sent if
            # still queued, dropped when it comes if its call is on.
            async with asyncio.timeout(left_s + _CANCEL_GRACE_S):
                return await reply
        except TimeoutError:
            raise LedgerUnavailable("ledger deadline passed") from None

    def _start_calls(self) -> None:
        while self._calls_running < self._calls_max and self._queue:
            batch: list[_Queued] = []
            held: set[int] = set()
            later: list[_Queued] = []
            while self._queue and len(batch) < self._batch_max:
                queued = self._queue.popleft()
                if queued.reply.done():
                    continue
                customers = self._customers(queued.payload)
                if held.isdisjoint(customers) and self._customers_in_calls.isdisjoint(customers):
                    held.update(customers)
                    batch.append(queued)
                else:
                    later.append(queued)
            self._queue.extendleft(reversed(later))
            if not batch:
                return  # all that waits is for customers in a running call: it ends first
            self.calls_sent += 1
            self.requests_sent += len(batch)
            now = time.monotonic()
            self.wait_s += sum(now - queued.queued_at for queued in batch)
            self._calls_running += 1
            self._customers_in_calls |= held
            task = asyncio.create_task(self._send(batch, held))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Queued], held: set[int]) -> None:
        # The longest budget in the batch bounds the call; each request still stops waiting
        # at its own deadline.
        deadline = max(batch, key=lambda queued: queued.deadline.end).deadline
        started = time.monotonic()
        answered = False
        # Unless the call answers: cancelled (the store is closing) or failed unexpectedly,
        # whether it committed is unknown.
        failure: LedgerError = LedgerUnavailable("ledger call did not complete")
        try:
            async with self._connection(deadline) as conn:
                replies = await conn.fetchval(
                    self._sql, [queued.payload for queued in batch], timeout=deadline.left_s()
                )
                assert len(replies) == len(batch), "one reply per request"
                # Answered before the connection goes back to the pool: the pool's release is a
                # task of its own, one more pass of a busy event loop before it ends.
                self._end_call(batch, held, started, [_outcome(reply) for reply in replies])
                answered = True
        except LedgerError as exc:
            failure = exc
        finally:
            if not answered:
                outcomes = [type(failure)(*failure.args) for _ in batch]
                self._end_call(batch, held, started, outcomes)

    def _end_call(
        self,
        batch: list[_Queued],
        held: set[int],
        started: float,
        outcomes: list[Any | LedgerError],
    ) -> None:
        """Each request's outcome delivered (a stale write decided again, to go first), the
        call's place and customers freed, and the next calls started."""
        self.call_s += time.monotonic() - started
        decided_again = []
        for queued, outcome in zip(batch, outcomes, strict=True):
            if queued.reply.done():
                continue
            if isinstance(outcome, LedgerError):
                queued.reply.set_exception(outcome)
            elif queued.again is not None and outcome["status"] == "stale":
                decided_again += _decide_again(queued, outcome)
            else:
                queued.reply.set_result(outcome)
        self._queue.extendleft(reversed(decided_again))
        self._calls_running -= 1
        self._customers_in_calls -= held
        self._start_calls()


def _outcome(reply: Mapping[str, Any]) -> Any | LedgerError:
    if "error" in reply:
        return LedgerError(f"ledger error: {reply['error']} {reply['message']}")
    return reply


def _decide_again(queued: _Queued, stale: Mapping[str, Any]) -> list[_Queued]:
    """The write decided again, to be sent next; or none, its reply failed."""
    assert queued.again is not None
    try:
        payload = queued.again(stale)
    except Exception as exc:  # its own request's failure (a LedgerError, or a bug): not the batch's
        queued.reply.set_exception(exc)
        return []
    return [_Queued(payload, queued.deadline, queued.reply, queued.again)]


@dataclass(frozen=True, slots=True)
class BatchFigures:
    """Database calls made and requests they carried, since the store opened; how many writes
    found their customer changed since their read and were decided again; and the seconds
    requests waited in the queue (summed over requests) and calls took (summed over calls)."""

    read_calls: int
    reads: int
    write_calls: int
    writes: int
    decided_again: int
    read_wait_s: float
    read_call_s: float
    write_wait_s: float
    write_call_s: float


class LedgerStore:
    """The async API the switch calls. Build it with `open_store`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: LedgerSettings,
        *,
        response_codes: Mapping[Outcome, str],
        cluster: LocalCluster | None,
    ) -> None:
        self._pool = pool
        self.settings = settings
        self.policy = rules.Policy(
            pin_tries_max=settings.pin_tries_max,
            business_day_cutover=settings.business_day_cutover,
            cross_customer_transfers=settings.cross_customer_transfers,
        )
        self._response_codes = response_codes
        self._cluster = cluster
        self._reads = _Batches(self._connection, "snapshot_all", settings, lambda _read: ())
        self._writes = _Batches(
            self._connection, "apply_all", settings, lambda write: write["admitted"]
        )
        self._decided_again = 0

    @contextlib.asynccontextmanager
    async def _connection(self, deadline: _Deadline) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire(timeout=deadline.left_s()) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise LedgerUnavailable(f"ledger unavailable: {type(exc).__name__}") from exc
        except asyncpg.PostgresError as exc:
            raise LedgerError(f"ledger error: {exc.sqlstate} {exc}") from exc

    def batch_figures(self) -> BatchFigures:
        return BatchFigures(
            self._reads.calls_sent,
            self._reads.requests_sent,
            self._writes.calls_sent,
            self._writes.requests_sent,
            self._decided_again,
            read_wait_s=self._reads.wait_s,
            read_call_s=self._reads.call_s,
            write_wait_s=self._writes.wait_s,
            write_call_s=self._writes.call_s,
        )

    async def lookup(self, request: Request, *, timeout_ms: int) -> Lookup:
        """Read the card context by PAN and whether this request key was already answered."""
        hash_hex = pan_hash(request.pan, self.settings.pan_hash_key).hex()
        params = codec.lookup_params(
            request, hash_hex, admit_other=self.settings.cross_customer_transfers
        )
        state = await self._reads.call(params, _Deadline(timeout_ms))
        return Lookup(request, hash_hex, codec.parse_snapshot(state))

    async def execute(
        self, lookup: Lookup, *, now: datetime | None = None, timeout_ms: int
    ) -> Result:
        """Run the request whose PIN (if any) was verified; a repeat returns the stored outcome."""
        return await self._decide_and_apply(
            lookup,
            lambda snapshot, at: rules.decide(snapshot, lookup.request, at, self.policy),
            now=now,
            timeout_ms=timeout_ms,
        )

    async def record_pin_failure(
        self, lookup: Lookup, *, now: datetime | None = None, timeout_ms: int
    ) -> Result:
        """Count a wrong PIN (blocking the card at the limit) and record the decline."""
        return await self._decide_and_apply(
            lookup,
            lambda snapshot, _at: rules.decide_pin_failure(snapshot, self.policy),
            now=now,
            timeout_ms=timeout_ms,
        )

    async def record_decline(
        self, lookup: Lookup, outcome: Outcome, *, now: datetime | None = None, timeout_ms: int
    ) -> Result:
        """Record a decline made outside the ledger (e.g. a bad MAC): audited, idempotent."""
        assert outcome is not Outcome.APPROVED, "only declines are recorded this way"
        return await self._decide_and_apply(
            lookup, lambda _snapshot, _at: Decision(outcome, "decline"), now=now,
            timeout_ms=timeout_ms,
        )  # fmt: skip

    async def process(
        self, request: Request, *, now: datetime | None = None, timeout_ms: int
    ) -> Result:
        """Lookup then execute: for requests with no PIN to verify (reversals, tools, tests)."""
        deadline = _Deadline(timeout_ms)
        lookup = await self.lookup(request, timeout_ms=deadline.left_ms())
        return await self.execute(lookup, now=now, timeout_ms=deadline.left_ms())

    async def _decide_and_apply(
        self,
        lookup: Lookup,
        decide: Callable[[Snapshot, datetime], Decision],
        *,
        now: datetime | None,
        timeout_ms: int,
    ) -> Result:
        if lookup.answered is not None:
            return lookup.answered
        at = now or datetime.now(UTC)
        decided = 1

        def again(stale: Mapping[str, Any]) -> Mapping[str, Any]:
            nonlocal decided
            if decided >= self.settings.stale_retries_max:
                raise LedgerError("the customer's state kept changing; request not applied")
            decided += 1
            self._decided_again += 1
            snapshot = codec.parse_snapshot(stale["state"])
            return self._payload(lookup, snapshot, decide(snapshot, at), at)

        first = self._payload(lookup, lookup.snapshot, decide(lookup.snapshot, at), at)
        reply = await self._writes.call(first, _Deadline(timeout_ms), again=again)
        return codec.parse_result(reply["result"], repeated=reply["status"] == "answered")

    def _payload(
        self, lookup: Lookup, snapshot: Snapshot, decision: Decision, at: datetime
    ) -> dict[str, Any]:
        request = lookup.request
        day = rules.business_day(at, self.policy.business_day_cutover)
        result = codec.result_json(decision, day)
        card = snapshot.card
        update = decision.card_update
        mark = decision.reversal_mark
        return {
            "customer_id": snapshot.customer_id,
            "admitted": list(snapshot.admitted),
            "versions": dict(snapshot.versions),
            "key": request.key.as_json(),
            "lookup": codec.lookup_params(
                request, lookup.pan_hash_hex, admit_other=self.policy.cross_customer_transfers
            ),
            "recorded_at": at.isoformat(),
            "kind": decision.kind,
            "business_date": day.isoformat(),
            "postings": result["postings"],
            "card": None
            if update is None or card is None
            else {
                "card_id": card.card_id,
                "status": update.status,
                "pin_tries": update.pin_tries,
                "usage_day": update.usage_day.isoformat() if update.usage_day else None,
                "usage_amount_minor": update.usage_amount_minor,
                "usage_count": update.usage_count,
            },
            "reversal": None if mark is None else {**mark[0].as_json(), "state": mark[1]},
            "result": result,
            "audit": codec.audit_body(
                request,
                decision,
                customer_id=snapshot.customer_id,
                pan_masked=card.pan_masked if card else mask_pan(request.pan),
                recorded_at=at,
                response_code=self._response_codes.get(decision.outcome, ""),
            ),
        }

    async def terminal_keys(self, terminal_id: str, *, timeout_ms: int) -> TerminalKeys | None:
        """The terminal's status and key cryptograms (read at sign-on)."""
        deadline = _Deadline(timeout_ms)
        async with self._connection(deadline) as conn:
            row = await conn.fetchrow(
                "SELECT terminal_id, status, tmk, bdk, tpk, tak FROM ledger.terminals"
                " WHERE terminal_id = $1",
                terminal_id,
                timeout=deadline.left_s(),
            )
        return None if row is None else TerminalKeys(**dict(row))

    async def set_terminal_keys(
        self, terminal_id: str, *, tpk: str, tak: str, tmk: str | None = None, timeout_ms: int
    ) -> None:
        """Store new key cryptograms after a key change (the TMK only when given)."""
        deadline = _Deadline(timeout_ms)
        async with self._connection(deadline) as conn:
            status = await conn.execute(
                "UPDATE ledger.terminals SET tpk = $2, tak = $3, tmk = coalesce($4, tmk)"
                " WHERE terminal_id = $1",
                terminal_id, tpk, tak, tmk,
                timeout=deadline.left_s(),
            )  # fmt: skip
        if status != "UPDATE 1":
            raise LedgerError(f"unknown terminal {terminal_id!r}")

    async def close(self, *, timeout_ms: int = 10_000) -> None:
        """Drain the pool (terminate what is left at the deadline); stop a cluster we started."""
        try:
            await asyncio.wait_for(self._pool.close(), timeout_ms / 1000)
        except TimeoutError:
            self._pool.terminate()
        finally:
            if self._cluster is not None:
                await asyncio.to_thread(self._cluster.stop, timeout_ms=timeout_ms)


async def open_store(
    settings: LedgerSettings,
    *,
    timeout_ms: int = 60_000,
    response_codes: Mapping[Outcome, str] = RESPONSE_CODES,
) -> LedgerStore:
    """Connect as the switch role (starting the private cluster when no DSN is set).

    Raises SchemaTooOld when `python -m ledger migrate` has not been run for this code.
    """
    deadline = _Deadline(timeout_ms)
    cluster = None
    dsn = settings.dsn
    if dsn is None:
        cluster = LocalCluster(settings.data_dir)
        info = await asyncio.to_thread(cluster.start, timeout_ms=deadline.left_ms())
        dsn = info.switch_dsn
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_size_min,
            max_size=settings.pool_size_max,
            init=_init_connection,
            reset=_keep_session,
            timeout=min(deadline.left_s(), settings.connect_timeout_ms / 1000),
            server_settings={
                "statement_timeout": str(settings.statement_timeout_ms),
                # The ledger's statements are primary-key lookups: a generic plan is always
                # right, and re-planning each call was a large share of the server's CPU.
                "plan_cache_mode": "force_generic_plan",
            },
        )
        async with pool.acquire(timeout=deadline.left_s()) as conn:
            await require_current(conn, timeout_ms=deadline.left_ms())
    except BaseException:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        raise
    return LedgerStore(pool, settings, response_codes=response_codes, cluster=cluster)

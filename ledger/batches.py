"""Requests to one batch function of the ledger, sent together: one round trip and one commit for
every request that queued while the previous calls were busy.

At most `calls_in_flight_max` calls are at the database at once. A request that arrives while
all of them are busy waits in a queue and goes with the others queued, at most
`batch_size_max` per call, as soon as a call ends. At light load a request therefore goes alone
at once; under load the per-call cost is shared.

Requests that lock a common customer never go to the database together, neither in one call nor
in two at once: in one, all but the first would find the customer changed; in two, the second
call would wait for the first's lock with all its other requests. A write found stale is decided
again at once, while its call ends, and goes first in the queue before its customers are free
for others: decided on state read under the customer's lock, it cannot find its customer changed
a second time.

A genuine error in one request aborts its whole call (no subtransaction per request): its
requests are then sent again one per call, so the one that fails fails alone. The queue is
bounded by the switch's in-flight request limit, not here. A request that gave up while queued
is not sent.

The two batch functions' calls (read_batch, write_batch) and the figures of the store's two
batchers (BatchFigures) are here too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from ledger import codec
from ledger.codec import ReadItem, WriteItem
from ledger.deadline import Deadline
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.migrations import Connection
from ledger.settings import LedgerSettings

# Errors that say the database could not be reached or did not answer: never a request's fault.
UNAVAILABLE = (
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

_CANCEL_GRACE_S = 1.0

Item = TypeVar("Item")
# One call of the batch function: the items' replies, in their order.
BatchCall = Callable[[Connection, Sequence[Item], float], Awaitable[Sequence[Any]]]
# Given a write's reply: None when it is final, or the write decided again (its new item and the
# customers it locks) when the reply says the state it was decided on changed. Raises
# LedgerError when it may not be decided again.
DecideAgain = Callable[[Any], "tuple[Any, frozenset[int]] | None"]
ConnectionFor = Callable[[Deadline], contextlib.AbstractAsyncContextManager[Connection]]


@dataclass(frozen=True, slots=True)
class _Queued:
    item: Any
    customers: frozenset[int]
    deadline: Deadline
    reply: asyncio.Future[Any]
    again: DecideAgain | None
    queued_at: float = field(default_factory=time.monotonic)


class Batcher(Generic[Item]):
    """The calls of one batch function; see the module docstring."""

    def __init__(
        self, connection: ConnectionFor, call: BatchCall[Item], settings: LedgerSettings
    ) -> None:
        self._connection = connection
        self._call = call
        self._calls_max = settings.calls_in_flight_max
        self._batch_max = settings.batch_size_max
        self._queue: collections.deque[_Queued] = collections.deque()
        self._calls_running = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the event loop keeps weak references only
        self._customers_in_calls: set[int] = set()
        self.calls_sent = 0
        self.requests_sent = 0
        self.decided_again = 0
        self.wait_s = 0.0  # summed over requests: queued until their call started
        self.call_s = 0.0  # summed over calls: a connection from the pool, the call, its reply

    async def call(
        self,
        item: Item,
        deadline: Deadline,
        *,
        customers: frozenset[int] = frozenset(),
        again: DecideAgain | None = None,
    ) -> Any:
        """The item's reply. `customers`: those its call locks; `again` (writes): how to decide
        it again when its reply says it is stale."""
        left_s = deadline.remaining_s()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(item, customers, deadline, reply, again))
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
                if held.isdisjoint(queued.customers) and self._customers_in_calls.isdisjoint(
                    queued.customers
                ):
                    held.update(queued.customers)
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
                outcomes = await self._outcomes(conn, [queued.item for queued in batch], deadline)
                # Answered before the connection goes back to the pool: the pool's release is a
                # task of its own, one more pass of a busy event loop before it ends.
                self._end_call(batch, held, started, outcomes)
                answered = True
        except LedgerError as exc:
            failure = exc
        finally:
            if not answered:
                self._end_call(batch, held, started, [type(failure)(*failure.args)] * len(batch))

    async def _outcomes(
        self, conn: Connection, items: list[Any], deadline: Deadline
    ) -> list[Any | LedgerError]:
        """Each item's reply; when the batch fails for one item, each item's own outcome."""
        try:
            replies = await self._call(conn, items, deadline.remaining_s())
        except asyncpg.PostgresError as exc:
            if isinstance(exc, UNAVAILABLE) or len(items) == 1:
                raise
            self.calls_sent += len(items)
            return [await self._alone(conn, item, deadline) for item in items]
        assert len(replies) == len(items), "one reply per request"
        return list(replies)

    async def _alone(self, conn: Connection, item: Any, deadline: Deadline) -> Any | LedgerError:
        try:
            (reply,) = await self._call(conn, [item], deadline.remaining_s())
        except asyncpg.PostgresError as exc:
            if isinstance(exc, UNAVAILABLE):
                raise
            return LedgerError(f"ledger error: {exc.sqlstate} {exc}")
        return reply

    def _end_call(
        self,
        batch: list[_Queued],
        held: set[int],
        started: float,
        outcomes: Sequence[Any | LedgerError],
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
                continue
            redo = self._decide_again(queued, outcome)
            if redo is not None:
                decided_again.append(redo)
            elif not queued.reply.done():
                queued.reply.set_result(outcome)
        self._queue.extendleft(reversed(decided_again))
        self._calls_running -= 1
        self._customers_in_calls -= held
        self._start_calls()

    def _decide_again(self, queued: _Queued, outcome: Any) -> _Queued | None:
        """The write decided again, to be sent next; None when its outcome is final (or its
        reply failed)."""
        if queued.again is None:
            return None
        try:
            redo = queued.again(outcome)
        except Exception as exc:  # its own request's failure (a LedgerError, or a bug)
            queued.reply.set_exception(exc)
            return None
        if redo is None:
            return None
        self.decided_again += 1
        item, customers = redo
        return _Queued(item, customers, queued.deadline, queued.reply, queued.again)


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

    @classmethod
    def of(cls, reads: Batcher[ReadItem], writes: Batcher[WriteItem]) -> BatchFigures:
        return cls(
            reads.calls_sent,
            reads.requests_sent,
            writes.calls_sent,
            writes.requests_sent,
            writes.decided_again,
            read_wait_s=reads.wait_s,
            read_call_s=reads.call_s,
            write_wait_s=writes.wait_s,
            write_call_s=writes.call_s,
        )


async def read_batch(conn: Connection, items: Sequence[ReadItem], timeout_s: float) -> list[Any]:
    """One call of ledger.read_batch: each request's state."""
    rows = await conn.fetch(codec.READ_SQL, *codec.columns(items), timeout=timeout_s)
    return [row[0] for row in rows]


async def write_batch(conn: Connection, items: Sequence[WriteItem], timeout_s: float) -> list[Any]:
    """One call of ledger.post_batch: each request's reply."""
    rows: list[Any] = await conn.fetch(codec.WRITE_SQL, *codec.columns(items), timeout=timeout_s)
    return rows

"""The asyncpg edge of the ledger: reads (ledger.read_batch) and writes (ledger.post_batch).

Per request the switch calls `lookup` (no locks), verifies the PIN at the HSM outside any
transaction, then calls `execute`, `record_pin_failure` or `record_decline` (one transaction).
The write re-checks under lock that the rows the decision was made on are unchanged (their
xmin); if another request of the same customer committed first, the function returns the
current state in the same round trip and the decision is made again. Requests go to the
database in batches (ledger.batches).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger import balancing, codec, rules
from ledger.authorisation import installed_check_value
from ledger.batches import UNAVAILABLE, Batcher, BatchFigures, read_batch, write_batch
from ledger.codec import ReadItem, WriteItem
from ledger.deadline import Deadline
from ledger.errors import DayClosed, LedgerError, LedgerUnavailable
from ledger.migrations import Connection
from ledger.model import (
    RESPONSE_CODES,
    Card,
    Decision,
    Outcome,
    Request,
    Result,
    Snapshot,
)
from ledger.pan import pan_hash as keyed_pan_hash
from ledger.pan import stored_mask
from ledger.pool import open_pool, warm_up
from ledger.postgres import LocalCluster
from ledger.settings import LedgerSettings
from ledger.terminal_keys import TerminalKeys, read_keys, set_session_keys


@dataclass(frozen=True, slots=True)
class Lookup:
    """The read for one request. `answered` is set when the request key was already answered."""

    request: Request
    pan_hash: bytes
    snapshot: Snapshot

    @property
    def card(self) -> Card | None:
        return self.snapshot.card

    @property
    def answered(self) -> Result | None:
        stored = self.snapshot.answered
        return None if stored is None else codec.parse_result(stored, repeated=True)


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
        self._reads: Batcher[ReadItem] = Batcher(self._connection, read_batch, settings)
        self._writes: Batcher[WriteItem] = Batcher(self._connection, write_batch, settings)
        # The connections the reads' and the writes' calls use at once, warmed while the switch
        # starts serving (sign-ons need neither function): not awaited, so a start is not slower.
        self._warming = asyncio.create_task(
            warm_up(
                pool,
                min(2 * settings.calls_in_flight_max, settings.pool_size_max),
                settings.statement_timeout_ms / 1000,
            )
        )

    @contextlib.asynccontextmanager
    async def _connection(self, deadline: Deadline) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire(timeout=deadline.remaining_s()) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise LedgerUnavailable(f"ledger unavailable: {type(exc).__name__}") from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == balancing.DAY_CLOSED_SQLSTATE:
                raise DayClosed(str(exc)) from exc
            raise LedgerError(f"ledger error: {exc.sqlstate} {exc}") from exc

    def batch_figures(self) -> BatchFigures:
        return BatchFigures.of(self._reads, self._writes)

    async def lookup(
        self, request: Request, *, pan_hash: bytes | None = None, timeout_ms: int
    ) -> Lookup:
        """Read the card context by PAN and whether this request key was already answered.
        `pan_hash`: the card's, as the HSM computes it (the switch); without it, the settings'
        PAN-hash key computes it here (the ledger's own tools and tests)."""
        hashed = pan_hash if pan_hash is not None else self._own_pan_hash(request.pan)
        state = await self._reads.call(codec.read_item(request, hashed), Deadline(timeout_ms))
        return Lookup(request, hashed, codec.parse_snapshot(state))

    def _own_pan_hash(self, pan: str) -> bytes:
        if self.settings.pan_hash_key is None:
            raise LedgerError("no PAN-hash key here: the HSM's hash must be given")
        return keyed_pan_hash(pan, self.settings.pan_hash_key)

    async def execute(
        self,
        lookup: Lookup,
        *,
        authorisation: bytes | None,
        chip_authorisation: bytes | None = None,
        now: datetime | None = None,
        timeout_ms: int,
    ) -> Result:
        """Run the request whose PIN (if any) was verified; a repeat returns the stored outcome.
        `authorisation`: the HSM's word for it (its PIN verified; a reversal's MAC), without
        which the ledger approves no withdrawal, transfer or inquiry and gives nothing back;
        `chip_authorisation`: its word for a chip request's ATC (the ARQC verified), without
        which the ledger moves no ATC."""
        return await self._decide_and_apply(
            lookup,
            lambda snapshot, at: rules.decide(snapshot, lookup.request, at, self.policy),
            words=(authorisation, chip_authorisation),
            now=now,
            timeout_ms=timeout_ms,
        )

    async def record_pin_failure(
        self,
        lookup: Lookup,
        *,
        chip_authorisation: bytes | None = None,
        now: datetime | None = None,
        timeout_ms: int,
    ) -> Result:
        """Count a wrong PIN (blocking the card at the limit) and record the decline; a chip
        request spends its ATC, with the HSM's word for it."""
        return await self._decide_and_apply(
            lookup,
            lambda snapshot, _at: rules.decide_pin_failure(
                snapshot, self.policy, atc=codec.atc_of(lookup.request)
            ),
            words=(None, chip_authorisation),
            now=now,
            timeout_ms=timeout_ms,
        )

    async def record_decline(
        self, lookup: Lookup, outcome: Outcome, *, now: datetime | None = None, timeout_ms: int
    ) -> Result:
        """Record a decline made outside the ledger (e.g. a bad MAC): audited, idempotent."""
        assert outcome is not Outcome.APPROVED, "only declines are recorded this way"
        return await self._decide_and_apply(
            lookup, lambda _snapshot, _at: Decision(outcome, "decline"), words=(None, None),
            now=now, timeout_ms=timeout_ms,
        )  # fmt: skip

    async def process(
        self,
        request: Request,
        *,
        authorise: Callable[[Lookup], bytes | None],
        authorise_chip: Callable[[Lookup], bytes | None] = lambda _lookup: None,
        now: datetime | None = None,
        timeout_ms: int,
    ) -> Result:
        """Lookup then execute, with `authorise` and `authorise_chip` standing for the HSM
        (tools and tests)."""
        deadline = Deadline(timeout_ms)
        lookup = await self.lookup(request, timeout_ms=deadline.remaining_ms())
        return await self.execute(
            lookup,
            authorisation=authorise(lookup),
            chip_authorisation=authorise_chip(lookup),
            now=now,
            timeout_ms=deadline.remaining_ms(),
        )

    async def _decide_and_apply(
        self,
        lookup: Lookup,
        decide: Callable[[Snapshot, datetime], Decision],
        *,
        words: tuple[bytes | None, bytes | None],
        now: datetime | None,
        timeout_ms: int,
    ) -> Result:
        if lookup.answered is not None:
            return lookup.answered
        at = now or datetime.now(UTC)
        decisions = [decide(lookup.snapshot, at)]  # the last is the one the write carries

        def again(reply: Mapping[str, Any]) -> tuple[WriteItem, frozenset[int]] | None:
            if reply["status"] != "stale":
                return None
            if len(decisions) >= self.settings.stale_retries_max:
                raise LedgerError("the customer's state kept changing; request not applied")
            snapshot = codec.parse_snapshot(reply["state"])
            decisions.append(decide(snapshot, at))
            item = self._item(lookup, snapshot, decisions[-1], at, words)
            return item, frozenset(snapshot.admitted)

        deadline = Deadline(timeout_ms)
        try:
            reply = await self._writes.call(
                self._item(lookup, lookup.snapshot, decisions[0], at, words),
                deadline,
                customers=frozenset(lookup.snapshot.admitted),
                again=again,
            )
        except DayClosed:
            # Decided before its day's cutover, written after an operator closed that day (the
            # close waits for writes in flight, so only a write sent after it meets this): it
            # is decided again as of now, in the next day, once (docs/cash.md, "The cutover").
            at = max(at, datetime.now(UTC))
            decisions.append(decide(lookup.snapshot, at))
            reply = await self._writes.call(
                self._item(lookup, lookup.snapshot, decisions[-1], at, words),
                deadline,
                customers=frozenset(lookup.snapshot.admitted),
                again=again,
            )
        if reply["status"] == "answered":
            return codec.parse_result(reply["result"], repeated=True)
        assert reply["status"] == "write", reply["status"]
        return codec.decided_result(
            decisions[-1],
            int(reply["result"]["transaction_id"]),
            rules.business_day(at, self.policy.business_day_cutover),
        )

    def _item(
        self,
        lookup: Lookup,
        snapshot: Snapshot,
        decision: Decision,
        at: datetime,
        words: tuple[bytes | None, bytes | None],
    ) -> WriteItem:
        card = snapshot.card
        return codec.write_item(
            lookup.request,
            snapshot,
            decision,
            pan_hash=lookup.pan_hash,
            pan_masked=card.pan_masked if card else stored_mask(lookup.request.pan),
            response_code=self._response_codes.get(decision.outcome, ""),
            recorded_at=at,
            business_date=rules.business_day(at, self.policy.business_day_cutover),
            authorisation=words[0],
            chip_authorisation=words[1],
        )

    async def record_balancing(
        self, report: balancing.TerminalReport, *, now: datetime, timeout_ms: int
    ) -> balancing.Balancing:
        """Record a terminal's 0500 and compare it with the host's figures (one call);
        raises BalancingRefused, having written nothing, when the ledger refuses it."""
        deadline = Deadline(timeout_ms)
        async with self._connection(deadline) as conn:
            return await balancing.record(conn, report, at=now, timeout_s=deadline.remaining_s())

    async def terminal_keys(self, terminal_id: str, *, timeout_ms: int) -> TerminalKeys | None:
        """The terminal's status and key cryptograms (read at sign-on)."""
        deadline = Deadline(timeout_ms)
        async with self._connection(deadline) as conn:
            return await read_keys(conn, terminal_id, timeout_s=deadline.remaining_s())

    async def set_terminal_keys(
        self, terminal_id: str, *, tpk: str, tak: str, authorisation: bytes, timeout_ms: int
    ) -> None:
        """Store new session key cryptograms after a key change, with the HSM's word that they
        were generated under this terminal's TMK (raises LedgerError for an unknown terminal)."""
        deadline = Deadline(timeout_ms)
        async with self._connection(deadline) as conn:
            await set_session_keys(
                conn, terminal_id, tpk=tpk, tak=tak, authorisation=authorisation,
                timeout_s=deadline.remaining_s(),
            )  # fmt: skip

    async def authorisation_check_value(self, *, timeout_ms: int) -> str | None:
        """The check value of the key the ledger verifies the HSM's word with."""
        deadline = Deadline(timeout_ms)
        async with self._connection(deadline) as conn:
            return await installed_check_value(conn, timeout_s=deadline.remaining_s())

    async def close(self, *, timeout_ms: int = 10_000) -> int:
        """Drain the pool (terminate what is left at the deadline); stop a cluster we started,
        unless other processes use it. Returns how many clients kept it running (0: stopped,
        or none of ours)."""
        self._warming.cancel()
        try:
            await asyncio.wait_for(self._pool.close(), timeout_ms / 1000)
        except TimeoutError:
            self._pool.terminate()
        finally:
            others = 0
            if self._cluster is not None:
                others = await asyncio.to_thread(
                    self._cluster.stop_unless_used, timeout_ms=timeout_ms
                )
        return others


async def open_store(
    settings: LedgerSettings,
    *,
    timeout_ms: int = 60_000,
    response_codes: Mapping[Outcome, str] = RESPONSE_CODES,
) -> LedgerStore:
    """Connect as the switch role (starting the private cluster when no DSN is set).

    Raises SchemaTooOld when `python -m ledger migrate` has not been run for this code.
    """
    deadline = Deadline(timeout_ms)
    cluster = None
    dsn = settings.dsn
    if dsn is None:
        cluster = LocalCluster(settings.data_dir)
        info = await asyncio.to_thread(cluster.start, timeout_ms=deadline.remaining_ms())
        dsn = info.switch_dsn
    try:
        pool = await open_pool(dsn, settings, deadline)
    except BaseException:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        raise
    return LedgerStore(pool, settings, response_codes=response_codes, cluster=cluster)

"""The switch's request handler: the pipeline steps that call the HSM and the ledger.

Per financial request: validate → read the card's chip data → verify MAC → look up (duplicate
check, card, terminal) → a withdrawal at a terminal out of cash ends here → chip checks
(fallback, amount, ATC, ARQC) → verify PIN → post → respond (with the ARPC when an ARQC
verified, and the note mix of an approved withdrawal) → MAC the response. A repeat gets its
stored answer, with the ARPC again when the first answer carried one. Each step either hands
the context on or ends the request with an outcome; nothing after a decline posts anything.
The deadline covers every call up to the posting; once the ledger write has started it runs to
completion (bounded by the ledger's statement timeout), so a terminal is never told "declined"
about money that moved. If the ledger goes away during the posting, the switch does not answer
at all (see `PostingInDoubt`): the terminal's reversal settles it.

An 0500 (terminal balancing) is read, its MAC verified, then recorded and compared by the ledger
in one call; its 0510 says 00, or 95 with the host's figures. Every 0210 and 0430 carries the
business day it was booked under (F15).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from types import MappingProxyType

import structlog

from hsm.api import HSM, Dukpt, PinKey
from hsm.authorisation import Authorisation
from hsm.crypto import Algorithm
from hsm.errors import HsmUnavailable, PinError
from hsm.keys import StoredKey
from hsm.pinblock import PinBlockFormat
from ledger.cash import cash_out
from ledger.codec import requested
from ledger.deadline import Deadline, DeadlinePassed
from ledger.errors import BalancingRefused, LedgerUnavailable
from ledger.model import Outcome as LedgerOutcome
from ledger.model import Result, Withdrawal
from ledger.rules import business_day
from ledger.store import LedgerStore, Lookup
from switch import balancing
from switch.chip import (
    CardRead,
    ChipRefusal,
    authorisation_atc,
    read_card,
    repeat_carries_arpc,
)
from switch.chip_steps import ChipSteps, VerifiedArqc, refusal_logged
from switch.iso8583.codec import mac_input, prepared_for_mac, with_mac
from switch.iso8583.elements import KeyChangeData
from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode
from switch.iso8583.spec import Dialect
from switch.pipeline import (
    SETTLEMENT_DATE_FIELD,
    Outcome,
    PinDataError,
    answer,
    ledger_request,
    retrieval_reference,
    run_steps,
    settlement_date,
    verification_from_pin_data,
)
from switch.responses import respond
from switch.server import ConnectionView
from switch.session import TerminalKeys, with_session_keys
from switch.settings import PipelineSettings
from switch.signon import complete_sign_on
from switch.transaction import Kind, Refusal, Transaction, parse_transaction

log = structlog.get_logger("switch.flows")
AES_KSN_BYTES = 12
# An answer's own HSM calls (its MAC, a decline's ARPC) get at least this long, deadline or not.
MIN_RESPONSE_HSM_MS = 100
DATED_CLASSES = frozenset({"020", "042"})
BALANCING_CLASS = "050"


@dataclass(frozen=True, slots=True)
class Context:
    request: Message
    connection: ConnectionView
    deadline: Deadline
    transaction: Transaction
    rrn: str
    lookup: Lookup | None = None
    card_read: CardRead | None = None
    arqc: VerifiedArqc | None = None  # a chip request's ARQC, once the HSM verified it
    # The HSM's word that the PIN was right (for a reversal: that its MAC was), which the
    # ledger checks before any approval.
    authorisation: bytes | None = None


StepMethod = Callable[["RequestProcessor", Context], Awaitable[Context | Outcome]]
# A step bound to its handler, with its name for the step timings.
NamedStep = tuple[str, Callable[[Context], Awaitable[Context | Outcome]]]


class PostingInDoubt(Exception):
    """The ledger went away during a posting: whether it committed is unknown."""


class RequestProcessor:
    """Everything between a decoded request and its response; called by the server."""

    def __init__(
        self,
        *,
        hsm: HSM,
        ledger: LedgerStore,
        settings: PipelineSettings,
        dialect: Dialect,
        wall_clock: Callable[[], datetime],
        count_error: Callable[[str], None],
        time_step: Callable[[str, float], None],
        write_timeout_ms: int,
    ) -> None:
        self._hsm = hsm
        self._ledger = ledger
        self._settings = settings
        self._dialect = dialect
        self._now = wall_clock
        self._count_error = count_error
        self._time_step = time_step
        self._write_timeout_ms = write_timeout_ms
        self._chip = ChipSteps(
            hsm=hsm,
            ledger=ledger,
            wall_clock=wall_clock,
            write_timeout_ms=write_timeout_ms,
            atc_jump_logged=settings.atc_jump_logged,
        )
        # Built once, not per request.
        self._steps: Mapping[Kind, Sequence[NamedStep]] = {
            kind: tuple((step.__name__, partial(step, self)) for step in steps)
            for kind, steps in STEPS.items()
        }

    async def __call__(self, request: Message, connection: ConnectionView) -> Message | None:
        deadline = Deadline(self._settings.request_deadline_ms)
        try:
            if request.message_class == "080":
                return await self._network(request, connection, deadline)
            if request.message_class == BALANCING_CLASS:
                outcome = await self._balancing(request, connection, deadline)
            else:
                outcome = await self._financial(request, connection, deadline)
        except PostingInDoubt as exc:
            # The posting may have committed: a decline now could leave a customer debited
            # with no cash. No answer instead: the terminal times out and sends its reversal,
            # which the ledger applies exactly once, whatever happened here.
            self._count_error("database")
            log.error(
                "posting_in_doubt",
                reason=str(exc),
            )
            return None
        except HsmUnavailable as exc:
            self._count_error("hsm")
            outcome = Outcome(ResponseCode.ISSUER_UNAVAILABLE, reason=f"HSM: {exc}")
        except DeadlinePassed:
            # The request's budget (a LedgerUnavailable to the ledger's callers): no dependency
            # failed, so none is counted.
            outcome = Outcome(ResponseCode.ISSUER_UNAVAILABLE, reason="deadline passed")
        except LedgerUnavailable as exc:
            self._count_error("database")
            outcome = Outcome(ResponseCode.ISSUER_UNAVAILABLE, reason=f"ledger: {exc}")
        if request.message_class == BALANCING_CLASS:
            echoed = {n: request.fields[n] for n in balancing.ECHOED if n in request}
            outcome = replace(outcome, fields={**echoed, **outcome.fields})
        if request.message_class in DATED_CLASSES and SETTLEMENT_DATE_FIELD not in outcome.fields:
            # Every 0210 and 0430 names its business day: the ledger's, when it booked the
            # request (already in the outcome); today's, when the switch answered alone.
            today = business_day(self._now(), self._ledger.policy.business_day_cutover)
            outcome = replace(
                outcome, fields={SETTLEMENT_DATE_FIELD: settlement_date(today), **outcome.fields}
            )
        if outcome.code in (ResponseCode.ISSUER_UNAVAILABLE, ResponseCode.SYSTEM_MALFUNCTION):
            log.warning(
                "request_failed",
                reason=outcome.reason,
            )
        return await self._mac_response(
            respond(request, outcome.code, outcome.fields), connection, deadline
        )

    # financial messages

    async def _financial(
        self, request: Message, connection: ConnectionView, deadline: Deadline
    ) -> Outcome:
        parsed = parse_transaction(request)
        if isinstance(parsed, Refusal):
            return Outcome(parsed.code, reason=parsed.reason)
        context = Context(
            request, connection, deadline, parsed, retrieval_reference(parsed, self._now())
        )
        structlog.contextvars.bind_contextvars(rrn=context.rrn)
        steps = self._steps[parsed.kind]
        steps_ms: dict[str, float] = {}

        def timed(step: str, elapsed_ms: float) -> None:
            self._time_step(step, elapsed_ms)
            steps_ms[step] = elapsed_ms

        try:
            outcome, decided_on = await run_steps(steps, context, timed=timed)
            if decided_on.arqc is not None:
                outcome = await self._chip.with_arpc(
                    parsed,
                    decided_on.arqc,
                    outcome,
                    timeout_ms=max(deadline.remaining_ms_or_zero(), MIN_RESPONSE_HSM_MS),
                )
        finally:
            # Also when a step raised (a dependency down, the deadline): those are the slow ones.
            if sum(steps_ms.values()) >= self._settings.slow_request_ms:
                log.warning(
                    "slow_request",
                    steps_ms={step: round(ms, 1) for step, ms in steps_ms.items()},
                )
        return replace(outcome, fields={37: context.rrn, **outcome.fields})

    async def read_chip(self, context: Context) -> Context | Outcome:
        read = read_card(context.transaction)
        if isinstance(read, ChipRefusal):
            return refusal_logged(context.transaction, read)
        return replace(context, card_read=read)

    async def _mac_verified(
        self, request: Message, connection: ConnectionView, deadline: Deadline
    ) -> bool | Outcome:
        """Whether the request's MAC verified under the session TAK (logged when not); the
        refusal when it cannot be checked. True when MACs are not required."""
        if not self._settings.require_mac:
            return True
        maced = _maced(request, connection)
        if isinstance(maced, Outcome):
            return maced
        tak, mac = maced
        data = mac_input(request, self._dialect)
        if await self._hsm.verify_mac(tak, data, mac, timeout_ms=deadline.remaining_ms()):
            return True
        log.warning("security_event", event_kind="mac_failure")
        return False

    async def check_mac(self, context: Context) -> Context | Outcome:
        verified = await self._mac_verified(context.request, context.connection, context.deadline)
        if isinstance(verified, Outcome):
            return verified
        if verified:
            return context
        return await self._declined_for_mac(context)

    async def check_reversal_mac(self, context: Context) -> Context | Outcome:
        """A reversal's MAC, verified by the HSM, which answers with the ledger's word for what
        it reverses, read from the very bytes the MAC covers: the ledger gives no money back
        without it. A switch that checks no MACs has no word to give: it declines reversals
        (recorded, so the terminal's repeats get the same answer)."""
        if not self._settings.require_mac:
            lookup = await self._lookup(context)
            result = await self._ledger.record_decline(
                lookup, LedgerOutcome.NOT_PERMITTED_TO_TERMINAL, now=self._now(),
                timeout_ms=self._write_timeout_ms,
            )  # fmt: skip
            return self._answer(context, result, reason="reversal without a MAC")
        maced = _maced(context.request, context.connection)
        if isinstance(maced, Outcome):
            return maced
        tak, mac = maced
        word = await self._hsm.reversal_word(
            tak, mac_input(context.request, self._dialect), mac, dialect=self._dialect,
            timeout_ms=context.deadline.remaining_ms(),
        )  # fmt: skip
        if word is None:
            log.warning("security_event", event_kind="mac_failure")
            return await self._declined_for_mac(context)
        return replace(context, authorisation=word)

    async def _declined_for_mac(self, context: Context) -> Outcome:
        lookup = await self._lookup(context)
        result = await self._ledger.record_decline(
            lookup, LedgerOutcome.DO_NOT_HONOUR, now=self._now(), timeout_ms=self._write_timeout_ms
        )
        return self._answer(context, result, reason="MAC verification failed")

    async def look_up(self, context: Context) -> Context | Outcome:
        lookup = await self._lookup(context)
        if lookup.answered is not None:
            stored = self._answer(context, lookup.answered, reason="repeat: stored response")
            return await self._repeat(context, lookup, stored)
        return replace(context, lookup=lookup)

    async def _repeat(self, context: Context, lookup: Lookup, stored: Outcome) -> Outcome:
        """A repeat's stored answer. When the first answer to a chip request carried tag 91, the
        repeat's does too (without it the card declines what the ledger approved): the same
        ARQC (a retransmission's is the same) is verified again and answered with the stored
        response code, which gives the very ARPC of the first answer. Its ATC is not checked:
        the first copy spent it. Nothing is written; if the HSM cannot answer, the stored answer
        goes without tag 91."""
        read, card, answered = context.card_read, lookup.card, lookup.snapshot.answered
        assert answered is not None, "a repeat has its stored answer"
        atc = authorisation_atc(context.transaction, read)
        if read is None or read.icc is None or card is None or card.emv is None:
            return stored
        if not repeat_carries_arpc(answered["kind"], atc, card.last_atc):
            return stored
        try:
            verified = await self._chip.verify_arqc(
                context.transaction, read.icc, card.emv, lookup,
                request=_authorisation(lookup), deadline=context.deadline,
            )  # fmt: skip
            if isinstance(verified, Outcome):
                return stored  # logged as a security event; the ledger kept the stored answer
            return await self._chip.with_arpc(
                context.transaction,
                verified,
                stored,
                timeout_ms=max(context.deadline.remaining_ms_or_zero(), MIN_RESPONSE_HSM_MS),
            )
        except HsmUnavailable as exc:
            self._count_error("hsm")
            error = str(exc)
        except DeadlinePassed:
            error = "deadline passed"
        log.error(
            "arpc_not_generated",
            error=error,
        )
        return stored

    async def check_cash(self, context: Context) -> Context | Outcome:
        """A terminal out of cash declines a withdrawal at once: no PIN check, no ledger write
        (the ledger's decision would decline it the same way, see ledger.rules.CASH_DECLINES)."""
        lookup = context.lookup
        assert lookup is not None, "look_up runs first"
        terminal, request = lookup.snapshot.terminal, lookup.request
        assert isinstance(request, Withdrawal), "a withdrawal's step"
        if terminal is not None and cash_out(terminal.cassettes, request.currency):
            return Outcome(ResponseCode.NOT_PERMITTED_TO_TERMINAL, reason="terminal out of cash")
        return context

    async def check_card_read(self, context: Context) -> Context | Outcome:
        read, lookup = context.card_read, context.lookup
        assert read is not None, "read_chip runs first"
        assert lookup is not None, "look_up runs first"
        refused = await self._chip.check_card_read(context.transaction, read, lookup)
        return context if refused is None else refused

    async def check_chip_data(self, context: Context) -> Context | Outcome:
        read, lookup = context.card_read, context.lookup
        assert read is not None, "read_chip runs first"
        assert lookup is not None, "look_up runs first"
        if read.icc is None:
            return context
        refused = await self._chip.check_chip_data(context.transaction, read.icc, lookup)
        return context if refused is None else refused

    async def verify_arqc(self, context: Context) -> Context | Outcome:
        read, lookup = context.card_read, context.lookup
        assert read is not None, "read_chip runs first"
        assert lookup is not None, "look_up runs first"
        card = lookup.card
        if read.icc is None or card is None or card.emv is None:
            return context  # no chip data, or a card check_card_read passed to the ledger
        verified = await self._chip.verify_arqc(
            context.transaction, read.icc, card.emv, lookup, request=_authorisation(lookup),
            deadline=context.deadline,
        )  # fmt: skip
        if isinstance(verified, Outcome):
            return verified
        return replace(context, arqc=verified)

    async def verify_pin(self, context: Context) -> Context | Outcome:
        lookup = context.lookup
        assert lookup is not None, "look_up runs first"
        card = lookup.card
        if card is None or card.status != "active":
            return context  # the ledger's decision declines it, PIN or not
        pin_key = _pin_key(context)
        if isinstance(pin_key, Outcome):
            return pin_key
        key, block_format = pin_key
        try:
            verification = verification_from_pin_data(card.pin_data)
        except PinDataError as exc:
            result = await self._ledger.record_decline(
                lookup,
                LedgerOutcome.DO_NOT_HONOUR,
                now=self._now(),
                timeout_ms=self._write_timeout_ms,
            )
            return self._answer(context, result, reason=str(exc))
        pin_block = context.transaction.pin_block
        assert pin_block is not None, "field 52 is required where a PIN is verified"
        try:
            word = await self._hsm.verify_pin_for(
                pin_block,
                context.transaction.pan,
                key,
                block_format,
                verification,
                request=_authorisation(lookup),
                timeout_ms=context.deadline.remaining_ms(),
            )
        except PinError:
            word = None  # a block that does not decrypt to a PIN is a wrong PIN
        if word is not None:
            return replace(context, authorisation=word)
        result = await self._ledger.record_pin_failure(
            lookup,
            chip_authorisation=_chip_authorisation(context),
            now=self._now(),
            timeout_ms=self._write_timeout_ms,
        )
        return self._answer(context, result, reason="wrong PIN")

    async def post(self, context: Context) -> Context | Outcome:
        lookup = context.lookup
        assert lookup is not None, "look_up runs first"
        # Never cut short by the request deadline: see the module docstring.
        try:
            result = await self._ledger.execute(
                lookup,
                authorisation=context.authorisation,
                chip_authorisation=_chip_authorisation(context),
                now=self._now(),
                timeout_ms=self._write_timeout_ms,
            )
        except LedgerUnavailable as exc:
            raise PostingInDoubt(str(exc)) from exc
        return self._answer(context, result)

    async def _lookup(self, context: Context) -> Lookup:
        if context.lookup is not None:
            return context.lookup
        # The ledger spends the counter only on decisions made after the ARQC verified.
        atc = authorisation_atc(context.transaction, context.card_read)
        request = ledger_request(context.transaction, context.rrn, atc=atc)
        remaining_ms = context.deadline.remaining_ms()
        try:
            # A read writes nothing: at the deadline the request stops waiting at once (the
            # store does not send a read that gave up while queued; one already sent ends in its
            # batch, bounded by the store's own timeouts).
            async with asyncio.timeout(remaining_ms / 1000):
                # The HSM hashes the card number: neither this host nor the ledger holds the key.
                pan_hash = await self._hsm.pan_hash(request.pan, timeout_ms=remaining_ms)
                return await self._ledger.lookup(
                    request, pan_hash=pan_hash, timeout_ms=context.deadline.remaining_ms()
                )
        except TimeoutError:
            raise LedgerUnavailable(
                "ledger read did not finish within the request deadline"
            ) from None

    def _answer(self, context: Context, result: Result, reason: str | None = None) -> Outcome:
        return answer(context.transaction, result, reason)

    # terminal balancing

    async def _balancing(
        self, request: Message, connection: ConnectionView, deadline: Deadline
    ) -> Outcome:
        """0500: the terminal's totals for a business day, compared with the host's by the
        ledger in one call that also records them. Nothing is written unless the MAC verified
        and every field is consistent; a refused 0500 changes nothing."""
        now = self._now()
        parsed = balancing.parse_balancing(
            request, business_day(now, self._ledger.policy.business_day_cutover)
        )
        if isinstance(parsed, Refusal):
            return Outcome(parsed.code, reason=parsed.reason)
        verified = await self._mac_verified(request, connection, deadline)
        if isinstance(verified, Outcome):
            return verified
        if not verified:
            return Outcome(ResponseCode.DO_NOT_HONOUR, reason="MAC verification failed")
        try:
            found = await self._ledger.record_balancing(
                parsed, now=now, timeout_ms=deadline.remaining_ms()
            )
        except BalancingRefused as exc:
            return Outcome(BALANCING_REFUSALS[exc.reason], reason=str(exc))
        if found.balanced:
            return Outcome(ResponseCode.APPROVED)
        log.warning(
            "balancing_imbalance",
            business_date=parsed.business_date.isoformat(),
            currency=parsed.currency,
            differences=list(found.differences),
        )
        return Outcome(
            ResponseCode.RECONCILE_ERROR,
            MappingProxyType(balancing.host_fields(found)),
            reason=f"imbalance in {' '.join(found.differences)}",
        )

    # network management

    async def _network(
        self, request: Message, connection: ConnectionView, deadline: Deadline
    ) -> Message:
        if request.network_code == "001":
            return await self._sign_on(request, connection, deadline)
        return await self._key_change(request, connection, deadline)

    async def _sign_on(
        self, request: Message, connection: ConnectionView, deadline: Deadline
    ) -> Message:
        terminal_id = request.terminal_id or ""
        record = await self._ledger.terminal_keys(terminal_id, timeout_ms=deadline.remaining_ms())
        if record is None or record.status != "active":
            log.warning(
                "security_event",
                event_kind="sign_on_refused",
                terminal_id=terminal_id,
                reason="unknown" if record is None else record.status,
            )
            return respond(request, ResponseCode.NOT_PERMITTED_TO_TERMINAL)
        keys = TerminalKeys(
            tmk=_stored(record.tmk),
            tpk=_stored(record.tpk),
            tak=_stored(record.tak),
            bdk=_stored(record.bdk),
        )
        return complete_sign_on(request, connection, keys)

    async def _key_change(
        self, request: Message, connection: ConnectionView, deadline: Deadline
    ) -> Message:
        session = connection.session
        tmk = _session_key(connection, "tmk")
        if tmk is None or session.terminal_id is None:
            return respond(request, ResponseCode.NOT_PERMITTED_TO_TERMINAL)
        keys = await self._hsm.generate_session_keys(
            tmk, terminal_id=session.terminal_id, timeout_ms=deadline.remaining_ms()
        )
        await self._ledger.set_terminal_keys(
            session.terminal_id,
            tpk=keys.tpk.stored.to_text(),
            tak=keys.tak.stored.to_text(),
            authorisation=keys.authorisation,
            timeout_ms=deadline.remaining_ms(),
        )
        # Into the session as it is now, not as read before the awaits: a sign-off pipelined
        # behind this key change may have been answered meanwhile, and must stay.
        connection.session = with_session_keys(connection.session, keys.tpk.stored, keys.tak.stored)
        delivered = KeyChangeData(
            keys.tpk.under_tmk, keys.tpk.kcv, keys.tak.under_tmk, keys.tak.kcv
        )
        return respond(request, ResponseCode.APPROVED, {48: delivered.encode()})

    async def _mac_response(
        self, response: Message, connection: ConnectionView, deadline: Deadline
    ) -> Message:
        tak = _session_key(connection, "tak")
        if not self._settings.require_mac or tak is None or response.message_class == "081":
            return response
        prepared = prepared_for_mac(response, self._dialect)
        try:
            mac = await self._hsm.generate_mac(
                tak,
                mac_input(prepared, self._dialect),
                timeout_ms=max(deadline.remaining_ms_or_zero(), MIN_RESPONSE_HSM_MS),
            )
        except HsmUnavailable as exc:
            self._count_error("hsm")
            log.error(
                "response_not_maced",
                reason=str(exc),
            )
            return response
        return with_mac(prepared, mac, self._dialect)


def _authorisation(lookup: Lookup) -> Authorisation:
    """What the HSM's word covers: the request's key and what it asks for."""
    key = lookup.request.key
    amount_minor, currency = requested(lookup.request)
    return Authorisation(
        key.terminal_id, key.transmission_time, key.stan, key.message_class, amount_minor, currency
    )


def _maced(request: Message, connection: ConnectionView) -> tuple[StoredKey, bytes] | Outcome:
    """The terminal's TAK and the request's MAC, or why the request cannot be checked."""
    tak = _session_key(connection, "tak")
    if tak is None:
        return Outcome(ResponseCode.NOT_PERMITTED_TO_TERMINAL, reason="no TAK: key change first")
    mac = request.mac
    if mac is None:
        return Outcome(ResponseCode.FORMAT_ERROR, reason="MAC required")
    return tak, mac


def _chip_authorisation(context: Context) -> bytes | None:
    """The HSM's word for the request's ATC, once its ARQC verified."""
    return None if context.arqc is None else context.arqc.authorisation


def _pin_key(context: Context) -> tuple[PinKey, PinBlockFormat] | Outcome:
    """The key F52 is under: the session TPK, or for a DUKPT terminal (F53) its BDK and the KSN.
    AES keys (and AES DUKPT's 12-byte KSNs) mean ISO format 4, TDES ones format 0."""
    ksn = context.transaction.ksn
    if ksn is not None:
        bdk = _session_key(context.connection, "bdk")
        if bdk is None:
            return Outcome(
                ResponseCode.NOT_PERMITTED_TO_TERMINAL, reason="F53 from a non-DUKPT terminal"
            )
        aes = len(ksn) == AES_KSN_BYTES
        return Dukpt(bdk, ksn), PinBlockFormat.ISO4 if aes else PinBlockFormat.ISO0
    tpk = _session_key(context.connection, "tpk")
    if tpk is None:
        return Outcome(ResponseCode.NOT_PERMITTED_TO_TERMINAL, reason="no TPK: key change first")
    return tpk, PinBlockFormat.ISO4 if tpk.algorithm is Algorithm.AES else PinBlockFormat.ISO0


def _session_key(connection: ConnectionView, name: str) -> StoredKey | None:
    keys = connection.session.keys
    return None if keys is None else getattr(keys, name)


def _stored(text: str | None) -> StoredKey | None:
    return None if text is None else StoredKey.from_text(text)


_FINANCIAL: Sequence[StepMethod] = (
    RequestProcessor.read_chip,
    RequestProcessor.check_mac,
    RequestProcessor.look_up,
    RequestProcessor.check_card_read,
    RequestProcessor.check_chip_data,
    RequestProcessor.verify_arqc,
    RequestProcessor.verify_pin,
    RequestProcessor.post,
)
# The ledger's refusals of an 0500 (ledger.balancing.REFUSALS), as the 0510 answers them.
BALANCING_REFUSALS: Mapping[str, ResponseCode] = MappingProxyType(
    {
        "day_closed": ResponseCode.INVALID_TRANSACTION,
        "day_not_begun": ResponseCode.FORMAT_ERROR,
        "counters": ResponseCode.INVALID_AMOUNT,
        "currency": ResponseCode.INVALID_AMOUNT,
    }
)
STEPS: Mapping[Kind, Sequence[StepMethod]] = MappingProxyType(
    {
        Kind.WITHDRAWAL: (*_FINANCIAL[:3], RequestProcessor.check_cash, *_FINANCIAL[3:]),
        Kind.BALANCE_INQUIRY: _FINANCIAL,
        Kind.TRANSFER: _FINANCIAL,
        # A reversal's F55 (the card's second cryptogram) is read for form only: the reversal
        # is applied whatever the card said, as any other.
        Kind.REVERSAL: (
            RequestProcessor.read_chip,
            RequestProcessor.check_reversal_mac,
            RequestProcessor.look_up,
            RequestProcessor.post,
        ),
    }
)

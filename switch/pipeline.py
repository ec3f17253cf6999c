"""The request pipeline's parts that do no I/O: the deadline, the outcome, the step runner, and
the translations between ISO 8583 and the ledger's vocabulary.

A step takes the request's context and returns either the context for the next step or an
`Outcome` that ends the pipeline. The step list per transaction kind is data (`flows.STEPS`).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from hsm.api import Ibm3624Offset, Verification, VisaPvv
from hsm.errors import KeyBlockError
from hsm.keys import StoredKey
from ledger.model import (
    RESPONSE_CODES,
    AuditFields,
    BalanceInquiry,
    RequestKey,
    Result,
    Reversal,
    Transfer,
    Withdrawal,
)
from ledger.model import (
    Outcome as LedgerOutcome,
)
from ledger.model import (
    Request as LedgerRequest,
)
from switch.iso8583.elements import (
    AVAILABLE_BALANCE,
    CURRENCY_NUMERIC,
    LEDGER_BALANCE,
    NOTE_MIX_FIELD,
    AdditionalAmount,
    NoteEntry,
    encode_additional_amounts,
    encode_note_mix,
)
from switch.iso8583.response_codes import ResponseCode
from switch.transaction import Kind, Transaction

# Processing-code account type 00 ("default") means the card's checking account.
DEFAULT_ACCOUNT_TYPE = "20"
SETTLEMENT_DATE_FIELD = 15


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ends: its response code, fields to add, and why (for the log)."""

    code: ResponseCode
    fields: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    reason: str | None = None


C = TypeVar("C")


async def run_steps(
    steps: Sequence[tuple[str, Callable[[C], Awaitable[C | Outcome]]]],
    context: C,
    *,
    timed: Callable[[str, float], None],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Outcome, C]:
    """Run the named steps in order until one decides: its outcome, and the context it decided
    on. Each step that runs is timed, also the one that raises: `timed(name, elapsed_ms)` (where
    a request's time goes, as jPOS's profiler)."""
    for name, step in steps:
        started = clock()
        try:
            result = await step(context)
        finally:
            timed(name, (clock() - started) * 1000)
        if isinstance(result, Outcome):
            return result, context
        context = result
    raise AssertionError("a pipeline's last step always decides")


def ledger_request(transaction: Transaction, rrn: str, *, atc: int | None = None) -> LedgerRequest:
    """The ledger's view of a validated transaction; `atc`, a chip request's counter."""
    request = transaction.request
    key = RequestKey(
        transaction.terminal_id,
        transaction.transmission_time,
        transaction.stan,
        message_class=request.mti[:3] + "0",
    )
    # Field 3 as received: parse_transaction checked it, and the ledger records it as text.
    audit = AuditFields(request.mti, request.fields[3], rrn)
    from_type = _account_type(transaction.from_account_type)
    if transaction.kind is Kind.BALANCE_INQUIRY:
        return BalanceInquiry(transaction.pan, key, audit, from_type, atc)
    currency = transaction.currency
    assert currency is not None, "field 49 is required for money movements"
    if transaction.kind is Kind.WITHDRAWAL:
        return Withdrawal(
            transaction.pan, key, audit, from_type, transaction.amount_minor, currency, atc
        )
    if transaction.kind is Kind.TRANSFER:
        to_account = request.get(103)
        return Transfer(
            transaction.pan,
            key,
            audit,
            from_type,
            transaction.amount_minor,
            currency,
            to_type=None if to_account else _account_type(transaction.to_account_type),
            to_account=to_account.strip() if to_account else None,
            atc=atc,
        )
    original = transaction.original
    assert original is not None, "a reversal carries field 90"
    original_key = RequestKey(
        transaction.terminal_id,
        original.transmission_time,
        original.stan,
        message_class=original.mti[:3] + "0",
    )
    return Reversal(
        transaction.pan, key, audit, original_key, transaction.dispensed_minor or 0,
        amount_minor=transaction.amount_minor,
    )  # fmt: skip


def _account_type(code: str) -> str:
    return DEFAULT_ACCOUNT_TYPE if code == "00" else code


def response_code(outcome: LedgerOutcome) -> ResponseCode:
    return ResponseCode(RESPONSE_CODES[outcome])


def retrieval_reference(transaction: Transaction, now: datetime) -> str:
    """F37, YDDDhh + STAN: year digit, day of year and hour of the request's F7, then its STAN.

    Derived from the request alone, so a repeat gets the same reference.
    """
    sent = transaction.transmission_time
    month, day, hour = int(sent[0:2]), int(sent[2:4]), sent[4:6]
    year = now.year if month <= now.month else now.year - 1  # F7 in December, read in January
    if (month, day) == (2, 29) and not calendar.isleap(year):
        day = 28
    day_of_year = date(year, month, day).timetuple().tm_yday
    return f"{year % 10}{day_of_year:03d}{hour}{transaction.stan}"


def answer(transaction: Transaction, result: Result, reason: str | None = None) -> Outcome:
    """The outcome of a request the ledger decided (or recorded the decline of)."""
    fields = result_fields(transaction, result)
    return Outcome(response_code(result.outcome), MappingProxyType(fields), reason)


def settlement_date(business_date: date) -> str:
    """F15, MMDD: the business day the host booked a request under (or balances, in 0500)."""
    return f"{business_date.month:02d}{business_date.day:02d}"  # strftime costs more


def result_fields(transaction: Transaction, result: Result) -> dict[int, str]:
    """F15 the business day the ledger booked it under; F38 on approval; F54 ledger and
    available balances where the ledger returned them; F121 the notes of an approved withdrawal
    at a terminal whose cassettes the host counts."""
    fields: dict[int, str] = {}
    if result.business_date is not None:
        fields[SETTLEMENT_DATE_FIELD] = settlement_date(result.business_date)
    if result.outcome is LedgerOutcome.APPROVED:
        # The journal entry's number; an inquiry posts nothing and carries zeros.
        fields[38] = f"{(result.entry_id or 0) % 1_000_000:06d}"
    if result.notes is not None and result.notes.parts:
        fields[NOTE_MIX_FIELD] = encode_note_mix(
            [NoteEntry(p.cassette_no, p.denomination_minor, p.notes) for p in result.notes.parts]
        )
    currency = CURRENCY_NUMERIC.get(result.currency)
    if currency is not None and transaction.kind in (Kind.BALANCE_INQUIRY, Kind.WITHDRAWAL):
        amounts = [
            AdditionalAmount(transaction.from_account_type, kind, currency, balance)
            for kind, balance in (
                (LEDGER_BALANCE, result.ledger_balance_minor),
                (AVAILABLE_BALANCE, result.available_balance_minor),
            )
            if balance is not None
        ]
        if amounts:
            fields[54] = encode_additional_amounts(amounts)
    return fields


class PinDataError(ValueError):
    """A card's stored PIN verification data is not in a form the switch knows."""


def verification_from_pin_data(pin_data: Mapping[str, Any]) -> Verification:
    """The card's PIN verification data (ledger `cards.pin_data`) as the HSM takes it.

    `{"method": "ibm3624", "pvk": <key block>, "offset": "2298", "pin_length": 4}` or
    `{"method": "visa_pvv", "pvk": <key block>, "pvki": "1", "pvv": "8523"}`.
    """
    try:
        pvk = StoredKey.from_text(str(pin_data["pvk"]))
        method = pin_data["method"]
        if method == "ibm3624":
            return Ibm3624Offset(
                pvk, str(pin_data["offset"]), pin_length=int(pin_data.get("pin_length", 4))
            )
        if method == "visa_pvv":
            return VisaPvv(pvk, str(pin_data["pvki"]), str(pin_data["pvv"]))
    except (KeyError, ValueError, KeyBlockError) as exc:
        raise PinDataError(f"card PIN data incomplete: {type(exc).__name__}") from None
    raise PinDataError(f"card PIN method {method!r} is not known")

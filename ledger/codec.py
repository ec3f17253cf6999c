"""Values in and out of the ledger's two batch functions: typed rows going in (transposed into one
array per column, which asyncpg sends binary), snapshots and stored outcomes coming back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

from ledger.cash import CASSETTES_MAX, Cassette, CassetteNotes, NoteMix
from ledger.journal import MOVING_KINDS
from ledger.model import (
    Account,
    BalanceInquiry,
    Card,
    Decision,
    EmvProfile,
    Outcome,
    Request,
    Result,
    Reversal,
    Snapshot,
    Terminal,
    Transfer,
    Withdrawal,
)


# Named tuples rather than dataclasses: a batch is transposed into columns, one array per field
# in the SQL function's parameter order, and tuples transpose without copying.
class ReadItem(NamedTuple):
    """One request's arguments of ledger.read_batch."""

    pan_hash: bytes
    terminal_id: str
    transmission_time: str
    stan: str
    message_class: str
    original_transmission_time: str | None
    original_stan: str | None
    original_message_class: str | None
    to_account: str | None


class WriteItem(NamedTuple):
    """One decided request's arguments of ledger.post_batch."""

    pan_hash: bytes
    terminal_id: str
    transmission_time: str
    stan: str
    message_class: str
    kind: str
    outcome: str
    response_code: str
    amount_minor: int
    currency: str
    requested_minor: int
    requested_currency: str
    from_type: str | None
    to_type: str | None
    to_account: str | None
    original_transmission_time: str | None
    original_stan: str | None
    original_message_class: str | None
    reversal_state: str | None
    ledger_balance_minor: int | None
    available_balance_minor: int | None
    business_date: date
    recorded_at: datetime
    pan_masked: str
    mti: str
    processing_code: str
    rrn: str
    card_xmin: int | None
    checked_account_id: int | None
    checked_account_xmin: int | None
    card_update: bool
    card_status: str | None
    card_pin_tries: int | None
    card_usage_day: date | None
    card_usage_amount_minor: int | None
    card_usage_count: int | None
    atc: int | None
    authorisation: bytes | None  # the HSM's word (hsm/authorisation.py), for an approval
    chip_authorisation: bytes | None  # and for a chip request's ATC
    note_counts: list[int]  # notes per cassette slot 1..8 it dispenses or puts back


def columns(items: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """A batch of rows as one list per column (the SQL functions' array parameters)."""
    assert items, "a batch is never empty"
    return [list(column) for column in zip(*items, strict=True)]


def empty_columns(item: type[tuple[Any, ...]]) -> list[list[Any]]:
    """The columns of an empty batch of `item` (ReadItem or WriteItem)."""
    return [[] for _ in item._fields]  # type: ignore[attr-defined]


def _placeholders(count: int) -> str:
    return ", ".join(f"${n}" for n in range(1, count + 1))


# Only numbered placeholders are formatted in: the values travel as parameters.
READ_SQL = f"SELECT ledger.read_batch({_placeholders(len(ReadItem._fields))})"
WRITE_SQL = (
    "SELECT item, status, result, state"  # noqa: S608
    f" FROM ledger.post_batch({_placeholders(len(WriteItem._fields))})"
)


def _original(request: Request) -> tuple[str | None, str | None, str | None]:
    if isinstance(request, Reversal):
        original = request.original
        return original.transmission_time, original.stan, original.message_class
    return None, None, None


def _account_types(request: Request) -> tuple[str | None, str | None, str | None]:
    """The card's source account type, and the destination (type or number) of a transfer."""
    if isinstance(request, Transfer):
        return request.from_type, request.to_type, request.to_account
    if isinstance(request, BalanceInquiry | Withdrawal):
        return request.account_type, None, None
    return None, None, None


def read_item(request: Request, pan_hash: bytes) -> ReadItem:
    key = request.key
    _, _, to_account = _account_types(request)
    return ReadItem(
        pan_hash, key.terminal_id, key.transmission_time, key.stan, key.message_class,
        *_original(request), to_account,
    )  # fmt: skip


def requested(request: Request) -> tuple[int, str]:
    """What the terminal asked for (for a reversal: what it dispensed): what the HSM's word
    covers."""
    if isinstance(request, Withdrawal | Transfer):
        return request.amount_minor, request.currency
    if isinstance(request, Reversal):
        return request.dispensed_minor, ""
    assert isinstance(request, BalanceInquiry)
    return 0, ""


def write_item(
    request: Request,
    snapshot: Snapshot,
    decision: Decision,
    *,
    pan_hash: bytes,
    pan_masked: str,
    response_code: str,
    recorded_at: datetime,
    business_date: date,
    authorisation: bytes | None,
    chip_authorisation: bytes | None,
) -> WriteItem:
    """What the ledger writes for a decided request. The ledger derives the postings itself; the
    decision's amount, card counters and reversal mark are checked against what it derives."""
    key = request.key
    reply = decision.reply_account
    card = snapshot.card
    update = decision.card_update
    mark = decision.reversal_mark
    return WriteItem(
        pan_hash, key.terminal_id, key.transmission_time, key.stan, key.message_class,
        decision.kind, decision.outcome.value, response_code, decision.amount_minor,
        decision.currency or (reply.currency if reply else ""), *requested(request),
        *_account_types(request), *_original(request), None if mark is None else mark[1],
        reply.balance_minor if reply else None, reply.available_minor if reply else None,
        business_date, recorded_at, pan_masked, request.audit.mti,
        request.audit.processing_code, request.audit.rrn,
        card.xmin if card else None, reply.account_id if reply else None,
        reply.xmin if reply else None, update is not None,
        update.status if update else None, update.pin_tries if update else None,
        update.usage_day if update else None, update.usage_amount_minor if update else None,
        update.usage_count if update else None, decision.atc, authorisation,
        chip_authorisation if decision.atc is not None else None,
        decision.notes.counts() if decision.notes else [0] * CASSETTES_MAX,
    )  # fmt: skip


def atc_of(request: Request) -> int | None:
    """A chip request's counter; reversals carry none (theirs is the original's)."""
    return None if isinstance(request, Reversal) else request.atc


def _card(row: Mapping[str, Any] | None) -> Card | None:
    if row is None:
        return None
    usage_day = row["usage_day"]
    return Card(
        card_id=int(row["card_id"]),
        customer_id=int(row["customer_id"]),
        pan_masked=row["pan_masked"],
        expiry_yymm=row["expiry_yymm"],
        status=row["status"],
        pin_data=row["pin_data"],
        pin_tries=int(row["pin_tries"]),
        currency=row["currency"],
        max_per_txn_minor=int(row["max_per_txn_minor"]),
        daily_amount_minor=int(row["daily_amount_minor"]),
        daily_count=int(row["daily_count"]),
        usage_day=date.fromisoformat(usage_day) if usage_day else None,
        usage_amount_minor=int(row["usage_amount_minor"]),
        usage_count=int(row["usage_count"]),
        xmin=int(row["xmin"]),
        emv=_emv_profile(row),
        last_atc=row["emv_last_atc"],
    )


def _emv_profile(row: Mapping[str, Any]) -> EmvProfile | None:
    if row["emv_imk_ac"] is None:
        return None
    cvn = row["emv_cvn"]
    return EmvProfile(
        imk_ac=row["emv_imk_ac"],
        psn=row["emv_psn"],
        scheme=row["emv_scheme"],
        cvn=None if cvn is None else int(cvn),
        fallback_allowed=bool(row["emv_fallback_allowed"]),
    )


def _account(row: Mapping[str, Any]) -> Account:
    floor = row["floor_minor"]
    return Account(
        account_id=int(row["account_id"]),
        customer_id=int(row["customer_id"]),
        account_number=row["account_number"],
        type_code=row["type_code"],
        currency=row["currency"],
        balance_minor=int(row["balance_minor"]),
        floor_minor=None if floor is None else int(floor),
        xmin=int(row["xmin"]),
    )


def _terminal(row: Mapping[str, Any] | None) -> Terminal | None:
    if row is None:
        return None
    cassettes = tuple(_cassette(c) for c in row["cassettes"])
    return Terminal(row["terminal_id"], row["status"], int(row["cash_account_id"]), cassettes)


def _cassette(row: Mapping[str, Any]) -> Cassette:
    return Cassette(
        int(row["cassette_no"]), row["currency"], int(row["denomination_minor"]),
        int(row["remaining_notes"]), int(row["load_seq"]),
    )  # fmt: skip


def _notes(row: Mapping[str, Any]) -> CassetteNotes:
    return CassetteNotes(
        int(row["cassette_no"]), int(row["denomination_minor"]), int(row["notes"]),
        int(row["load_seq"]),
    )  # fmt: skip


def moved_notes(stored: Mapping[str, Any]) -> tuple[CassetteNotes, ...]:
    """The notes a stored transaction (ledger.result_of) took out of the cassettes."""
    return tuple(_notes(m) for m in stored.get("notes", ()) if int(m["notes"]) > 0)


def parse_snapshot(state: Mapping[str, Any]) -> Snapshot:
    accounts = [_account(row) for row in state["accounts"]]
    return Snapshot(
        customer_id=int(state["customer_id"]),
        admitted=tuple(int(i) for i in state["admitted"]),
        card=_card(state["card"]),
        links={str(k): int(v) for k, v in state["links"].items()},
        accounts={a.account_id: a for a in accounts},
        to_account_owner=state["to_account_owner"],
        terminal=_terminal(state["terminal"]),
        answered=state["answered"],
        original=state["original"],
        self_reversal=state["self_reversal"],
        original_reversal=state["original_reversal"],
    )


def parse_result(stored: Mapping[str, Any], *, repeated: bool) -> Result:
    """A stored outcome (ledger.result_of) as the switch answers it."""
    moved = stored["kind"] in MOVING_KINDS and int(stored["amount_minor"]) > 0
    return Result(
        outcome=Outcome(stored["outcome"]),
        amount_minor=int(stored["amount_minor"]),
        currency=stored["currency"],
        ledger_balance_minor=stored["ledger_balance_minor"],
        available_balance_minor=stored["available_balance_minor"],
        entry_id=int(stored["transaction_id"]) if moved else None,
        repeated=repeated,
        notes=_dispensed(stored) if moved else None,
        business_date=date.fromisoformat(stored["business_date"]),
    )


def _dispensed(stored: Mapping[str, Any]) -> NoteMix | None:
    """A withdrawal's mix, as it was dispensed; None where the host counts no notes."""
    parts = moved_notes(stored)
    return NoteMix(parts) if parts and stored["kind"] == "withdrawal" else None


def decided_result(decision: Decision, transaction_id: int, business_date: date) -> Result:
    """The outcome of a decision just written as `transaction_id` under `business_date`."""
    reply = decision.reply_account
    return Result(
        outcome=decision.outcome,
        amount_minor=decision.amount_minor,
        currency=decision.currency or (reply.currency if reply else ""),
        ledger_balance_minor=reply.balance_minor if reply else None,
        available_balance_minor=reply.available_minor if reply else None,
        entry_id=transaction_id if decision.postings else None,
        notes=decision.notes if decision.kind == "withdrawal" else None,
        business_date=business_date,
    )

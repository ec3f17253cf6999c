"""JSON in and out of the two SQL functions: snapshots parsed, decisions encoded, audit bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from ledger.model import (
    Account,
    BalanceInquiry,
    Card,
    Decision,
    Outcome,
    Request,
    Result,
    Reversal,
    Snapshot,
    Terminal,
    Transfer,
    Withdrawal,
)


def lookup_params(request: Request, pan_hash_hex: str, *, admit_other: bool) -> dict[str, Any]:
    """The parameters of ledger.snapshot for a request (absent keys rather than JSON nulls)."""
    params: dict[str, Any] = {
        "pan_hash": pan_hash_hex,
        "key": request.key.as_json(),
        "admit_other": admit_other,
    }
    if isinstance(request, Reversal):
        params["original"] = request.original.as_json()
    if isinstance(request, Transfer) and request.to_account is not None:
        params["to_account"] = request.to_account
    return params


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
    )


def _terminal(row: Mapping[str, Any] | None) -> Terminal | None:
    if row is None:
        return None
    return Terminal(row["terminal_id"], row["status"], int(row["cash_account_id"]))


def parse_snapshot(state: Mapping[str, Any]) -> Snapshot:
    terminal = state["terminal"]
    accounts = [_account(row) for row in state["accounts"]]
    return Snapshot(
        customer_id=int(state["customer_id"]),
        admitted=tuple(int(i) for i in state["admitted"]),
        versions={str(k): int(v) for k, v in state["versions"].items()},
        card=_card(state["card"]),
        links={str(k): int(v) for k, v in state["links"].items()},
        accounts={a.account_id: a for a in accounts},
        to_account_owner=state["to_account_owner"],
        terminal=_terminal(terminal),
        answered=state["answered"],
        original=state["original"],
        self_reversal=state["self_reversal"],
        original_reversal=state["original_reversal"],
    )


def result_json(decision: Decision, business_date: date) -> dict[str, Any]:
    """The stored outcome: what a repeat gets back, and what a reversal reads of its original."""
    reply = decision.reply_account
    return {
        "outcome": decision.outcome.value,
        "kind": decision.kind,
        "amount_minor": decision.amount_minor,
        "currency": decision.currency or (reply.currency if reply else ""),
        "ledger_balance_minor": reply.balance_minor if reply else None,
        "available_balance_minor": reply.available_minor if reply else None,
        "business_date": business_date.isoformat(),
        "postings": [
            {
                "account_id": p.account_id,
                "customer_id": p.customer_id,
                "amount_minor": p.amount_minor,
                "currency": p.currency,
            }
            for p in decision.postings
        ],
    }


def parse_result(stored: Mapping[str, Any], *, repeated: bool) -> Result:
    return Result(
        outcome=Outcome(stored["outcome"]),
        amount_minor=int(stored["amount_minor"]),
        currency=stored["currency"],
        ledger_balance_minor=stored["ledger_balance_minor"],
        available_balance_minor=stored["available_balance_minor"],
        entry_id=stored.get("entry_id"),
        repeated=repeated,
    )


def _requested(request: Request) -> tuple[int, str]:
    if isinstance(request, Withdrawal | Transfer):
        return request.amount_minor, request.currency
    if isinstance(request, Reversal):
        return request.dispensed_minor, ""
    assert isinstance(request, BalanceInquiry)
    return 0, ""


def audit_body(
    request: Request,
    decision: Decision,
    *,
    customer_id: int,
    pan_masked: str,
    recorded_at: datetime,
    response_code: str,
) -> str:
    """The canonical JSON of one audit record (sorted keys, no spaces): what the hash covers."""
    requested_minor, requested_currency = _requested(request)
    body: dict[str, Any] = {
        "time": recorded_at.isoformat(),
        "customer_id": customer_id,
        **request.key.as_json(),
        "mti": request.audit.mti,
        "processing_code": request.audit.processing_code,
        "rrn": request.audit.rrn,
        "pan_masked": pan_masked,
        "kind": decision.kind,
        "requested_minor": requested_minor,
        "requested_currency": requested_currency,
        "amount_minor": decision.amount_minor,
        "currency": decision.currency,
        "outcome": decision.outcome.value,
        "response_code": response_code,
    }
    if isinstance(request, Reversal):
        body["original"] = request.original.as_json()
    return canonical_json(body)


def canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

"""Pure decisions over a snapshot: no I/O, time passed in. The store applies what they decide."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType

from ledger.cash import Undispensable, note_mix, notes_back
from ledger.codec import moved_notes
from ledger.model import (
    Account,
    BalanceInquiry,
    Card,
    CardRequest,
    CardUpdate,
    Decision,
    Outcome,
    Posting,
    Request,
    RequestKey,
    Reversal,
    Snapshot,
    Transfer,
    Withdrawal,
)


@dataclass(frozen=True, slots=True)
class Policy:
    pin_tries_max: int = 3
    business_day_cutover: time = time(0, 0)
    cross_customer_transfers: bool = False


# A withdrawal the cassettes cannot pay (docs/cash.md): no count of the notes makes the amount
# (13); the notes left or the dispenser's limit cannot, so a smaller amount may (61, "exceeds
# amount limit", what ATM hosts answer to have the cardholder ask for less); no notes left at
# all (58, not permitted at this terminal; the switch declines it before the ledger write).
CASH_DECLINES = MappingProxyType(
    {
        Undispensable.NOT_A_MULTIPLE: Outcome.INVALID_AMOUNT,
        Undispensable.NOTES_SHORT: Outcome.EXCEEDS_AMOUNT_LIMIT,
        Undispensable.CASH_OUT: Outcome.NOT_PERMITTED_TO_TERMINAL,
    }
)


def business_day(now: datetime, cutover: time) -> date:
    """The business day of `now` (UTC): it starts at `cutover` each day."""
    assert now.tzinfo is not None, "time must be timezone-aware"
    shifted = now.astimezone(UTC) - timedelta(hours=cutover.hour, minutes=cutover.minute)
    return shifted.date()


def is_expired(expiry_yymm: str, now: datetime) -> bool:
    """A card is valid through the last day of its expiry month."""
    year, month = 2000 + int(expiry_yymm[:2]), int(expiry_yymm[2:])
    return (now.year, now.month) > (year, month)


def check_card(card: Card | None, now: datetime, policy: Policy) -> Outcome | None:
    """The card-level decline, if any; the switch may call it before asking the HSM."""
    if card is None:
        return Outcome.INVALID_CARD
    if card.pin_tries >= policy.pin_tries_max:
        return Outcome.PIN_TRIES_EXCEEDED
    if card.status != "active":
        return Outcome.RESTRICTED_CARD
    if is_expired(card.expiry_yymm, now):
        return Outcome.EXPIRED_CARD
    return None


def _card_state(card: Card) -> CardUpdate:
    return CardUpdate(
        card.status, card.pin_tries, card.usage_day, card.usage_amount_minor, card.usage_count
    )


def decide_pin_failure(snapshot: Snapshot, policy: Policy, *, atc: int | None = None) -> Decision:
    """One more wrong PIN: count it, and block the card when the limit is reached. A chip
    request's counter is spent all the same (see `decide`)."""
    card = snapshot.card
    if card is None:
        return Decision(Outcome.INVALID_CARD, "pin")
    if atc_replayed(card, atc):
        return Decision(Outcome.SECURITY_VIOLATION, "pin")
    tries = min(card.pin_tries + 1, policy.pin_tries_max)
    blocked = tries >= policy.pin_tries_max
    update = replace(
        _card_state(card), pin_tries=tries, status="blocked" if blocked else card.status
    )
    outcome = Outcome.PIN_TRIES_EXCEEDED if blocked else Outcome.INCORRECT_PIN
    return _spending_atc(Decision(outcome, "pin", card_update=update), card, atc)


def atc_replayed(card: Card, atc: int | None) -> bool:
    """A chip request whose counter is not above the last one the card used: a replay."""
    return atc is not None and card.last_atc is not None and atc <= card.last_atc


def _spending_atc(decision: Decision, card: Card | None, atc: int | None) -> Decision:
    """A verified cryptogram spends its counter whatever the outcome: a declined request
    replayed later (when the funds are there) must not be approved."""
    if atc is None or card is None or card.emv is None:
        return decision
    return replace(decision, atc=atc)


def _verified(card: Card) -> CardUpdate | None:
    """A correct PIN resets the try counter."""
    return replace(_card_state(card), pin_tries=0) if card.pin_tries else None


def decide(snapshot: Snapshot, request: Request, now: datetime, policy: Policy) -> Decision:
    """The decision for a request whose PIN (if any) and chip cryptogram (if any) the HSM has
    verified. A chip request's counter is checked here too: decided again on state read under
    lock, a request whose ATC another one used meanwhile is declined as a replay."""
    if isinstance(request, Reversal):
        return _decide_reversal(snapshot, request)
    card = snapshot.card
    if card is not None and atc_replayed(card, request.atc):
        return Decision(Outcome.SECURITY_VIOLATION, _kind(request))
    return _spending_atc(_decide_card_request(snapshot, request, now, policy), card, request.atc)


def _kind(request: CardRequest) -> str:
    if isinstance(request, BalanceInquiry):
        return "inquiry"
    return "withdrawal" if isinstance(request, Withdrawal) else "transfer"


def _decide_card_request(
    snapshot: Snapshot, request: CardRequest, now: datetime, policy: Policy
) -> Decision:
    kind = _kind(request)
    if snapshot.self_reversal is not None:
        # Its reversal came first: the late original must not move money.
        return Decision(Outcome.DO_NOT_HONOUR, kind)
    card_decline = check_card(snapshot.card, now, policy)
    if card_decline is not None:
        return Decision(card_decline, kind)
    if snapshot.terminal is None or snapshot.terminal.status != "active":
        return Decision(Outcome.NOT_PERMITTED_TO_TERMINAL, kind)
    if isinstance(request, BalanceInquiry):
        return _decide_inquiry(snapshot, request)
    if isinstance(request, Withdrawal):
        return _decide_withdrawal(snapshot, request, now, policy)
    return _decide_transfer(snapshot, request, policy)


def _decide_inquiry(snapshot: Snapshot, request: BalanceInquiry) -> Decision:
    assert snapshot.card is not None
    account = snapshot.linked(request.account_type)
    if account is None:
        return Decision(Outcome.NOT_PERMITTED_TO_CARDHOLDER, "inquiry")
    return Decision(
        Outcome.APPROVED,
        "inquiry",
        card_update=_verified(snapshot.card),
        currency=account.currency,
        reply_account=account,
    )


def _usage_today(card: Card, day: date) -> tuple[int, int]:
    if card.usage_day != day:
        return 0, 0
    return card.usage_amount_minor, card.usage_count


def _decide_withdrawal(
    snapshot: Snapshot, request: Withdrawal, now: datetime, policy: Policy
) -> Decision:
    card, terminal = snapshot.card, snapshot.terminal
    assert card is not None
    assert terminal is not None
    decline = _amount_decline(request.amount_minor, request.currency, card)
    if decline is not None:
        return Decision(decline, "withdrawal")
    account = snapshot.linked(request.account_type)
    cash = snapshot.accounts.get(terminal.cash_account_id)
    assert cash is not None, "a terminal's cash account is always readable"
    if account is None:
        return Decision(Outcome.NOT_PERMITTED_TO_CARDHOLDER, "withdrawal")
    if request.currency != account.currency or cash.currency != account.currency:
        return Decision(Outcome.INVALID_TRANSACTION, "withdrawal")
    mix = note_mix(terminal.cassettes, request.amount_minor, request.currency)
    if terminal.cassettes and isinstance(mix, Undispensable):
        return Decision(CASH_DECLINES[mix], "withdrawal")
    if request.amount_minor > card.max_per_txn_minor:
        return Decision(Outcome.EXCEEDS_AMOUNT_LIMIT, "withdrawal")
    day = business_day(now, policy.business_day_cutover)
    used_minor, used_count = _usage_today(card, day)
    if used_count + 1 > card.daily_count:
        return Decision(Outcome.EXCEEDS_FREQUENCY_LIMIT, "withdrawal")
    if used_minor + request.amount_minor > card.daily_amount_minor:
        return Decision(Outcome.EXCEEDS_AMOUNT_LIMIT, "withdrawal")
    if not _has_funds(account, request.amount_minor):
        return Decision(Outcome.INSUFFICIENT_FUNDS, "withdrawal", reply_account=account)
    usage = CardUpdate(card.status, 0, day, used_minor + request.amount_minor, used_count + 1)
    approved = _move(
        "withdrawal", account, cash, request.amount_minor, card_update=usage, reversal_mark=None
    )
    return approved if isinstance(mix, Undispensable) else replace(approved, notes=mix)


def _amount_decline(amount_minor: int, currency: str, card: Card) -> Outcome | None:
    if amount_minor <= 0:
        return Outcome.INVALID_AMOUNT
    if currency != card.currency:
        return Outcome.INVALID_TRANSACTION
    return None


def _has_funds(account: Account, amount_minor: int) -> bool:
    available_minor = account.available_minor
    assert available_minor is not None, "customer accounts have a floor"
    return amount_minor <= available_minor


def _move(
    kind: str,
    source: Account,
    destination: Account,
    amount_minor: int,
    *,
    card_update: CardUpdate | None,
    reversal_mark: tuple[RequestKey, str] | None,
) -> Decision:
    """Approve moving `amount_minor` from `source` to `destination` (credit-positive signs)."""
    assert amount_minor > 0
    assert source.currency == destination.currency
    postings = (
        Posting(source.account_id, source.customer_id, -amount_minor, source.currency),
        Posting(destination.account_id, destination.customer_id, amount_minor, source.currency),
    )
    reply = source if source.floor_minor is not None else destination
    delta_minor = -amount_minor if reply is source else amount_minor
    return Decision(
        Outcome.APPROVED,
        kind,
        postings=postings,
        card_update=card_update,
        reversal_mark=reversal_mark,
        amount_minor=amount_minor,
        currency=source.currency,
        reply_account=replace(reply, balance_minor=reply.balance_minor + delta_minor),
    )


def _decide_transfer(snapshot: Snapshot, request: Transfer, policy: Policy) -> Decision:
    card = snapshot.card
    assert card is not None
    decline = _amount_decline(request.amount_minor, request.currency, card)
    if decline is not None:
        return Decision(decline, "transfer")
    source = snapshot.linked(request.from_type)
    if source is None:
        return Decision(Outcome.NOT_PERMITTED_TO_CARDHOLDER, "transfer")
    destination, decline = _destination(snapshot, request, policy)
    if destination is None:
        assert decline is not None
        return Decision(decline, "transfer")
    if destination.account_id == source.account_id or destination.currency != source.currency:
        return Decision(Outcome.INVALID_TRANSACTION, "transfer")
    if request.currency != source.currency:
        return Decision(Outcome.INVALID_TRANSACTION, "transfer")
    if not _has_funds(source, request.amount_minor):
        return Decision(Outcome.INSUFFICIENT_FUNDS, "transfer", reply_account=source)
    return _move(
        "transfer", source, destination, request.amount_minor,
        card_update=_verified(card), reversal_mark=None,
    )  # fmt: skip


def _destination(
    snapshot: Snapshot, request: Transfer, policy: Policy
) -> tuple[Account | None, Outcome | None]:
    if request.to_type is not None:
        account = snapshot.linked(request.to_type)
        return account, None if account else Outcome.NOT_PERMITTED_TO_CARDHOLDER
    assert request.to_account is not None
    owner = snapshot.to_account_owner
    if owner is None or owner == 0:
        return None, Outcome.INVALID_TRANSACTION
    if owner != snapshot.customer_id and not policy.cross_customer_transfers:
        return None, Outcome.NOT_PERMITTED_TO_CARDHOLDER
    account = snapshot.by_number(request.to_account)
    assert account is not None, "an admitted destination is readable"
    return account, None


def _decide_reversal(snapshot: Snapshot, request: Reversal) -> Decision:
    """At most once per original; one that comes first is kept to decline the original."""
    original = snapshot.original
    if snapshot.card is None:
        return Decision(Outcome.INVALID_CARD, "reversal")
    if snapshot.original_reversal is not None:
        return Decision(Outcome.APPROVED if original else Outcome.ORIGINAL_NOT_FOUND, "reversal")
    if original is None:
        return Decision(
            Outcome.ORIGINAL_NOT_FOUND, "reversal", reversal_mark=(request.original, "pending")
        )
    mark = (request.original, "applied")
    result = original["result"]
    postings = result.get("postings", [])
    if result["kind"] == "reversal":
        return Decision(Outcome.INVALID_TRANSACTION, "reversal")
    if original["outcome"] != Outcome.APPROVED or not postings:
        return Decision(Outcome.APPROVED, "reversal", reversal_mark=mark)
    amount_minor = int(result["amount_minor"])
    is_withdrawal = result["kind"] == "withdrawal"
    dispensed_minor = request.dispensed_minor
    if (
        request.amount_minor not in (None, amount_minor)  # not the original it names
        or dispensed_minor < 0
        or dispensed_minor >= amount_minor
        or (dispensed_minor and not is_withdrawal)
    ):
        return Decision(Outcome.INVALID_AMOUNT, "reversal")
    undo_minor = amount_minor - dispensed_minor
    # The original moved money from its first posting's account to its second's.
    source = snapshot.accounts[int(postings[1]["account_id"])]
    destination = snapshot.accounts[int(postings[0]["account_id"])]
    if source.floor_minor is not None and not _has_funds(source, undo_minor):
        # A transfer whose destination has since spent the money cannot be taken back.
        return Decision(Outcome.INSUFFICIENT_FUNDS, "reversal")
    terminal = snapshot.terminal
    cassettes = terminal.cassettes if terminal else ()
    back = notes_back(moved_notes(result), cassettes, undo_minor) if is_withdrawal else None
    if is_withdrawal and back is None:
        # What F95 says was dispensed is no part of the notes the original paid out.
        return Decision(Outcome.INVALID_AMOUNT, "reversal")
    card_update = _restored_usage(snapshot.card, result, undo_minor) if is_withdrawal else None
    reversed_ = _move(
        "reversal", source, destination, undo_minor, card_update=card_update, reversal_mark=mark
    )
    return replace(reversed_, notes=back) if back and back.parts else reversed_


def _restored_usage(card: Card, original: dict[str, object], undo_minor: int) -> CardUpdate | None:
    """A reversed withdrawal gives its amount back to the day's limit (not its count)."""
    if card.usage_day is None or str(card.usage_day) != original.get("business_date"):
        return None
    usage_minor = max(0, card.usage_amount_minor - undo_minor)
    return replace(_card_state(card), usage_amount_minor=usage_minor)

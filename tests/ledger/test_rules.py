"""Pure decisions: no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import rules
from ledger.model import Card, Decision, Outcome, Posting, Snapshot
from ledger.pan import luhn_complete, luhn_valid, mask_pan, stored_mask

CARD = Card(
    card_id=1, customer_id=7, pan_masked="400000******0002", expiry_yymm="2811", status="active",
    pin_data={}, pin_tries=0, currency="EUR", max_per_txn_minor=50_000,
    daily_amount_minor=100_000, daily_count=5, usage_day=None, usage_amount_minor=0,
    usage_count=0, xmin=1,
)  # fmt: skip
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = rules.Policy()


def snapshot_with(card: Card) -> Snapshot:
    return Snapshot(
        customer_id=card.customer_id, admitted=(card.customer_id,), card=card,
        links={}, accounts={}, to_account_owner=None, terminal=None, answered=None,
        original=None, self_reversal=None, original_reversal=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("moment", "cutover", "expected"),
    [
        (datetime(2026, 11, 23, 0, 0, tzinfo=UTC), time(0, 0), date(2026, 11, 23)),
        (datetime(2026, 11, 23, 21, 59, tzinfo=UTC), time(22, 0), date(2026, 11, 22)),
        (datetime(2026, 11, 23, 22, 0, tzinfo=UTC), time(22, 0), date(2026, 11, 23)),
        (datetime(2026, 11, 23, 5, 59, tzinfo=UTC), time(6, 0), date(2026, 11, 22)),
    ],
)
def test_business_day(moment: datetime, cutover: time, expected: date) -> None:
    assert rules.business_day(moment, cutover) == expected


@pytest.mark.parametrize(
    ("expiry", "expired"),
    [("2611", False), ("2610", True), ("2612", False), ("2512", True), ("3001", False)],
)
def test_expiry_runs_to_the_end_of_the_month(expiry: str, expired: bool) -> None:
    assert rules.is_expired(expiry, NOW) is expired


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"pin_tries": 2}, None),
        ({"pin_tries": 3}, Outcome.PIN_TRIES_EXCEEDED),
        ({"pin_tries": 3, "status": "blocked"}, Outcome.PIN_TRIES_EXCEEDED),
        ({"status": "blocked"}, Outcome.RESTRICTED_CARD),
        ({"status": "lost"}, Outcome.RESTRICTED_CARD),
        ({"expiry_yymm": "2510"}, Outcome.EXPIRED_CARD),
    ],
)
def test_check_card(changes: dict[str, Any], expected: Outcome | None) -> None:
    assert rules.check_card(replace(CARD, **changes), NOW, POLICY) is expected


def test_unknown_card() -> None:
    assert rules.check_card(None, NOW, POLICY) is Outcome.INVALID_CARD


def test_unbalanced_decision_is_a_bug() -> None:
    postings = (Posting(1, 7, -100, "EUR"), Posting(2, 0, 99, "EUR"))
    with pytest.raises(AssertionError, match="unbalanced"):
        Decision(Outcome.APPROVED, "withdrawal", postings=postings)
    balanced = (Posting(1, 7, -100, "EUR"), Posting(2, 0, 100, "EUR"))
    with pytest.raises(AssertionError, match="declines post nothing"):
        Decision(Outcome.INSUFFICIENT_FUNDS, "withdrawal", postings=balanced)


@pytest.mark.parametrize(
    ("pan", "shown", "stored", "luhn"),
    [
        ("4111111111111111", "411111******1111", "411111******1111", True),
        ("4111111111111112", "411111******1112", "411111******1112", False),
        ("378282246310005", "378282*****0005", "378282*****0005", True),
        ("12345", "*****", "", False),
        ("4111x11111111111", "4111x1******1111", "", False),
        ("411111******1111", "411111******1111", "", False),  # a mask shown again is the same
    ],
)
def test_pan_masking(pan: str, shown: str, stored: str, luhn: bool) -> None:
    assert (mask_pan(pan), stored_mask(pan)) == (shown, stored)
    assert luhn_valid(pan) is luhn


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4761739001010119", True), ("79927398713", True), ("79927398710", False), ("0", True),
     ("", False)],
)  # fmt: skip
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@given(st.text("0123456789", min_size=1, max_size=18))
def test_luhn_complete_adds_the_one_check_digit_that_passes(body: str) -> None:
    completed = luhn_complete(body)
    assert completed[:-1] == body
    assert [luhn_valid(body + d) for d in "0123456789"].count(True) == 1
    assert luhn_valid(completed)


@given(st.integers(0, 6), st.integers(0, 3))
def test_pin_failures_never_pass_the_limit(tries: int, limit_extra: int) -> None:
    policy = rules.Policy(pin_tries_max=1 + limit_extra)
    card = replace(CARD, pin_tries=min(tries, policy.pin_tries_max))
    decision = rules.decide_pin_failure(snapshot_with(card), policy)
    assert decision.card_update is not None
    assert decision.card_update.pin_tries <= policy.pin_tries_max
    blocked = decision.card_update.pin_tries == policy.pin_tries_max
    assert (decision.card_update.status == "blocked") is blocked
    assert decision.outcome is (Outcome.PIN_TRIES_EXCEEDED if blocked else Outcome.INCORRECT_PIN)

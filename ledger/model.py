"""Typed values the ledger speaks: requests in, snapshots read, decisions made, results out.

Money is always an integer count of minor units plus an ISO 4217 code. Balances are
credit-positive: a customer account's balance is what the bank owes the customer; `floor_minor`
is the lowest balance allowed (0, or negative for an overdraft or credit line). The available
balance is `balance_minor - floor_minor`: what can still be withdrawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from ledger.cash import Cassette, NoteMix


class Outcome(StrEnum):
    """Neutral outcomes; each maps 1:1 to one ISO 8583 response code (in brackets)."""

    APPROVED = "approved"  # 00
    DO_NOT_HONOUR = "do_not_honour"  # 05
    INVALID_TRANSACTION = "invalid_transaction"  # 12
    INVALID_AMOUNT = "invalid_amount"  # 13
    INVALID_CARD = "invalid_card"  # 14
    ORIGINAL_NOT_FOUND = "original_not_found"  # 25
    INSUFFICIENT_FUNDS = "insufficient_funds"  # 51
    EXPIRED_CARD = "expired_card"  # 54
    INCORRECT_PIN = "incorrect_pin"  # 55
    NOT_PERMITTED_TO_CARDHOLDER = "not_permitted_to_cardholder"  # 57
    NOT_PERMITTED_TO_TERMINAL = "not_permitted_to_terminal"  # 58
    EXCEEDS_AMOUNT_LIMIT = "exceeds_amount_limit"  # 61
    RESTRICTED_CARD = "restricted_card"  # 62
    EXCEEDS_FREQUENCY_LIMIT = "exceeds_frequency_limit"  # 65
    PIN_TRIES_EXCEEDED = "pin_tries_exceeded"  # 75
    # A chip card's cryptogram failed, or its counter (ATC) was used before: a replay.
    SECURITY_VIOLATION = "security_violation"  # 63
    DUPLICATE = "duplicate"  # 94


# The design's response codes, written into audit records; the switch may pass its own table.
RESPONSE_CODES: Mapping[Outcome, str] = {
    Outcome.APPROVED: "00",
    Outcome.DO_NOT_HONOUR: "05",
    Outcome.INVALID_TRANSACTION: "12",
    Outcome.INVALID_AMOUNT: "13",
    Outcome.INVALID_CARD: "14",
    Outcome.ORIGINAL_NOT_FOUND: "25",
    Outcome.INSUFFICIENT_FUNDS: "51",
    Outcome.EXPIRED_CARD: "54",
    Outcome.INCORRECT_PIN: "55",
    Outcome.NOT_PERMITTED_TO_CARDHOLDER: "57",
    Outcome.NOT_PERMITTED_TO_TERMINAL: "58",
    Outcome.EXCEEDS_AMOUNT_LIMIT: "61",
    Outcome.RESTRICTED_CARD: "62",
    Outcome.EXCEEDS_FREQUENCY_LIMIT: "65",
    Outcome.PIN_TRIES_EXCEEDED: "75",
    Outcome.SECURITY_VIOLATION: "63",
    Outcome.DUPLICATE: "94",
}

CUSTOMER_ACCOUNT_TYPES = ("10", "20", "30")  # savings, checking, credit
HOUSE_CUSTOMER_ID = 0


@dataclass(frozen=True, slots=True)
class RequestKey:
    """Idempotency key: a repeat with the same key gets the stored outcome.

    `message_class` is the class of the message, not its repeat flavour: a 0201 or 0421 repeat
    must carry "0200" or "0420" like its first copy.
    """

    terminal_id: str
    transmission_time: str
    stan: str
    message_class: str

    def as_json(self) -> dict[str, str]:
        return {
            "terminal_id": self.terminal_id,
            "transmission_time": self.transmission_time,
            "stan": self.stan,
            "message_class": self.message_class,
        }


@dataclass(frozen=True, slots=True)
class AuditFields:
    """Wire-level strings recorded verbatim in the audit journal (opaque to the ledger)."""

    mti: str
    processing_code: str
    rrn: str


@dataclass(frozen=True, slots=True)
class BalanceInquiry:
    pan: str
    key: RequestKey
    audit: AuditFields
    account_type: str
    atc: int | None = None  # a chip card's counter (see Withdrawal)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    pan: str
    key: RequestKey
    audit: AuditFields
    account_type: str
    amount_minor: int
    currency: str
    # A chip card's application transaction counter, from a cryptogram the HSM verified: it must
    # be above the card's last, which the write moves to it.
    atc: int | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """Between the cardholder's accounts (`to_type`) or to an account number (`to_account`)."""

    pan: str
    key: RequestKey
    audit: AuditFields
    from_type: str
    amount_minor: int
    currency: str
    to_type: str | None = None
    to_account: str | None = None
    atc: int | None = None  # a chip card's counter (see Withdrawal)

    def __post_init__(self) -> None:
        assert (self.to_type is None) != (self.to_account is None), "exactly one destination"


@dataclass(frozen=True, slots=True)
class Reversal:
    """Reverses `original`; `dispensed_minor` > 0 makes it partial (what was actually paid out)."""

    pan: str
    key: RequestKey
    audit: AuditFields
    original: RequestKey
    dispensed_minor: int = 0


Request = BalanceInquiry | Withdrawal | Transfer | Reversal
CardRequest = BalanceInquiry | Withdrawal | Transfer


@dataclass(frozen=True, slots=True)
class Account:
    account_id: int
    customer_id: int
    account_number: str
    type_code: str
    currency: str
    balance_minor: int
    floor_minor: int | None
    # The row version read (PostgreSQL's xmin): the write refuses a decision made on another.
    xmin: int

    @property
    def available_minor(self) -> int | None:
        return None if self.floor_minor is None else self.balance_minor - self.floor_minor


@dataclass(frozen=True, slots=True, repr=False)
class EmvProfile:
    """A chip card as its issuer knows it. `imk_ac` is the issuer master key its keys derive
    from, as a key block under the LMK (never a clear key); `scheme` is "visa" or "mastercard";
    `cvn` the cryptogram version when the card's IAD does not name it in its scheme's layout."""

    imk_ac: str
    psn: str
    scheme: str
    cvn: int | None
    fallback_allowed: bool

    def __repr__(self) -> str:
        return f"EmvProfile({self.scheme}, cvn={self.cvn}, fallback={self.fallback_allowed})"


@dataclass(frozen=True, slots=True)
class Card:
    card_id: int
    customer_id: int
    pan_masked: str
    expiry_yymm: str
    status: str
    pin_data: Mapping[str, Any]
    pin_tries: int
    currency: str
    max_per_txn_minor: int
    daily_amount_minor: int
    daily_count: int
    usage_day: date | None
    usage_amount_minor: int
    usage_count: int
    xmin: int  # as Account.xmin
    emv: EmvProfile | None = None  # None: not a chip card the issuer profiled
    # The highest ATC of a verified cryptogram so far; None when none was seen yet.
    last_atc: int | None = None


@dataclass(frozen=True, slots=True)
class Terminal:
    terminal_id: str
    status: str
    cash_account_id: int
    # Its cassettes in slot order; none: a terminal whose notes the host does not count.
    cassettes: tuple[Cassette, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything read for one request. `admitted`: the customers its write locks."""

    customer_id: int
    admitted: tuple[int, ...]
    card: Card | None
    links: Mapping[str, int]
    accounts: Mapping[int, Account]
    to_account_owner: int | None
    terminal: Terminal | None
    answered: Mapping[str, Any] | None
    original: Mapping[str, Any] | None
    self_reversal: str | None
    original_reversal: str | None

    def linked(self, type_code: str) -> Account | None:
        account_id = self.links.get(type_code)
        return None if account_id is None else self.accounts.get(account_id)

    def by_number(self, account_number: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.account_number == account_number), None)


@dataclass(frozen=True, slots=True)
class Posting:
    account_id: int
    customer_id: int
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class CardUpdate:
    status: str
    pin_tries: int
    usage_day: date | None
    usage_amount_minor: int
    usage_count: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write for one request; `postings` sum to zero per currency."""

    outcome: Outcome
    kind: str
    postings: tuple[Posting, ...] = ()
    card_update: CardUpdate | None = None
    # A reversal's mark on its original's key: "applied" or "pending" (came first).
    reversal_mark: tuple[RequestKey, str] | None = None
    amount_minor: int = 0
    currency: str = ""
    # The account whose balances go back in the reply (after this decision's postings).
    reply_account: Account | None = None
    # A chip card's counter this write moves the card's last ATC to (checked above it).
    atc: int | None = None
    # The notes an approved withdrawal dispenses, or its reversal puts back into the cassettes.
    notes: NoteMix | None = None

    def __post_init__(self) -> None:
        totals: dict[str, int] = {}
        for posting in self.postings:
            totals[posting.currency] = totals.get(posting.currency, 0) + posting.amount_minor
        assert all(total == 0 for total in totals.values()), f"unbalanced entry {totals}"
        assert not self.postings or self.outcome is Outcome.APPROVED, "declines post nothing"


@dataclass(frozen=True, slots=True)
class Result:
    """What the switch answers with. `repeated` = an earlier copy was already answered."""

    outcome: Outcome
    amount_minor: int
    currency: str
    ledger_balance_minor: int | None
    available_balance_minor: int | None
    entry_id: int | None
    repeated: bool = False
    # The notes an approved withdrawal dispenses (the terminal pays out exactly these).
    notes: NoteMix | None = None
    # The business day the request was booked under (F15 of the answer).
    business_date: date | None = None

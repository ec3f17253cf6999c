"""The pipeline's pure parts: deadline, step runner, ledger translation, reply fields."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from hsm.api import Ibm3624Offset, VisaPvv
from hsm.devkeys import make_dev_keys
from hsm.keys import DEVELOPMENT_LMK, Lmk
from ledger.deadline import Deadline, DeadlinePassed
from ledger.errors import LedgerUnavailable
from ledger.model import (
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
from switch.iso8583 import Message
from switch.iso8583.elements import OriginalData, ReplacementAmounts
from switch.iso8583.response_codes import ResponseCode
from switch.pipeline import (
    Outcome,
    PinDataError,
    ledger_request,
    response_code,
    result_fields,
    retrieval_reference,
    run_steps,
    verification_from_pin_data,
)
from switch.transaction import Transaction, parse_transaction

PAN = "4761739001010119"
BASE = {2: PAN, 7: "1123101500", 11: "000042", 41: "KIOSK001", 52: "0123456789ABCDEF"}
NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def tx(mti: str, fields: dict[int, str]) -> Transaction:
    parsed = parse_transaction(Message(mti, {**BASE, **fields}))
    assert isinstance(parsed, Transaction)
    return parsed


WITHDRAWAL = tx("0200", {3: "010000", 4: "000000002000", 49: "978"})
BALANCE = tx("0200", {3: "311000"})


def test_deadline_counts_down_and_then_refuses() -> None:
    now = [100.0]
    deadline = Deadline(500, clock=lambda: now[0])
    assert deadline.remaining_ms() == 500
    now[0] += 0.4
    assert deadline.remaining_ms() == 99
    assert deadline.remaining_ms_or_zero() == 99
    now[0] += 0.2
    with pytest.raises(DeadlinePassed):
        deadline.remaining_ms()
    # To the ledger's callers a spent budget is the ledger not answering in time.
    with pytest.raises(LedgerUnavailable):
        deadline.remaining_s()
    assert deadline.remaining_ms_or_zero() == 0


async def test_the_first_outcome_ends_the_steps() -> None:
    ran: list[str] = []

    async def add(name: str, value: int) -> int:
        ran.append(name)
        return value

    async def one(x: int) -> int | Outcome:
        return await add("one", x + 1)

    async def decline(x: int) -> int | Outcome:
        ran.append("decline")
        return Outcome(ResponseCode.INSUFFICIENT_FUNDS, reason=str(x))

    async def never(x: int) -> int | Outcome:
        raise AssertionError("steps after a decline never run")

    timed: list[tuple[str, float]] = []
    steps = [("one", one), ("decline", decline), ("never", never)]
    outcome, decided_on = await run_steps(steps, 1, timed=lambda *step: timed.append(step))
    assert outcome == Outcome(ResponseCode.INSUFFICIENT_FUNDS, reason="2")
    assert decided_on == 2  # the context the deciding step was given
    assert ran == ["one", "decline"]
    assert [name for name, _ms in timed] == ["one", "decline"]


async def test_each_step_that_runs_is_timed_also_one_that_raises() -> None:
    now = [10.0]

    def takes(seconds: float) -> Callable[[int], Awaitable[int | Outcome]]:
        async def step(x: int) -> int | Outcome:
            now[0] += seconds
            if x >= 2:
                raise DeadlinePassed("late")
            return x + 1

        return step

    timed: list[tuple[str, float]] = []
    steps = [("quick", takes(0.002)), ("slow", takes(0.25)), ("late", takes(1))]
    with pytest.raises(DeadlinePassed):
        await run_steps(steps, 0, timed=lambda *step: timed.append(step), clock=lambda: now[0])
    assert [(name, round(ms, 6)) for name, ms in timed] == [
        ("quick", 2.0),
        ("slow", 250.0),
        ("late", 1000.0),
    ]


def test_ledger_requests() -> None:
    key = RequestKey("KIOSK001", "1123101500", "000042", "0200")
    withdrawal = ledger_request(WITHDRAWAL, "rrn")
    assert isinstance(withdrawal, Withdrawal)
    assert (
        withdrawal.key,
        withdrawal.account_type,
        withdrawal.amount_minor,
        withdrawal.currency,
    ) == (
        key,
        "20",  # 00 = the card's checking account
        2000,
        "EUR",
    )
    assert (withdrawal.audit.mti, withdrawal.audit.processing_code, withdrawal.audit.rrn) == (
        "0200",
        "010000",
        "rrn",
    )
    assert isinstance(ledger_request(BALANCE, "r"), BalanceInquiry)

    transfer = ledger_request(tx("0200", {3: "401020", 4: "000000000500", 49: "978"}), "r")
    assert isinstance(transfer, Transfer)
    assert (transfer.from_type, transfer.to_type, transfer.to_account) == ("10", "20", None)
    to_other = ledger_request(
        tx("0200", {3: "402000", 4: "000000000500", 49: "978", 103: "EUR-0003-20"}), "r"
    )
    assert isinstance(to_other, Transfer)
    assert (to_other.to_type, to_other.to_account) == (None, "EUR-0003-20")

    original = OriginalData("0200", "000041", "1123101400")
    reversal = ledger_request(
        tx(
            "0421",
            {
                3: "010000",
                4: "000000002000",
                49: "978",
                90: original.encode(),
                95: ReplacementAmounts(500).encode(),
            },
        ),
        "r",
    )
    assert isinstance(reversal, Reversal)
    assert reversal.key.message_class == "0420"
    assert reversal.original == RequestKey("KIOSK001", "1123101400", "000041", "0200")
    assert reversal.dispensed_minor == 500


@pytest.mark.parametrize(
    ("sent", "now", "rrn"),
    [
        ("1123101500", NOW, "6327" + "10" + "000042"),
        ("1231235959", datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC), "6365" + "23" + "000042"),
        ("0229120000", datetime(2027, 3, 1, tzinfo=UTC), "7059" + "12" + "000042"),
    ],
)
def test_retrieval_reference_comes_from_the_request(sent: str, now: datetime, rrn: str) -> None:
    assert retrieval_reference(tx("0200", {3: "311000", 7: sent}), now) == rrn


def test_result_fields() -> None:
    approved = Result(LedgerOutcome.APPROVED, 2000, "EUR", 123_000, 100_000, 4_321_987)
    assert result_fields(WITHDRAWAL, approved) == {
        38: "321987",
        54: "0001978C000000123000" + "0002978C000000100000",
    }
    inquiry = Result(LedgerOutcome.APPROVED, 0, "EUR", -500, 9_500, None)
    assert result_fields(BALANCE, inquiry) == {
        38: "000000",
        54: "1001978D000000000500" + "1002978C000000009500",
    }
    declined = Result(LedgerOutcome.INSUFFICIENT_FUNDS, 2000, "EUR", None, None, None)
    assert result_fields(WITHDRAWAL, declined) == {}
    assert response_code(declined.outcome) is ResponseCode.INSUFFICIENT_FUNDS


def test_pin_data() -> None:
    pvk = make_dev_keys(Lmk(DEVELOPMENT_LMK), seed=b"t").pvk
    ibm = verification_from_pin_data({"method": "ibm3624", "pvk": pvk.to_text(), "offset": "2298"})
    assert ibm == Ibm3624Offset(pvk, "2298", pin_length=4)
    visa = verification_from_pin_data(
        {"method": "visa_pvv", "pvk": pvk.to_text(), "pvki": "1", "pvv": "8523"}
    )
    assert visa == VisaPvv(pvk, "1", "8523")
    for bad in (
        {},
        {"method": "ibm3624", "pvk": "nonsense", "offset": "1"},
        {"method": "x", "pvk": pvk.to_text()},
    ):
        with pytest.raises(PinDataError):
            verification_from_pin_data(bad)

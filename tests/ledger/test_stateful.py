"""The ledger against a simple model: random sequences of requests, zero divergences."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ledger.model import Outcome, Request, RequestKey, Result, Reversal, Transfer, Withdrawal
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, open_store
from tests.conftest import PgCluster
from tests.ledger.factory import AUDIT, NOW, Customer, World, key
from tests.ledger.helpers import authorised

T = TypeVar("T")
FLOORS = {"20": -10_000, "10": 0}
PIN_TRIES_MAX = 3
DAILY_COUNT = 3
DAILY_AMOUNT_MINOR = 60_000
AMOUNTS = st.sampled_from([-1, 0, 100, 5_000, 30_000, 50_000, 50_001])


@dataclass
class Done:
    request: Request
    outcome: Outcome
    kind: str
    amount_minor: int = 0
    source: str = ""  # account numbers the money moved from / to
    destination: str = ""
    day: datetime = NOW


@dataclass
class CardModel:
    tries: int = 0
    usage: dict[datetime, tuple[int, int]] = field(default_factory=dict)  # day -> count, amount


class LedgerMachine(RuleBasedStateMachine):
    cluster: ClassVar[PgCluster]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self._await(asyncpg.connect(self.cluster.owner_dsn))
        self.world = World()
        limits = {"daily_count": DAILY_COUNT, "daily_amount_minor": DAILY_AMOUNT_MINOR}
        self._await(self.world.load(self.conn, 2, floor_minor=FLOORS["20"], card=limits))
        # Reset in teardown: the tests share the cluster.
        self._await(self.conn.execute("UPDATE ledger.policy SET cross_customer_transfers = true"))
        options = LedgerSettings(dsn=self.cluster.switch_dsn, cross_customer_transfers=True)
        self.store: LedgerStore = self._await(open_store(options, timeout_ms=30_000))
        self.now = NOW
        self.terminal = self.world.terminals[0]
        self.cash = f"CASH-{self.terminal}"
        self.balances = {self.cash: 0}
        for c in self.world.customers:
            self.balances |= {c.checking: 100_000, c.savings: 100_000}
        self.cards = [CardModel() for _ in self.world.customers]
        self.done: list[Done] = []
        self.reversed: set[RequestKey] = set()
        self.early: list[tuple[int, RequestKey]] = []

    def _await(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self._await(self.store.close())
        self._await(self.conn.execute("UPDATE ledger.policy SET cross_customer_transfers = false"))
        self._await(self.conn.close())
        self.loop.close()

    def _send(self, request: Request) -> Result:
        return self._await(
            self.store.process(request, authorise=authorised, now=self.now, timeout_ms=30_000)
        )

    def _number(self, customer: Customer, account_type: str) -> str:
        return customer.checking if account_type == "20" else customer.savings

    def _available(self, number: str) -> int:
        floor = FLOORS["20"] if number.startswith("CHK") else FLOORS["10"]
        return self.balances[number] - floor

    def _move(self, source: str, destination: str, amount_minor: int) -> None:
        self.balances[source] -= amount_minor
        self.balances[destination] += amount_minor

    def _expect_withdrawal(self, who: int, account_type: str, amount_minor: int) -> Outcome:
        card = self.cards[who]
        count, used = card.usage.get(self.now, (0, 0))
        number = self._number(self.world.customers[who], account_type)
        checks = [
            (card.tries >= PIN_TRIES_MAX, Outcome.PIN_TRIES_EXCEEDED),
            (amount_minor <= 0, Outcome.INVALID_AMOUNT),
            (account_type == "30", Outcome.NOT_PERMITTED_TO_CARDHOLDER),
            (amount_minor > 50_000, Outcome.EXCEEDS_AMOUNT_LIMIT),
            (count + 1 > DAILY_COUNT, Outcome.EXCEEDS_FREQUENCY_LIMIT),
            (used + amount_minor > DAILY_AMOUNT_MINOR, Outcome.EXCEEDS_AMOUNT_LIMIT),
        ]
        for failed, outcome in checks:
            if failed:
                return outcome
        if amount_minor > self._available(number):
            return Outcome.INSUFFICIENT_FUNDS
        card.usage[self.now] = (count + 1, used + amount_minor)
        card.tries = 0
        return Outcome.APPROVED

    @rule(who=st.integers(0, 1), account_type=st.sampled_from(["20", "10", "30"]), amount=AMOUNTS)
    def withdraw(self, who: int, account_type: str, amount: int) -> None:
        customer = self.world.customers[who]
        request = Withdrawal(customer.pan, key(self.terminal), AUDIT, account_type, amount, "EUR")
        expected = self._expect_withdrawal(who, account_type, amount)
        assert self._send(request).outcome is expected
        done = Done(request, expected, "withdrawal", amount, day=self.now)
        if expected is Outcome.APPROVED:
            done.source, done.destination = self._number(customer, account_type), self.cash
            self._move(done.source, done.destination, amount)
        self.done.append(done)

    @rule(who=st.integers(0, 1), to_other=st.booleans(), forward=st.booleans(), amount=AMOUNTS)
    def transfer(self, who: int, to_other: bool, forward: bool, amount: int) -> None:
        customer = self.world.customers[who]
        source_type, target_type = ("20", "10") if forward else ("10", "20")
        source = self._number(customer, source_type)
        if to_other:
            target = self._number(self.world.customers[1 - who], target_type)
            request = Transfer(customer.pan, key(self.terminal), AUDIT, source_type, amount,
                               "EUR", to_account=target)  # fmt: skip
        else:
            target = self._number(customer, target_type)
            request = Transfer(customer.pan, key(self.terminal), AUDIT, source_type, amount,
                               "EUR", to_type=target_type)  # fmt: skip
        card = self.cards[who]
        expected = Outcome.APPROVED
        if card.tries >= PIN_TRIES_MAX:
            expected = Outcome.PIN_TRIES_EXCEEDED
        elif amount <= 0:
            expected = Outcome.INVALID_AMOUNT
        elif amount > self._available(source):
            expected = Outcome.INSUFFICIENT_FUNDS
        assert self._send(request).outcome is expected
        if expected is Outcome.APPROVED:
            card.tries = 0
            self._move(source, target, amount)
        self.done.append(Done(request, expected, "transfer", amount, source, target, self.now))

    def _expect_reversal(self, original: Done, dispensed: int) -> Outcome:
        if original.request.key in self.reversed or original.outcome is not Outcome.APPROVED:
            self.reversed.add(original.request.key)
            return Outcome.APPROVED
        partial_ok = original.kind == "withdrawal" and dispensed < original.amount_minor
        if dispensed and not partial_ok:
            return Outcome.INVALID_AMOUNT
        undo = original.amount_minor - dispensed
        if original.destination != self.cash and undo > self._available(original.destination):
            return Outcome.INSUFFICIENT_FUNDS
        self._move(original.destination, original.source, undo)
        self.reversed.add(original.request.key)
        if original.kind == "withdrawal":
            who = next(
                i for i, c in enumerate(self.world.customers) if c.pan == original.request.pan
            )
            count, used = self.cards[who].usage.get(original.day, (0, 0))
            if original.day in self.cards[who].usage:
                self.cards[who].usage[original.day] = (count, max(0, used - undo))
        return Outcome.APPROVED

    @rule(data=st.data(), dispensed=st.sampled_from([0, 0, 100]))
    def reverse(self, data: st.DataObject, dispensed: int) -> None:
        candidates = [d for d in self.done if not isinstance(d.request, Reversal)]
        if not candidates:
            return
        original = data.draw(st.sampled_from(candidates))
        request = Reversal(original.request.pan, key(self.terminal, "0420"), AUDIT,
                           original.request.key, dispensed)  # fmt: skip
        expected = self._expect_reversal(original, dispensed)
        assert self._send(request).outcome is expected
        self.done.append(Done(request, expected, "reversal"))

    @rule(who=st.integers(0, 1))
    def reverse_before_original(self, who: int) -> None:
        customer = self.world.customers[who]
        original = key(self.terminal)
        request = Reversal(customer.pan, key(self.terminal, "0420"), AUDIT, original)
        assert self._send(request).outcome is Outcome.ORIGINAL_NOT_FOUND
        self.early.append((who, original))

    @rule()
    def late_original(self) -> None:
        if not self.early:
            return
        who, original = self.early.pop()
        request = Withdrawal(self.world.customers[who].pan, original, AUDIT, "20", 100, "EUR")
        assert self._send(request).outcome is Outcome.DO_NOT_HONOUR

    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        if not self.done:
            return
        earlier = data.draw(st.sampled_from(self.done))
        result = self._send(earlier.request)
        assert (result.outcome, result.repeated) == (earlier.outcome, True)

    @rule(who=st.integers(0, 1))
    def wrong_pin(self, who: int) -> None:
        customer = self.world.customers[who]
        request = Withdrawal(customer.pan, key(self.terminal), AUDIT, "20", 100, "EUR")
        lookup = self._await(self.store.lookup(request, timeout_ms=30_000))
        result = self._await(self.store.record_pin_failure(lookup, now=self.now, timeout_ms=30_000))
        card = self.cards[who]
        card.tries = min(card.tries + 1, PIN_TRIES_MAX)
        blocked = card.tries >= PIN_TRIES_MAX
        assert result.outcome is (Outcome.PIN_TRIES_EXCEEDED if blocked else Outcome.INCORRECT_PIN)

    @rule()
    def next_day(self) -> None:
        self.now += timedelta(days=1)

    @invariant()
    def balances_match_the_model(self) -> None:
        rows = self._await(
            self.conn.fetch(
                "SELECT account_number, balance_minor FROM ledger.accounts"
                " WHERE account_number = ANY($1)",
                list(self.balances),
            )
        )
        assert {r["account_number"]: r["balance_minor"] for r in rows} == self.balances


@pytest.mark.slow
def test_ledger_matches_model(pg_cluster: PgCluster) -> None:
    LedgerMachine.cluster = pg_cluster
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

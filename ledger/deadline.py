"""One time budget across the steps of a call: a ledger call's, or a whole request's in the
switch (its HSM and ledger calls and its response)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ledger.errors import LedgerUnavailable


class DeadlinePassed(LedgerUnavailable):
    """The budget ran out before the next step could start, so that step sent nothing. To the
    ledger's callers it is the ledger not answering in time; the switch tells it apart."""


class Deadline:
    """Ends `budget_ms` after it is made; asking for the time left after that raises
    DeadlinePassed."""

    def __init__(self, budget_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        assert budget_ms > 0, "budget_ms"
        self._clock = clock
        self.end = clock() + budget_ms / 1000

    def remaining_s(self) -> float:
        left_s = self.end - self._clock()
        if left_s <= 0:
            raise DeadlinePassed("deadline passed")
        return left_s

    def remaining_ms(self) -> int:
        """At least 1 while any time is left (a timeout of 0 would mean none to the callee)."""
        return max(1, int(self.remaining_s() * 1000))

    def remaining_ms_or_zero(self) -> int:
        """For a step that runs even when the budget is spent, on a floor of its own."""
        try:
            return self.remaining_ms()
        except DeadlinePassed:
            return 0

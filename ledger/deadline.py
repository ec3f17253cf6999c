"""One time budget across the steps of a call."""

from __future__ import annotations

import time
from collections.abc import Callable

from ledger.errors import LedgerUnavailable


class Deadline:
    """Ends `timeout_ms` after it is made; asking for the time left after that raises."""

    def __init__(self, timeout_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        assert timeout_ms > 0, "timeout_ms"
        self._clock = clock
        self.end = clock() + timeout_ms / 1000

    def left_ms(self) -> int:
        return max(1, int(self.left_s() * 1000))

    def left_s(self) -> float:
        left = self.end - self._clock()
        if left <= 0:
            raise LedgerUnavailable("ledger deadline passed")
        return left

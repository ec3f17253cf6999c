"""The HSM's PIN-verification rate limit: at most N verifications per card in any 60 seconds.

An attacker holding a card's PIN block (or a compromised host) could otherwise try PINs as fast
as the HSM answers; the ledger's try counter only sees what the switch reports. Cards are known
here only by a keyed hash of the PAN under a key drawn when the limiter is made: the PAN is
never stored, and the reference means nothing outside this process.

Sans-I/O: the clock is injected. Memory is bounded: at most ``cards_tracked_max`` cards, each
with at most ``per_minute_max`` timestamps; past the cap the card whose last verification is
oldest is forgotten.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hsm.crypto import Rng
from hsm.errors import PinRateLimitError

WINDOW_S = 60.0
_CARD_REFERENCE_LENGTH = 16  # 128 bits: no collision among millions of cards
_REFERENCE_KEY_LENGTH = 32

Clock = Callable[[], float]  # seconds, monotonic


@dataclass(frozen=True)
class PinRateLimit:
    per_minute_max: int = 10
    # Size it above the distinct cards verified in a minute at peak: a card forgotten early
    # gets a fresh allowance. 0.2 KB per card tracked, 0.6 KB with 10 verifications in the
    # window (measured): 60 MB at the default with every card at its limit.
    cards_tracked_max: int = 100_000

    def __post_init__(self) -> None:
        assert self.per_minute_max > 0, "per_minute_max is positive"
        assert self.cards_tracked_max > 0, "cards_tracked_max is positive"


class PinRateLimiter:
    """A sliding window per card: the timestamps of its verifications in the last minute."""

    def __init__(self, limit: PinRateLimit, *, clock: Clock, rng: Rng) -> None:
        self._limit = limit
        self._key = rng(_REFERENCE_KEY_LENGTH)
        self._clock = clock
        # Least recently verified first, so eviction takes the card idle the longest.
        self._recent: OrderedDict[bytes, tuple[float, ...]] = OrderedDict()

    def __len__(self) -> int:
        """The number of cards tracked."""
        return len(self._recent)

    def admit(self, pan: str) -> None:
        """Count one verification for this card, or raise ``PinRateLimitError`` (not counted)."""
        now_s = self._clock()
        card = hmac.digest(self._key, pan.encode("utf-8"), "sha256")[:_CARD_REFERENCE_LENGTH]
        recent = tuple(t for t in self._recent.pop(card, ()) if now_s - t < WINDOW_S)
        if len(recent) >= self._limit.per_minute_max:
            self._recent[card] = recent
            raise PinRateLimitError(
                f"more than {self._limit.per_minute_max} PIN verifications for this card "
                "within a minute"
            )
        self._recent[card] = (*recent, now_s)
        while len(self._recent) > self._limit.cards_tracked_max:
            self._recent.popitem(last=False)

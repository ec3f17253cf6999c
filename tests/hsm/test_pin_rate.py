"""The PIN-verification rate limit inside the HSM: at most N verifications per card in any
minute, on both backends, with the clock injected."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hsm import pinblock
from hsm.api import HSM, Ibm3624Method, Ibm3624Offset
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys
from hsm.engine import SoftHsm
from hsm.errors import PinError, PinRateLimitError
from hsm.keys import KeyRole, Lmk
from hsm.local import LocalHSM
from hsm.pinblock import PinBlockFormat as F
from hsm.ratelimit import WINDOW_S, PinRateLimit, PinRateLimiter
from hsm.server import HsmServer, ServerConfig

from .support import LMK, FakeClock

CARD, OTHER_CARD = "4012345678909", "5500000000000004"
PIN = "1234"
TPK_CLEAR = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TPK = LMK.wrap(KeyRole.TPK, Algorithm.TDES, TPK_CLEAR)


@dataclass
class Limited:
    hsm: HSM
    clock: FakeClock
    server: HsmServer | None


@pytest.fixture(params=["local", "network"])
async def limited(request: pytest.FixtureRequest) -> AsyncIterator[Limited]:
    clock = FakeClock()
    limit = PinRateLimit(per_minute_max=10)
    if request.param == "local":
        yield Limited(LocalHSM(LMK, pin_rate_limit=limit, clock=clock), clock, None)
        return
    server = HsmServer(
        SoftHsm(LMK, pin_rate_limit=limit, clock=clock), ServerConfig(host="127.0.0.1", port=0)
    )
    await server.start()
    client = NetworkHSM([("127.0.0.1", server.port)], timeout_ms=2000)
    yield Limited(client, clock, server)
    await client.close()
    await server.close()


async def verify(hsm: HSM, dev_keys: DevKeys, pan: str, pin: str = PIN) -> bool:
    # The card's offset for PIN, set by another HSM: setting a PIN is not a verification.
    offset = SoftHsm(LMK).derive_pin_verification_data(dev_keys.pvk, pan, PIN, Ibm3624Method())
    block = pinblock.encrypt_pin_block(TPK_CLEAR, pin, pan, F.ISO0)
    return await hsm.verify_pin(block, pan, TPK, F.ISO0, Ibm3624Offset(dev_keys.pvk, offset))


async def test_the_eleventh_verification_of_a_card_within_a_minute_is_refused(
    limited: Limited, dev_keys: DevKeys
) -> None:
    """An attacker guessing PINs: ten wrong guesses in a minute, then even the right PIN is
    refused, while another card still verifies; a minute later the card verifies again."""
    for _ in range(10):
        assert not await verify(limited.hsm, dev_keys, CARD, pin="9999")
        limited.clock.now_s += 1
    with pytest.raises(PinRateLimitError) as refused:
        await verify(limited.hsm, dev_keys, CARD)
    assert refused.value.code == "52"
    assert await verify(limited.hsm, dev_keys, OTHER_CARD)

    limited.clock.now_s += WINDOW_S - 10  # the first guess is now a minute old
    assert await verify(limited.hsm, dev_keys, CARD)
    with pytest.raises(PinRateLimitError):
        await verify(limited.hsm, dev_keys, CARD)  # the second guess is not, yet
    if limited.server is not None:
        assert limited.server.stats.pin_verifications_limited_total == 2


def test_a_refused_verification_is_not_a_wrong_pin() -> None:
    """The switch counts a PinError as a wrong PIN against the card's tries: a refusal by the
    rate limit never checked the PIN, so it must not be one."""
    assert not issubclass(PinRateLimitError, PinError)


def test_the_window_slides() -> None:
    clock = FakeClock()
    limiter = PinRateLimiter(PinRateLimit(per_minute_max=4), clock=clock, rng=os.urandom)
    for offset_s in (0, 0, 30, 30):
        clock.now_s = 1_000 + offset_s
        limiter.admit(CARD)
    clock.now_s = 1_000 + WINDOW_S - 0.001
    with pytest.raises(PinRateLimitError):
        limiter.admit(CARD)
    clock.now_s = 1_000 + WINDOW_S  # the two at 0 s have left the window, the two at 30 s not
    limiter.admit(CARD)
    limiter.admit(CARD)
    with pytest.raises(PinRateLimitError):
        limiter.admit(CARD)


def test_memory_is_bounded_and_the_card_idle_longest_goes_first() -> None:
    clock = FakeClock()
    limit = PinRateLimit(per_minute_max=1, cards_tracked_max=3)
    limiter = PinRateLimiter(limit, clock=clock, rng=os.urandom)
    cards = [f"40123456789{n:02d}" for n in range(4)]
    for card in cards[:3]:
        limiter.admit(card)
        clock.now_s += 1
    with pytest.raises(PinRateLimitError):
        limiter.admit(cards[0])  # now the most recently seen
    limiter.admit(cards[3])  # forgets cards[1], idle longest
    assert len(limiter) == 3
    limiter.admit(cards[1])  # a fresh allowance: forgotten
    with pytest.raises(PinRateLimitError):
        limiter.admit(cards[0])


def test_the_limiter_keeps_no_pan() -> None:
    limiter = PinRateLimiter(PinRateLimit(), clock=FakeClock(), rng=os.urandom)
    limiter.admit(CARD)
    assert CARD.encode() not in repr(vars(limiter)).encode()
    assert all(len(card) == 16 for card in vars(limiter)["_recent"])


async def test_production_always_limits(dev_keys: DevKeys) -> None:
    lmk = Lmk(bytes(range(32)))
    pvk = lmk.wrap(KeyRole.PVK, Algorithm.TDES, bytes.fromhex(dev_keys.tmk_clear_hex))
    tpk = lmk.wrap(KeyRole.TPK, Algorithm.TDES, TPK_CLEAR)
    hsm = LocalHSM(lmk, production=True, clock=FakeClock())
    offset = await hsm.derive_pin_verification_data(pvk, CARD, PIN, Ibm3624Method())
    block = pinblock.encrypt_pin_block(TPK_CLEAR, PIN, CARD, F.ISO0)
    for _ in range(PinRateLimit.per_minute_max):
        assert await hsm.verify_pin(block, CARD, tpk, F.ISO0, Ibm3624Offset(pvk, offset))
    with pytest.raises(PinRateLimitError):
        await hsm.verify_pin(block, CARD, tpk, F.ISO0, Ibm3624Offset(pvk, offset))

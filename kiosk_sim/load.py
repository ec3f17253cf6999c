"""The load generator: simulated kiosks running seeded customer sessions against a live switch.

Each terminal serves its own cards (a cardholder stands at one kiosk at a time), picks a session
from the mix with its own seeded generator, and keeps a model of what every account should hold
after the answers it got. A request that times out is reversed, as a real kiosk would; after the
run the model is compared with the ledger. Closed loop: each kiosk sends its next session when
the last is answered. Open loop: sessions start on a fixed schedule (the target rate) and
latency counts from the scheduled start, so a slow switch cannot hide behind its own backlog.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kiosk_sim.cash import (
    NO_ANSWER,
    Balancing,
    Booking,
    DispenserFaults,
    KioskCash,
    MixNotHeld,
    balancing_of,
    draw_mishaps,
)
from kiosk_sim.chip import AtcExhausted, ChipCard, Cryptogram
from kiosk_sim.client import SwitchConnectionClosed, TerminalClient
from kiosk_sim.epp import Epp
from kiosk_sim.population import (
    CHIP_EXPIRY_YYMM,
    CHIP_SERVICE_CODE,
    LedgerView,
    Population,
    SimCard,
    SimTerminal,
)
from kiosk_sim.report import Report
from kiosk_sim.terminal import Exchange, Terminal
from switch.iso8583 import Message
from switch.iso8583.elements import ElementFormatError

SESSIONS = (
    "balance",
    "withdrawal",
    "transfer",
    "wrong_pin",
    "partial",
    "duplicate",
    "reversal",
    "chip_withdrawal",
    "chip_replay",
    "bad_arqc",
    "fallback",
)
DEFAULT_MIX: Mapping[str, int] = {
    "balance": 4,
    "withdrawal": 4,
    "transfer": 1,
    "wrong_pin": 1,
    "partial": 1,
    "duplicate": 1,
    "reversal": 1,
}
AMOUNTS_MINOR = (2_000, 5_000, 10_000)
# A kiosk keeps an unanswered reversal and repeats it until the host answers (store and
# forward), for at most this long: it outlasts a database failover (10-12 s here).
REVERSAL_RETRY_S = 60.0
# Faults a kiosk can inject instead of sending a session's first request normally.
FAULTS = ("drop", "no_read", "garbage", "slow")
# Faults of a kiosk's dispenser (kiosks with cash): per dispense, a jam that pays part of the
# notes; per note, a note diverted to the reject bin.
DISPENSER_FAULTS = ("jam", "reject")
# A fault of the whole run, on (1) or off (0): one kiosk, chosen by the seed, reports wrong
# cassette counters in its 0500s, which the host must answer 95.
MISCOUNT = "miscount"
ALL_FAULTS = (*FAULTS, *DISPENSER_FAULTS, MISCOUNT)
SLOW_WRITE_DELAY_S = 0.002
SLOW_WRITE_CHUNK_BYTES = 7
NO_READ_PAUSE_S = 0.05
RECONNECT_WITHIN_S = 60.0
RECONNECT_PAUSE_S = 0.2
ECHO_IDLE_S = 30.0  # well inside the switch's default idle timeout of 300 s
GARBAGE_FRAME = b"\x00\x06\x00\xffjunk"  # a whole frame whose MTI cannot be read


def parse_faults(text: str) -> dict[str, float]:
    """`drop=0.01,garbage=0.005` → the chance per session of each fault (per dispense for a
    jam, per note for a reject; `miscount=1`: one kiosk miscounts)."""
    faults = dict.fromkeys(ALL_FAULTS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, chance = part.partition("=")
        if name not in faults:
            raise MixError(f"unknown fault {name!r}; known: {', '.join(ALL_FAULTS)}")
        try:
            faults[name] = float(chance)
        except ValueError:
            raise MixError(
                f"chance of {name!r} must be a number from 0 to 1, got {chance!r}"
            ) from None
        if not 0 <= faults[name] <= 1:
            raise MixError(f"chance of {name!r} must be from 0 to 1, got {chance}")
    if faults[MISCOUNT] not in (0, 1):
        raise MixError(f"{MISCOUNT} is 1 (one kiosk miscounts) or 0, got {faults[MISCOUNT]:g}")
    return faults


def has_network_faults(faults: Mapping[str, float]) -> bool:
    return any(faults.get(name) for name in FAULTS)


class MixError(ValueError):
    """A --mix that does not parse: names what is wrong."""


class SignOnDeclined(Exception):
    """The switch declined a kiosk's sign-on or key change (`step`: sign_on, key_change), so the
    run could not start; `report` is the run's report up to then, to be shown all the same."""

    def __init__(self, terminal_id: str, step: str, code: str, report: Report) -> None:
        self.terminal_id = terminal_id
        self.step = step
        self.code = code
        self.report = report
        super().__init__(f"{terminal_id}: {step} answered {code}")


def parse_mix(text: str) -> dict[str, int]:
    """`withdrawal=5,balance=3` → weights; sessions not named get weight 0."""
    mix = dict.fromkeys(SESSIONS, 0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in mix:
            raise MixError(f"unknown session {name!r}; known: {', '.join(SESSIONS)}")
        if not weight.isdigit():
            raise MixError(f"weight of {name!r} must be a whole number, got {weight!r}")
        mix[name] = int(weight)
    if not any(mix.values()):
        raise MixError("the mix needs at least one session with a weight above 0")
    return mix


@dataclass(frozen=True, slots=True)
class Plan:
    terminals: int
    seed: int
    mix: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    duration_s: float | None = 10.0
    count: int | None = None  # sessions in all; with a duration, whichever comes first
    rate_per_s: float | None = None  # open loop: sessions per second across all terminals
    timeout_ms: int = 5_000
    faults: Mapping[str, float] = field(default_factory=dict)
    # At the end, each kiosk with cash sends an 0500 per business date it counted, and the
    # end-state check expects every one balanced (but the miscounting kiosk's: 95).
    balance: bool = False

    def __post_init__(self) -> None:
        assert self.terminals > 0, "at least one terminal"
        # A fault reconnects its kiosk, which would cut the other sessions an open-loop kiosk
        # has in flight on the same connection.
        assert not (self.rate_per_s and has_network_faults(self.faults)), (
            "faults run in closed loop"
        )
        # A request whose answer was lost is counted by the host, not by the kiosk (the
        # contract counts what the kiosk was answered 00): such a day cannot balance.
        assert not (self.balance and has_network_faults(self.faults)), (
            "balancing runs without network faults"
        )
        assert self.duration_s is not None or self.count is not None, "a duration or a count"


@dataclass
class Model:
    """What each account should hold relative to the start, from the answers received."""

    deltas: Counter[str] = field(default_factory=Counter)
    unresolved: list[str] = field(default_factory=list)

    def discrepancies(self, before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
        """Per account, what the ledger holds minus what the answers said: above 0, money an
        approved withdrawal should have taken is missing; below 0, money left twice."""
        return {
            account: after.get(account, 0) - (before[account] + self.deltas[account])
            for account in sorted(before)
            if after.get(account) != before[account] + self.deltas[account]
        }

    def differences(self, before: Mapping[str, int], after: Mapping[str, int]) -> list[str]:
        expected = {account: before[account] + self.deltas[account] for account in before}
        found = [
            f"{account}: expected {expected[account]}, ledger has {after.get(account)}"
            for account in sorted(expected)
            if after.get(account) != expected[account]
        ]
        return found + self.unresolved


class Budget:
    """One kiosk's stop condition: the run's deadline and/or its own share of the session count
    (fixed per kiosk, so the same seed runs the same sessions whatever the timing)."""

    def __init__(self, deadline: float | None, sessions: int | None) -> None:
        self._deadline = deadline
        self._left = sessions

    def take(self) -> bool:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        if self._left is not None:
            if self._left <= 0:
                return False
            self._left -= 1
        return True


class Kiosk:
    """One simulated terminal running sessions for its own cards."""

    def __init__(
        self,
        terminal: Terminal,
        cards: list[SimCard],
        report: Report,
        model: Model,
        rng: random.Random,
        *,
        address: tuple[str, int],
        faults: Mapping[str, float],
        chips: Mapping[str, ChipCard],
        cash: KioskCash | None = None,
        dispenser_rng: random.Random | None = None,
    ) -> None:
        self.terminal, self.cards, self.report, self.model = terminal, cards, report, model
        self.rng = rng
        self.chips = chips  # the population's: each chip is its own card's, at this kiosk only
        # The population's, for this terminal: its cassettes and day counters (None: the host
        # counts no notes here, and the kiosk keeps no cash of its own).
        self.cash = cash
        self._address = address
        self._faults = faults
        self._network_faults = has_network_faults(faults)
        self._fault_rng = random.Random(rng.random())
        self._fault_due: str | None = None
        self._dispenser = DispenserFaults(faults.get("jam", 0.0), faults.get("reject", 0.0))
        # Its own generator, so jams and rejects leave the sessions' draws as they were.
        self._dispenser_rng = dispenser_rng or random.Random(f"dispenser {terminal.terminal_id}")

    async def idle_until(self, moment: float) -> None:
        """Wait for `moment` (perf_counter); echo every ECHO_IDLE_S meanwhile, as a kiosk does
        to keep its connection open past the switch's idle timeout."""
        while (wait_s := moment - time.perf_counter()) > ECHO_IDLE_S:
            await asyncio.sleep(ECHO_IDLE_S)
            self.report.idle_echoes += 1
            await self.terminal.echo()
        await asyncio.sleep(max(0.0, wait_s))

    async def reconnect(self) -> None:
        """A new connection and sign-on, retried until the switch is back (it may be
        restarting) or RECONNECT_WITHIN_S passes; the keys from the last key change hold."""
        await self.terminal.client.close()
        give_up_at = time.monotonic() + RECONNECT_WITHIN_S
        while True:
            try:
                self.terminal.client = await TerminalClient.connect(
                    *self._address, timeout_ms=self.terminal.timeout_ms
                )
                signed_on = await self.terminal.sign_on()
                break
            except (OSError, TimeoutError, SwitchConnectionClosed):
                if time.monotonic() > give_up_at:
                    raise SwitchConnectionClosed(
                        f"{self.terminal.terminal_id}: switch gone"
                    ) from None
                await asyncio.sleep(RECONNECT_PAUSE_S)
        if not signed_on.approved:
            raise SwitchConnectionClosed(
                f"{self.terminal.terminal_id}: sign-on answered {signed_on.code}"
            )
        self.report.record_error("reconnects", at_s=time.perf_counter())

    def _fault(self) -> str | None:
        if not self._network_faults:
            return None  # no draws: this generator serves the faults alone
        for name in FAULTS:
            if self._fault_rng.random() < self._faults.get(name, 0.0):
                return name
        return None

    async def send(self, request: Message, started: float | None = None) -> Exchange | None:
        # Only a session's first request may be faulted: later ones build on what it was told.
        fault, self._fault_due = self._fault_due, None
        if fault is not None:
            return await self._send_with_fault(fault, request)
        begin = time.perf_counter() if started is None else started
        try:
            exchange = await self.terminal.send(request)
        except TimeoutError:
            self.report.record_timeout(at_s=time.perf_counter())
            return await self._after_no_answer(request)
        except SwitchConnectionClosed:
            # The switch went away with this request unanswered (it may have crashed).
            self.report.record_error("connection_lost", at_s=time.perf_counter())
            await self.reconnect()
            return await self._after_no_answer(request)
        now = time.perf_counter()
        self.report.record_answer(exchange.code, at_s=now, latency_us=int((now - begin) * 1e6))
        if exchange.response_mac_ok is False:
            self.report.record_error("response_mac_wrong", at_s=now)
        return exchange

    async def _send_with_fault(self, fault: str, request: Message) -> Exchange | None:
        """Misbehave on purpose, then recover as a real kiosk would: reconnect, sign on, and
        reverse the request whose answer never arrived. Returns what was answered, if anything."""
        self.report.record_error(f"fault_{fault}", at_s=time.perf_counter())
        client = self.terminal.client
        if fault == "slow":
            return await self._send_slowly(request)
        if fault == "garbage":
            await client.send_raw(GARBAGE_FRAME)
            await client.wait_closed_by_peer(timeout_ms=self.terminal.timeout_ms)
        elif fault == "drop":
            await client.send(request)  # and hang up without waiting for the answer
        else:  # no_read: the request goes out, the kiosk stops reading, then goes away
            await client.send(request)
            client.stop_reading()
            await asyncio.sleep(NO_READ_PAUSE_S)
        await self.reconnect()
        if fault != "garbage":
            await self.reverse_unanswered(request)
            return None
        return await self.send(request)

    async def _send_slowly(self, request: Message) -> Exchange | None:
        """The request dribbles out a few bytes at a time; the switch must wait for all of it."""
        client = self.terminal.client
        stan = request.stan or ""
        future = client.expect(stan)
        data = client.framed(request)
        for start in range(0, len(data), SLOW_WRITE_CHUNK_BYTES):
            await client.send_raw(data[start : start + SLOW_WRITE_CHUNK_BYTES])
            await asyncio.sleep(SLOW_WRITE_DELAY_S)
        try:
            response = await client.wait(stan, future, timeout_ms=self.terminal.timeout_ms)
        except TimeoutError:
            self.report.record_timeout(at_s=time.perf_counter())
            await self.reverse_unanswered(request)
            return None
        exchange = self.terminal.exchange(request, response)
        # Not timed: the dribble is the kiosk's own delay, not the switch's.
        self.report.record_answer(exchange.code, at_s=time.perf_counter(), latency_us=None)
        return exchange

    async def _after_no_answer(self, request: Message) -> Exchange | None:
        """No answer came: a reversal is repeated (0421) until answered, and that answer counts;
        anything else that moves money is reversed and counts as not done."""
        if request.message_class == "042":
            return await self._until_answered(self.terminal.repeat_of(request))
        await self.reverse_unanswered(request)
        return None

    async def reverse_unanswered(self, request: Message) -> None:
        """Undo a request whose answer never arrived, whatever happened to it."""
        moves_money = (request.get(3) or "")[:2] in ("01", "40")
        if request.mti == "0200" and moves_money:
            # 00: reversed; 25: never posted, and the reversal is kept so it never will be.
            await self._until_answered(self.terminal.reversal(request))

    async def _until_answered(self, request: Message) -> Exchange | None:
        """Send `request`, then its repeats, until the switch answers with more than 91/96."""
        give_up_at = time.monotonic() + REVERSAL_RETRY_S
        attempt = request
        while time.monotonic() < give_up_at:
            try:
                answer = await self.terminal.send(attempt)
            except TimeoutError:
                pass
            except SwitchConnectionClosed:
                await self.reconnect()
            else:
                if answer.code not in ("91", "96"):
                    return answer
                await asyncio.sleep(RECONNECT_PAUSE_S)  # the switch or its ledger is recovering
            attempt = self.terminal.repeat_of(request)
        self.model.unresolved.append(
            f"{self.terminal.terminal_id} STAN {request.stan}: never answered"
        )
        return None

    async def session(self, kind: str, started: float | None = None) -> None:
        self._fault_due = self._fault()
        card = self.rng.choice(self.cards)
        self.report.kinds[kind] += 1
        handler = getattr(self, f"_{kind}")
        await handler(card, started)

    async def _balance(self, card: SimCard, started: float | None) -> None:
        exchange = await self.send(self.terminal.balance_inquiry(card.pan, card.pin), started)
        if exchange is not None and exchange.approved:
            self._book(exchange, Booking.INQUIRY)

    # cash: the day counters, and the notes of an approved withdrawal

    def _book(self, exchange: Exchange, booking: Booking, amount_minor: int = 0) -> None:
        """Count what the host answered 00 under the business date of its answer."""
        if self.cash is not None:
            self.cash.book(exchange.business_date_mmdd, booking, amount_minor)

    async def _pay_out(
        self, card: SimCard, exchange: Exchange, amount: int, *, jam: bool = False
    ) -> None:
        """The notes of an approved withdrawal come out of the cassettes (F121). A jam, or a
        cassette its rejects emptied, pays part: the kiosk reverses the rest, with F95 saying
        what came out. A mix it cannot pay, it pays none of, and reverses the whole amount. A
        kiosk without cash pays out nothing the host counts."""
        if self.cash is None:
            return
        try:
            notes = exchange.notes
            if not notes:
                raise MixNotHeld("no note mix (F121) in the approval")
            mishaps = draw_mishaps(
                self._dispenser_rng,
                sum(entry.notes for entry in notes),
                self._dispenser,
                force_jam=jam,
            )
            dispensed = self.cash.dispense(notes, mishaps)
        except (ElementFormatError, MixNotHeld):
            self.report.record_error("note_mix_refused", at_s=time.perf_counter())
            await self._reverse(card, exchange.request, amount)
            return
        self.report.cash["notes_rejected"] += len(mishaps.rejects)
        if dispensed.complete:
            return
        self.report.cash["partial_dispenses"] += 1
        if mishaps.jam_after is not None and not jam:
            self.report.record_error("fault_jam", at_s=time.perf_counter())
        # Nothing came out: the whole amount goes back (F95 only says what part did).
        dispensed_minor = dispensed.dispensed_minor or None
        await self._reverse(card, exchange.request, amount, dispensed_minor=dispensed_minor)

    async def _reverse(
        self, card: SimCard, request: Message, amount: int, *, dispensed_minor: int | None = None
    ) -> None:
        """An 0420 for an approved withdrawal: all of it, or the part not dispensed."""
        answer = await self.send(self.terminal.reversal(request, dispensed_minor=dispensed_minor))
        if answer is not None and answer.approved:
            given_back = amount - (dispensed_minor or 0)
            self.model.deltas[card.checking] += given_back
            self._book(answer, Booking.DEBIT_REVERSAL, given_back)

    async def balance(self, *, miscount: bool) -> list[Balancing]:
        """An 0500 per business date counted; what the host answered to each."""
        assert self.cash is not None
        results = []
        for fields in self.cash.balancing_requests(self.terminal.today(), miscount=miscount):
            request = self.terminal.financial("0500", fields)
            try:
                exchange = await self.terminal.send(request)
            except (TimeoutError, SwitchConnectionClosed):
                self.report.record_error("balancing_unanswered", at_s=time.perf_counter())
                results.append(Balancing(self.terminal.terminal_id, fields[15], NO_ANSWER))
                continue
            if exchange.response_mac_ok is False:
                self.report.record_error("response_mac_wrong", at_s=time.perf_counter())
            results.append(
                balancing_of(
                    self.terminal.terminal_id,
                    request.fields,
                    exchange.response.fields,
                    exchange.code,
                )
            )
        return results

    async def _withdraw(
        self, card: SimCard, started: float | None
    ) -> tuple[Message, Exchange | None, int]:
        amount = self.rng.choice(AMOUNTS_MINOR)
        request = self.terminal.withdrawal(card.pan, card.pin, amount)
        exchange = await self.send(request, started)
        if exchange is not None and exchange.approved:
            self._debited(card, exchange, amount)
        return request, exchange, amount

    def _debited(self, card: SimCard, exchange: Exchange, amount: int) -> None:
        self.model.deltas[card.checking] -= amount
        self._book(exchange, Booking.DEBIT, amount)

    async def _withdrawal(self, card: SimCard, started: float | None) -> None:
        _request, exchange, amount = await self._withdraw(card, started)
        if exchange is not None and exchange.approved:
            await self._pay_out(card, exchange, amount)

    async def _transfer(self, card: SimCard, started: float | None) -> None:
        amount = self.rng.choice(AMOUNTS_MINOR)
        exchange = await self.send(
            self.terminal.transfer(card.pan, card.pin, amount, from_account="20", to_account="10"),
            started,
        )
        if exchange is not None and exchange.approved:
            self.model.deltas[card.checking] -= amount
            self.model.deltas[card.savings] += amount
            self._book(exchange, Booking.TRANSFER)

    async def _wrong_pin(self, card: SimCard, started: float | None) -> None:
        """A mistyped PIN, then the right one (which resets the card's try counter)."""
        wrong = f"{(int(card.pin) + 1) % 10_000:04d}"
        await self.send(self.terminal.balance_inquiry(card.pan, wrong), started)
        await self._balance(card, None)

    async def _partial(self, card: SimCard, started: float | None) -> None:
        """The dispenser jams part-way: an 0420 with F95 says what came out (a kiosk with
        cash: the notes its jam let out; without: half the amount)."""
        request, exchange, amount = await self._withdraw(card, started)
        if exchange is None or not exchange.approved:
            return
        if self.cash is not None:
            await self._pay_out(card, exchange, amount, jam=True)
            return
        await self._reverse(card, request, amount, dispensed_minor=amount // 2)

    async def _duplicate(self, card: SimCard, started: float | None) -> None:
        """The same 0200 sent twice: the switch answers the repeat from its store."""
        request, first, amount = await self._withdraw(card, started)
        again = await self.send(request)
        if (
            first is not None
            and again is not None
            and again.response.get(38) != first.response.get(38)
        ):
            self.model.unresolved.append(
                f"{self.terminal.terminal_id} STAN {request.stan}: repeat answered differently"
            )
        # One request, so one dispense whatever the answers (the repeat moved no notes).
        if first is not None and first.approved:
            await self._pay_out(card, first, amount)

    async def _reversal(self, card: SimCard, started: float | None) -> None:
        """The customer cancels after approval: the whole amount goes back."""
        request, exchange, amount = await self._withdraw(card, started)
        if exchange is None or not exchange.approved:
            return
        await self._reverse(card, request, amount)

    # chip cards: the card's twin, read by its chip (F55) or by its stripe (fallback)

    async def _chip_withdrawal(self, card: SimCard, started: float | None) -> None:
        await self._chip_withdraw(card, started)

    async def _chip_withdraw(self, card: SimCard, started: float | None) -> Cryptogram | None:
        """The card's ARQC goes online; the card checks the ARPC in the answer. An approval
        whose ARPC fails is declined by the card, and the kiosk reverses it with the card's
        AAC. The cryptogram when the card approved, else None."""
        chip = self.chips[card.chip.pan]
        amount = self.rng.choice(AMOUNTS_MINOR)
        try:
            cryptogram = chip.generate_arqc(self.terminal.terminal_data(amount))
        except AtcExhausted:
            self.report.record_error("chip_atc_exhausted", at_s=time.perf_counter())
            return None
        request = self.terminal.chip_withdrawal(cryptogram, card.pin, amount)
        exchange = await self.send(request, started)
        if exchange is None or not exchange.approved:
            return None
        if chip.authenticate_issuer(cryptogram, exchange.response.get(55)).approve:
            self._debited(card, exchange, amount)
            await self._pay_out(card, exchange, amount)
            return cryptogram
        self.report.record_error("arpc_failed", at_s=time.perf_counter())
        # The host approved (and counted) it; the card's decline reverses all of it.
        self._book(exchange, Booking.DEBIT, amount)
        reversal = self.terminal.chip_reversal(request, chip.decline(cryptogram))
        answer = await self.send(reversal)
        if answer is not None and answer.approved:
            self._book(answer, Booking.DEBIT_REVERSAL, amount)
        return None

    async def _chip_replay(self, card: SimCard, started: float | None) -> None:
        """A chip withdrawal, then another at the same ATC (a fresh ARQC for an old counter,
        as a clone would send): it must be declined."""
        approved = await self._chip_withdraw(card, started)
        if approved is None:
            return
        chip = self.chips[card.chip.pan]
        amount = self.rng.choice(AMOUNTS_MINOR)
        replayed = chip.cryptogram_at(approved.atc, self.terminal.terminal_data(amount))
        exchange = await self.send(self.terminal.chip_withdrawal(replayed, card.pin, amount))
        await self._must_not_approve(exchange, card, amount, "a replayed ATC")

    async def _bad_arqc(self, card: SimCard, started: float | None) -> None:
        """A chip request whose ARQC is not the card's (one bit changed): it must be declined."""
        chip = self.chips[card.chip.pan]
        amount = self.rng.choice(AMOUNTS_MINOR)
        try:
            cryptogram = chip.generate_arqc(self.terminal.terminal_data(amount))
        except AtcExhausted:
            self.report.record_error("chip_atc_exhausted", at_s=time.perf_counter())
            return
        forged = cryptogram.with_arqc(bytes([cryptogram.arqc[0] ^ 1]) + cryptogram.arqc[1:])
        exchange = await self.send(self.terminal.chip_withdrawal(forged, card.pin, amount), started)
        await self._must_not_approve(exchange, card, amount, "a forged ARQC")

    async def _fallback(self, card: SimCard, started: float | None) -> None:
        """The chip card read by its stripe: approved only where its profile allows fallback."""
        chip = card.chip
        amount = self.rng.choice(AMOUNTS_MINOR)
        request = self.terminal.stripe_withdrawal(
            chip.pan, card.pin, amount, expiry_yymm=CHIP_EXPIRY_YYMM, service_code=CHIP_SERVICE_CODE
        )
        exchange = await self.send(request, started)
        if exchange is None:
            return
        if chip.fallback_allowed and exchange.code == "57":
            self.model.unresolved.append(
                f"{self.terminal.terminal_id} STAN {request.stan}: fallback refused (57) to a card"
                " whose profile allows it"
            )
        if exchange.approved:
            self._debited(card, exchange, amount)
            if not chip.fallback_allowed:
                self._unexpected_approval(request, "a fallback the card's profile refuses")
            await self._pay_out(card, exchange, amount)

    async def _must_not_approve(
        self, exchange: Exchange | None, card: SimCard, amount: int, what: str
    ) -> None:
        if exchange is not None and exchange.approved:
            self._debited(card, exchange, amount)  # the money (and the notes) did move
            self._unexpected_approval(exchange.request, what)
            await self._pay_out(card, exchange, amount)

    def _unexpected_approval(self, request: Message, what: str) -> None:
        self.model.unresolved.append(
            f"{self.terminal.terminal_id} STAN {request.stan}: {what} was approved"
        )


def _share(count: int | None, kiosks: int, index: int) -> int | None:
    return None if count is None else count // kiosks + (index < count % kiosks)


def _kind_picker(mix: Mapping[str, int], rng: random.Random) -> Callable[[], str]:
    kinds = [k for k in SESSIONS if mix.get(k)]
    weights = [mix[k] for k in kinds]
    return lambda: rng.choices(kinds, weights)[0]


async def start_kiosk(
    sim: SimTerminal,
    cards: list[SimCard],
    address: tuple[str, int],
    plan: Plan,
    *,
    report: Report,
    model: Model,
    seed: int,
    chips: Mapping[str, ChipCard],
    cash: KioskCash | None = None,
) -> Kiosk:
    host, port = address
    client = await TerminalClient.connect(host, port, timeout_ms=plan.timeout_ms)
    rng = random.Random(seed)
    terminal = Terminal(
        sim.terminal_id,
        Epp(sim.tmk),
        client,
        clock=lambda: datetime.now(UTC),
        rng=rng,
        timeout_ms=plan.timeout_ms,
    )
    for step, send in (("sign_on", terminal.sign_on), ("key_change", terminal.change_keys)):
        exchange = await send()
        if not exchange.approved:
            await client.close()
            report.errors[f"{step}_declined"] += 1
            raise SignOnDeclined(sim.terminal_id, step, exchange.code, report)
    return Kiosk(
        terminal,
        cards,
        report,
        model,
        rng,
        address=address,
        faults=plan.faults,
        chips=chips,
        cash=cash,
        dispenser_rng=random.Random(f"dispenser {seed}"),
    )


async def closed_loop(kiosk: Kiosk, budget: Budget, pick: Callable[[], str]) -> None:
    try:
        while budget.take():
            await kiosk.session(pick())
    except SwitchConnectionClosed:
        kiosk.report.record_error("connection_closed", at_s=time.perf_counter())


async def open_loop(
    kiosk: Kiosk, budget: Budget, pick: Callable[[], str], interval_s: float, outstanding_max: int
) -> None:
    """Sessions on a fixed schedule; at most `outstanding_max` in flight on this terminal."""
    slots = asyncio.Semaphore(outstanding_max)
    tasks: set[asyncio.Task[None]] = set()
    next_at = time.perf_counter() + kiosk.rng.random() * interval_s
    while budget.take():
        await kiosk.idle_until(next_at)
        scheduled = next_at
        next_at += interval_s
        await slots.acquire()

        async def one(kind: str = pick(), at: float = scheduled) -> None:
            try:
                await kiosk.session(kind, started=at)
            finally:
                slots.release()

        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        closed = sum(isinstance(r, SwitchConnectionClosed) for r in results)
        if closed:
            kiosk.report.record_error("connection_closed", at_s=time.perf_counter(), count=closed)


async def run(
    plan: Plan,
    population: Population,
    host: str,
    port: int,
    *,
    ledger: LedgerView | None = None,
    progress: Callable[[Report, float], None] | None = None,
) -> Report:
    """Drive the switch with `plan`; with a `ledger` view, check the end state against it."""
    assert len(population.terminals) >= plan.terminals, "provision at least as many terminals"
    assert len(population.cards) >= plan.terminals, "at least one card per terminal"
    report = Report(
        seed=plan.seed,
        terminals=plan.terminals,
        mix=plan.mix,
        faults=plan.faults,
        target_rate_per_s=plan.rate_per_s,
    )
    model = Model()
    before = await ledger.balances(population.accounts) if ledger else None
    sims = population.terminals[: plan.terminals]
    assert not plan.balance or all(s.terminal_id in population.cash for s in sims), (
        "balancing needs kiosks with cash: build(..., cash=True), then provision"
    )
    miscounting = _miscounting(plan, sims)
    report.miscounting = miscounting
    kiosks: list[Kiosk] = []
    try:
        for i, sim in enumerate(sims):
            kiosks.append(
                await start_kiosk(
                    sim,
                    list(population.cards[i :: plan.terminals]),
                    (host, port),
                    plan,
                    report=report,
                    model=model,
                    seed=plan.seed * 7919 + i,
                    chips=population.chips,
                    cash=population.cash.get(sim.terminal_id),
                )
            )
    except SignOnDeclined:
        for kiosk in kiosks:
            await kiosk.terminal.client.close()
        # A run that never started: an empty one, so its report can still be written.
        declined_s = time.perf_counter()
        report.begin(at_s=declined_s, at=datetime.now(UTC))
        report.end(at_s=declined_s)
        raise
    # Everything built so far (the population, the kiosks and their connections) lives through
    # the run: out of the collector's way, its passes stay short (gc.freeze).
    gc.freeze()
    report.begin(at_s=time.perf_counter(), at=datetime.now(UTC))
    started = time.monotonic()
    deadline = started + plan.duration_s if plan.duration_s else None
    budgets = [Budget(deadline, _share(plan.count, len(kiosks), i)) for i in range(len(kiosks))]
    picks = [
        _kind_picker(plan.mix, random.Random(plan.seed * 104729 + i)) for i in range(len(kiosks))
    ]
    if plan.rate_per_s:
        interval_s = len(kiosks) / plan.rate_per_s
        drivers = [
            open_loop(k, b, p, interval_s, 16)
            for k, b, p in zip(kiosks, budgets, picks, strict=True)
        ]
    else:
        drivers = [closed_loop(k, b, p) for k, b, p in zip(kiosks, budgets, picks, strict=True)]
    reporter = asyncio.ensure_future(_report_progress(report, progress)) if progress else None
    try:
        await asyncio.gather(*drivers)
        if plan.balance:
            report.balancing = await _balance(kiosks, miscounting)
    finally:
        gc.unfreeze()
        report.end(at_s=time.perf_counter())
        if reporter is not None:
            reporter.cancel()
        for kiosk in kiosks:
            await kiosk.terminal.client.close()
    if ledger is not None and before is not None:
        after = await ledger.balances(population.accounts)
        unconserved = await ledger.unconserved()
        report.differences = model.differences(before, after) + [
            f"{currency}: accounts sum to {total}, not 0" for currency, total in unconserved.items()
        ]
        report.discrepancies = model.discrepancies(before, after)
        if report.balancing is not None:
            report.differences += balancing_differences(report.balancing, miscounting)
    return report


def _miscounting(plan: Plan, sims: Sequence[SimTerminal]) -> str | None:
    """The terminal that miscounts, chosen by the seed, when the run has that fault."""
    if not plan.faults.get(MISCOUNT):
        return None
    return random.Random(f"miscount {plan.seed}").choice(sims).terminal_id


async def _balance(kiosks: Sequence[Kiosk], miscounting: str | None) -> list[Balancing]:
    """Every kiosk with cash balances its days, one after the other (as at a cutover)."""
    results: list[Balancing] = []
    for kiosk in kiosks:
        if kiosk.cash is not None:
            miscount = kiosk.terminal.terminal_id == miscounting
            results += await kiosk.balance(miscount=miscount)
    return results


def balancing_differences(results: Sequence[Balancing], miscounting: str | None) -> list[str]:
    """The end-state check of the 0500s: every kiosk's days balance (00), but those of the one
    that miscounts, which must each be answered 95 (and it must have sent one)."""
    found = []
    for result in results:
        expected = "95" if result.terminal_id == miscounting else "00"
        if result.code != expected:
            found.append(f"0500 {result.describe()}: expected {expected}")
    if miscounting is not None and not any(r.terminal_id == miscounting for r in results):
        found.append(f"0500: {miscounting} miscounts but sent no 0500 (it counted nothing)")
    return found


async def _report_progress(report: Report, progress: Callable[[Report, float], None]) -> None:
    while True:
        await asyncio.sleep(1.0)
        # On the clock the series counts its seconds by, so "the last second" is the same one.
        progress(report, time.perf_counter() - report.started_s)

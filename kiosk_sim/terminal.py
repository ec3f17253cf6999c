"""A simulated kiosk: builds the requests a real terminal sends and checks what comes back.

It signs on, runs key change (its EPP decrypts and checks the new TPK and TAK), sends PIN blocks
under its TPK, MACs every financial request and verifies every response MAC, and builds
reversals from the requests they undo. Time and randomness are injected, so a run replays.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from kiosk_sim.chip import Cryptogram, TerminalData
from kiosk_sim.client import TerminalClient, network_request, transmission_time
from kiosk_sim.epp import Epp
from switch.iso8583 import Dialect, Message, mac_input, prepared_for_mac, with_mac
from switch.iso8583.elements import (
    NOTE_MIX_FIELD,
    ElementFormatError,
    KeyChangeData,
    NoteEntry,
    OriginalData,
    ReplacementAmounts,
    decode_note_mix,
)

# F22: PAN entry mode (05 chip, 90 whole magnetic stripe), then 1: the kiosk takes PINs.
CHIP_ENTRY_MODE = "051"
STRIPE_ENTRY_MODE = "901"
TRACK_2_DISCRETIONARY = "00000000"


@dataclass(frozen=True, slots=True)
class Exchange:
    request: Message
    response: Message
    # None: the response carried no MAC; False: it carried a wrong one.
    response_mac_ok: bool | None

    @property
    def code(self) -> str:
        return self.response.response_code or ""

    @property
    def approved(self) -> bool:
        return self.code == "00"

    @property
    def business_date_mmdd(self) -> str:
        """The business day the host booked the request under: F15 of the answer (a request
        sent just before the host's cutover may be booked on the next day); from a host that
        sends none, the request's own date (F7)."""
        return self.response.get(15) or (self.request.transmission_time or "")[:4]

    @property
    def notes(self) -> list[NoteEntry]:
        """The notes the host tells the dispenser to pay (F121 of an approved withdrawal); none
        from a host that does not count this kiosk's notes. A kiosk pays out only a mix worth
        the amount it asked for: anything else raises ElementFormatError, and it dispenses
        nothing (its reversal undoes the approval)."""
        text = self.response.get(NOTE_MIX_FIELD)
        if not self.approved or text is None:
            return []
        notes = decode_note_mix(text)
        worth_minor = sum(entry.denomination_minor * entry.notes for entry in notes)
        if worth_minor != self.request.amount_minor:
            raise ElementFormatError(f"F121 is worth {worth_minor}, not the amount asked for")
        return notes


class Terminal:
    def __init__(
        self,
        terminal_id: str,
        epp: Epp,
        client: TerminalClient,
        *,
        clock: Callable[[], datetime],
        rng: random.Random,
        dialect: Dialect | None = None,
        mac: bool = True,
        timeout_ms: int = 5_000,
    ) -> None:
        assert len(terminal_id) <= 8, "F41 holds 8 characters"
        self.terminal_id = terminal_id
        self._field_41 = terminal_id.ljust(8)
        self.epp = epp
        self.client = client
        self._clock = clock
        self._rng = rng
        self._dialect = dialect or Dialect()
        self._mac = mac
        self.timeout_ms = timeout_ms
        self._stan = rng.randrange(1, 999_999)
        self._dukpt_counter = 0

    def today(self) -> date:
        """The kiosk's own date (UTC), on its injected clock."""
        return self._clock().date()

    def next_stan(self) -> str:
        self._stan = self._stan % 999_999 + 1
        return f"{self._stan:06d}"

    async def sign_on(self) -> Exchange:
        return await self._network("001")

    async def echo(self) -> Exchange:
        return await self._network("301")

    async def sign_off(self) -> Exchange:
        return await self._network("002")

    async def change_keys(self) -> Exchange:
        """Key change: on approval the EPP installs the TPK and TAK from F48 (KCVs checked)."""
        exchange = await self._network("161")
        if exchange.approved:
            self.epp = self.epp.install_session_keys(
                KeyChangeData.parse(exchange.response.get(48) or "")
            )
        return exchange

    async def _network(self, code: str) -> Exchange:
        request = network_request(
            code, stan=self.next_stan(), now=self._clock(), terminal_id=self.terminal_id
        )
        response = await self.client.request(request, timeout_ms=self.timeout_ms)
        return Exchange(request, response, None)

    def financial(self, mti: str, fields: Mapping[int, str]) -> Message:
        """A request with this terminal's F7, F11 and F41, MACed when MACs are on."""
        base = {
            7: transmission_time(self._clock()),
            11: self.next_stan(),
            41: self._field_41,
        }
        return self.sign(Message(mti, {**base, **fields}))

    def sign(self, message: Message) -> Message:
        if not self._mac:
            return message
        prepared = prepared_for_mac(message, self._dialect)
        return with_mac(prepared, self.epp.mac(mac_input(prepared, self._dialect)), self._dialect)

    def withdrawal(
        self, pan: str, pin: str, amount_minor: int, *, currency: str = "978", account: str = "00"
    ) -> Message:
        return self.financial(
            "0200",
            {
                2: pan,
                3: f"01{account}00",
                4: f"{amount_minor:012d}",
                49: currency,
                **self._pin(pin, pan),
            },
        )

    def terminal_data(
        self, amount_minor: int, *, currency: str = "978", transaction_type: str = "01"
    ) -> TerminalData:
        """What the kiosk hands a chip card for its cryptogram: amount, date, a fresh
        unpredictable number."""
        return TerminalData(
            amount_minor, currency, transaction_type, self._clock(), self._rng.randbytes(4)
        )

    def chip_withdrawal(
        self,
        cryptogram: Cryptogram,
        pin: str,
        amount_minor: int,
        *,
        currency: str = "978",
        account: str = "00",
    ) -> Message:
        """A withdrawal read by the card's chip: F22 051 (ICC, PIN capable), F23 the PAN
        sequence number, F55 the card's ARQC and the data it covers."""
        profile = cryptogram.profile
        return self.financial(
            "0200",
            {
                2: profile.pan,
                3: f"01{account}00",
                4: f"{amount_minor:012d}",
                22: CHIP_ENTRY_MODE,
                23: profile.psn.rjust(3, "0"),
                49: currency,
                55: cryptogram.field_55(),
                **self._pin(pin, profile.pan),
            },
        )

    def stripe_withdrawal(
        self,
        pan: str,
        pin: str,
        amount_minor: int,
        *,
        expiry_yymm: str,
        service_code: str,
        currency: str = "978",
        account: str = "00",
    ) -> Message:
        """A withdrawal read by the card's magnetic stripe: F22 901, F35 track 2 (a chip card's
        service code starts with 2: read this way, it is a fallback)."""
        return self.financial(
            "0200",
            {
                2: pan,
                3: f"01{account}00",
                4: f"{amount_minor:012d}",
                22: STRIPE_ENTRY_MODE,
                35: f"{pan}={expiry_yymm}{service_code}{TRACK_2_DISCRETIONARY}",
                49: currency,
                **self._pin(pin, pan),
            },
        )

    def balance_inquiry(self, pan: str, pin: str, *, account: str = "00") -> Message:
        return self.financial("0200", {2: pan, 3: f"31{account}00", **self._pin(pin, pan)})

    def transfer(
        self,
        pan: str,
        pin: str,
        amount_minor: int,
        *,
        from_account: str,
        to_account: str = "00",
        to_account_number: str | None = None,
        currency: str = "978",
    ) -> Message:
        fields = {
            2: pan,
            3: f"40{from_account}{to_account}",
            4: f"{amount_minor:012d}",
            49: currency,
            **self._pin(pin, pan),
        }
        if to_account_number is not None:
            fields[103] = to_account_number
        return self.financial("0200", fields)

    def reversal(self, original: Message, *, dispensed_minor: int | None = None) -> Message:
        """An 0420 undoing `original`; a partial one says what was actually dispensed."""
        assert original.stan is not None
        assert original.transmission_time is not None
        fields = {n: original.fields[n] for n in (2, 3, 4, 49) if n in original.fields}
        fields[90] = OriginalData(original.mti, original.stan, original.transmission_time).encode()
        if dispensed_minor is not None:
            fields[95] = ReplacementAmounts(dispensed_minor).encode()
        return self.financial("0420", fields)

    def chip_reversal(self, original: Message, declined: Cryptogram) -> Message:
        """The 0420 after the card declined the host's approval: F55 carries its AAC."""
        reversal = self.reversal(original)
        fields = {22: CHIP_ENTRY_MODE, 55: declined.field_55()}
        return self.sign(reversal.replace(fields))

    def repeat_of(self, request: Message) -> Message:
        """The same request sent again: 0201 or 0421, same F7 and STAN, MACed anew."""
        return self.sign(Message(request.mti[:3] + "1", request.fields))

    async def send(self, request: Message) -> Exchange:
        response = await self.client.request(request, timeout_ms=self.timeout_ms)
        return self.exchange(request, response)

    def exchange(self, request: Message, response: Message) -> Exchange:
        return Exchange(request, response, self._check_mac(response))

    def _check_mac(self, response: Message) -> bool | None:
        mac = response.mac
        if mac is None or self.epp.tak is None:
            return None
        return self.epp.verify_mac(mac_input(response, self._dialect), mac)

    def _pin(self, pin: str, pan: str) -> dict[int, str]:
        """F52, and for a DUKPT PIN pad F53 with the transaction's KSN."""
        if self.epp.ipek is None:
            block = self.epp.pin_block(pin, pan, rng=self._rng.randbytes).hex().upper()
            # A 16-byte AES (format 4) block does not fit F52: it goes in F120 as hex.
            return {52 if len(block) == 16 else 120: block}
        self._dukpt_counter += 1
        sealed, ksn = self.epp.dukpt_pin_block(
            pin, pan, self._dukpt_counter, rng=self._rng.randbytes
        )
        return {52: sealed.hex().upper(), 53: ksn.hex().upper()}

"""A kiosk's cash: its cassettes, a dispenser that may jam or reject a note, the day counters it
keeps per business date, and the 0500 that balances them against the host. Pure: randomness is
passed in, nothing here does I/O.

The dispenser pays a mix from its smallest notes to its largest. On a jam the notes still in the
dispenser are therefore the largest of the mix, which are exactly the ones the host puts back
for the part not dispensed (docs/cash.md: the undispensed part is taken from the original's mix
largest notes first), so the kiosk's physical counts and the host's stay equal.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import date
from enum import StrEnum

from ledger.balancing import CassetteCounter
from switch.iso8583.elements import (
    BALANCING_TOTALS,
    COUNTERS_FIELD,
    NET_FIELD,
    ElementFormatError,
    NoteEntry,
    business_date_of,
    decode_cassette_counters,
    encode_cassette_counters,
    encode_net_amount,
)

NOTES_MAX = 99_999  # the largest count F124 holds (n5)
# Rejected notes per dispense at most: a dispenser that rejects more stops (bounded loop).
REJECTS_PER_DISPENSE_MAX = 3


@dataclass(frozen=True, slots=True)
class Cassette:
    """One cassette as the kiosk counts it, since its last load."""

    slot: int
    denomination_minor: int
    loaded: int
    dispensed: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        assert 1 <= self.slot <= 99, self.slot
        assert self.denomination_minor > 0
        assert 0 <= self.loaded <= NOTES_MAX, self.loaded
        assert self.dispensed >= 0
        assert self.rejected >= 0
        assert self.remaining >= 0, "no more notes out than were loaded"

    @property
    def remaining(self) -> int:
        return self.loaded - self.dispensed - self.rejected

    def counter(self) -> CassetteCounter:
        """As F124 carries it."""
        return CassetteCounter(
            self.slot, self.denomination_minor, self.dispensed, self.rejected, self.remaining
        )


class MixNotHeld(ValueError):
    """The host's mix names a cassette this kiosk does not hold, or another denomination: the
    kiosk pays out nothing (and reverses the whole amount)."""


@dataclass(frozen=True, slots=True)
class DispenserFaults:
    """What may go wrong at the dispenser: per dispense, the chance of a jam; per note, the
    chance it is diverted to the reject bin (and another picked from the same cassette)."""

    jam_chance: float = 0.0
    reject_chance: float = 0.0

    def __post_init__(self) -> None:
        assert 0 <= self.jam_chance <= 1
        assert 0 <= self.reject_chance <= 1


@dataclass(frozen=True, slots=True)
class Mishaps:
    """One dispense's faults, drawn before it starts: the dispenser stops after `jam_after`
    notes (None: no jam), and the notes at `rejects` (positions in pay-out order) are rejected
    once before a good one is picked."""

    jam_after: int | None = None
    rejects: frozenset[int] = frozenset()


def draw_mishaps(
    rng: random.Random, notes: int, faults: DispenserFaults, *, force_jam: bool = False
) -> Mishaps:
    """The faults of a dispense of `notes` notes; a jam stops it before its last note, so at
    least one note stays in the dispenser."""
    assert notes > 0
    jam = force_jam or rng.random() < faults.jam_chance
    jam_after = rng.randrange(notes) if jam else None
    rejects = frozenset(
        position for position in range(notes) if rng.random() < faults.reject_chance
    )
    return Mishaps(jam_after, frozenset(sorted(rejects)[:REJECTS_PER_DISPENSE_MAX]))


@dataclass(frozen=True, slots=True)
class Dispensed:
    """What a dispense did: the cassettes after it and the money that came out."""

    cassettes: tuple[Cassette, ...]
    dispensed_minor: int
    asked_minor: int

    @property
    def complete(self) -> bool:
        return self.dispensed_minor == self.asked_minor


def pay_out_order(mix: Sequence[NoteEntry]) -> list[NoteEntry]:
    """The mix's notes one by one, smallest first (see the module's docstring)."""
    ordered = sorted(mix, key=lambda entry: (entry.denomination_minor, entry.cassette_no))
    return [replace(entry, notes=1) for entry in ordered for _ in range(entry.notes)]


def pay_out(
    cassettes: Sequence[Cassette], mix: Sequence[NoteEntry], mishaps: Mishaps = Mishaps()
) -> Dispensed:
    """Pay `mix` out of `cassettes`. It stops early on a jam, or when a cassette has no note
    left (its rejects took them): the notes not paid are then the mix's largest."""
    by_slot = {cassette.slot: cassette for cassette in cassettes}
    for entry in mix:
        held = by_slot.get(entry.cassette_no)
        if held is None or held.denomination_minor != entry.denomination_minor:
            raise MixNotHeld(
                f"cassette {entry.cassette_no} of {entry.denomination_minor} is not in this kiosk"
            )
    notes = pay_out_order(mix)
    dispensed_minor = 0
    for position, note in enumerate(notes):
        if position == mishaps.jam_after:
            break
        cassette = by_slot[note.cassette_no]
        if position in mishaps.rejects and cassette.remaining:
            cassette = replace(cassette, rejected=cassette.rejected + 1)
        if not cassette.remaining:
            by_slot[note.cassette_no] = cassette
            break
        by_slot[note.cassette_no] = replace(cassette, dispensed=cassette.dispensed + 1)
        dispensed_minor += note.denomination_minor
    asked_minor = sum(note.denomination_minor for note in notes)
    after = tuple(by_slot[cassette.slot] for cassette in cassettes)
    return Dispensed(after, dispensed_minor, asked_minor)


def miscounted(cassettes: Sequence[Cassette]) -> tuple[Cassette, ...]:
    """The counters a miscounting kiosk reports: one note too many dispensed from its first
    cassette (one too few when it has none left)."""
    first, *rest = cassettes
    step = 1 if first.remaining else -1
    return (replace(first, dispensed=first.dispensed + step), *rest)


# Day counters


class Booking(StrEnum):
    """What the host approved (or reversed), as the day counters count it."""

    DEBIT = "debit"
    DEBIT_REVERSAL = "debit_reversal"
    TRANSFER = "transfer"
    TRANSFER_REVERSAL = "transfer_reversal"
    INQUIRY = "inquiry"


@dataclass(frozen=True, slots=True)
class DayTotals:
    """One business date's counters, as F74-F80 and F86-F89 carry them."""

    credits: int = 0
    credit_reversals: int = 0
    debits: int = 0
    debit_reversals: int = 0
    transfers: int = 0
    transfer_reversals: int = 0
    inquiries: int = 0
    credits_minor: int = 0
    credit_reversals_minor: int = 0
    debits_minor: int = 0
    debit_reversals_minor: int = 0

    def booked(self, booking: Booking, amount_minor: int = 0) -> DayTotals:
        """These totals with one more `booking` (of `amount_minor` for a debit or its
        reversal: for a partial reversal, the part given back)."""
        assert amount_minor >= 0
        count = {
            Booking.DEBIT: "debits",
            Booking.DEBIT_REVERSAL: "debit_reversals",
            Booking.TRANSFER: "transfers",
            Booking.TRANSFER_REVERSAL: "transfer_reversals",
            Booking.INQUIRY: "inquiries",
        }[booking]
        changes = {count: getattr(self, count) + 1}
        if booking in (Booking.DEBIT, Booking.DEBIT_REVERSAL):
            changes[f"{count}_minor"] = getattr(self, f"{count}_minor") + amount_minor
        return replace(self, **changes)

    @property
    def net_minor(self) -> int:
        """Cash paid out net: debits less their reversals, less credits net of theirs."""
        debits = self.debits_minor - self.debit_reversals_minor
        return debits - (self.credits_minor - self.credit_reversals_minor)


assert [name for name, _ in BALANCING_TOTALS.values()] == [f.name for f in fields(DayTotals)]
# The fields the host compares, and in an imbalance answers with its own figures.
BALANCED_FIELDS: tuple[int, ...] = (*BALANCING_TOTALS, NET_FIELD, COUNTERS_FIELD)


def balancing_fields(
    business_date_mmdd: str,
    currency: str,
    totals: DayTotals,
    cassettes: Sequence[Cassette],
) -> dict[int, str]:
    """An 0500's fields but F7, F11 and F41: the date balanced, the currency of the totals, the
    totals, their net, and the cassette counters."""
    assert len(business_date_mmdd) == 4
    assert business_date_mmdd.isdigit()
    counts = {
        number: f"{getattr(totals, name):0{width}d}"
        for number, (name, width) in BALANCING_TOTALS.items()
    }
    return {
        15: business_date_mmdd,
        50: currency,
        **counts,
        NET_FIELD: encode_net_amount(totals.net_minor),
        COUNTERS_FIELD: encode_cassette_counters(
            [cassette.counter() for cassette in sorted(cassettes, key=lambda c: c.slot)]
        ),
    }


# The 0510

NO_ANSWER = ""  # the code of an 0500 the host never answered


@dataclass(frozen=True, slots=True)
class Balancing:
    """One 0500 and what the host answered: `differences` are the fields whose figures the host
    gives otherwise (in an imbalance), each with the kiosk's and the host's, readably."""

    terminal_id: str
    business_date_mmdd: str
    code: str
    differences: tuple[tuple[str, str, str], ...] = ()

    @property
    def balanced(self) -> bool:
        return self.code == "00"

    def describe(self) -> str:
        head = f"{self.terminal_id} {self.business_date_mmdd}: {self.code or 'no answer'}"
        shown = "; ".join(f"{name} {ours} (host {host})" for name, ours, host in self.differences)
        return f"{head} {shown}" if shown else head


def balancing_of(
    terminal_id: str, sent: Mapping[int, str], answer: Mapping[int, str], code: str
) -> Balancing:
    """The outcome of the 0500 `sent`: with the host's figures of an imbalance compared."""
    differences: list[tuple[str, str, str]] = []
    for number in BALANCED_FIELDS:
        ours, host = sent.get(number), answer.get(number)
        if host is None or ours is None or ours == host:
            continue
        differences += _differences_in(number, ours, host)
    return Balancing(terminal_id, sent[15], code, tuple(differences))


def _differences_in(number: int, ours: str, host: str) -> list[tuple[str, str, str]]:
    if number in BALANCING_TOTALS:
        return [(f"F{number} {BALANCING_TOTALS[number][0]}", str(int(ours)), _as_number(host))]
    if number == NET_FIELD:
        return [(f"F{number} net", ours, host)]
    try:
        host_cassettes = {c.cassette_no: c for c in decode_cassette_counters(host)}
    except ElementFormatError:
        return [(f"F{number}", ours, host)]
    found = []
    for cassette in decode_cassette_counters(ours):
        slot = cassette.cassette_no
        theirs = host_cassettes.get(slot)
        for counter in ("dispensed", "rejected", "remaining"):
            mine = getattr(cassette, counter)
            other = None if theirs is None else getattr(theirs, counter)
            if mine != other:
                found.append((f"F{number} slot {slot} {counter}", str(mine), str(other)))
    return found or [(f"F{number}", ours, host)]


def _as_number(text: str) -> str:
    return str(int(text)) if text.isdigit() else text


class KioskCash:
    """One kiosk's cash as it counts it: its cassettes, and its counters per business date.
    State that outlives a run (the population keeps it), as a real kiosk's counters do."""

    def __init__(self, cassettes: Sequence[Cassette], currency: str) -> None:
        assert cassettes, "a kiosk with cash has cassettes"
        self.cassettes = tuple(cassettes)
        self.currency = currency
        self.days: dict[str, DayTotals] = {}

    def book(self, business_date_mmdd: str, booking: Booking, amount_minor: int = 0) -> None:
        totals = self.days.get(business_date_mmdd, DayTotals())
        self.days[business_date_mmdd] = totals.booked(booking, amount_minor)

    def dispense(self, mix: Sequence[NoteEntry], mishaps: Mishaps) -> Dispensed:
        dispensed = pay_out(self.cassettes, mix, mishaps)
        self.cassettes = dispensed.cassettes
        return dispensed

    def balancing_requests(self, today: date, *, miscount: bool = False) -> list[dict[int, str]]:
        """One 0500's fields per business date counted, oldest first, each with the cassette
        counters of now; a miscounting kiosk's with those wrong."""
        counters = miscounted(self.cassettes) if miscount else self.cassettes
        dates = sorted(self.days, key=lambda mmdd: business_date_of(mmdd, today) or today)
        return [balancing_fields(mmdd, self.currency, self.days[mmdd], counters) for mmdd in dates]

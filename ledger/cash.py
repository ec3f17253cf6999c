"""ATM cash: a terminal's cassettes and the note mix a dispenser pays an amount with. Pure.

The mix is decided as dispensers do: the largest notes first, within what each cassette holds
and the dispenser's limit of notes per dispense. Where taking the most large notes leaves a
remainder the smaller notes cannot make (60 from 50s and 20s), it gives up large notes one by
one until the rest can be made (60 = 3 x 20), searching the counts from the largest note down:
the mix returned is always the one with the most large notes, which is the greedy answer
whenever greedy finds one. An amount no mix makes is refused with why: no count of the
denominations makes it at all (`13`), or the notes left, or the per-dispense limit, cannot
(`61`, "ask for less"), or the terminal has no notes left (cash out).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from math import gcd

# Cassette slots a terminal may have (ledger.cassettes.cassette_no is 1 to 8).
CASSETTES_MAX = 8
# Notes a dispenser presents at once (a common limit of ATM dispensers; the bundle must fit the
# shutter).
NOTES_PER_DISPENSE_MAX = 40


@dataclass(frozen=True, slots=True)
class Cassette:
    """A cassette as the ledger counts it. `load_seq` counts its replenishments."""

    cassette_no: int
    currency: str
    denomination_minor: int
    remaining_notes: int
    load_seq: int = 0

    def __post_init__(self) -> None:
        assert 1 <= self.cassette_no <= CASSETTES_MAX, self.cassette_no
        assert self.denomination_minor > 0
        assert self.remaining_notes >= 0


@dataclass(frozen=True, slots=True)
class CassetteNotes:
    """Notes from (or back into) one cassette; `load_seq` is the load they belong to."""

    cassette_no: int
    denomination_minor: int
    notes: int
    load_seq: int = 0

    def __post_init__(self) -> None:
        assert 1 <= self.cassette_no <= CASSETTES_MAX, self.cassette_no
        assert self.notes > 0
        assert self.denomination_minor > 0


@dataclass(frozen=True, slots=True)
class NoteMix:
    """The notes of one dispense (or of its undispensed part), one entry per cassette used, in
    cassette order."""

    parts: tuple[CassetteNotes, ...]

    def __post_init__(self) -> None:
        slots = [part.cassette_no for part in self.parts]
        assert slots == sorted(set(slots)), "one entry per cassette, in cassette order"

    @property
    def value_minor(self) -> int:
        return sum(part.denomination_minor * part.notes for part in self.parts)

    @property
    def notes(self) -> int:
        return sum(part.notes for part in self.parts)

    def counts(self) -> list[int]:
        """Notes per cassette slot 1..CASSETTES_MAX (ledger.post_batch's note_counts row)."""
        counts = [0] * CASSETTES_MAX
        for part in self.parts:
            counts[part.cassette_no - 1] = part.notes
        return counts


NO_NOTES = NoteMix(())


class Undispensable(StrEnum):
    """Why the cassettes cannot pay an amount."""

    NOT_A_MULTIPLE = "not_a_multiple"  # no count of the denominations makes it at all
    NOTES_SHORT = "notes_short"  # the notes left, or the per-dispense limit, cannot make it
    CASH_OUT = "cash_out"  # no notes of the currency left


class CashLevel(StrEnum):
    """A terminal's cash as the fleet view shows it."""

    OK = "ok"
    LOW = "low"  # a cassette at or below its low mark: replenish soon
    OUT = "out"  # no note left: withdrawals are declined at once


def cash_level(cassettes: Iterable[tuple[int, int]]) -> CashLevel | None:
    """From each cassette's (remaining notes, low mark); None for a terminal without
    cassettes (the host counts no notes there)."""
    counts = list(cassettes)
    if not counts:
        return None
    if not any(remaining for remaining, _ in counts):
        return CashLevel.OUT
    if any(remaining <= low for remaining, low in counts):
        return CashLevel.LOW
    return CashLevel.OK


def cash_out(cassettes: Sequence[Cassette], currency: str) -> bool:
    """The terminal counts cash (it has cassettes) and has no note of `currency` left."""
    return bool(cassettes) and not any(
        c.remaining_notes for c in cassettes if c.currency == currency
    )


def note_mix(
    cassettes: Sequence[Cassette],
    amount_minor: int,
    currency: str,
    *,
    notes_max: int = NOTES_PER_DISPENSE_MAX,
) -> NoteMix | Undispensable:
    """The dispenser's mix for `amount_minor` of `currency` from `cassettes`, or why there is
    none (see the module's docstring)."""
    assert amount_minor > 0
    assert notes_max > 0
    usable = [c for c in cassettes if c.currency == currency]
    if not any(c.remaining_notes for c in usable):
        return Undispensable.CASH_OUT
    denominations = sorted({c.denomination_minor for c in usable}, reverse=True)
    available = [
        sum(c.remaining_notes for c in usable if c.denomination_minor == d) for d in denominations
    ]
    counts = _largest_first(denominations, available, amount_minor, notes_max)
    if counts is None:
        if not makeable(denominations, amount_minor):
            return Undispensable.NOT_A_MULTIPLE
        return Undispensable.NOTES_SHORT
    return _from_cassettes(usable, dict(zip(denominations, counts, strict=True)))


def notes_back(
    dispensed: Sequence[CassetteNotes], cassettes: Sequence[Cassette], undo_minor: int
) -> NoteMix | None:
    """The notes a reversal of `undo_minor` puts back into the cassettes: the undispensed part
    of the original's mix, largest notes first. NO_NOTES when the original dispensed none the
    ledger counts, or a cassette it used was replenished since (its notes were counted out with
    that load); None when no part of the original's notes makes `undo_minor` (a partial
    dispense that no note count explains)."""
    current = {c.cassette_no: c.load_seq for c in cassettes}
    if not dispensed or any(current.get(p.cassette_no) != p.load_seq for p in dispensed):
        return NO_NOTES
    as_cassettes = [
        Cassette(p.cassette_no, "", p.denomination_minor, p.notes, p.load_seq) for p in dispensed
    ]
    mix = note_mix(as_cassettes, undo_minor, "", notes_max=sum(p.notes for p in dispensed))
    return None if isinstance(mix, Undispensable) else mix


def makeable(denominations: Sequence[int], amount_minor: int) -> bool:
    """Whether any count of notes of `denominations` sums to `amount_minor`."""
    step = 0
    for denomination in denominations:
        step = gcd(step, denomination)
    if step == 0 or amount_minor % step:
        return False
    units = [d // step for d in denominations]
    target = amount_minor // step
    # Schur's bound: every multiple of the gcd from (min - 1)(max - 1) on is makeable, so the
    # table below never grows past that, whatever the amount.
    if target >= (min(units) - 1) * (max(units) - 1):
        return True
    reachable = [True] + [False] * target
    for value in range(1, target + 1):
        reachable[value] = any(u <= value and reachable[value - u] for u in units)
    return reachable[target]


def _largest_first(
    denominations: Sequence[int], available: Sequence[int], amount_minor: int, notes_max: int
) -> list[int] | None:
    """Counts per denomination (largest first) summing to the amount within the counts and the
    notes limit, with the most large notes; None when there are none. A search over the counts
    from the largest note down, pruned by what the smaller notes can still make; dead ends are
    remembered, so the work is bounded by denominations x amount steps x notes."""
    size = len(denominations)
    capacity = [0] * (size + 1)
    for i in range(size - 1, -1, -1):
        capacity[i] = capacity[i + 1] + denominations[i] * available[i]
    dead: set[tuple[int, int, int]] = set()

    def search(i: int, left_minor: int, notes_left: int) -> list[int] | None:
        if left_minor == 0:
            return [0] * (size - i)
        if (
            i == size
            or left_minor > capacity[i]
            or left_minor > notes_left * denominations[i]
            or (i, left_minor, notes_left) in dead
        ):
            return None
        denomination = denominations[i]
        most = min(available[i], left_minor // denomination, notes_left)
        for count in range(most, -1, -1):
            rest = search(i + 1, left_minor - count * denomination, notes_left - count)
            if rest is not None:
                return [count, *rest]
        dead.add((i, left_minor, notes_left))
        return None

    return search(0, amount_minor, notes_max)


def _from_cassettes(cassettes: Iterable[Cassette], by_denomination: dict[int, int]) -> NoteMix:
    """Each denomination's notes taken from its cassettes in cassette order."""
    parts = []
    wanted = dict(by_denomination)
    for cassette in sorted(cassettes, key=lambda c: c.cassette_no):
        take = min(wanted.get(cassette.denomination_minor, 0), cassette.remaining_notes)
        if take:
            wanted[cassette.denomination_minor] -= take
            parts.append(
                CassetteNotes(
                    cassette.cassette_no, cassette.denomination_minor, take, cassette.load_seq
                )
            )
    assert not any(wanted.values()), "the counts fit the cassettes"
    return NoteMix(tuple(parts))

"""The note mix (ledger/cash.py): a table of exact mixes and declines, and properties checked
against a brute-force search over every count of notes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.cash import (
    NO_NOTES,
    Cassette,
    CassetteNotes,
    NoteMix,
    Undispensable,
    cash_out,
    makeable,
    note_mix,
    notes_back,
)


def cassettes(*slots: tuple[int, int]) -> list[Cassette]:
    """(denomination, remaining) per slot, from slot 1, in EUR."""
    return [Cassette(n, "EUR", d, left, 1) for n, (d, left) in enumerate(slots, 1)]


def mix(*parts: tuple[int, int, int]) -> NoteMix:
    return NoteMix(tuple(CassetteNotes(n, d, count, 1) for n, d, count in parts))


FIFTIES_TWENTIES = cassettes((5_000, 10), (2_000, 10))


@pytest.mark.parametrize(
    ("slots", "amount_minor", "expected"),
    [
        # Largest notes first.
        (FIFTIES_TWENTIES, 9_000, mix((1, 5_000, 1), (2, 2_000, 2))),
        (FIFTIES_TWENTIES, 10_000, mix((1, 5_000, 2))),
        # Greedy (one 50, then 10 left) fails where three 20s do it.
        (FIFTIES_TWENTIES, 6_000, mix((2, 2_000, 3))),
        (FIFTIES_TWENTIES, 13_000, mix((1, 5_000, 1), (2, 2_000, 4))),
        # No 50s left: 20s alone.
        (cassettes((5_000, 0), (2_000, 10)), 10_000, mix((2, 2_000, 5))),
        # Two cassettes of one denomination: the first, then the next.
        (cassettes((2_000, 2), (2_000, 5)), 10_000, mix((1, 2_000, 2), (2, 2_000, 3))),
        # Never makeable from 50s and 20s.
        (FIFTIES_TWENTIES, 3_000, Undispensable.NOT_A_MULTIPLE),
        (FIFTIES_TWENTIES, 1_000, Undispensable.NOT_A_MULTIPLE),
        (FIFTIES_TWENTIES, 2_500, Undispensable.NOT_A_MULTIPLE),
        # Makeable, but not from what is left.
        (cassettes((5_000, 1), (2_000, 1)), 9_000, Undispensable.NOTES_SHORT),
        (cassettes((5_000, 0), (2_000, 10)), 5_000, Undispensable.NOTES_SHORT),
        # More notes than the dispenser gives at once (40).
        (cassettes((2_000, 100)), 82_000, Undispensable.NOTES_SHORT),
        (cassettes((2_000, 100)), 80_000, mix((1, 2_000, 40))),
        (cassettes((5_000, 0), (2_000, 0)), 2_000, Undispensable.CASH_OUT),
    ],
)
def test_mix_table(
    slots: list[Cassette], amount_minor: int, expected: NoteMix | Undispensable
) -> None:
    assert note_mix(slots, amount_minor, "EUR") == expected


def test_cassettes_of_another_currency_are_not_used() -> None:
    usd = [Cassette(1, "USD", 2_000, 10)]
    assert note_mix(usd, 2_000, "EUR") is Undispensable.CASH_OUT
    assert cash_out(usd, "EUR")
    assert not cash_out([], "EUR")  # no cassettes: the host counts no notes here


def test_notes_back_are_the_undispensed_part() -> None:
    dispensed = (CassetteNotes(1, 5_000, 1, 1), CassetteNotes(2, 2_000, 2, 1))
    assert notes_back(dispensed, FIFTIES_TWENTIES, 9_000) == mix((1, 5_000, 1), (2, 2_000, 2))
    assert notes_back(dispensed, FIFTIES_TWENTIES, 4_000) == mix((2, 2_000, 2))
    assert notes_back(dispensed, FIFTIES_TWENTIES, 3_000) is None
    assert notes_back((), FIFTIES_TWENTIES, 4_000) == NO_NOTES
    replenished = cassettes((5_000, 10), (2_000, 10))
    replenished[1] = Cassette(2, "EUR", 2_000, 10, load_seq=2)
    assert notes_back(dispensed, replenished, 4_000) == NO_NOTES


def _brute_force(
    denominations: list[int], counts: list[int], amount_minor: int, notes_max: int
) -> list[tuple[int, ...]]:
    """Every count vector (largest denomination first) that pays the amount."""
    ranges = [range(count + 1) for count in counts]
    return [
        chosen
        for chosen in itertools.product(*ranges)
        if sum(c * d for c, d in zip(chosen, denominations, strict=True)) == amount_minor
        and sum(chosen) <= notes_max
    ]


SLOTS = st.lists(
    st.tuples(st.sampled_from([100, 200, 500, 1_000, 2_000, 5_000]), st.integers(0, 6)),
    min_size=1,
    max_size=4,
)


# Each example's work is bounded by the strategies: a busy machine's pauses are no finding.
@settings(deadline=None)
@given(SLOTS, st.integers(1, 200).map(lambda n: n * 100), st.integers(1, 12))
def test_a_mix_pays_the_amount_within_the_counts(
    slots: list[tuple[int, int]], amount_minor: int, notes_max: int
) -> None:
    given_cassettes = cassettes(*slots)
    result = note_mix(given_cassettes, amount_minor, "EUR", notes_max=notes_max)
    by_slot = {c.cassette_no: c for c in given_cassettes}
    denominations = sorted({d for d, _ in slots}, reverse=True)
    available = [
        sum(left for d, left in slots if d == denomination) for denomination in denominations
    ]
    solutions = _brute_force(denominations, available, amount_minor, notes_max)
    if isinstance(result, NoteMix):
        assert result.value_minor == amount_minor
        assert result.notes <= notes_max
        for part in result.parts:
            assert part.notes <= by_slot[part.cassette_no].remaining_notes
            assert part.denomination_minor == by_slot[part.cassette_no].denomination_minor
        # The mix with the most large notes: the greatest of all solutions, largest first.
        chosen = tuple(
            sum(p.notes for p in result.parts if p.denomination_minor == d) for d in denominations
        )
        assert chosen == max(solutions)
    elif result is Undispensable.CASH_OUT:
        assert not any(left for _, left in slots)
    else:
        assert solutions == []
        assert (result is Undispensable.NOT_A_MULTIPLE) == (
            not _any_count_makes(denominations, amount_minor)
        )


def _any_count_makes(denominations: list[int], amount_minor: int) -> bool:
    """Whether notes of `denominations`, as many as wanted, make the amount: a search over the
    amounts in steps of 100 (every denomination and amount drawn here is a multiple)."""
    reachable = [True] + [False] * (amount_minor // 100)
    for step in range(1, len(reachable)):
        reachable[step] = any(
            d // 100 <= step and reachable[step - d // 100] for d in denominations
        )
    return amount_minor % 100 == 0 and reachable[-1]


@settings(deadline=None)
@given(
    st.lists(st.sampled_from([2, 5, 10, 20, 50, 100, 300]), min_size=1, max_size=4),
    st.integers(1, 3_000),
)
def test_makeable_agrees_with_a_search(denominations: list[int], amount_minor: int) -> None:
    reachable = [True] + [False] * amount_minor
    for value in range(1, amount_minor + 1):
        reachable[value] = any(d <= value and reachable[value - d] for d in denominations)
    assert makeable(denominations, amount_minor) == reachable[amount_minor]

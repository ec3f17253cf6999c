"""A kiosk's cash, pure: the dispenser's pay-out with jams and rejects, the day counters, the
0500's fields (F97, F124) and reading the host's figures from an 0510."""

from __future__ import annotations

import random
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk_sim import load
from kiosk_sim.__main__ import main
from kiosk_sim.cash import (
    NO_ANSWER,
    Balancing,
    Booking,
    Cassette,
    DayTotals,
    DispenserFaults,
    KioskCash,
    Mishaps,
    MixNotHeld,
    balancing_fields,
    balancing_of,
    draw_mishaps,
    miscounted,
    pay_out,
    pay_out_order,
)
from kiosk_sim.terminal import Exchange
from ledger import cash as ledger_cash
from switch.iso8583 import Message
from switch.iso8583.elements import NoteEntry

CASSETTES = (Cassette(1, 5_000, 10), Cassette(2, 2_000, 20), Cassette(3, 1_000, 30))
# EUR 90.00 as the host mixes it: one 50 and two 20s.
NINETY = [NoteEntry(1, 5_000, 1), NoteEntry(2, 2_000, 2)]


def test_the_notes_come_out_smallest_first() -> None:
    assert pay_out_order(NINETY) == [
        NoteEntry(2, 2_000, 1),
        NoteEntry(2, 2_000, 1),
        NoteEntry(1, 5_000, 1),
    ]


@pytest.mark.parametrize(
    ("mishaps", "dispensed_minor", "counters"),
    [
        # (dispensed, rejected) of slots 1 and 2
        (Mishaps(), 9_000, ((1, 0), (2, 0))),
        (Mishaps(jam_after=0), 0, ((0, 0), (0, 0))),
        (Mishaps(jam_after=1), 2_000, ((0, 0), (1, 0))),
        (Mishaps(jam_after=2), 4_000, ((0, 0), (2, 0))),
        # A rejected note is diverted and another picked: nothing missing from the mix.
        (Mishaps(rejects=frozenset({0})), 9_000, ((1, 0), (2, 1))),
        (Mishaps(jam_after=2, rejects=frozenset({0, 2})), 4_000, ((0, 0), (2, 1))),
        (Mishaps(rejects=frozenset({2})), 9_000, ((1, 1), (2, 0))),
    ],
)
def test_a_pay_out_with_its_jams_and_rejects(
    mishaps: Mishaps, dispensed_minor: int, counters: tuple[tuple[int, int], ...]
) -> None:
    done = pay_out(CASSETTES, NINETY, mishaps)
    assert done.dispensed_minor == dispensed_minor
    assert done.complete == (dispensed_minor == 9_000)
    assert tuple((c.dispensed, c.rejected) for c in done.cassettes[:2]) == counters
    assert done.cassettes[2] == CASSETTES[2]


def test_a_cassette_its_rejects_emptied_stops_the_dispense() -> None:
    one_left = (Cassette(1, 5_000, 1), Cassette(2, 2_000, 2))
    done = pay_out(one_left, [NoteEntry(1, 5_000, 1)], Mishaps(rejects=frozenset({0})))
    assert (done.dispensed_minor, done.cassettes[0].rejected, done.cassettes[0].remaining) == (
        0,
        1,
        0,
    )


@pytest.mark.parametrize(
    "mix",
    [[NoteEntry(4, 5_000, 1)], [NoteEntry(1, 2_000, 1)]],
    ids=["no such cassette", "another denomination"],
)
def test_a_mix_the_kiosk_does_not_hold_pays_nothing(mix: list[NoteEntry]) -> None:
    with pytest.raises(MixNotHeld):
        pay_out(CASSETTES, mix)


def test_mishaps_come_from_the_seed() -> None:
    faults = DispenserFaults(jam_chance=0.5, reject_chance=0.2)
    first = [draw_mishaps(random.Random(5), 6, faults) for _ in range(3)]
    assert first == [draw_mishaps(random.Random(5), 6, faults) for _ in range(3)]
    forced = draw_mishaps(random.Random(5), 3, DispenserFaults(), force_jam=True)
    assert forced.jam_after is not None
    assert 0 <= forced.jam_after < 3
    assert draw_mishaps(random.Random(5), 3, DispenserFaults()) == Mishaps()


mixes = st.lists(
    st.tuples(st.sampled_from([1, 2, 3]), st.integers(1, 12)), min_size=1, max_size=3
).map(lambda parts: _mix(dict(parts)))


def _mix(notes_by_slot: dict[int, int]) -> list[NoteEntry]:
    by_slot = {c.slot: c for c in CASSETTES}
    return [
        NoteEntry(slot, by_slot[slot].denomination_minor, notes)
        for slot, notes in sorted(notes_by_slot.items())
    ]


@given(
    dispenses=st.lists(
        st.tuples(
            mixes,
            st.one_of(st.none(), st.integers(0, 40)),
            st.frozensets(st.integers(0, 40), max_size=3),
        ),
        max_size=12,
    )
)
def test_every_note_loaded_is_dispensed_rejected_or_still_there(
    dispenses: list[tuple[list[NoteEntry], int | None, frozenset[int]]],
) -> None:
    cash = KioskCash(CASSETTES, "978")
    for mix, jam_after, rejects in dispenses:
        before = cash.cassettes
        done = cash.dispense(mix, Mishaps(jam_after, rejects))
        for cassette in cash.cassettes:
            assert cassette.dispensed + cassette.rejected + cassette.remaining == cassette.loaded
        out = sum(
            (a.dispensed - b.dispensed) * a.denomination_minor
            for a, b in zip(cash.cassettes, before, strict=True)
        )
        assert out == done.dispensed_minor <= done.asked_minor


@given(mix=mixes, jam_after=st.integers(1, 40))
def test_the_notes_a_jam_keeps_are_those_the_host_puts_back(
    mix: list[NoteEntry], jam_after: int
) -> None:
    """The host puts back the undispensed part of a partial dispense largest notes first
    (ledger.cash.notes_back): the notes the jam kept in the dispenser."""
    notes = sum(entry.notes for entry in mix)
    done = pay_out(CASSETTES, mix, Mishaps(jam_after=min(jam_after, notes - 1)))
    kept = {
        after.slot: before.remaining - after.remaining
        for before, after in zip(CASSETTES, done.cassettes, strict=True)
    }
    asked = {entry.cassette_no: entry.notes for entry in mix}
    back_by_kiosk = {slot: asked[slot] - kept[slot] for slot in asked if asked[slot] > kept[slot]}
    original = [
        ledger_cash.CassetteNotes(e.cassette_no, e.denomination_minor, e.notes) for e in mix
    ]
    held = [ledger_cash.Cassette(c.slot, "EUR", c.denomination_minor, c.loaded) for c in CASSETTES]
    back = ledger_cash.notes_back(original, held, done.asked_minor - done.dispensed_minor)
    assert back is not None
    assert {part.cassette_no: part.notes for part in back.parts} == back_by_kiosk


@pytest.mark.parametrize(
    ("totals", "net"),
    [
        (DayTotals(), "D0000000000000000"),
        (DayTotals(debits=2, debits_minor=12_345), "D0000000000012345"),
        # The day after: a reversal of the day before's withdrawal, and nothing paid out.
        (DayTotals(debit_reversals=1, debit_reversals_minor=2_000), "C0000000000002000"),
    ],
    ids=["nothing", "cash out", "cash back in"],
)
def test_f97_is_d_for_cash_paid_out_and_c_for_cash_back(totals: DayTotals, net: str) -> None:
    assert balancing_fields("1201", "978", totals, CASSETTES)[97] == net


def test_f124_is_29_digits_per_cassette_in_slot_order() -> None:
    counters = (Cassette(2, 2_000, 400, 12, 1), Cassette(1, 5_000, 200, 3))
    assert balancing_fields("1201", "978", DayTotals(), counters)[124] == (
        "01" "000000005000" "00003" "00000" "00197"
        "02" "000000002000" "00012" "00001" "00387"
    )  # fmt: skip


def test_day_totals_count_each_booking() -> None:
    totals = DayTotals()
    for booking, amount in [
        (Booking.DEBIT, 9_000),
        (Booking.DEBIT, 2_000),
        (Booking.DEBIT_REVERSAL, 4_000),  # a partial: the part given back
        (Booking.INQUIRY, 0),
        (Booking.TRANSFER, 0),
        (Booking.TRANSFER_REVERSAL, 0),
    ]:
        totals = totals.booked(booking, amount)
    assert totals == DayTotals(
        debits=2,
        debit_reversals=1,
        transfers=1,
        transfer_reversals=1,
        inquiries=1,
        debits_minor=11_000,
        debit_reversals_minor=4_000,
    )
    assert totals.net_minor == 7_000


def test_the_0500_carries_the_day_and_the_counters() -> None:
    totals = DayTotals(debits=2, debit_reversals=1, inquiries=3, debits_minor=11_000,
                       debit_reversals_minor=4_000)  # fmt: skip
    counters = (Cassette(1, 5_000, 10, 1), Cassette(2, 2_000, 20, 2, 1))
    assert balancing_fields("1201", "978", totals, counters) == {
        15: "1201",
        50: "978",
        74: "0000000000",
        75: "0000000000",
        76: "0000000002",
        77: "0000000001",
        78: "0000000000",
        79: "0000000000",
        80: "0000000003",
        86: "0000000000000000",
        87: "0000000000000000",
        88: "0000000000011000",
        89: "0000000000004000",
        97: "D0000000000007000",
        124: "0100000000500000001000000000902000000002000000020000100017",
    }


def test_a_kiosk_balances_each_business_date_oldest_first() -> None:
    cash = KioskCash(CASSETTES, "978")
    cash.book("0101", Booking.DEBIT, 5_000)  # after the new year
    cash.book("1231", Booking.INQUIRY)
    cash.book("1231", Booking.DEBIT, 2_000)
    sent = cash.balancing_requests(date(2027, 1, 1))
    assert [fields[15] for fields in sent] == ["1231", "0101"]
    assert [fields[76] for fields in sent] == ["0000000001", "0000000001"]
    assert [fields[80] for fields in sent] == ["0000000001", "0000000000"]
    # The counters are the cassettes' now, in every 0500.
    now = balancing_fields("0101", "978", DayTotals(), CASSETTES)[124]
    assert {fields[124] for fields in sent} == {now}


def test_a_miscounting_kiosk_reports_one_note_wrong() -> None:
    counters = (Cassette(1, 5_000, 10, 4), Cassette(2, 2_000, 20))
    assert miscounted(counters) == (Cassette(1, 5_000, 10, 5), Cassette(2, 2_000, 20))
    empty = (Cassette(1, 5_000, 10, 10),)
    assert miscounted(empty) == (Cassette(1, 5_000, 10, 9),)
    cash = KioskCash(counters, "978")
    cash.book("1201", Booking.DEBIT, 5_000)
    (honest,) = cash.balancing_requests(date(2026, 12, 1))
    (wrong,) = cash.balancing_requests(date(2026, 12, 1), miscount=True)
    assert {n for n in honest if honest[n] != wrong[n]} == {124}


def test_an_imbalance_names_the_fields_and_the_hosts_figures() -> None:
    counters = (Cassette(1, 5_000, 10, 4), Cassette(2, 2_000, 20, 1))
    sent = balancing_fields("1201", "978", DayTotals(debits=3, debits_minor=22_000), counters)
    host = {
        **sent,
        39: "95",
        76: "0000000002",
        88: "0000000000020000",
        97: "D0000000000020000",
        124: balancing_fields(
            "1201", "978", DayTotals(), (Cassette(1, 5_000, 10, 3), *counters[1:])
        )[124],
    }
    result = balancing_of("S0010002", sent, host, "95")
    assert result == Balancing(
        "S0010002",
        "1201",
        "95",
        (
            ("F76 debits", "3", "2"),
            ("F88 debits_minor", "22000", "20000"),
            ("F97 net", "D0000000000022000", "D0000000000020000"),
            ("F124 slot 1 dispensed", "4", "3"),
            ("F124 slot 1 remaining", "6", "7"),
        ),
    )
    assert result.describe() == (
        "S0010002 1201: 95 F76 debits 3 (host 2); F88 debits_minor 22000 (host 20000);"
        " F97 net D0000000000022000 (host D0000000000020000); F124 slot 1 dispensed 4 (host 3);"
        " F124 slot 1 remaining 6 (host 7)"
    )
    balanced = balancing_of("S0010002", sent, {**sent, 39: "00"}, "00")
    assert (balanced.balanced, balanced.differences) == (True, ())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("miscount=0.5", "miscount is 1 (one kiosk miscounts) or 0, got 0.5"),
        ("jammed=0.1", "unknown fault 'jammed'"),
    ],
)
def test_bad_cash_faults_are_named(text: str, error: str) -> None:
    with pytest.raises(load.MixError, match=error.replace("(", r"\(").replace(")", r"\)")):
        load.parse_faults(text)


def test_cash_faults_parse_and_leave_open_loop_allowed() -> None:
    faults = load.parse_faults("jam=0.05,reject=0.01,miscount=1")
    assert (faults["jam"], faults["reject"], faults["miscount"]) == (0.05, 0.01, 1.0)
    assert not load.has_network_faults(faults)
    load.Plan(terminals=1, seed=1, rate_per_s=10, faults=faults)  # no assertion: not network


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--faults", "jam=0.1"], "jam, reject and miscount are faults of kiosks with --cash"),
        (["--cash", "--faults", "drop=0.1"], "--cash kiosks balance their day"),
    ],
)
def test_cash_faults_need_kiosks_with_cash_and_no_lost_answers(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *argv]) == 2
    assert error in capsys.readouterr().err


OK_A, OK_B = Balancing("S1", "1201", "00"), Balancing("S2", "1201", "00")
CAUGHT = Balancing("S2", "1201", "95", (("F76 debits", "3", "2"),))


@pytest.mark.parametrize(
    ("results", "miscounting", "differences"),
    [
        ([OK_A, OK_B], None, []),
        ([OK_A, CAUGHT], "S2", []),
        ([OK_A, OK_B], "S2", ["0500 S2 1201: 00: expected 95"]),
        ([OK_A, CAUGHT], None, ["0500 S2 1201: 95 F76 debits 3 (host 2): expected 00"]),
        (
            [OK_A, Balancing("S2", "1201", NO_ANSWER)],
            None,
            ["0500 S2 1201: no answer: expected 00"],
        ),
        ([OK_A], "S2", ["0500: S2 miscounts but sent no 0500 (it counted nothing)"]),
    ],
    ids=["balanced", "miscount caught", "miscount missed", "imbalance", "unanswered", "silent"],
)
def test_the_end_state_check_of_the_0500s(
    results: list[Balancing], miscounting: str | None, differences: list[str]
) -> None:
    assert load.balancing_differences(results, miscounting) == differences


@pytest.mark.parametrize(
    ("answer", "booked_on"),
    [
        ({15: "0101", 39: "00"}, "0101"),  # sent before the host's cutover, booked after it
        ({15: "1231", 39: "00"}, "1231"),
        ({39: "00"}, "1231"),  # a host that sends no F15: the request's own date
    ],
)
def test_a_request_counts_on_the_business_day_of_its_answer(
    answer: dict[int, str], booked_on: str
) -> None:
    request = Message("0200", {7: "1231235959", 11: "000001", 4: "000000002000"})
    exchange = Exchange(request, Message("0210", {7: "1231235959", 11: "000001", **answer}), None)
    assert exchange.business_date_mmdd == booked_on

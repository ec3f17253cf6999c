"""The 0500's fields as pure functions: F15's year, F97 and F124 both ways, and every refusal
of a malformed or self-contradicting 0500 with its code."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.balancing import Balancing, CassetteCounter, DayFigures, TerminalReport
from switch.balancing import host_fields, parse_balancing
from switch.iso8583 import Message
from switch.iso8583.elements import (
    ElementFormatError,
    business_date_of,
    decode_cassette_counters,
    decode_net_amount,
    encode_cassette_counters,
    encode_net_amount,
)
from switch.iso8583.response_codes import ResponseCode
from switch.transaction import Refusal

TODAY = date(2026, 12, 1)


@pytest.mark.parametrize(
    ("mmdd", "expected"),
    [
        ("1201", date(2026, 12, 1)),
        ("1130", date(2026, 11, 30)),
        ("0101", date(2027, 1, 1)),  # a month ahead is nearer than eleven back
        ("0901", date(2026, 9, 1)),
        ("0601", date(2027, 6, 1)),  # 182 days ahead, 183 back
        ("0229", None),  # no year around today's has it
        ("1332", None),
        ("0230", None),
        ("12a1", None),
    ],
)
def test_the_year_of_f15_is_the_nearest(mmdd: str, expected: date | None) -> None:
    assert business_date_of(mmdd, TODAY) == expected


@pytest.mark.parametrize(
    ("net_minor", "text"),
    [(0, "D0000000000000000"), (7_000, "D0000000000007000"), (-1, "C0000000000000001")],
)
def test_f97_is_a_sign_and_sixteen_digits(net_minor: int, text: str) -> None:
    assert encode_net_amount(net_minor) == text
    assert decode_net_amount(text) == net_minor


@pytest.mark.parametrize("text", ["", "D000", "+0000000000000001", "d0000000000000001"])
def test_a_malformed_f97_is_refused(text: str) -> None:
    with pytest.raises(ElementFormatError, match="field 97"):
        decode_net_amount(text)


COUNTER = st.builds(
    CassetteCounter,
    st.integers(1, 8),
    st.integers(1, 10**12 - 1),
    *(st.integers(0, 99_999) for _ in range(3)),
)


@given(st.lists(COUNTER, max_size=8, unique_by=lambda c: c.cassette_no))
def test_f124_decodes_what_it_encodes(counters: list[CassetteCounter]) -> None:
    ordered = sorted(counters, key=lambda c: c.cassette_no)
    text = encode_cassette_counters(ordered)
    assert len(text) == 29 * len(ordered)
    assert decode_cassette_counters(text) == tuple(ordered)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("01000000005000000010000000019"[:-1], id="short"),
        pytest.param("00000000005000000010000000019", id="slot-zero"),
        pytest.param("01000000000000000010000000019", id="no-denomination"),
        pytest.param("0100000000500000001000000001x", id="not-digits"),
        pytest.param("02000000005000000010000000019" "01000000002000000010000000019",
                     id="out-of-order"),
        pytest.param("01000000005000000010000000019" * 9, id="nine-cassettes"),
    ],
)  # fmt: skip
def test_a_malformed_f124_is_refused(text: str) -> None:
    with pytest.raises(ElementFormatError, match="field 124"):
        decode_cassette_counters(text)


DAY = DayFigures(debits=2, debit_reversals=1, inquiries=1, debits_minor=11_000,
                 debit_reversals_minor=4_000, net_minor=7_000)  # fmt: skip
COUNTERS = (CassetteCounter(1, 5_000, 1, 0, 19), CassetteCounter(2, 2_000, 1, 1, 18))


def request(**changes: str | None) -> Message:
    fields: dict[int, str] = {
        7: "1201235959", 11: "000042", 15: "1201", 41: "KIOSK001", 50: "978",
        **host_fields(Balancing(0, ("any",), DAY, COUNTERS)),
    }  # fmt: skip
    for name, value in changes.items():
        number = int(name.removeprefix("f"))
        if value is None:
            fields.pop(number, None)
        else:
            fields[number] = value
    return Message("0500", fields)


def test_an_0500_is_read_into_the_ledgers_terms() -> None:
    assert parse_balancing(request(), TODAY) == TerminalReport(
        "KIOSK001", "1201235959", "000042", TODAY, "EUR", DAY, COUNTERS
    )
    without_cassettes = parse_balancing(request(f124=None), TODAY)
    assert isinstance(without_cassettes, TerminalReport)
    assert without_cassettes.cassettes == ()


F30, F13 = ResponseCode.FORMAT_ERROR, ResponseCode.INVALID_AMOUNT


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        ({"f88": None}, F30, "missing fields [88]"),
        ({"f15": "1301"}, F30, "field 15"),
        ({"f7": "1301000000"}, F30, "field 7"),
        ({"f76": "-000000001"}, F30, "not counts or amounts"),
        ({"f76": "99999999999"}, F30, "not counts or amounts"),
        ({"f89": "00000000000040.0"}, F30, "not counts or amounts"),
        ({"f97": "X0000000000007000"}, F30, "field 97"),
        ({"f124": "0100000000500000001"}, F30, "field 124"),
        ({"f97": "D0000000000007001"}, F13, "field 97 is not the net"),
        ({"f97": "C0000000000007000"}, F13, "field 97 is not the net"),
        ({"f50": "999"}, F13, "currency 999"),
    ],
)
def test_a_bad_0500_is_refused_with_its_code(
    changes: dict[str, str | None], code: ResponseCode, reason: str
) -> None:
    refused = parse_balancing(request(**changes), TODAY)
    assert isinstance(refused, Refusal)
    assert refused.code is code
    assert reason in refused.reason


def test_an_imbalances_0510_fields_are_the_hosts_figures() -> None:
    fields = host_fields(Balancing(1, ("F88",), DAY, COUNTERS))
    assert fields == {
        74: "0000000000", 75: "0000000000", 76: "0000000002", 77: "0000000001",
        78: "0000000000", 79: "0000000000", 80: "0000000001",
        86: "0000000000000000", 87: "0000000000000000", 88: "0000000000011000",
        89: "0000000000004000", 97: "D0000000000007000",
        124: "01000000005000000010000000019" "02000000002000000010000100018",
    }  # fmt: skip
    assert 124 not in host_fields(Balancing(1, ("F88",), DAY, ()))

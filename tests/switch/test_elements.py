"""Composite fields: exact layouts and their negative cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.iso8583.elements import (
    AVAILABLE_BALANCE,
    LEDGER_BALANCE,
    AdditionalAmount,
    ElementFormatError,
    KeyChangeData,
    OriginalData,
    ReplacementAmounts,
    decode_additional_amounts,
    encode_additional_amounts,
)


def test_field_54_layout() -> None:
    text = encode_additional_amounts(
        [
            AdditionalAmount("20", LEDGER_BALANCE, "978", 123456),
            AdditionalAmount("20", AVAILABLE_BALANCE, "978", -500),
        ]
    )
    assert text == "2001978C000000123456" + "2002978D000000000500"
    assert decode_additional_amounts(text)[1].amount_minor == -500


@given(
    st.lists(
        st.builds(
            AdditionalAmount,
            st.sampled_from(["00", "10", "20", "30"]),
            st.sampled_from([LEDGER_BALANCE, AVAILABLE_BALANCE]),
            st.sampled_from(["978", "840"]),
            st.integers(-(10**12) + 1, 10**12 - 1),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_field_54_round_trip(amounts: list[AdditionalAmount]) -> None:
    assert decode_additional_amounts(encode_additional_amounts(amounts)) == amounts


@pytest.mark.parametrize("text", ["", "2001978C00000012345", "2001978X000000123456", "20019"])
def test_field_54_malformed(text: str) -> None:
    with pytest.raises(ElementFormatError):
        decode_additional_amounts(text)


def test_field_90_layout() -> None:
    original = OriginalData("0200", "000042", "1123101500")
    assert original.encode() == "0200" + "000042" + "1123101500" + "0" * 22
    assert OriginalData.parse(original.encode()) == original


@pytest.mark.parametrize("text", ["0200000042", "0200000042112310150X" + "0" * 22])
def test_field_90_malformed(text: str) -> None:
    with pytest.raises(ElementFormatError):
        OriginalData.parse(text)


def test_field_95_layout() -> None:
    text = ReplacementAmounts(4000).encode()
    assert text == "000000004000" * 2 + "C00000000" * 2
    assert ReplacementAmounts.parse(text).actual_amount_minor == 4000
    with pytest.raises(ElementFormatError):
        ReplacementAmounts.parse("00000000400X" + text[12:])


def test_field_48_key_change_layout() -> None:
    data = KeyChangeData("A" * 32, "08D7B4", "B" * 32, "C0FFEE")
    assert data.encode() == "A" * 32 + "08D7B4" + "B" * 32 + "C0FFEE"
    assert KeyChangeData.parse(data.encode().lower()) == data
    with pytest.raises(ElementFormatError):
        KeyChangeData.parse("A" * 75)

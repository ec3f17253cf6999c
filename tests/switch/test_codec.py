"""Codec: exact bytes per dialect, a negative table, round-trip and fuzz properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.iso8583 import (
    DecodeError,
    Dialect,
    EncodeError,
    Message,
    decode,
    direct,
    encode,
    mac_input,
    prepared_for_mac,
    wire_of,
    with_mac,
)
from switch.iso8583.codec import pyiso8583_decode, pyiso8583_encode, response_tpdu
from switch.iso8583.spec import FIELDS, FieldDef

PRIMARY_0800 = bytes.fromhex("8220000000000000")  # bits 1 (secondary bitmap), 7, 11
SECONDARY_F70 = bytes.fromhex("0400000000000000")  # bit 70
PRIMARY_0200 = bytes.fromhex("3220000000801000")  # bits 3, 4, 7, 11, 41, 52
PIN_BLOCK_HEX = "0123456789ABCDEF"

ECHO = Message("0800", {7: "1123101500", 11: "000001", 70: "301"})
WITHDRAWAL = Message(
    "0200",
    {
        3: "010000",
        4: "000000002000",
        7: "1123101500",
        11: "000042",
        41: "KIOSK001",
        52: PIN_BLOCK_HEX,
    },
)
ECHO_BODY = b"1123101500" + b"000001" + b"301"
WITHDRAWAL_TEXT = b"010000" + b"000000002000" + b"1123101500" + b"000042" + b"KIOSK001"

ENCODE_CASES = [
    pytest.param(ECHO, Dialect(), b"0800" + PRIMARY_0800 + SECONDARY_F70 + ECHO_BODY, id="default"),
    pytest.param(
        ECHO,
        Dialect(bitmap="hex"),
        b"0800" + PRIMARY_0800.hex().upper().encode() + SECONDARY_F70.hex().encode() + ECHO_BODY,
        id="hex-bitmap",
    ),
    pytest.param(
        WITHDRAWAL,
        Dialect(),
        b"0200" + PRIMARY_0200 + WITHDRAWAL_TEXT + bytes.fromhex(PIN_BLOCK_HEX),
        id="raw-pin-block",
    ),
    pytest.param(
        WITHDRAWAL,
        Dialect(bitmap="hex", binary_fields="hex"),
        b"0200" + b"3220000000801000" + WITHDRAWAL_TEXT + PIN_BLOCK_HEX.encode(),
        id="hex-pin-block",
    ),
    pytest.param(
        Message("0800", ECHO.fields, tpdu="6000010002"),
        Dialect(tpdu=True),
        bytes.fromhex("6000010002") + b"0800" + PRIMARY_0800 + SECONDARY_F70 + ECHO_BODY,
        id="tpdu",
    ),
]


@pytest.mark.parametrize(("message", "dialect", "wire"), ENCODE_CASES)
def test_encode_gives_exact_bytes(message: Message, dialect: Dialect, wire: bytes) -> None:
    assert encode(message, dialect) == wire


@pytest.mark.parametrize(("message", "dialect", "wire"), ENCODE_CASES)
def test_decode_gives_the_message_back(message: Message, dialect: Dialect, wire: bytes) -> None:
    decoded = decode(wire, dialect)
    assert decoded.mti == message.mti
    assert dict(decoded.fields) == dict(message.fields)
    assert decoded.tpdu == message.tpdu


def test_hex_binary_fields_decode_to_upper_case() -> None:
    wire = b"0200" + b"3220000000801000" + WITHDRAWAL_TEXT + PIN_BLOCK_HEX.lower().encode()
    decoded = decode(wire, Dialect(bitmap="hex", binary_fields="hex"))
    assert decoded.get(52) == PIN_BLOCK_HEX
    assert decoded.pin_block == bytes.fromhex(PIN_BLOCK_HEX)


GOOD_0200 = b"0200" + PRIMARY_0200 + WITHDRAWAL_TEXT + bytes.fromhex(PIN_BLOCK_HEX)
F2_ONLY = bytes.fromhex("4000000000000000")
ECHOED = {7: "1123101500", 41: "KIOSK001"}

DECODE_ERRORS = [
    # (wire, field, offset, readable MTI, echo fields)
    pytest.param(b"08", "t", 0, None, {}, id="short-mti"),
    pytest.param(b"08A0" + GOOD_0200[4:], "t", 0, None, {}, id="mti-not-digits"),
    pytest.param(b"0800", "p", 4, "0800", {}, id="no-bitmap"),
    pytest.param(
        GOOD_0200.replace(b"000042", b"00004A"),
        "11",
        40,
        "0200",
        ECHOED,
        id="letters-in-numeric-field",
    ),
    pytest.param(GOOD_0200[:-3], "52", 54, "0200", {**ECHOED, 11: "000042"}, id="truncated"),
    pytest.param(GOOD_0200 + b"X", "52", 62, "0200", {**ECHOED, 11: "000042"}, id="trailing-byte"),
    pytest.param(b"0200" + F2_ONLY + b"1X4000", "2", 12, "0200", {}, id="llvar-length-not-digits"),
    pytest.param(b"0200" + F2_ONLY + b"20" + b"1" * 20, "2", 12, "0200", {}, id="llvar-over-max"),
    pytest.param(
        b"0800" + bytes.fromhex("8000000000000000") * 2, "1", 20, "0800", {}, id="bit-65-set"
    ),
]


@pytest.mark.parametrize(("wire", "field", "offset", "mti", "echo"), DECODE_ERRORS)
def test_decode_errors_name_field_and_offset(
    wire: bytes, field: str, offset: int, mti: str | None, echo: dict[int, str]
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(wire, Dialect())
    assert (caught.value.field, caught.value.offset) == (field, offset)
    assert caught.value.mti == mti
    assert dict(caught.value.echo) == echo
    assert f"byte {offset}" in str(caught.value)


def test_decode_error_never_quotes_the_pan() -> None:
    pan = "4761739001010119"
    wire = b"0200" + bytes.fromhex("6000000000000000") + b"16" + pan.encode() + b"01000X"
    with pytest.raises(DecodeError) as caught:
        decode(wire, Dialect())
    assert pan not in str(caught.value)


def test_encode_refuses_a_value_too_long() -> None:
    with pytest.raises(EncodeError, match="field 11"):
        encode(Message("0800", {11: "1234567", 70: "301"}), Dialect())


def test_decode_does_not_mutate_its_input() -> None:
    wire = bytearray(GOOD_0200)
    decode(bytes(wire), Dialect())
    assert wire == GOOD_0200


def test_message_is_frozen_and_copies_the_callers_fields() -> None:
    fields = {11: "000001", 70: "301"}
    message = Message("0800", fields)
    fields[11] = "999999"
    assert message.stan == "000001"
    with pytest.raises(TypeError):
        message.fields[11] = "x"  # type: ignore[index]
    changed = message.replace({11: "000002"}, drop=[70])
    assert (message.stan, message.network_code) == ("000001", "301")
    assert (changed.stan, changed.network_code) == ("000002", None)


def test_message_repr_hides_card_data() -> None:
    message = WITHDRAWAL.replace({2: "4761739001010119", 35: "4761739001010119=2512"})
    text = repr(message)
    assert "476173******0119" in text
    assert "4761739001010119" not in text
    assert PIN_BLOCK_HEX not in text
    assert "=2512" not in text


def test_typed_accessors() -> None:
    assert WITHDRAWAL.amount_minor == 2000
    code = WITHDRAWAL.processing_code
    assert code is not None
    assert (code.transaction_type, code.from_account_type, code.to_account_type) == (
        "01",
        "00",
        "00",
    )
    assert str(code) == "010000"
    assert WITHDRAWAL.terminal_id == "KIOSK001"
    assert Message("0800", {41: "T1      "}).terminal_id == "T1"
    assert WITHDRAWAL.message_class == "020"


def test_response_tpdu_swaps_addresses() -> None:
    assert response_tpdu("6000010002") == "6000020001"
    assert response_tpdu(None) is None


def test_mac_input_covers_mti_to_before_the_mac_with_its_bit_set() -> None:
    with_mac = WITHDRAWAL.replace({64: "1122334455667788"})
    data = mac_input(with_mac, Dialect())
    assert data == encode(with_mac, Dialect())[:-8]
    assert data[4:12] == bytes.fromhex("3220000000801001")  # bit 64 set in the primary bitmap
    assert mac_input(WITHDRAWAL, Dialect()) == data  # the MAC's value never matters


def test_mac_goes_in_f128_when_a_secondary_bitmap_is_needed() -> None:
    message = WITHDRAWAL.replace({90: "0" * 42})
    assert message.mac_field == 128
    data = mac_input(message, Dialect(tpdu=True))
    assert data.startswith(b"0200")  # the TPDU is not covered
    assert data[12:20] == bytes.fromhex("0000004000000001")  # bits 90 and 128
    assert WITHDRAWAL.mac_field == 64


# Properties


def _field_value(definition: FieldDef) -> st.SearchStrategy[str]:
    size = definition.max_len
    if definition.content == "b":
        sizes = st.just(size) if definition.len_type == 0 else st.integers(1, size)
        return sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(
            lambda b: b.hex().upper()
        )
    alphabet = {
        "n": "0123456789",
        "z": "0123456789=D",
        "an": "ABCXYZ0189 ",
        "ans": "ABCxyz019 -/*.",
        "xn": "0123456789",
    }[definition.content]
    min_size = size if definition.len_type == 0 else 0
    text = st.text(alphabet, min_size=min_size, max_size=size)
    if definition.content == "xn":
        return st.tuples(
            st.sampled_from("CD"), st.text(alphabet, min_size=size - 1, max_size=size - 1)
        ).map("".join)
    return text


@st.composite
def messages(draw: st.DrawFn) -> Message:
    numbers = draw(st.sets(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=20))
    fields = {n: draw(_field_value(FIELDS[n])) for n in numbers}
    mti = draw(st.sampled_from(["0800", "0810", "0200", "0210", "0420", "0421", "0430", "0100"]))
    return Message(mti, fields)


DIALECTS = st.builds(
    Dialect,
    bitmap=st.sampled_from(["binary", "hex"]),
    binary_fields=st.sampled_from(["raw", "hex"]),
    tpdu=st.booleans(),
)


@settings(max_examples=300)
@given(message=messages(), dialect=DIALECTS)
def test_round_trip_of_any_valid_message(message: Message, dialect: Dialect) -> None:
    if dialect.tpdu:
        message = Message(message.mti, message.fields, tpdu="6000010002")
    decoded = decode(encode(message, dialect), dialect)
    assert decoded == message


@settings(max_examples=1000)
@given(wire=st.binary(max_size=300), dialect=DIALECTS)
def test_arbitrary_bytes_decode_or_raise_decode_error(wire: bytes, dialect: Dialect) -> None:
    with contextlib.suppress(DecodeError):
        decode(wire, dialect)


def frame_edits(*, max_size: int) -> st.SearchStrategy[list[tuple[int, int, str]]]:
    """Edits `_mutated` applies: (position, byte, s[et] | i[nsert] | d[elete])."""
    return st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 255), st.sampled_from("sid")),
        max_size=max_size,
    )


@settings(max_examples=1000)
@given(
    message=messages(),
    dialect=DIALECTS,
    edits=frame_edits(max_size=4),
)
def test_mutated_frames_decode_or_raise_decode_error(
    message: Message, dialect: Dialect, edits: list[tuple[int, int, str]]
) -> None:
    with contextlib.suppress(DecodeError):
        decode(_mutated(encode(message, dialect), edits), dialect)


@settings(max_examples=200)
@given(message=messages(), dialect=DIALECTS, mac=st.binary(min_size=8, max_size=8))
def test_a_mac_spliced_into_the_bytes_equals_encoding_the_maced_message(
    message: Message, dialect: Dialect, mac: bytes
) -> None:
    if dialect.tpdu:
        message = Message(message.mti, message.fields, tpdu="6000010002")
    prepared = prepared_for_mac(message, dialect)
    sealed = with_mac(prepared, mac, dialect)
    assert sealed.mac == mac
    assert sealed.wire == encode(sealed, dialect)
    assert mac_input(sealed, dialect) == mac_input(message, dialect)
    received = decode(wire_of(sealed, dialect), dialect)
    assert received.wire == sealed.wire
    assert mac_input(received, dialect) == mac_input(prepared, dialect)


def _mutated(wire: bytes, edits: list[tuple[int, int, str]]) -> bytes:
    changed = bytearray(wire)
    for position, value, kind in edits:
        at = position % (len(changed) + 1)
        if kind == "s" and at < len(changed):
            changed[at] = value
        elif kind == "i":
            changed.insert(at, value)
        elif kind == "d" and at < len(changed):
            del changed[at]
    return bytes(changed)


def _reference_decode(wire: bytes, dialect: Dialect) -> Message | DecodeError:
    try:
        return pyiso8583_decode(wire, dialect)
    except DecodeError as exc:
        return exc


@settings(max_examples=1000)
@given(
    message=messages(),
    dialect=DIALECTS,
    edits=frame_edits(max_size=3),
)
def test_the_direct_decode_agrees_with_pyiso8583_or_leaves_it_to_it(
    message: Message, dialect: Dialect, edits: list[tuple[int, int, str]]
) -> None:
    wire = _mutated(pyiso8583_encode(message, dialect), edits)
    direct_message = direct.decode(wire, dialect)
    reference = _reference_decode(wire, dialect)
    if not edits:
        assert direct_message is not None, "a well-formed frame takes the direct path"
    if direct_message is not None:
        assert isinstance(reference, Message)
        assert direct_message == reference
        assert direct_message.wire == reference.wire == wire
        assert list(direct_message.fields) == list(reference.fields)
        assert direct_message.tpdu == reference.tpdu


@settings(max_examples=500)
@given(message=messages(), dialect=DIALECTS, tpdu=st.sampled_from([None, "6000010002", "60000"]))
def test_the_direct_encode_gives_pyiso8583_bytes_or_leaves_it_to_it(
    message: Message, dialect: Dialect, tpdu: str | None
) -> None:
    message = Message(message.mti, message.fields, tpdu=tpdu)
    try:
        reference: bytes | EncodeError = pyiso8583_encode(message, dialect)
    except EncodeError as exc:
        reference = exc
    sent_tpdu = (tpdu or "6000000000") if dialect.tpdu else None
    direct_bytes = direct.encode(message, sent_tpdu, dialect)
    if isinstance(reference, bytes):
        assert direct_bytes == reference
    else:
        assert direct_bytes is None


@pytest.mark.parametrize(
    "fields",
    [
        {2: "4" * 20},  # longer than its maximum
        {3: "01000"},  # short of its fixed length
        {41: "KIOSK\u00e9"},  # not ASCII
        {52: "0123456789ABCDEZ"},  # not hex
        {104: "x" * 1000},  # more than its length prefix can say
    ],
)
def test_the_direct_encode_leaves_a_bad_value_to_pyiso8583(fields: dict[int, str]) -> None:
    message = Message("0200", fields)
    assert direct.encode(message, None, Dialect()) is None
    with pytest.raises(EncodeError):
        encode(message, Dialect())


def test_a_changed_message_drops_its_wire_bytes() -> None:
    received = decode(encode(WITHDRAWAL, Dialect()), Dialect())
    assert received.wire is not None
    assert received.replace({4: "000000000001"}).wire is None

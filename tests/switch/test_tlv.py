"""Field 55's BER-TLV: exact bytes in and out, every refusal naming its tag, and a fuzz whose only
exception is the decoder's own."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.iso8583 import tlv
from switch.iso8583.spec import FIELDS, ICC_DATA_FIELD


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("wire", "objects"),
    [
        ("", {}),
        ("9F02 06 000000004000", {0x9F02: h("000000004000")}),
        ("9F27 01 80  95 05 0000000000", {0x9F27: h("80"), 0x95: h("0000000000")}),
        ("5F2A 02 0978  82 02 3900", {0x5F2A: h("0978"), 0x82: h("3900")}),
        ("9F10 00", {0x9F10: b""}),  # an empty value is a value
        ("9F10 81 80" + "11" * 128, {0x9F10: h("11" * 128)}),  # long form, one length byte
        ("DF01 02 ABCD", {0xDF01: h("ABCD")}),  # private class: kept, not interpreted
        ("DF8101 01 01", {0xDF8101: h("01")}),  # three-byte proprietary tag
        ("9F53 01 52", {0x9F53: h("52")}),  # payment-system range 9F50-9F7F
        ("BF50 03 010101", {0xBF50: h("010101")}),  # constructed, payment-system range
    ],
)
def test_decodes_and_encodes_exactly(wire: str, objects: dict[int, bytes]) -> None:
    assert dict(tlv.decode(h(wire))) == objects
    assert tlv.encode(objects.items()) == h(wire)


@pytest.mark.parametrize(
    ("wire", "reason", "tag", "offset"),
    [
        # truncated
        ("9F", "tag cut off by the field's end", None, 0),
        ("9F02", "length cut off by the field's end", 0x9F02, 2),
        ("9F02 81", "length cut off by the field's end", 0x9F02, 2),
        ("9F02 82 00", "length cut off by the field's end", 0x9F02, 2),
        # a length past the field
        ("9F02 06 0000", "value of 6 bytes runs past the field's end", 0x9F02, 3),
        ("9F27 01 80 95 05 00", "value of 5 bytes runs past the field's end", 0x95, 6),
        # overlong
        ("9F02 81 06 000000004000", "length not in its shortest form", 0x9F02, 2),
        ("9F02 82 0006 000000004000", "length not in its shortest form", 0x9F02, 2),
        ("9F02 83 000006", "length in more than 2 bytes", 0x9F02, 2),
        ("9F02 80 00", "indefinite length", 0x9F02, 2),
        ("DF 81 81 01 00", "tag longer than 3 bytes", None, 0),
        ("9F 80 02 00", "tag number padded with a zero byte", None, 0),
        # duplicates
        ("9F36 02 0001 9F36 02 0002", "tag appears twice", 0x9F36, 5),
        # unknown critical tags: EMV's own space, not known here
        ("9F4F 01 00", "unknown critical tag", 0x9F4F, 0),
        ("5F7F 01 00", "unknown critical tag", 0x5F7F, 0),
        ("01 01 00", "unknown critical tag", 0x01, 0),
        ("00 00", "unknown critical tag", 0x00, 0),  # padding is not accepted either
        ("70 03 9F2701", "unknown critical constructed tag", 0x70, 0),
    ],
)
def test_refuses_malformed_icc_data_naming_the_tag(
    wire: str, reason: str, tag: int | None, offset: int
) -> None:
    with pytest.raises(tlv.TlvError) as refused:
        tlv.decode(h(wire))
    assert (refused.value.reason, refused.value.tag, refused.value.offset) == (reason, tag, offset)
    if tag is not None:
        assert f"tag {tlv.tag_name(tag)}" in str(refused.value)


def test_bounded_by_the_field_and_the_object_count() -> None:
    assert FIELDS[ICC_DATA_FIELD].max_len == tlv.ICC_DATA_BYTES_MAX
    with pytest.raises(tlv.TlvError, match="over 255 bytes"):
        tlv.decode(bytes(256))
    many = tlv.encode((0xDF00 + n, b"") for n in range(1, tlv.OBJECTS_MAX + 2))
    assert len(many) <= tlv.ICC_DATA_BYTES_MAX
    with pytest.raises(tlv.TlvError, match="more than 64 data objects"):
        tlv.decode(many)


def test_every_known_tag_is_a_primitive_outside_the_proprietary_spaces() -> None:
    for tag in tlv.KNOWN_TAGS:
        first = tag.to_bytes((tag.bit_length() + 7) // 8, "big")[0]
        assert not first & 0x20, tlv.tag_name(tag)
        assert not tlv.is_proprietary(tag), tlv.tag_name(tag)


# TLV-shaped input, cheap to draw: tags the decoder knows, proprietary and critical ones, lengths
# in every form (short, long, indefinite, too long) and values, in any order.
_TAGS = [tag.to_bytes((tag.bit_length() + 7) // 8, "big") for tag in tlv.KNOWN_TAGS]
_TOKENS = [
    *_TAGS,
    *(h(tag) for tag in ("DF01", "DF8101", "9F53", "BF50", "70", "00", "9F80", "1F")),
    *(bytes([length]) for length in range(9)),
    *(h(length) for length in ("7F", "80", "81", "82", "83", "8180", "820100", "8106")),
    bytes(6),
    b"\xff" * 4,
]
_tlv_shaped = st.lists(st.sampled_from(_TOKENS), max_size=60).map(b"".join)


@pytest.mark.slow
@pytest.mark.timeout(1_800)  # 10^5 cases: one to three minutes on two busy cores
@settings(
    max_examples=100_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(wire=st.one_of(st.binary(max_size=300), _tlv_shaped))
def test_fuzz_decodes_or_raises_only_its_own_error(wire: bytes) -> None:
    try:
        objects = tlv.decode(wire)
    except tlv.TlvError as refused:
        offset = refused.offset
    else:
        # What decodes encodes back to the very bytes: one encoding per field, no ambiguity.
        assert tlv.encode(objects.items()) == wire
        return
    assert 0 <= offset <= len(wire)

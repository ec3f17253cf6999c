"""Framing: exact headers per kind, any split of the stream, limits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.iso8583 import FrameBuffer, FramingError, LengthHeader, frame

HEADERS = [
    pytest.param("2b", b"\x00\x05", id="2b"),
    pytest.param("4b", b"\x00\x00\x00\x05", id="4b"),
    pytest.param("2a", b"05", id="2a"),
    pytest.param("4a", b"0005", id="4a"),
]


@pytest.mark.parametrize(("kind", "header"), HEADERS)
def test_frame_puts_the_exact_header(kind: str, header: bytes) -> None:
    assert frame(b"hello", LengthHeader.of(kind)) == header + b"hello"  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "header"), HEADERS)
def test_buffer_reads_the_exact_header(kind: str, header: bytes) -> None:
    buffer = FrameBuffer(LengthHeader.of(kind), max_frame_bytes=64)  # type: ignore[arg-type]
    assert buffer.feed(header + b"hello" + header[:1]) == [b"hello"]
    assert buffer.buffered_bytes == 1


@pytest.mark.parametrize(("kind", "too_long"), [("2a", 100), ("4a", 10_000), ("2b", 65_536)])
def test_a_frame_longer_than_the_header_can_say_is_refused(kind: str, too_long: int) -> None:
    with pytest.raises(FramingError):
        frame(b"x" * too_long, LengthHeader.of(kind))  # type: ignore[arg-type]


def test_ascii_header_with_non_digits_is_a_framing_error() -> None:
    buffer = FrameBuffer(LengthHeader.of("4a"), max_frame_bytes=64)
    with pytest.raises(FramingError, match="ASCII digits"):
        buffer.feed(b"00x5hello")


def test_length_above_the_limit_is_refused_before_the_body_arrives() -> None:
    buffer = FrameBuffer(LengthHeader.of("2b"), max_frame_bytes=100)
    with pytest.raises(FramingError, match="above the 100-byte limit"):
        buffer.feed(b"\xff\xff")


def test_zero_length_frames_are_keepalives() -> None:
    buffer = FrameBuffer(LengthHeader.of("2b"), max_frame_bytes=100)
    assert buffer.feed(b"\x00\x00\x00\x02hi\x00\x00") == [b"hi"]
    assert buffer.buffered_bytes == 0


PAYLOADS = st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=12)


@given(payloads=PAYLOADS, kind=st.sampled_from(["2b", "4b", "4a"]))
def test_whole_stream_at_once(payloads: list[bytes], kind: str) -> None:
    header = LengthHeader.of(kind)  # type: ignore[arg-type]
    buffer = FrameBuffer(header, max_frame_bytes=200)
    assert buffer.feed(b"".join(frame(p, header) for p in payloads)) == payloads


@given(payloads=PAYLOADS)
def test_one_byte_at_a_time(payloads: list[bytes]) -> None:
    header = LengthHeader.of("2b")
    buffer = FrameBuffer(header, max_frame_bytes=200)
    stream = b"".join(frame(p, header) for p in payloads)
    received = [f for i in range(len(stream)) for f in buffer.feed(stream[i : i + 1])]
    assert received == payloads
    assert buffer.buffered_bytes == 0


@given(payloads=PAYLOADS, cuts=st.lists(st.integers(0, 3000), max_size=20))
def test_random_splits(payloads: list[bytes], cuts: list[int]) -> None:
    header = LengthHeader.of("2b")
    buffer = FrameBuffer(header, max_frame_bytes=200)
    stream = b"".join(frame(p, header) for p in payloads)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    received: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        received += buffer.feed(stream[start:end])
        assert buffer.buffered_bytes < 2 + 200
    assert received == payloads

"""Length-header framing, sans I/O: feed bytes in any split, take whole frames out.

Header kinds: `2b`/`4b` are 2- or 4-byte big-endian binary lengths, `2a`/`4a` are 2 or 4 ASCII
decimal digits. The length counts the bytes after the header (TPDU included). A zero length is a
keep-alive and yields no frame. A header above the maximum frame size is refused before any of
its body is buffered, so a hostile peer cannot make the buffer grow.
"""

from __future__ import annotations

from dataclasses import dataclass

from switch.iso8583.spec import LENGTH_HEADER_KINDS, LengthHeaderKind


class FramingError(Exception):
    """The peer broke the framing; the connection cannot be resynchronised and must close."""


@dataclass(frozen=True, slots=True)
class LengthHeader:
    width_bytes: int
    ascii_digits: bool

    @classmethod
    def of(cls, kind: LengthHeaderKind) -> LengthHeader:
        assert kind in LENGTH_HEADER_KINDS, kind
        return cls(width_bytes=int(kind[0]), ascii_digits=kind[1] == "a")

    @property
    def max_length(self) -> int:
        base = 10 if self.ascii_digits else 256
        limit: int = base**self.width_bytes - 1
        return limit

    def pack(self, length: int) -> bytes:
        if not 0 <= length <= self.max_length:
            raise FramingError(
                f"a {length}-byte frame does not fit a {self.width_bytes}-byte header"
            )
        if self.ascii_digits:
            return str(length).zfill(self.width_bytes).encode("ascii")
        return length.to_bytes(self.width_bytes, "big")

    def unpack(self, header: bytes) -> int:
        assert len(header) == self.width_bytes
        if not self.ascii_digits:
            return int.from_bytes(header, "big")
        if not (header.isascii() and header.isdigit()):
            raise FramingError(f"length header {header!r} is not {self.width_bytes} ASCII digits")
        return int(header)


def frame(payload: bytes, header: LengthHeader) -> bytes:
    """The payload behind its length header."""
    return header.pack(len(payload)) + payload


class FrameBuffer:
    """Holds at most one partial frame (header + `max_frame_bytes`) between feeds."""

    def __init__(self, header: LengthHeader, max_frame_bytes: int) -> None:
        assert max_frame_bytes > 0
        self._header = header
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame now complete, in order."""
        self._buffer += data
        frames: list[bytes] = []
        width = self._header.width_bytes
        start = 0
        while len(self._buffer) - start >= width:
            length = self._header.unpack(bytes(self._buffer[start : start + width]))
            if length > self._max_frame_bytes:
                limit = self._max_frame_bytes
                raise FramingError(
                    f"length header says {length} bytes, above the {limit}-byte limit"
                )
            end = start + width + length
            if end > len(self._buffer):
                break
            if length:
                frames.append(bytes(self._buffer[start + width : end]))
            start = end
        del self._buffer[:start]
        assert len(self._buffer) < width + self._max_frame_bytes
        return frames

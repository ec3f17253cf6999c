"""Codec throughput: encode + decode of a 0200 withdrawal carrying a PIN block and a MAC."""

from __future__ import annotations

import time

from switch.iso8583 import Dialect, Message, decode, encode

WITHDRAWAL = Message(
    "0200",
    {
        2: "4761739001010119",
        3: "011000",
        4: "000000010000",
        7: "1123101500",
        11: "000042",
        12: "101500",
        13: "1123",
        14: "2812",
        22: "021",
        41: "KIOSK001",
        49: "978",
        52: "0123456789ABCDEF",
        64: "1122334455667788",
    },
)


def run(duration_s: float = 2.0) -> dict[str, float]:
    dialect = Dialect()
    wire = encode(WITHDRAWAL, dialect)
    assert decode(wire, dialect) == WITHDRAWAL
    rounds = 0
    started = time.perf_counter()
    deadline = started + duration_s
    while time.perf_counter() < deadline:
        for _ in range(100):
            decode(encode(WITHDRAWAL, dialect), dialect)
        rounds += 100
    elapsed_s = time.perf_counter() - started
    return {
        "codec_round_trips_per_s": rounds / elapsed_s,
        "codec_round_trip_us": elapsed_s / rounds * 1e6,
        "codec_frame_bytes": float(len(wire)),
    }


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {value:,.1f}")

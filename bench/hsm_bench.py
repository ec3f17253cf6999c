"""HSM throughput: PIN, MAC and ARQC verifications per second, in-process and over the
networked HSM.

The networked figures talk to a `python -m hsm serve` subprocess over loopback (its own process,
as in production), with concurrent callers sharing the client's connection pool.

    python -m bench.hsm_bench [duration_s]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hsm import emv, mac, pinblock
from hsm.api import HSM, VisaPvv, VisaPvvMethod
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devkeys import make_dev_keys
from hsm.devserver import spawn_dev_hsm
from hsm.keys import DEVELOPMENT_LMK, KeyRole, Lmk
from hsm.local import LocalHSM
from hsm.pinblock import PinBlockFormat

REPO = Path(__file__).parents[1]
NETWORK_CONCURRENCY = 16
NETWORK_POOL_SIZE = 8
PAN = "4012345678909"
MAC_DATA = bytes(range(200))  # about the size of a financial request
# ARQCs of Visa CVN 18 (common session key, ARPC method 2), the usual chip card today: each
# verification derives the ICC master key and the session key, MACs, and answers an ARPC. Each
# comes from another card and ATC, as in production: more cards than the transient cipher cache
# holds, so no card's keys are still open when its turn comes round again.
ARQC_CVN = 18
ARQC_CARDS = 256
ARQC_PSN = "01"
ARQC_TAGS = {tag: bytes(length) for tag, length in emv.TAG_LENGTHS.items() if tag != emv.TAG_ATC}
ARQC_TAGS[emv.TAG_IAD] = bytes.fromhex("06011203A0B800")


async def _rate(call: Callable[[], Awaitable[bool]], duration_s: float, workers: int) -> float:
    """Calls per second over ``duration_s``; every call must succeed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    counts = [0] * workers

    async def worker(index: int) -> None:
        while loop.time() < end:
            assert await call(), "a benchmark verification failed"
            counts[index] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    return sum(counts) / (time.perf_counter() - start)


def _chip_cards(imk: bytes) -> list[tuple[str, bytes, bytes]]:
    """(PAN, ATC, ARQC) of ``ARQC_CARDS`` cards, as their chips would compute them."""
    version = emv.cryptogram_version(ARQC_CVN)
    cards = []
    for index in range(ARQC_CARDS):
        pan, atc = f"4012{index:011d}", index.to_bytes(2, "big")
        icc_mk = emv.icc_master_key(imk, pan, ARQC_PSN, version.master_key)
        cards.append((pan, atc, emv.generate_arqc(version, icc_mk, atc, ARQC_TAGS)))
    return cards


async def _figures(hsm: HSM, duration_s: float, workers: int) -> tuple[float, float, float]:
    lmk = Lmk(DEVELOPMENT_LMK)
    keys = make_dev_keys(lmk, b"bench")
    tpk_clear, tak_clear, imk_clear = bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48))
    tpk = lmk.wrap(KeyRole.TPK, Algorithm.TDES, tpk_clear)
    tak = lmk.wrap(KeyRole.TAK, Algorithm.TDES, tak_clear)
    imk = lmk.wrap(KeyRole.IMK_AC, Algorithm.TDES, imk_clear)
    pvv = await hsm.derive_pin_verification_data(keys.pvk, PAN, "1234", VisaPvvMethod("1"))
    verification = VisaPvv(keys.pvk, "1", pvv)
    block = pinblock.encrypt_pin_block(tpk_clear, "1234", PAN, PinBlockFormat.ISO0)
    tag = mac.iso9797_alg3(tak_clear, MAC_DATA)
    cards = itertools.cycle(_chip_cards(imk_clear))

    def verify_pin() -> Awaitable[bool]:
        return hsm.verify_pin(block, PAN, tpk, PinBlockFormat.ISO0, verification)

    def verify_mac() -> Awaitable[bool]:
        return hsm.verify_mac(tak, MAC_DATA, tag)

    response = emv.Csu(bytes(4))

    async def verify_arqc() -> bool:
        pan, atc, arqc = next(cards)
        result = await hsm.verify_arqc(
            imk, pan, ARQC_PSN, atc, arqc, cvn=ARQC_CVN, tags=ARQC_TAGS, response=response
        )
        return result.verified

    return (
        await _rate(verify_pin, duration_s, workers),
        await _rate(verify_mac, duration_s, workers),
        await _rate(verify_arqc, duration_s, workers),
    )


async def run(duration_s: float = 3.0) -> dict[str, float]:
    """Six figures, each measured for ``duration_s / 6``."""
    slice_s = duration_s / 6
    pin_local, mac_local, arqc_local = await _figures(LocalHSM(Lmk(DEVELOPMENT_LMK)), slice_s, 1)
    proc, port = await spawn_dev_hsm()
    try:
        async with NetworkHSM(
            [("127.0.0.1", port)], pool_size=NETWORK_POOL_SIZE, timeout_ms=5000
        ) as client:
            pin_net, mac_net, arqc_net = await _figures(client, slice_s, NETWORK_CONCURRENCY)
    finally:
        proc.kill()
        await proc.wait()
    return {
        "pin_verify_local_per_s": round(pin_local, 1),
        "mac_verify_local_per_s": round(mac_local, 1),
        "arqc_verify_local_per_s": round(arqc_local, 1),
        "pin_verify_network_per_s": round(pin_net, 1),
        "mac_verify_network_per_s": round(mac_net, 1),
        "arqc_verify_network_per_s": round(arqc_net, 1),
    }


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    print(json.dumps(asyncio.run(run(seconds)), indent=2))

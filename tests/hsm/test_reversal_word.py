"""The reversal word: the HSM gives it only for a terminal's 0420/0421 whose MAC it verified
under the terminal's TAK, over what it read from those very bytes; and it MACs no request, so a
switch cannot have it MAC a forged reversal. Locally and over the wire, in every dialect."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import hmac
import subprocess
import sys
from collections.abc import Callable

import pytest

from hsm import authorisation, mac
from hsm import commands as cmd
from hsm.api import HSM
from hsm.authorisation import ReversalAuthorisation
from hsm.crypto import Algorithm
from hsm.engine import SoftHsm
from hsm.errors import MessageTypeError, RequestError
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole
from hsm.reversal import is_initiating, read_reversal
from hsm.wire import Message as WireMessage
from switch.iso8583.codec import mac_input, prepared_for_mac
from switch.iso8583.elements import OriginalData, ReplacementAmounts
from switch.iso8583.message import Message
from switch.iso8583.spec import Dialect

from .support import LMK
from .test_pan_hash import KNOWN_ANSWER, PAN

TAK_CLEAR = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TAK = LMK.wrap(KeyRole.TAK, Algorithm.TDES, TAK_CLEAR)
DIALECTS = [
    Dialect(bitmap=bitmap, binary_fields=binary)
    for bitmap in ("binary", "hex")
    for binary in ("raw", "hex")
]
ORIGINAL = OriginalData("0200", "000041", "1201101500")
REVERSED = ReversalAuthorisation(
    "KIOSK001", "1201101600", "000042", "0420", "1201101500", "000041", "0200", 5_000, 0
)
WORD_KEY = authorisation.authorisation_key(DEVELOPMENT_PAN_HASH_KEY)


def reversal(
    mti: str = "0420", *, amount_minor: int = 5_000, dispensed_minor: int | None = None
) -> Message:
    fields = {
        2: PAN, 3: "010000", 4: f"{amount_minor:012d}", 7: "1201101600", 11: "000042",
        41: "KIOSK001", 49: "978", 90: ORIGINAL.encode(),
    }  # fmt: skip
    if dispensed_minor is not None:
        fields[95] = ReplacementAmounts(dispensed_minor).encode()
    return Message(mti, fields)


def maced(message: Message, dialect: Dialect) -> tuple[bytes, bytes]:
    """The terminal's side: its MAC input, and its MAC under its own clear TAK."""
    data = mac_input(prepared_for_mac(message, dialect), dialect)
    return data, mac.generate_mac(Algorithm.TDES, TAK_CLEAR, data)


def _dispensed(dispensed_minor: int) -> ReversalAuthorisation:
    return dataclasses.replace(REVERSED, dispensed_minor=dispensed_minor)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.bitmap}-{d.binary_fields}")
@pytest.mark.parametrize(
    ("mti", "dispensed_minor"), [("0420", None), ("0421", None), ("0420", 2_000)]
)
async def test_a_verified_reversal_gets_the_word_for_what_its_bytes_say(
    hsm: HSM, dialect: Dialect, mti: str, dispensed_minor: int | None
) -> None:
    """Full and partial (F95), first copy and repeat (an 0421 gets its 0420's word)."""
    data, value = maced(reversal(mti, dispensed_minor=dispensed_minor), dialect)
    expected = REVERSED if dispensed_minor is None else _dispensed(dispensed_minor)
    assert read_reversal(data, dialect) == (expected, PAN)
    word = await hsm.reversal_word(TAK, data, value, dialect=dialect)
    assert word == authorisation.token(WORD_KEY, expected.message(KNOWN_ANSWER))


@pytest.mark.parametrize(
    "forgery",
    ["wrong MAC", "MAC of other bytes", "amount changed after MACing", "another TAK"],
)
async def test_no_word_for_a_reversal_whose_mac_does_not_verify(hsm: HSM, forgery: str) -> None:
    dialect = Dialect()
    data, value = maced(reversal(), dialect)
    tak = TAK
    if forgery == "wrong MAC":
        value = bytes(8)
    elif forgery == "MAC of other bytes":
        _, value = maced(reversal(amount_minor=9_000), dialect)
    elif forgery == "amount changed after MACing":
        data, _ = maced(reversal(amount_minor=9_000), dialect)
    else:
        tak = LMK.wrap(KeyRole.TAK, Algorithm.TDES, bytes(range(16)))
    assert await hsm.reversal_word(tak, data, value, dialect=dialect) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (lambda d: maced(Message("0200", {3: "010000", 11: "000042"}), d)[0], "not an 0200"),
        (lambda d: maced(reversal("0430"), d)[0], "not an 0430"),
        (lambda d: maced(Message("0420", {2: PAN, 11: "000042"}), d)[0], "without fields"),
        (lambda d: maced(reversal(), d)[0][:-3], "not a message in this dialect"),
        (lambda d: b"0420", "without fields"),  # the placeholder reads as an empty bitmap
    ],
)
async def test_bytes_that_are_no_reversal_get_no_word(
    hsm: HSM, data: Callable[[Dialect], bytes], problem: str
) -> None:
    with pytest.raises(MessageTypeError, match=problem):
        await hsm.reversal_word(TAK, data(Dialect()), bytes(8), dialect=Dialect())


async def test_a_reversal_read_in_another_dialect_is_no_reversal(hsm: HSM) -> None:
    data, value = maced(reversal(), Dialect(bitmap="binary"))
    with pytest.raises(MessageTypeError):
        await hsm.reversal_word(TAK, data, value, dialect=Dialect(bitmap="hex"))


@pytest.mark.parametrize("mti", ["0420", "0421", "0200", "0201", "0800", "0500", "0220"])
async def test_no_mac_is_generated_over_a_request(hsm: HSM, mti: str) -> None:
    """The attack: a stolen switch host has the HSM MAC a forged 0420 under the terminal's TAK
    (its certificate may generate MACs, for its answers), then asks for the word. Refused."""
    data, _ = maced(reversal(mti), Dialect())
    with pytest.raises(MessageTypeError, match="no MAC is generated over a request"):
        await hsm.generate_mac(TAK, data)


@pytest.mark.parametrize("mti", ["0430", "0210", "0810", "0510"])
async def test_answers_are_maced_as_before(hsm: HSM, mti: str) -> None:
    data, value = maced(reversal(mti), Dialect())
    assert await hsm.generate_mac(TAK, data) == value


@pytest.mark.parametrize(
    ("data", "initiating"),
    [(b"0420...", True), (b"0421", True), (b"0800", True), (b"0430", False), (b"0210", False),
     (b"042", False), (b"", False), (b"x420", False), (b"data", False)],
)  # fmt: skip
def test_which_bytes_are_requests(data: bytes, initiating: bool) -> None:
    assert is_initiating(data) is initiating


def test_the_reversal_word_is_an_hmac_an_auditor_can_recompute() -> None:
    key = bytes(range(32))
    text = (
        b"kiosk-switch reversal v1\nKIOSK001\n1201101600\n000042\n0420\n"
        + KNOWN_ANSWER.hex().encode()
        + b"\n1201101500\n000041\n0200\n5000\n0"
    )
    assert REVERSED.message(KNOWN_ANSWER) == text
    assert authorisation.token(key, text) == hmac.new(key, text, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("dialect", [("ebcdic", "raw"), ("binary", "bcd"), ("", "")])
def test_a_dialect_the_codec_does_not_know_is_the_clients_error(dialect: tuple[str, str]) -> None:
    fields = (TAK.to_text(), "30343230", "00" * 8, *dialect)
    reply = cmd.execute(SoftHsm(LMK), WireMessage(cmd.REVERSAL_WORD, 1, fields=fields))
    assert (reply.error, reply.fields) == (
        RequestError.code,
        ("a dialect's bitmap is binary or hex, its binary fields raw or hex",),
    )


def test_the_hsm_reads_with_the_switchs_codec_and_nothing_else_of_the_switch() -> None:
    """The HSM server depends on the pure ISO 8583 package only (no asyncio server, no flows)."""
    script = (
        "import sys, hsm.server; print(sorted(m for m in sys.modules if m.startswith('switch')))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = ast.literal_eval(shown)
    assert "switch.iso8583.codec" in loaded
    assert all(m == "switch" or m.startswith("switch.iso8583") for m in loaded), loaded

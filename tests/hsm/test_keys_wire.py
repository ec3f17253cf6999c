"""Key hierarchy (StoredKey, LMK loading, production refusal), the wire format, and the
derive-then-verify property on the engine both backends share."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from hsm import commands, emv, pinblock, wire
from hsm.api import Ibm3624Method, Ibm3624Offset, VisaPvv, VisaPvvMethod
from hsm.commands import execute
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys, make_dev_keys
from hsm.engine import SoftHsm
from hsm.errors import (
    DevelopmentLmkError,
    HsmError,
    KeyBlockError,
    KeyMaterialError,
    KeyUsageError,
    RequestError,
)
from hsm.keys import DEVELOPMENT_LMK, DEVELOPMENT_LMK_HEX, KeyRole, Lmk, StoredKey, load_lmk
from hsm.local import LocalHSM
from hsm.pinblock import PinBlockFormat as F

from .support import LMK

PROD_HEX = "11" * 32


def test_stored_key_text_is_lossless(dev_keys: DevKeys) -> None:
    for key in (dev_keys.tmk, dev_keys.pvk, dev_keys.bdk):
        again = StoredKey.from_text(key.to_text())
        assert again == key
        assert (again.role, again.algorithm, again.kcv) == (key.role, key.algorithm, key.kcv)
    assert dev_keys.tmk.usage == "K0"
    assert dev_keys.pvk.usage == "V0"
    assert dev_keys.bdk.mode == "X"


def test_dev_keys_are_reproducible_from_a_seed() -> None:
    assert make_dev_keys(LMK, b"seed") == make_dev_keys(LMK, b"seed")
    assert make_dev_keys(LMK, b"seed") != make_dev_keys(LMK, b"other")


@pytest.mark.parametrize("text", ["", "not a key block", "B0016P0TE00E0000", "D0016P0TE00E0000"])
def test_stored_key_refuses_foreign_text(text: str) -> None:
    with pytest.raises(KeyBlockError):
        StoredKey.from_text(text)


def test_relabelled_role_is_refused(dev_keys: DevKeys) -> None:
    """Swapping the role block (TMK -> ZMK, same length) breaks the block's MAC."""
    relabelled = StoredKey.from_text(dev_keys.tmk.to_text().replace("1007TMK", "1007ZMK"))
    assert relabelled.role is KeyRole.ZMK
    with pytest.raises(KeyBlockError):
        LMK.unwrap(relabelled, (KeyRole.ZMK,))


def test_wrong_lmk_is_refused(dev_keys: DevKeys) -> None:
    with pytest.raises(KeyBlockError):
        Lmk(bytes.fromhex(PROD_HEX)).unwrap(dev_keys.tmk, (KeyRole.TMK,))


def test_lmk_usage_must_fit_role() -> None:
    with pytest.raises(KeyUsageError):
        LMK.wrap(KeyRole.TPK, Algorithm.TDES, bytes(16), usage="M3")


def test_lmk_repr_hides_the_key() -> None:
    assert DEVELOPMENT_LMK_HEX not in repr(LMK).upper()
    assert "DEVELOPMENT" in repr(LMK)


def test_load_lmk_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HSM_LMK", raising=False)
    assert load_lmk().is_development
    monkeypatch.setenv("HSM_LMK", PROD_HEX)
    assert load_lmk(production=True).key == bytes.fromhex(PROD_HEX)
    path = tmp_path / "lmk.hex"
    path.write_text("# production LMK\n" + "22" * 32 + "\n")
    path.chmod(0o600)
    assert load_lmk(lmk_file=path, production=True).key == bytes.fromhex("22" * 32)


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("file_world_readable", KeyMaterialError),
        ("dev_hex_in_production", DevelopmentLmkError),
        ("nothing_in_production", KeyMaterialError),
        ("short_hex", KeyMaterialError),
        ("not_hex", KeyMaterialError),
    ],
)
def test_load_lmk_refuses(
    setup: str, error: type[Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HSM_LMK", raising=False)
    path = tmp_path / "lmk.hex"
    path.write_text(PROD_HEX)
    path.chmod(0o644)
    calls = {
        "file_world_readable": lambda: load_lmk(lmk_file=path),
        "dev_hex_in_production": lambda: load_lmk(lmk_hex=DEVELOPMENT_LMK_HEX, production=True),
        "nothing_in_production": lambda: load_lmk(production=True),
        "short_hex": lambda: load_lmk(lmk_hex="00" * 16),
        "not_hex": lambda: load_lmk(lmk_hex="zz" * 32),
    }
    with pytest.raises(error) as info:
        calls[setup]()
    assert DEVELOPMENT_LMK_HEX not in str(info.value)
    assert PROD_HEX not in str(info.value)


def test_local_hsm_refuses_development_lmk_in_production() -> None:
    with pytest.raises(DevelopmentLmkError):
        LocalHSM(Lmk(DEVELOPMENT_LMK), production=True)
    LocalHSM(Lmk(bytes.fromhex(PROD_HEX)), production=True)


# --- wire -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "frame_hex"),
    [
        (wire.Message("NO", 1), "0009" + "4E4F" + "00000001" + "3030" + "00"),
        (
            wire.Message("KC", 0xFFFFFFFF, "11", ("é",)),
            "000D" + "4B43" + "FFFFFFFF" + "3131" + "01" + "0002" + "C3A9",
        ),
    ],
)
def test_wire_exact(message: wire.Message, frame_hex: str) -> None:
    frame = wire.encode(message)
    assert frame.hex().upper() == frame_hex
    assert wire.decode(frame[2:]) == message


@pytest.mark.parametrize(
    "payload_hex",
    [
        "",
        "4E4F000000013030",  # no field count
        "4E4F00000001303001",  # one field announced, none present
        "4E4F0000000130300100050041",  # field shorter than its length
        "4E4F000000013030" + "00" + "FF",  # trailing byte
        "4E4F00000001" + "3030" + "01" + "0001" + "FF",  # not UTF-8
        "0000000000013030" + "00",  # command not letters
        "4E4F00000001" + "4141" + "00",  # error code not digits
    ],
)
def test_wire_refuses_malformed(payload_hex: str) -> None:
    with pytest.raises(RequestError):
        wire.decode(bytes.fromhex(payload_hex))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_wire_decode_never_raises_anything_else(payload: bytes) -> None:
    with contextlib.suppress(RequestError):
        wire.decode(payload)


@pytest.mark.parametrize(
    ("request_message", "error"),
    [
        (wire.Message("ZZ", 7), "41"),
        (wire.Message("KC", 7, fields=()), "40"),
        (wire.Message("MG", 7, fields=("garbage", "00")), "12"),
        (wire.Message("PV", 7, fields=("",) * 12), "40"),
        (wire.Message("GK", 7, fields=("TPK", "T", "²")), "40"),  # isdigit, but not int()'s
    ],
)
def test_execute_answers_errors_with_codes(
    soft_hsm: SoftHsm, request_message: wire.Message, error: str
) -> None:
    reply = execute(soft_hsm, request_message)
    assert (reply.command, reply.request_id, reply.error) == (
        request_message.command,
        7,
        error,
    )


# --- the EMV command (AQ) ---------------------------------------------------------------------

_IMK = LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
_EMV_TAGS = {tag: bytes(length) for tag, length in emv.TAG_LENGTHS.items()}
_EMV_TAGS[emv.TAG_IAD] = bytes.fromhex("06011203A0B800")
_TAGS_TEXT = commands.tags_field(emv.cryptogram_version(18), _EMV_TAGS)


def _arqc_request(**change: str) -> wire.Message:
    fields = {
        "imk": _IMK.to_text(),
        "pan": "4761739001010010",
        "psn": "00",
        "atc": "0000",
        "arqc": "00" * 8,
        "cvn": "18",
        "tags": _TAGS_TEXT,
        "method": "2",
        "arc_or_csu": "00000000",
        "proprietary": "",
        **change,
    }
    return wire.Message(commands.VERIFY_ARQC, 7, fields=tuple(fields.values()))


def test_tags_field_carries_only_what_the_cvn_reads() -> None:
    with_pan = {**_EMV_TAGS, 0x5A: bytes.fromhex("4761739001010010")}
    text = commands.tags_field(emv.cryptogram_version(18), with_pan)
    assert text == _TAGS_TEXT
    assert text.startswith("9F02=000000000000,9F03=000000000000,9F1A=0000,95=0000000000,")
    assert text.endswith(",9F10=06011203A0B800")


def test_arqc_command_answers_a_verdict(soft_hsm: SoftHsm) -> None:
    reply = execute(soft_hsm, _arqc_request())
    assert (reply.error, reply.fields) == (wire.OK, ("N", "", ""))
    assert commands.arqc_result_of(reply.fields) == emv.ArqcResult(verified=False)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"tags": _TAGS_TEXT + ",9F02=000000000000"}, "40"),  # a tag twice
        ({"tags": _TAGS_TEXT.replace("9F02", "9f02")}, "40"),  # lower-case tag
        ({"tags": _TAGS_TEXT.replace("9F02", "9F0")}, "40"),  # odd-length tag
        ({"tags": ",".join(["9F02=00"] * 17)}, "40"),  # past the bound
        ({"tags": _TAGS_TEXT.replace("9F1A=0000", "9F1A=00ZZ")}, "40"),  # value not hex
        ({"tags": _TAGS_TEXT.replace("9F02=000000000000,", "")}, "62"),  # amount missing
        ({"cvn": "11"}, "61"),
        ({"cvn": "x"}, "40"),
        ({"method": "3"}, "40"),
        ({"method": "1", "arc_or_csu": "3030", "proprietary": "00"}, "40"),
        ({"method": "1", "arc_or_csu": "3030"}, "62"),  # an ARC for a method 2 CVN
        ({"atc": "00"}, "62"),
        ({"psn": "0"}, "62"),
        ({"pan": "4761739001O10010"}, "23"),
        ({"imk": "garbage"}, "12"),
    ],
)
def test_arqc_command_refusals(soft_hsm: SoftHsm, change: dict[str, str], error: str) -> None:
    reply = execute(soft_hsm, _arqc_request(**change))
    assert reply.error == error
    assert "4761739001" not in reply.fields[0]


@pytest.mark.parametrize("fields", [("Y", "00"), ("N", "00", ""), ("X", "", ""), ()])
def test_arqc_reply_must_be_well_formed(fields: tuple[str, ...]) -> None:
    with pytest.raises(RequestError):
        commands.arqc_result_of(fields)


# --- derive then verify, on the engine both backends share -----------------------------------

_ENGINE = SoftHsm(LMK, rng=os.urandom)
_KEYS = make_dev_keys(LMK, b"property")
_TPK_CLEAR = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
_TPK = LMK.wrap(KeyRole.TPK, Algorithm.TDES, _TPK_CLEAR)
pins = st.text("0123456789", min_size=4, max_size=12)


@settings(max_examples=40, deadline=None)
@given(pin=pins, other=pins, fmt=st.sampled_from([F.ISO0, F.ISO1, F.ISO3]))
def test_offset_set_then_verified_for_that_pin_only(pin: str, other: str, fmt: F) -> None:
    pan = "4012345678909"
    offset = _ENGINE.derive_pin_verification_data(_KEYS.pvk, pan, pin, Ibm3624Method())
    verification = Ibm3624Offset(_KEYS.pvk, offset, pin_length=len(pin))
    block = pinblock.encrypt_pin_block(_TPK_CLEAR, pin, pan, fmt)
    assert _ENGINE.verify_pin(block, pan, _TPK, fmt, verification)
    assume(other != pin)
    other_block = pinblock.encrypt_pin_block(_TPK_CLEAR, other, pan, fmt)
    assert not _ENGINE.verify_pin(other_block, pan, _TPK, fmt, verification)


@settings(max_examples=40, deadline=None)
@given(pin=pins, other=pins)
def test_pvv_set_then_verified_for_that_pin_only(pin: str, other: str) -> None:
    pan = "4012345678909"
    pvv = _ENGINE.derive_pin_verification_data(_KEYS.pvk, pan, pin, VisaPvvMethod("1"))
    verification = VisaPvv(_KEYS.pvk, "1", pvv)
    block = pinblock.encrypt_pin_block(_TPK_CLEAR, pin, pan, F.ISO0)
    assert _ENGINE.verify_pin(block, pan, _TPK, F.ISO0, verification)
    # A PVV covers the first four PIN digits, in four decimal digits: two PINs can share one.
    other_pvv = _ENGINE.derive_pin_verification_data(_KEYS.pvk, pan, other, VisaPvvMethod("1"))
    assume(other[:4] != pin[:4] and other_pvv != pvv)
    other_block = pinblock.encrypt_pin_block(_TPK_CLEAR, other, pan, F.ISO0)
    assert not _ENGINE.verify_pin(other_block, pan, _TPK, F.ISO0, verification)


def test_open_blocks_stay_checked_per_lmk_and_per_text() -> None:
    """The open-block cache never lets a tampered block, or a block under another LMK, through."""
    lmk = Lmk(bytes(range(32)))
    other = Lmk(bytes(range(1, 33)))
    stored = lmk.wrap(KeyRole.TAK, Algorithm.TDES, bytes(range(16)))
    assert (
        lmk.unwrap(stored, (KeyRole.TAK,)) == lmk.unwrap(stored, (KeyRole.TAK,)) == bytes(range(16))
    )
    with pytest.raises(KeyBlockError):
        other.unwrap(stored, (KeyRole.TAK,))
    tampered = stored.text[:-1] + ("0" if stored.text[-1] != "0" else "1")
    with pytest.raises(KeyBlockError):
        lmk.unwrap(StoredKey(tampered), (KeyRole.TAK,))
    with pytest.raises(KeyUsageError):
        lmk.unwrap(stored, (KeyRole.TPK,))


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=0, max_value=9), text=st.text(max_size=80))
@example(index=5, text="²")  # digits to str.isdigit, not to int()
@example(index=1, text="١٢٣٤٥٦٧٨٩٠١٢٣٤")  # Arabic-Indic digits as the PAN
@example(index=2, text="١٢")
def test_arqc_command_answers_or_refuses_never_fails(index: int, text: str) -> None:
    """Any one field of a good request replaced by any text: a verdict or a typed refusal."""
    good = _arqc_request()
    fields = (*good.fields[:index], text, *good.fields[index + 1 :])
    reply = execute(_ENGINE, wire.Message(commands.VERIFY_ARQC, 7, fields=fields))
    assert reply.error != HsmError.code

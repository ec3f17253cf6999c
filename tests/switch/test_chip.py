"""The chip checks without I/O, as tables: how the card was read, the ICC data an authorisation
must carry, the chip's amount and currency, fallback, the ATC, and what the ARPC carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from hsm import emv
from ledger.model import Card, EmvProfile
from ledger.model import Outcome as LedgerOutcome
from switch import chip
from switch.chip import AtcCheck, CardRead, ChipRefusal, IccData
from switch.iso8583 import Message, tlv
from switch.iso8583.response_codes import ResponseCode
from switch.transaction import Transaction, parse_transaction

PAN = "4761739001010010"
TAGS: Mapping[int, bytes] = {
    0x9F26: bytes.fromhex("7A788EA6B8A3E733"),
    0x9F27: bytes([0x80]),
    0x9F10: bytes.fromhex("06011203A0B800"),
    0x9F36: bytes.fromhex("001C"),
    0x9F37: bytes.fromhex("52BF4585"),
    0x95: bytes.fromhex("8000048000"),
    0x9A: bytes.fromhex("261123"),
    0x9C: bytes.fromhex("01"),
    0x9F02: bytes.fromhex("000000002000"),
    0x5F2A: bytes.fromhex("0978"),
    0x82: bytes.fromhex("3900"),
    0x9F1A: bytes.fromhex("0276"),
}
BASE = {
    2: PAN,
    3: "012000",
    4: "000000002000",
    7: "1123101500",
    11: "000042",
    41: "KIOSK001",
    49: "978",
    52: "0123456789ABCDEF",
}


def icc_hex(**changes: bytes | None) -> str:
    """TAGS with `t9F27=...` changed (None: left out), as F55 holds them."""
    changed = {**TAGS, **{int(k.removeprefix("t"), 16): v for k, v in changes.items()}}
    return tlv.encode((t, v) for t, v in changed.items() if v is not None).hex().upper()


def transaction(fields: Mapping[int, str], mti: str = "0200") -> Transaction:
    parsed = parse_transaction(Message(mti, {**BASE, **fields}))
    assert isinstance(parsed, Transaction)
    return parsed


def chip_request(**changes: bytes | None) -> Transaction:
    return transaction({22: "051", 55: icc_hex(**changes)})


def reversal(fields: Mapping[int, str]) -> Transaction:
    original = {90: "0200" + "000041" + "1123101400" + "0" * 22}
    return transaction({**original, **fields}, mti="0420")


@pytest.mark.parametrize(
    ("fields", "chip_read", "service_code"),
    [
        ({}, False, None),  # no F22: a stripe (or keyed) read, as terminals sent before EMV
        ({22: "901"}, False, None),
        ({22: "021", 35: f"{PAN}=29121010000"}, False, "101"),
        ({22: "901", 35: f"{PAN}D2912201"}, False, "201"),  # D is track 2's separator too
        ({22: "051", 55: icc_hex()}, True, None),
        ({22: "071", 55: icc_hex()}, True, None),  # contactless chip
    ],
)
def test_how_the_card_was_read(
    fields: Mapping[int, str], chip_read: bool, service_code: str | None
) -> None:
    read = chip.read_card(transaction(fields))
    assert isinstance(read, CardRead)
    assert (read.chip, read.service_code, read.icc is not None) == (
        chip_read,
        service_code,
        chip_read,
    )


@pytest.mark.parametrize(
    ("fields", "code", "tag"),
    [
        ({22: "051"}, ResponseCode.FORMAT_ERROR, None),  # chip read without F55
        ({22: "901", 55: icc_hex()}, ResponseCode.FORMAT_ERROR, None),  # F55 from a stripe read
        ({55: icc_hex()}, ResponseCode.FORMAT_ERROR, None),  # F55 without an entry mode
        ({22: "051", 55: "9F2608AABB"}, ResponseCode.FORMAT_ERROR, "9F26"),  # past the field
        ({22: "051", 55: "9F0100"}, ResponseCode.FORMAT_ERROR, "9F26"),  # no 9F26
        ({35: "4761739001010010"}, ResponseCode.FORMAT_ERROR, None),  # no separator
        ({35: "4761739001010010=29"}, ResponseCode.FORMAT_ERROR, None),  # no service code
        ({35: "4111111111111111=29121010000"}, ResponseCode.FORMAT_ERROR, None),  # another PAN
    ],
)
def test_refused_reads(fields: Mapping[int, str], code: ResponseCode, tag: str | None) -> None:
    refused = chip.read_card(transaction(fields))
    assert isinstance(refused, ChipRefusal)
    assert (refused.code, refused.tag) == (code, tag)


@pytest.mark.parametrize("tag", chip.REQUIRED_TAGS)
def test_each_required_tag_must_be_there(tag: int) -> None:
    refused = chip.read_card(transaction({22: "051", 55: icc_hex(**{f"t{tag:X}": None})}))
    assert refused == ChipRefusal(
        ResponseCode.FORMAT_ERROR, f"F55 without tag {tlv.tag_name(tag)}", tlv.tag_name(tag)
    )


@pytest.mark.parametrize(
    ("changes", "tag"),
    [
        ({"t9F26": bytes(7)}, "9F26"),
        ({"t9F27": bytes(2)}, "9F27"),
        ({"t9F36": bytes(3)}, "9F36"),
        ({"t9F02": bytes(5)}, "9F02"),
        ({"t9F10": b""}, "9F10"),
        ({"t9F10": bytes(33)}, "9F10"),
        ({"t9F03": bytes(4)}, "9F03"),
    ],
)
def test_tags_the_switch_reads_have_their_sizes(changes: dict[str, bytes], tag: str) -> None:
    refused = chip.read_card(chip_request(**changes))
    assert isinstance(refused, ChipRefusal)
    assert (refused.code, refused.tag) == (ResponseCode.FORMAT_ERROR, tag)


@pytest.mark.parametrize(
    ("cid", "accepted"), [(0x80, True), (0x8A, True), (0x40, False), (0, False)]
)
def test_the_cryptogram_must_be_an_arqc(cid: int, accepted: bool) -> None:
    read = chip.read_card(chip_request(t9F27=bytes([cid])))
    if accepted:
        assert isinstance(read, CardRead)
    else:
        assert read == ChipRefusal(
            ResponseCode.INVALID_TRANSACTION, f"9F27 {cid:02X} is not an ARQC", "9F27"
        )


def test_a_reversal_carries_any_well_formed_icc_data_and_spends_no_atc() -> None:
    aac = icc_hex(t9F27=bytes([0x00]), t9F37=None)
    undo = reversal({22: "051", 55: aac})
    read = chip.read_card(undo)
    assert isinstance(read, CardRead)
    assert read.icc is not None
    assert chip.authorisation_atc(undo, read) is None
    minimal = reversal({22: "051", 55: "9F270100"})  # no 9F36 at all
    minimal_read = chip.read_card(minimal)
    assert isinstance(minimal_read, CardRead)
    assert chip.authorisation_atc(minimal, minimal_read) is None
    authorisation = chip_request()
    authorisation_read = chip.read_card(authorisation)
    assert isinstance(authorisation_read, CardRead)
    assert chip.authorisation_atc(authorisation, authorisation_read) == 0x1C
    assert chip.read_card(reversal({22: "051"})) == CardRead(True)  # no second cryptogram
    malformed = chip.read_card(reversal({22: "051", 55: "9F27"}))
    assert isinstance(malformed, ChipRefusal)


TRACK_2_EQUIVALENT = f"{PAN}D2912201" + "00000F"  # expiry 2912, service code 201


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({}, None),  # neither sent: nothing to compare
        ({"t5A": bytes.fromhex(PAN)}, None),
        ({"t5A": bytes.fromhex(PAN + "FFFF")}, None),  # cn: padded with F
        ({"t5A": bytes.fromhex("4111111111111111")}, ("5A", "tag 5A's card number is not F2's")),
        ({"t5A": bytes.fromhex(PAN[:14])}, ("5A", "tag 5A's card number is not F2's")),
        ({"t5A": bytes.fromhex(PAN[:-1] + "F")}, ("5A", "tag 5A's card number is not F2's")),
        ({"t5A": bytes.fromhex("47617390010A0010")}, ("5A", "tag 5A holds no card number")),
        ({"t5A": b""}, ("5A", "tag 5A holds no card number")),
        ({"t57": bytes.fromhex(TRACK_2_EQUIVALENT)}, None),
        ({"t57": bytes.fromhex(f"{PAN}D2912201")}, None),  # no discretionary data, no F
        (
            {"t57": bytes.fromhex("4111111111111111D2912201" + "00000F")},
            ("57", "tag 57's card number is not F2's"),
        ),
        ({"t57": bytes.fromhex(PAN + "2912201F")}, ("57", "tag 57 holds no card number")),
        ({"t57": bytes.fromhex(f"{PAN}D291220F")}, ("57", "tag 57 holds no card number")),
        ({"t57": bytes.fromhex(f"{PAN}DD912201")}, ("57", "tag 57 holds no card number")),
        (  # both sent: each must agree
            {"t5A": bytes.fromhex(PAN), "t57": bytes.fromhex("4111111111111111D2912201")},
            ("57", "tag 57's card number is not F2's"),
        ),
        ({"t5F34": bytes.fromhex("01")}, None),
        ({"t5F34": bytes.fromhex("0A")}, ("5F34", "tag 5F34 is not one BCD byte")),
        ({"t5F34": bytes.fromhex("0001")}, ("5F34", "tag 5F34 is not one BCD byte")),
    ],
)
def test_the_chips_card_number_is_the_requests(
    changes: dict[str, bytes], refused: tuple[str, str] | None
) -> None:
    read = chip.read_card(chip_request(**changes))
    if refused is None:
        assert isinstance(read, CardRead)
        return
    tag, reason = refused
    assert read == ChipRefusal(ResponseCode.FORMAT_ERROR, reason, tag)
    assert PAN not in repr(read)
    assert "4111111111111111" not in repr(read)


def test_a_reversal_is_not_refused_for_the_chips_card_number() -> None:
    other = icc_hex(t9F27=bytes([0x00]), t5A=bytes.fromhex("4111111111111111"))
    assert isinstance(chip.read_card(reversal({22: "051", 55: other})), CardRead)


@pytest.mark.parametrize(
    ("psn", "mismatch"), [(None, False), ("01", False), ("00", True), ("02", True)]
)
def test_the_chips_pan_sequence_number_is_the_profiles(psn: str | None, mismatch: bool) -> None:
    tags = {**TAGS} if psn is None else {**TAGS, 0x5F34: bytes.fromhex(psn)}
    assert chip.psn_mismatch(IccData(tags), PROFILE) is mismatch


@pytest.mark.parametrize(
    ("fields", "changes", "mismatch"),
    [
        ({}, {}, None),
        ({4: "000000002001"}, {}, "9F02 is not F4"),
        ({}, {"t9F02": bytes.fromhex("00000000200A")}, "9F02 is not F4"),  # not BCD
        ({49: "840"}, {}, "5F2A is not F49"),
        ({3: "311000", 4: "000000000000"}, {"t9F02": bytes(6)}, None),
    ],
)
def test_the_chip_amount_and_currency_are_the_requests(
    fields: Mapping[int, str], changes: dict[str, bytes], mismatch: str | None
) -> None:
    icc = IccData(tlv.decode(bytes.fromhex(icc_hex(**changes))))
    assert chip.icc_mismatch(transaction(fields), icc) == mismatch


def card(profile: EmvProfile | None, last_atc: int | None = None) -> Card:
    return Card(
        card_id=1, customer_id=1, pan_masked="476173******0010", expiry_yymm="2912",
        status="active", pin_data={}, pin_tries=0, currency="EUR", max_per_txn_minor=1,
        daily_amount_minor=1, daily_count=1, usage_day=date(2026, 11, 23),
        usage_amount_minor=0, usage_count=0, xmin=1, emv=profile, last_atc=last_atc,
    )  # fmt: skip


PROFILE = EmvProfile("D0144E0T...", "01", "visa", None, fallback_allowed=False)
FALLBACK = replace(PROFILE, fallback_allowed=True)
STRIPE, STRIPE_201, STRIPE_601 = CardRead(False), CardRead(False, "201"), CardRead(False, "601")
CHIP = CardRead(True, None, IccData(TAGS))
NOT_PERMITTED = (LedgerOutcome.NOT_PERMITTED_TO_CARDHOLDER, "chip card read without its chip")


@pytest.mark.parametrize(
    ("read", "profile", "refused"),
    [
        (CHIP, PROFILE, None),
        (CHIP, None, (LedgerOutcome.DO_NOT_HONOUR, "chip data for a card with no EMV profile")),
        (STRIPE, None, None),  # a magnetic stripe card
        (CardRead(False, "101"), None, None),
        (STRIPE, PROFILE, NOT_PERMITTED),  # the issuer knows it is a chip card
        (STRIPE_201, None, NOT_PERMITTED),  # the card says it is one
        (STRIPE_601, None, NOT_PERMITTED),
        (STRIPE_201, PROFILE, NOT_PERMITTED),
        (STRIPE, FALLBACK, None),
        (STRIPE_201, FALLBACK, None),
    ],
)
def test_chip_and_fallback_rules(
    read: CardRead, profile: EmvProfile | None, refused: tuple[LedgerOutcome, str] | None
) -> None:
    assert chip.fallback_refusal(read, card(profile)) == refused


def test_an_unknown_card_is_left_to_the_ledger() -> None:
    assert chip.fallback_refusal(CHIP, None) is None
    assert chip.fallback_refusal(STRIPE_201, None) is None


@pytest.mark.parametrize(
    ("atc", "last", "verdict"),
    [
        (1, None, AtcCheck.FRESH),  # the card's first
        (500, None, AtcCheck.FRESH),
        (29, 28, AtcCheck.FRESH),
        (127, 28, AtcCheck.FRESH),
        (128, 28, AtcCheck.JUMP),  # 100 above: logged, not declined
        (28, 28, AtcCheck.REPLAY),
        (3, 28, AtcCheck.REPLAY),
    ],
)
def test_atc(atc: int, last: int | None, verdict: AtcCheck) -> None:
    assert chip.check_atc(atc, last, jump_logged=100) is verdict


@pytest.mark.parametrize(
    ("cvn", "code", "response"),
    [
        (10, ResponseCode.APPROVED, emv.Arc(b"00")),
        (16, ResponseCode.INSUFFICIENT_FUNDS, emv.Arc(b"51")),
        (20, ResponseCode.INCORRECT_PIN, emv.Arc(b"55")),
        (18, ResponseCode.APPROVED, emv.Csu(bytes.fromhex("00800000"))),
        (22, ResponseCode.EXCEEDS_AMOUNT_LIMIT, emv.Csu(bytes(4))),
    ],
)
def test_what_the_arpc_carries(cvn: int, code: ResponseCode, response: emv.ArpcResponse) -> None:
    assert chip.arpc_response(emv.cryptogram_version(cvn), code) == response


@pytest.mark.parametrize(
    ("kind", "atc", "last_atc", "carries"),
    [
        ("withdrawal", 28, 28, True),  # approved or declined by the ledger: the ARQC verified
        ("inquiry", 28, 28, True),
        ("transfer", 28, 28, True),
        ("pin", 28, 28, True),  # a wrong PIN, after the ARQC verified
        ("decline", 28, 28, False),  # declined before (a replay, a forged ARQC, a wrong amount)
        ("withdrawal", 27, 28, False),  # not the ATC the request spent: not a retransmission
        ("withdrawal", 29, 28, False),
        ("withdrawal", 28, None, False),
        ("withdrawal", None, 28, False),  # no chip data, or a reversal's
        ("reversal", 28, 28, False),
    ],
)
def test_which_repeats_carry_tag_91_again(
    kind: str, atc: int | None, last_atc: int | None, carries: bool
) -> None:
    assert chip.repeat_carries_arpc(kind, atc, last_atc) is carries


def test_the_answer_carries_tag_91_only() -> None:
    data = bytes.fromhex("9AF514C100800000")
    assert chip.issuer_authentication_field(data) == "91089AF514C100800000"


def test_icc_data_never_shows_its_values() -> None:
    assert repr(IccData(TAGS)) == "IccData(12 tags)"
    assert "7A788E" not in repr(chip.read_card(chip_request()))


def test_cryptogram_tags_default_the_amount_other_to_zero() -> None:
    tags = IccData(TAGS).cryptogram_tags()
    assert tags[0x9F03] == bytes(6)
    assert set(tags) == {*emv.TAG_LENGTHS, emv.TAG_IAD}


def test_the_worked_example_of_field_55_holds() -> None:
    """The F55 example of the terminal integration page, byte for byte, verifies and answers
    the tag 91 it shows."""
    page = (Path(__file__).parents[2] / "docs" / "terminal-integration.md").read_text()
    block = page.split("0200's F55, 88 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    objects = [line.split()[:3] for line in block.splitlines()]
    icc_data = tlv.encode((int(tag, 16), bytes.fromhex(value)) for tag, _, value in objects)
    assert len(icc_data) == 88
    assert all(int(length, 16) == len(bytes.fromhex(value)) for _, length, value in objects)
    icc = IccData(tlv.decode(icc_data))
    version = emv.select_cryptogram_version(emv.Scheme.VISA, icc.iad)
    imk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    for code, shown in (
        (ResponseCode.APPROVED, "91 0A 28993816AFAE4AEB 3030"),
        (ResponseCode.INSUFFICIENT_FUNDS, "91 0A EB606748C7CCF577 3531"),
    ):
        result = emv.verify_arqc(
            imk, "1234567890123456", "00", icc.atc_bytes, icc.arqc, version=version,
            tags=icc.cryptogram_tags(), response=chip.arpc_response(version, code),
        )  # fmt: skip
        assert result.issuer_authentication_data is not None
        assert chip.issuer_authentication_field(result.issuer_authentication_data) == (
            shown.replace(" ", "")
        )
        assert shown in page

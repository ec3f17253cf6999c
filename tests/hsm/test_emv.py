"""EMV chip cryptograms (hsm.emv): every vector in tests/vectors/emv.json, option B and CVN 22
known answers from other public sources, the cryptogram version table, negative cases, and the
generate-then-verify property for every CVN."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import crypto, emv
from hsm.api import HSM
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devserver import spawn_dev_hsm
from hsm.emv import Arc, ArpcResponse, CryptogramVersion, Csu, EmvTags, IadPart, Scheme
from hsm.errors import (
    EmvDataError,
    HsmError,
    KeyBlockError,
    KeyLengthError,
    KeyUsageError,
    PanError,
    UnknownCvnError,
)
from hsm.keys import KeyRole, StoredKey

from .support import LMK

VECTORS_PATH = Path(__file__).parents[1] / "vectors" / "emv.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
GENERIC: dict[str, str] = VECTORS["generic"]
CVN: dict[str, Any] = VECTORS["cvn"]
VISA: dict[str, Any] = CVN["visa"]
MASTERCARD: dict[str, Any] = CVN["mastercard"]
h = bytes.fromhex


def _hex(data: bytes) -> str:
    return data.hex().upper()


def kcv(key: bytes) -> str:
    """The vectors' KCVs are 2 bytes."""
    return _hex(crypto.kcv_tdes(key, 2))


def tags_of(table: dict[str, str]) -> dict[int, bytes]:
    return {int(tag, 16): h(value) for tag, value in table.items()}


def visa_tags(iad: bytes) -> dict[int, bytes]:
    return {**tags_of(VISA["tags"]), emv.TAG_IAD: iad}


def mastercard_iad(cvn: int) -> bytes:
    """An M/Chip IAD around the vectors' CVR: DKI 01, the CVN byte, CVR, DAC 0000, counters."""
    iad_value = emv.cryptogram_version(cvn).iad_value
    return bytes([0x01, iad_value]) + h(MASTERCARD["cvr"]) + bytes(2) + bytes(8)


def mastercard_tags(cvn: int) -> dict[int, bytes]:
    return {**tags_of(MASTERCARD["tags"]), emv.TAG_IAD: mastercard_iad(cvn)}


# The Visa CVN 10 vector gives the CVR alone; its IAD (format 0/1) is length 06, DKI 01, CVN 0A.
VISA_CVN10_IAD = h("06010A" + VISA["cvn10"]["cvr"])
IMK = h(CVN["imk_ac"])
ATC = h(CVN["atc"])


# --- every vector in emv.json ----------------------------------------------------------------


def _generic_keys() -> tuple[bytes, bytes]:
    icc_mk = emv.icc_master_key_option_a(h(GENERIC["imk"]), GENERIC["pan"], GENERIC["psn"])
    return icc_mk, emv.common_session_key(icc_mk, h(GENERIC["session_key_r"]))


def _generic_arqc(padding: int) -> bytes:
    return emv.application_cryptogram(_generic_keys()[1], h(GENERIC["data"]), padding)


def _icc_mk() -> bytes:
    return emv.icc_master_key_option_a(IMK, CVN["pan"], CVN["psn"])


def _verify(
    cvn: int, tags: EmvTags, arqc: bytes, response: ArpcResponse, imk: bytes = IMK
) -> emv.ArqcResult:
    version = emv.cryptogram_version(cvn)
    return emv.verify_arqc(
        imk, CVN["pan"], CVN["psn"], ATC, arqc, version=version, tags=tags, response=response
    )


def _cvn_tags(cvn: int) -> dict[int, bytes]:
    if cvn == 10:
        return visa_tags(VISA_CVN10_IAD)
    if cvn == 18:
        return visa_tags(h(VISA["cvn18"]["iad"]))
    return mastercard_tags(cvn)


def _cvn_vector(cvn: int) -> dict[str, str]:
    vector: dict[str, str] = (VISA if cvn in (10, 18) else MASTERCARD)[f"cvn{cvn}"]
    return vector


def _response(cvn: int) -> ArpcResponse:
    vector = _cvn_vector(cvn)
    return Csu(h(vector["csu"])) if "csu" in vector else Arc(h(vector["arc"]))


def _cvn_arqc(cvn: int) -> str:
    version = emv.cryptogram_version(cvn)
    return _hex(emv.generate_arqc(version, _icc_mk(), ATC, _cvn_tags(cvn)))


def _cvn_arpc(cvn: int) -> str:
    """The ARPC answered for the card's own ARQC (the vector's), which must verify."""
    arqc = h(_cvn_vector(cvn)["arqc"])
    result = _verify(cvn, _cvn_tags(cvn), arqc, _response(cvn))
    assert result.verified
    assert result.arpc is not None
    return _hex(result.arpc)


def _cvn_session_key_kcv(cvn: int) -> str:
    version = emv.cryptogram_version(cvn)
    return kcv(emv.card_keys(version, _icc_mk(), ATC, _cvn_tags(cvn)).application_cryptogram)


_ZERO_ARC, _ZERO_CSU = bytes(2), bytes(4)

# Each computed value of emv.json, by its path; the inputs are the other leaves.
KNOWN_ANSWERS: dict[str, Callable[[], str]] = {
    "generic.imk_kcv": lambda: kcv(h(GENERIC["imk"])),
    "generic.icc_mk_option_a_kcv": lambda: kcv(_generic_keys()[0]),
    "generic.common_session_key_kcv": lambda: kcv(_generic_keys()[1]),
    "generic.arqc_padding_1": lambda: _hex(_generic_arqc(1)),
    "generic.arqc_padding_2": lambda: _hex(_generic_arqc(2)),
    "generic.arpc_method_1_icc_mk_arc_0000": lambda: _hex(
        emv.arpc_method_1(_generic_keys()[0], _generic_arqc(2), _ZERO_ARC)
    ),
    "generic.arpc_method_1_icc_mk_arc_0000_for_padding_1_arqc": lambda: _hex(
        emv.arpc_method_1(_generic_keys()[0], _generic_arqc(1), _ZERO_ARC)
    ),
    "generic.arpc_method_2_session_key_csu_00000000": lambda: _hex(
        emv.arpc_method_2(_generic_keys()[1], _generic_arqc(2), _ZERO_CSU)
    ),
    "generic.arpc_method_2_session_key_csu_00000000_pad_1234567890ABCDEF": lambda: _hex(
        emv.arpc_method_2(_generic_keys()[1], _generic_arqc(2), _ZERO_CSU, h("1234567890ABCDEF"))
    ),
    "cvn.icc_mk_option_a_kcv": lambda: kcv(_icc_mk()),
    "cvn.visa.cvn10.arqc": lambda: _cvn_arqc(10),
    "cvn.visa.cvn10.arpc_method_1_icc_mk": lambda: _cvn_arpc(10),
    "cvn.visa.cvn18.session_key_kcv": lambda: _cvn_session_key_kcv(18),
    "cvn.visa.cvn18.arqc": lambda: _cvn_arqc(18),
    "cvn.visa.cvn18.arpc_method_2": lambda: _cvn_arpc(18),
    "cvn.mastercard.cvn16.session_key_kcv": lambda: _cvn_session_key_kcv(16),
    "cvn.mastercard.cvn16.arqc": lambda: _cvn_arqc(16),
    "cvn.mastercard.cvn16.arpc_method_1_icc_mk": lambda: _cvn_arpc(16),
    "cvn.mastercard.cvn20.arqc": lambda: _cvn_arqc(20),
    "cvn.mastercard.cvn20.arpc_method_1_session_key": lambda: _cvn_arpc(20),
}
INPUTS = {
    *(f"generic.{name}" for name in ("imk", "pan", "psn", "session_key_r", "data")),
    *(f"cvn.{name}" for name in ("imk_ac", "pan", "psn", "atc")),
    *(f"cvn.visa.tags.{tag}" for tag in VISA["tags"]),
    *(f"cvn.mastercard.tags.{tag}" for tag in MASTERCARD["tags"]),
    "cvn.visa.cvn10.cvr",
    "cvn.visa.cvn10.arc",
    "cvn.visa.cvn18.iad",
    "cvn.visa.cvn18.csu",
    "cvn.mastercard.cvr",
    "cvn.mastercard.cvn16.arc",
    "cvn.mastercard.cvn20.arc",
}


def _leaves(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in node.items():
        if key in ("_about", "source", "how"):
            continue
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def test_every_vector_has_a_known_answer_test() -> None:
    """A value added to emv.json without a computation here fails this test."""
    assert {path for path, _ in _leaves(VECTORS)} == INPUTS | set(KNOWN_ANSWERS)


@pytest.mark.parametrize(("path", "expected"), [p for p in _leaves(VECTORS) if p[0] not in INPUTS])
def test_known_answer(path: str, expected: str) -> None:
    assert KNOWN_ANSWERS[path]() == expected


def test_derived_keys_have_odd_parity() -> None:
    icc_mk, session_key = _generic_keys()
    assert icc_mk == crypto.with_odd_parity(icc_mk)
    assert session_key == crypto.with_odd_parity(session_key)


def test_odd_parity_changes_only_the_low_bit() -> None:
    every_byte = bytes(range(256))
    for before, after in zip(every_byte, crypto.with_odd_parity(every_byte), strict=True):
        assert after.bit_count() % 2 == 1
        assert before ^ after in (0, 1)


def test_card_keys_stay_out_of_the_main_cipher_cache() -> None:
    """Card and session keys serve one transaction: they must not push the terminals' working
    keys out of the main cipher cache (they have a small one of their own)."""
    version = emv.cryptogram_version(18)

    def verify(atc: int) -> None:
        tags, arqc = _cvn_tags(18), h(VISA["cvn18"]["arqc"])
        atc_bytes = atc.to_bytes(2, "big")
        emv.verify_arqc(
            IMK, CVN["pan"], CVN["psn"], atc_bytes, arqc, version=version, tags=tags, response=_CSU
        )

    def main_cache_misses() -> tuple[int, int, int]:
        return (
            crypto._tdes_ecb.cache_info().misses,
            crypto._tdes_cbc.cache_info().misses,
            crypto._tdes_cbc_chain.cache_info().misses,
        )

    verify(0)  # the IMK's own cipher: it is used again for every card of the issuer
    before = main_cache_misses()
    for atc in range(1, 100):
        verify(atc)
    assert main_cache_misses() == before


def test_option_b_is_option_a_for_the_vectors_16_digit_pan() -> None:
    """The table's CVNs that name option B derive the vectors' option A key."""
    assert emv.icc_master_key_option_b(IMK, CVN["pan"], CVN["psn"]) == _icc_mk()


@pytest.mark.parametrize("cvn", [10, 18, 16, 20])
def test_issuer_authentication_data(cvn: int) -> None:
    """Tag 91: ARPC || ARC (method 1), ARPC || CSU || proprietary data (method 2)."""
    result = _verify(cvn, _cvn_tags(cvn), h(_cvn_vector(cvn)["arqc"]), _response(cvn))
    response = _response(cvn)
    tail = response.code if isinstance(response, Arc) else response.csu + response.proprietary
    assert result.arpc is not None
    assert result.issuer_authentication_data == result.arpc + tail


def test_cvn_selected_from_the_vectors_iads() -> None:
    assert emv.select_cryptogram_version(Scheme.VISA, VISA_CVN10_IAD).cvn == 10
    assert emv.select_cryptogram_version(Scheme.VISA, h(VISA["cvn18"]["iad"])).cvn == 18
    for cvn in (16, 20):
        assert emv.select_cryptogram_version(Scheme.MASTERCARD, mastercard_iad(cvn)).cvn == cvn


def test_mastercard_cvn16_answers_under_the_icc_master_key() -> None:
    version = emv.cryptogram_version(16)
    assert emv.card_keys(version, _icc_mk(), ATC, mastercard_tags(16)).arpc == _icc_mk()


# --- other public known answers --------------------------------------------------------------

# Option B, from the pyemv project's tests (MIT), tests/test_kd_hsm.py: IMK
# 0123456789ABCDEFFEDCBA9876543210, 2-byte KCVs of the ICC master key. The last row is the one
# whose SHA-1 digest has too few decimal digits, so hex letters fill in (A..F as 0..5).
OPTION_B = [
    ("12345678901234567", "45", "0BAF"),
    ("12345678901234567", "00", "4626"),
    ("123456789012345679", "00", "C2F3"),
    ("1234567890123456", "00", "BAB0"),  # 16 digits: option A
    ("000000000000000005", "23", "DD73"),
]
PYEMV_IMK = h("0123456789ABCDEFFEDCBA9876543210")


@pytest.mark.parametrize(("pan", "psn", "icc_mk_kcv"), OPTION_B)
def test_option_b_known_answers(pan: str, psn: str, icc_mk_kcv: str) -> None:
    assert kcv(emv.icc_master_key_option_b(PYEMV_IMK, pan, psn)) == icc_mk_kcv


def test_option_b_decimalised_digest_full_chain() -> None:
    """pyemv test_derive_icc_mk_b_sha_pad: session key, ARQC and an ARPC method 2 with
    proprietary data under a key from the letters-as-digits branch."""
    icc_mk = emv.icc_master_key_option_b(PYEMV_IMK, "000000000000000005", "23")
    session_key = emv.common_session_key(icc_mk, h("001C000000000000"))
    assert kcv(session_key) == "04F8"
    data = h("0000000040000000000000000124800004800001241911050152BF45851800001C06011203A0B800")
    arqc = emv.application_cryptogram(session_key, data, 2)
    assert _hex(arqc) == "8CAD6F2489C640B1"
    assert _hex(emv.arpc_method_2(session_key, arqc, bytes(4), h("12345678"))) == "E39F1876"


def test_option_a_keeps_the_16_rightmost_digits() -> None:
    """pyemv test_derive_icc_mk_a_psn: a 17-digit PAN under option A."""
    assert kcv(emv.icc_master_key_option_a(PYEMV_IMK, "12345678901234567", "45")) == "FF08"


def test_visa_cvn22_aws_payment_cryptography_example() -> None:
    """The ARQC in the AWS Payment Cryptography user guide ("Verify an EMV ARQC and generate
    an ARPC"): IMK KCV 08D7B4 (the vectors' IMK), PAN 9137631040001422, PSN 01, ATC 000B, a
    format 2 IAD printed as 31 bytes. The guide shows the data already padded (method 2, 80 00
    ..); here it goes in unpadded. The guide's ARPC (2263AC85 for CSU 12345678) is left out:
    method 2 as the vectors above pin it down gives D94886EF for these inputs."""
    tags = tags_of(
        {
            "9F02": "000000001700",
            "9F03": "000000000000",
            "9F1A": "0840",
            "95": "0080008000",
            "5F2A": "0840",
            "9A": "160517",
            "9C": "00",
            "9F37": "00000009",
            "82": "3800",
            "9F10": "1F220103" + "00" * 27,
        }
    )
    version = emv.select_cryptogram_version(Scheme.VISA, tags[emv.TAG_IAD])
    assert version.cvn == 22
    result = emv.verify_arqc(
        PYEMV_IMK,
        "9137631040001422",
        "01",
        h("000B"),
        h("61EDCC708B4C97B4"),
        version=version,
        tags=tags,
        response=Csu(h("12345678")),
    )
    assert result.verified


# --- option B's defining properties ----------------------------------------------------------

pans_long = st.text("0123456789", min_size=17, max_size=19)
psns = st.text("0123456789", min_size=2, max_size=2)


@settings(max_examples=50, deadline=None)
@given(pan=st.text("0123456789", min_size=12, max_size=16), psn=psns)
def test_option_b_is_option_a_up_to_16_digits(pan: str, psn: str) -> None:
    assert emv.icc_master_key_option_b(IMK, pan, psn) == emv.icc_master_key_option_a(IMK, pan, psn)


@settings(max_examples=50, deadline=None)
@given(pan=pans_long, psn=psns)
def test_option_b_beyond_16_digits(pan: str, psn: str) -> None:
    key = emv.icc_master_key_option_b(IMK, pan, psn)
    assert key == emv.icc_master_key_option_b(IMK, pan, psn)
    assert key == crypto.with_odd_parity(key)
    assert len(key) == 16
    # Option A sees only the 16 rightmost digits; B hashes them all, so a change to the
    # leading digit moves B's key and leaves A's.
    other = str((int(pan[0]) + 1) % 10) + pan[1:]
    assert emv.icc_master_key_option_a(IMK, other, psn) == emv.icc_master_key_option_a(
        IMK, pan, psn
    )
    assert emv.icc_master_key_option_b(IMK, other, psn) != key


# --- the cryptogram version table ------------------------------------------------------------


def test_table_holds_the_supported_versions() -> None:
    assert sorted(emv.CRYPTOGRAM_VERSIONS) == [10, 16, 17, 18, 20, 21, 22]
    for cvn, version in emv.CRYPTOGRAM_VERSIONS.items():
        assert version.cvn == cvn
        assert version.elements[: len(emv.MINIMUM_DATA)] == emv.MINIMUM_DATA
        assert version.padding in (1, 2)
    with pytest.raises(TypeError):
        emv.CRYPTOGRAM_VERSIONS[99] = emv.CRYPTOGRAM_VERSIONS[10]  # type: ignore[index]


@pytest.mark.parametrize(
    ("scheme", "iad_hex", "cvn"),
    [
        (Scheme.VISA, "06010A03A06010", 10),  # format 0/1: CVN in byte 3
        (Scheme.VISA, "06011203A0B800", 18),
        (Scheme.VISA, "06011203A0B8000A0100000000000000", 18),  # with issuer discretionary data
        (Scheme.VISA, "1F220103" + "00" * 28, 22),  # format 2: CVN in byte 2
        (Scheme.MASTERCARD, "0110A00003220000" + "00" * 10, 16),  # CVN in byte 2
        (Scheme.MASTERCARD, "0111A00003220000" + "00" * 10, 17),
        (Scheme.MASTERCARD, "0214A00003220000" + "00" * 10, 20),
        (Scheme.MASTERCARD, "0115A00003220000" + "00" * 10, 21),
    ],
)
def test_cvn_from_iad(scheme: Scheme, iad_hex: str, cvn: int) -> None:
    assert emv.select_cryptogram_version(scheme, h(iad_hex)).cvn == cvn


@pytest.mark.parametrize(
    ("scheme", "iad_hex", "profile_cvn"),
    [
        (Scheme.VISA, "", None),
        (Scheme.VISA, "07010A03A06010", None),  # no known Visa format
        (Scheme.VISA, "0601", None),  # too short to hold the CVN
        (Scheme.VISA, "06010B03A06010", None),  # CVN 11: not in the table
        (Scheme.VISA, "1F43010020000000", None),  # format 4, CVN '43'
        (Scheme.MASTERCARD, "01", None),
        (Scheme.MASTERCARD, "0112A00003220000", None),  # bits 3-2 = 01: no such session key
        (Scheme.MASTERCARD, "0110A00003220000", 18),  # a Visa CVN for a Mastercard card
        (Scheme.VISA, "06011203A0B800", 99),  # the profile names an unknown CVN
    ],
)
def test_cvn_selection_refuses(scheme: Scheme, iad_hex: str, profile_cvn: int | None) -> None:
    with pytest.raises(UnknownCvnError):
        emv.select_cryptogram_version(scheme, h(iad_hex), profile_cvn=profile_cvn)


def test_card_profile_overrides_the_iad() -> None:
    """A card whose IAD is not the scheme's standard layout: the profile names its CVN."""
    odd_iad = h("0A" * 7)
    assert emv.select_cryptogram_version(Scheme.VISA, odd_iad, profile_cvn=18).cvn == 18
    visa_18 = h("06011203A0B800")
    assert emv.select_cryptogram_version(Scheme.VISA, visa_18, profile_cvn=10).cvn == 10


def test_cryptogram_tags_name_each_tag_once() -> None:
    minimum = tuple(t for t in emv.MINIMUM_DATA if isinstance(t, int))
    assert emv.cryptogram_tags(emv.cryptogram_version(17)) == (*minimum, emv.TAG_IAD)
    assert emv.cryptogram_tags(emv.cryptogram_version(10)) == (*minimum, emv.TAG_IAD)


# --- negative cases --------------------------------------------------------------------------


def _changed(tags: EmvTags, tag: int, value: bytes) -> dict[int, bytes]:
    return {**tags, tag: value}


_V18 = VISA["cvn18"]
_V18_TAGS = visa_tags(h(_V18["iad"]))
_V18_ARQC = h(_V18["arqc"])
_CSU = Csu(bytes(4))
_WRONG_IMK = crypto.with_odd_parity(h("FEDCBA98765432100123456789ABCDEF"))


@pytest.mark.parametrize(
    ("name", "imk", "atc", "tags", "arqc"),
    [
        ("wrong key", _WRONG_IMK, ATC, _V18_TAGS, _V18_ARQC),
        ("changed amount", IMK, ATC, _changed(_V18_TAGS, 0x9F02, h("000000004001")), _V18_ARQC),
        ("wrong ATC", IMK, h("001D"), _V18_TAGS, _V18_ARQC),
        ("changed IAD", IMK, ATC, _changed(_V18_TAGS, emv.TAG_IAD, h("06011203A0B801")), _V18_ARQC),
        ("changed ARQC", IMK, ATC, _V18_TAGS, bytes(8)),
    ],
)
def test_wrong_input_is_not_verified(
    name: str, imk: bytes, atc: bytes, tags: EmvTags, arqc: bytes
) -> None:
    version = emv.cryptogram_version(18)
    result = emv.verify_arqc(
        imk, CVN["pan"], CVN["psn"], atc, arqc, version=version, tags=tags, response=_CSU
    )
    assert result == emv.ArqcResult(verified=False), name


_NO_AMOUNT = {t: v for t, v in _V18_TAGS.items() if t != 0x9F02}


def _verify_by_cvn(cvn: int, args: dict[str, Any]) -> emv.ArqcResult:
    return emv.verify_arqc(**args, version=emv.cryptogram_version(cvn))


@pytest.mark.parametrize(
    ("name", "cvn", "call", "error"),
    [
        ("unknown CVN", 99, {}, UnknownCvnError),
        ("missing amount", 18, {"tags": _NO_AMOUNT}, EmvDataError),
        ("short amount", 18, {"tags": _changed(_V18_TAGS, 0x9F02, h("4000"))}, EmvDataError),
        ("9F36 not the ATC", 18, {"tags": _changed(_V18_TAGS, 0x9F36, h("001D"))}, EmvDataError),
        ("no IAD", 18, {"tags": {**tags_of(VISA["tags"])}}, EmvDataError),
        ("IAD too long", 18, {"tags": _changed(_V18_TAGS, emv.TAG_IAD, bytes(33))}, EmvDataError),
        ("IAD short for CVR", 10, {"tags": visa_tags(h("06010A03"))}, EmvDataError),
        ("short ATC", 18, {"atc": h("1C")}, EmvDataError),
        ("short ARQC", 18, {"arqc": _V18_ARQC[:7]}, EmvDataError),
        ("ARC for method 2", 18, {"response": Arc(b"00")}, EmvDataError),
        ("CSU for method 1", 10, {"response": _CSU}, EmvDataError),
        ("PSN one digit", 18, {"psn": "1"}, EmvDataError),
        ("PAN with a letter", 18, {"pan": "12345678901234S6"}, PanError),
        ("PAN too long", 18, {"pan": "1" * 20}, PanError),
        ("IMK single length", 18, {"imk": IMK[:8]}, KeyLengthError),
    ],
)
def test_bad_input_raises_typed_errors(
    name: str, cvn: int, call: dict[str, Any], error: type[HsmError]
) -> None:
    args: dict[str, Any] = {
        "imk": IMK,
        "pan": CVN["pan"],
        "psn": CVN["psn"],
        "atc": ATC,
        "arqc": _V18_ARQC,
        "tags": _V18_TAGS,
        "response": _CSU,
        **call,
    }
    with pytest.raises(error) as info:
        _verify_by_cvn(cvn, args)
    assert CVN["pan"] not in str(info.value), name


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Arc(b"0"), EmvDataError),
        (lambda: Csu(bytes(3)), EmvDataError),
        (lambda: Csu(bytes(4), bytes(9)), EmvDataError),
    ],
)
def test_responses_check_their_lengths(build: Any, error: type[HsmError]) -> None:
    with pytest.raises(error):
        build()


# --- generate, then verify: every CVN, random data -------------------------------------------


def _iad_for(version: CryptogramVersion, body: bytes) -> bytes:
    """A random IAD laid out so the card's CVN byte sits where its scheme puts it."""
    if version.scheme is Scheme.MASTERCARD:
        return body[:1] + bytes([version.iad_value]) + body[2:18]
    if version.iad_value == 0x22:
        return bytes([0x1F, 0x22]) + body[2:32]
    return bytes([0x06, body[1], version.iad_value]) + body[3:7]


def _covered(version: CryptogramVersion, tags: EmvTags) -> list[tuple[int, int]]:
    """Every (tag, byte index) the cryptogram covers."""
    spots: list[tuple[int, int]] = []
    for element in version.elements:
        if isinstance(element, IadPart):
            iad = tags[emv.TAG_IAD]
            stop = element.stop if element.stop is not None else len(iad)
            spots += [(emv.TAG_IAD, i) for i in range(element.start, stop)]
        else:
            spots += [(element, i) for i in range(emv.TAG_LENGTHS[element])]
    return spots


def _flip(value: bytes, index: int, delta: int) -> bytes:
    return value[:index] + bytes([value[index] ^ delta]) + value[index + 1 :]


tag_values = st.fixed_dictionaries(
    {tag: st.binary(min_size=n, max_size=n) for tag, n in emv.TAG_LENGTHS.items()}
)


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from(list(emv.CRYPTOGRAM_VERSIONS.values())),
    values=tag_values,
    iad_body=st.binary(min_size=32, max_size=32),
    pan=st.text("0123456789", min_size=12, max_size=19),
    psn=psns,
    spot=st.integers(min_value=0),
    delta=st.integers(min_value=1, max_value=255),
)
def test_generate_then_verify(
    *,
    version: CryptogramVersion,
    values: dict[int, bytes],
    iad_body: bytes,
    pan: str,
    psn: str,
    spot: int,
    delta: int,
) -> None:
    tags = {**values, emv.TAG_IAD: _iad_for(version, iad_body)}
    scheme_iad = tags[emv.TAG_IAD]
    assert emv.select_cryptogram_version(version.scheme, scheme_iad) is version
    atc = tags[emv.TAG_ATC]
    icc_mk = emv.icc_master_key(IMK, pan, psn, version.master_key)
    arqc = emv.generate_arqc(version, icc_mk, atc, tags)
    response: ArpcResponse = (
        Arc(b"00") if version.arpc_method is emv.ArpcMethod.METHOD_1 else Csu(bytes(4))
    )

    def verified(tags: EmvTags, atc: bytes, arqc: bytes) -> bool:
        result = emv.verify_arqc(
            IMK, pan, psn, atc, arqc, version=version, tags=tags, response=response
        )
        return result.verified

    assert verified(tags, atc, arqc)
    spots = _covered(version, tags)
    tag, index = spots[spot % len(spots)]
    changed = _changed(tags, tag, _flip(tags[tag], index, delta))
    assert not verified(changed, changed[emv.TAG_ATC], arqc)
    assert not verified(tags, atc, _flip(arqc, spot % len(arqc), delta))


# --- through the HSM interface: in-process and over the wire ---------------------------------

STORED_IMK = LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, IMK)


@pytest.mark.parametrize("cvn", [10, 18, 16, 20])
async def test_hsm_verifies_the_vectors(hsm: HSM, cvn: int) -> None:
    arqc = h(_cvn_vector(cvn)["arqc"])
    # Field 55 carries more than a CVN reads (here the PAN, 5A): the rest is ignored.
    tags = {**_cvn_tags(cvn), 0x5A: h(CVN["pan"])}
    result = await hsm.verify_arqc(
        STORED_IMK, CVN["pan"], CVN["psn"], ATC, arqc, cvn=cvn, tags=tags, response=_response(cvn)
    )
    assert result.verified
    assert result == _verify(cvn, _cvn_tags(cvn), arqc, _response(cvn))


async def test_hsm_wrong_arqc_gets_no_arpc(hsm: HSM) -> None:
    result = await hsm.verify_arqc(
        STORED_IMK, CVN["pan"], CVN["psn"], ATC, bytes(8), cvn=18, tags=_V18_TAGS, response=_CSU
    )
    assert result == emv.ArqcResult(verified=False)


async def test_hsm_generated_imk_ac(hsm: HSM) -> None:
    imk = await hsm.generate_key(KeyRole.IMK_AC)
    assert (imk.role, imk.algorithm, imk.usage, imk.mode) == (
        KeyRole.IMK_AC,
        Algorithm.TDES,
        "E0",
        "X",
    )
    assert await hsm.key_check_value(imk) == imk.kcv
    result = await hsm.verify_arqc(
        imk, CVN["pan"], CVN["psn"], ATC, _V18_ARQC, cvn=18, tags=_V18_TAGS, response=_CSU
    )
    assert not result.verified


_TRIPLE_LENGTH_IMK = LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, IMK + IMK[:8])


async def test_hsm_imk_ac_travels_as_tr31_under_a_zmk(hsm: HSM) -> None:
    zmk = LMK.wrap(KeyRole.ZMK, Algorithm.TDES, crypto.with_odd_parity(bytes(range(16))))
    block = await hsm.export_key(STORED_IMK, zmk, "B")
    assert block[5:7] == "E0"
    imported = await hsm.import_key(block, zmk, KeyRole.IMK_AC)
    assert (imported.role, imported.kcv, imported.mode) == (KeyRole.IMK_AC, STORED_IMK.kcv, "X")
    with pytest.raises(KeyUsageError):
        await hsm.import_key(block, zmk, KeyRole.PVK)


def _tampered(key: StoredKey) -> StoredKey:
    text = key.to_text()
    return StoredKey.from_text(text[:-1] + ("0" if text[-1] != "0" else "1"))


@pytest.mark.parametrize(
    ("name", "change", "error"),
    [
        ("unknown CVN", {"cvn": 11}, UnknownCvnError),
        ("TPK as IMK", {"imk": LMK.wrap(KeyRole.TPK, Algorithm.TDES, IMK)}, KeyUsageError),
        ("AES IMK", {"imk": LMK.wrap(KeyRole.IMK_AC, Algorithm.AES, IMK)}, KeyUsageError),
        (
            "triple-length IMK",
            {"imk": LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, IMK + IMK[:8])},
            KeyLengthError,
        ),
        ("tampered IMK", {"imk": _tampered(STORED_IMK)}, KeyBlockError),
        ("missing amount", {"tags": _NO_AMOUNT}, EmvDataError),
        ("ARC for method 2", {"response": Arc(b"00")}, EmvDataError),
        ("short ATC", {"atc": h("1C")}, EmvDataError),
        ("PAN with a letter", {"pan": "12345678901234S6"}, PanError),
    ],
)
async def test_hsm_refuses_with_typed_errors(
    hsm: HSM, name: str, change: dict[str, Any], error: type[HsmError]
) -> None:
    args: dict[str, Any] = {
        "imk": STORED_IMK,
        "pan": CVN["pan"],
        "psn": CVN["psn"],
        "atc": ATC,
        "arqc": _V18_ARQC,
        "cvn": 18,
        "tags": _V18_TAGS,
        "response": _CSU,
        **change,
    }
    with pytest.raises(error) as info:
        await hsm.verify_arqc(**args)
    assert CVN["pan"] not in str(info.value), name


async def test_dev_hsm_process_verifies_over_the_wire() -> None:
    """The same verify against `python -m hsm serve`, its own process."""
    proc, port = await spawn_dev_hsm()
    try:
        async with NetworkHSM([("127.0.0.1", port)], timeout_ms=5000) as client:
            result = await client.verify_arqc(
                STORED_IMK,
                CVN["pan"],
                CVN["psn"],
                ATC,
                _V18_ARQC,
                cvn=18,
                tags=_V18_TAGS,
                response=_CSU,
            )
    finally:
        proc.kill()
        await proc.wait()
    assert result.arpc is not None
    assert _hex(result.arpc) == VISA["cvn18"]["arpc_method_2"]

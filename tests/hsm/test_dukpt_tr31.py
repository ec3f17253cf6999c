"""DUKPT refusals and TR-31 key blocks: third-party known values, round-trips, tampering,
usage enforcement."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import dukpt, tr31
from hsm.errors import DukptError, KeyBlockError, KeyLengthError, KeyUsageError

h = bytes.fromhex
BDK = h("0123456789ABCDEFFEDCBA9876543210")
AES_BDK = h("FEDCBA9876543210F1F1F1F1F1F1F1F1")


@pytest.mark.parametrize(
    ("ksn", "error"),
    [
        ("FFFF9876543210E00000", DukptError),  # counter zero
        ("FFFF9876543210E007FF", DukptError),  # 11 one bits
        ("FFFF9876543210E001", DukptError),  # 9 bytes
    ],
)
def test_tdes_dukpt_refuses(ksn: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        dukpt.tdes_transaction_key(BDK, h(ksn))


def test_tdes_dukpt_refuses_single_length_bdk() -> None:
    with pytest.raises(KeyLengthError):
        dukpt.tdes_ipek(BDK[:8], h("FFFF9876543210E00001"))


@pytest.mark.parametrize(
    "ksn", ["123456789012345600000000", "12345678901234560001FFFF", "1234567890123456000001"]
)
def test_aes_dukpt_refuses(ksn: str) -> None:
    with pytest.raises(DukptError):
        dukpt.aes_transaction_key(AES_BDK, h(ksn))


def test_variants_differ() -> None:
    ksn = h("FFFF9876543210E00001")
    keys = {dukpt.tdes_working_key(BDK, ksn, v) for v in dukpt.TdesVariant}
    assert len(keys) == len(dukpt.TdesVariant)


def test_aes_dukpt_256_bit_bdk_derives_256_bit_keys() -> None:
    bdk = bytes(range(32))
    ksn = h("123456789012345600000003")
    assert len(dukpt.aes_transaction_key(bdk, ksn)) == 32
    pin_key = dukpt.aes_working_key(
        bdk, ksn, dukpt.AesKeyUsage.PIN_ENCRYPTION, dukpt.AesDukptKeyType.AES128
    )
    assert len(pin_key) == 16


# TR-31:2018 Annex A.7 examples, as reproduced by several open-source implementations; they
# cover versions A, B, C and D, triple-length KBPKs and optional blocks (KS, PB).
KNOWN_BLOCKS = [
    (
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCC",
        "CCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
        "C0088M3TC00E000091FA4978279FD9C218BDCBE9CC62F11A182F828406B67AC61B5573748FCF348FD59FA93A",
    ),
    (
        "DD7515F2BFC17F85CE48F3CA25CB21F6",
        "3F419E1CB7079442AA37474C2EFBF8B8",
        "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
    ),
    (
        "B8ED59E0A279A295E9F5ED7944FD06B9",
        "EDB380DD340BC2620247D445F5B8D678",
        (
            "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9"
            "D60989015D02155C"
        ),
    ),
    (
        "1D22BF32387C600AD97F9B97A51311AC",
        "E8BC63E5479455E26577F715D587FE68",
        (
            "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C473"
            "8A52190E248719E24B433627"
        ),
    ),
    (
        "B8ED59E0A279A295E9F5ED7944FD06B9",
        "F039121BEC83D26B169BDCD5B22AAF8F",
        (
            "A0112P0TE12E0200KS1400604B120F929280PB047A1BB737854CD7AF58A8A1E4506A942277EDA76E"
            "BA6BA228AF62ADDA3AD8799E8B2C8CD7"
        ),
    ),
    (
        "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
        "3F419E1CB7079442AA37474C2EFBF8B8",
        (
            "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A2"
            "7E8E31DA05F7425509593D03A457DC34"
        ),
    ),
]


@pytest.mark.parametrize(("kbpk", "key", "block"), KNOWN_BLOCKS)
def test_known_blocks_unwrap(kbpk: str, key: str, block: str) -> None:
    header, clear = tr31.unwrap(h(kbpk), block)
    assert clear.hex().upper() == key
    assert header.version == block[0]


def test_optional_blocks_are_parsed() -> None:
    header, _ = tr31.parse_header(KNOWN_BLOCKS[4][2])
    assert header.optional_blocks == (("KS", "00604B120F929280"), ("PB", ""))
    assert header.key_version == "12"


VERSION_KBPK = [("A", 16), ("B", 16), ("B", 24), ("C", 24), ("D", 16), ("D", 32)]


@settings(max_examples=30, deadline=None)
@given(
    case=st.sampled_from(VERSION_KBPK),
    key=st.sampled_from([8, 16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    with_blocks=st.booleans(),
)
def test_wrap_unwrap_round_trip(case: tuple[str, int], key: bytes, with_blocks: bool) -> None:
    version, kbpk_length = case
    kbpk = os.urandom(kbpk_length)
    blocks = (("KC", "00ABCDEF"),) if with_blocks else ()
    header = tr31.Header(version, "P0", "T", "E", optional_blocks=blocks)
    text = tr31.wrap(kbpk, header, key)
    got_header, got_key = tr31.unwrap(kbpk, text, usages={"P0"}, modes={"E"})
    assert got_key == key
    assert got_header.optional_blocks[: len(blocks)] == blocks
    assert len(text) == int(text[1:5])


def _block() -> tuple[bytes, str]:
    kbpk = os.urandom(32)
    return kbpk, tr31.wrap(kbpk, tr31.Header("D", "P0", "T", "E"), os.urandom(16))


def test_unwrap_refuses_wrong_usage_and_mode() -> None:
    kbpk, text = _block()
    with pytest.raises(KeyUsageError):
        tr31.unwrap(kbpk, text, usages={"M3"})
    with pytest.raises(KeyUsageError):
        tr31.unwrap(kbpk, text, modes={"D"})


def test_unwrap_refuses_wrong_kbpk() -> None:
    _, text = _block()
    with pytest.raises(KeyBlockError):
        tr31.unwrap(os.urandom(32), text)


@pytest.mark.parametrize("position", [5, 7, 8, 11, 20, -1])
def test_unwrap_refuses_any_altered_character(position: int) -> None:
    kbpk, text = _block()
    altered_char = "1" if text[position] != "1" else "2"
    altered = (
        text[:position] + altered_char + text[position + 1 :]
        if position != -1
        else (text[:-1] + altered_char)
    )
    with pytest.raises((KeyBlockError, KeyUsageError)):
        tr31.unwrap(kbpk, altered)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "D0010P0TE00E0000",
        "D0016P0TE00E0000",
        "D0020P0TE00E0100KC",
        "D0040P0TE00E0000ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "X0016P0TE00E0000",
    ],
)
def test_malformed_blocks_raise_key_block_error(text: str) -> None:
    with pytest.raises(KeyBlockError):
        tr31.unwrap(os.urandom(32), text)


def test_kbpk_length_is_checked() -> None:
    with pytest.raises(KeyLengthError):
        tr31.wrap(os.urandom(8), tr31.Header("B", "P0", "T", "E"), os.urandom(16))

"""`python -m hsm serve`'s TOML: every error names the file and the key; production refuses to
serve without mutual TLS or with development keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm.__main__ import main
from hsm.config import ConfigError, load_config
from hsm.crypto import Algorithm
from hsm.devserver import REPO
from hsm.keys import DEVELOPMENT_PAN_HASH_KEY, KeyRole, Lmk
from hsm.ratelimit import PinRateLimit

from .support import Pki

DEV_PHK = load_config(REPO / "config" / "hsm.dev.toml").pan_hash_key


def tls_tables(pki: Pki) -> str:
    return (
        "[hsm.tls]\n"
        f'cert_file = "{pki.hsm.cert}"\n'
        f'key_file = "{pki.hsm.key}"\n'
        f'client_ca_file = "{pki.ca.cert}"\n'
        "[[hsm.clients]]\n"
        'cn = "switch-1"\n'
        'profile = "switch"\n'
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hsm.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_development_config_loads() -> None:
    config = load_config(REPO / "config" / "hsm.dev.toml")
    assert not config.production
    assert config.server.tls is None
    assert config.pan_hash_key is not None
    assert config.pan_hash_key.role is KeyRole.PHK
    assert config.pin_rate_limit == PinRateLimit(per_minute_max=10, cards_tracked_max=100_000)


def test_the_production_example_is_complete(pki: Pki, tmp_path: Path) -> None:
    """With its files in place, the example passes as it stands."""
    lmk_file = tmp_path / "lmk.hex"
    lmk_file.write_text("11" * 32, encoding="ascii")
    lmk_file.chmod(0o600)
    text = (REPO / "config" / "hsm.production.example.toml").read_text(encoding="utf-8")
    for placeholder, real in (
        ("/etc/kiosk/hsm-lmk.hex", lmk_file),
        ("/etc/kiosk/tls/hsm.crt", pki.hsm.cert),
        ("/etc/kiosk/tls/hsm.key", pki.hsm.key),
        ("/etc/kiosk/tls/hsm-clients-ca.crt", pki.ca.cert),
    ):
        assert placeholder in text
        text = text.replace(placeholder, str(real))
    config = load_config(write(tmp_path, text))
    assert config.production
    assert config.server.tls is not None
    rules = {rule.cn: rule for rule in config.server.access.clients}
    assert {cn: rule.profile for cn, rule in rules.items()} == {
        "switch-1.kiosk.example": "switch",
        "switch-2.kiosk.example": "switch",
        "key-officer.kiosk.example": "admin",
    }
    assert rules["key-officer.kiosk.example"].sha256 is not None
    assert config.pin_rate_limit == PinRateLimit()


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("production = true\n", "hsm.tls", "a [hsm.tls] table"),
        ("prodution = true\n", "hsm.prodution", "no such key"),
        ("port = 70000\n", "hsm.port", "an integer from 0 to 65535"),
        ("pin_verifications_per_minute_max = 0\n", "hsm.pin_verifications_per_minute_max", "1"),
        ('pan_hash_key = "D0016P0TE00E0000"\n', "hsm.pan_hash_key", "a PHK key block"),
        ('lmk_file = "missing.hex"\n', "hsm.lmk_file", "a readable file"),
        ('[hsm.tls]\ncert_file = "missing.crt"\n', "hsm.tls.cert_file", "a readable file"),
        ('[[hsm.clients]]\ncn = "switch-1"\nprofile = "switch"\n', "hsm.tls", "certificates"),
    ],
)
def test_errors_name_the_file_and_the_key(
    tmp_path: Path, body: str, key: str, expected: str
) -> None:
    path = write(tmp_path, "[hsm]\n" + body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (error.value.source, error.value.key) == (str(path), key)
    assert expected in error.value.expected


@pytest.mark.parametrize(
    ("clients", "key", "expected"),
    [
        ("", "hsm.clients", "at least one"),
        ('[[hsm.clients]]\ncn = "a"\nprofile = "root"\n', "hsm.clients[0].profile", "admin"),
        ('[[hsm.clients]]\nprofile = "admin"\n', "hsm.clients[0].cn", "common name"),
        (
            '[[hsm.clients]]\ncn = "a"\nprofile = "admin"\nsha256 = "AB:CD"\n',
            "hsm.clients[0].sha256",
            "64 hex",
        ),
        (
            '[[hsm.clients]]\ncn = "a"\nprofile = "admin"\n'
            '[[hsm.clients]]\ncn = "a"\nprofile = "switch"\n',
            "hsm.clients[1].cn",
            "no other client",
        ),
    ],
)
def test_client_errors_name_the_entry(
    pki: Pki, tmp_path: Path, clients: str, key: str, expected: str
) -> None:
    tls_only = tls_tables(pki).split("[[hsm.clients]]")[0]
    path = write(tmp_path, "[hsm]\n" + tls_only + clients)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (error.value.key, error.value.source) == (key, str(path))
    assert expected in error.value.expected


def test_a_certificate_that_does_not_load_is_named(pki: Pki, tmp_path: Path) -> None:
    swapped = tls_tables(pki).replace(str(pki.hsm.key), str(pki.switch.key))
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "[hsm]\n" + swapped))
    assert error.value.key == "hsm.tls"


@pytest.mark.parametrize("development_block", [True, False])
def test_production_refuses_the_development_pan_hash_key(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], development_block: bool
) -> None:
    """The development key block (under the development LMK), or its bytes under this LMK."""
    lmk = Lmk(bytes.fromhex("11" * 32))
    lmk_file = tmp_path / "lmk.hex"
    lmk_file.write_text("11" * 32, encoding="ascii")
    lmk_file.chmod(0o600)
    assert DEV_PHK is not None
    phk = DEV_PHK
    if not development_block:
        phk = lmk.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY)
    path = write(
        tmp_path,
        f'[hsm]\nproduction = true\nlmk_file = "{lmk_file}"\npan_hash_key = "{phk.text}"\n'
        + tls_tables(pki),
    )
    assert main(["serve", "--config", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{path} + command line: hsm.pan_hash_key: expected" in err
    assert ("under this HSM's LMK" if development_block else "refuses the development key") in err

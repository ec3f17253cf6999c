"""Settings: defaults, the shipped file, environment overrides, and errors that say where."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from switch.iso8583 import Dialect
from switch.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_shipped_development_file_equals_the_built_in_defaults() -> None:
    from_file = load_settings(REPO / "config" / "switch.toml")
    defaults = load_settings()
    assert replace(from_file, source="") == replace(defaults, source="")


def test_defaults() -> None:
    settings = load_settings()
    assert settings.listener.dialect == Dialect()
    assert settings.listener.port == 8583
    assert settings.listener.tls is None


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "switch.toml"
    path.write_text('[listener]\nport = 9000\nbitmap = "hex"\n')
    settings = load_settings(
        path,
        {
            "SWITCH__LISTENER__PORT": "9100",
            "SWITCH__LISTENER__HOST": "0.0.0.0",
            "SWITCH__LISTENER__TPDU": "true",
            "HOME": "/ignored",
        },
    )
    assert settings.listener.port == 9100
    assert settings.listener.host == "0.0.0.0"
    assert settings.listener.dialect == Dialect(bitmap="hex", tpdu=True)
    assert settings.source.endswith("switch.toml + environment")


BAD_FILES = [
    pytest.param(
        "[listener]\nport = 70000\n", "listener.port", "an integer from 0 to 65535", id="port"
    ),
    pytest.param('[listener]\nport = "8583"\n', "listener.port", "an integer", id="port-type"),
    pytest.param(
        '[listener]\nbitmap = "bcd"\n', "listener.bitmap", "one of binary, hex", id="bitmap"
    ),
    pytest.param(
        '[listener]\nlength_header = "3b"\n',
        "listener.length_header",
        "one of 2b, 4b, 2a, 4a",
        id="header",
    ),
    pytest.param("[listener]\ntpdu = 1\n", "listener.tpdu", "true or false", id="tpdu"),
    pytest.param("[listener]\nprot = 1\n", "listener.prot", "no such key", id="typo"),
    pytest.param("[listner]\nport = 1\n", "listner", "no such key", id="table-typo"),
    pytest.param("listener = 3\n", "listener", "a table", id="not-a-table"),
    pytest.param("[logging]\nlevel = 'loud'\n", "logging.level", "one of debug, info", id="level"),
    pytest.param(
        "[listener.tls]\ncert_file = 'missing.pem'\n",
        "listener.tls.cert_file",
        "a readable PEM file",
        id="tls",
    ),
    pytest.param("[listener\n", "(file)", "valid TOML", id="syntax"),
    pytest.param('[hsm]\nbackend = "cloud"\n', "hsm.backend", "one of local, network", id="hsm"),
    pytest.param('[hsm]\naddresses = ["nohost"]\n', "hsm.addresses", "host:port", id="hsm-address"),
    pytest.param(
        '[ledger]\nbusiness_day_cutover = "25:00"\n',
        "ledger.business_day_cutover",
        "HH:MM",
        id="cutover",
    ),
    pytest.param(
        "[ledger]\npool_size_min = 9\npool_size_max = 4\n",
        "ledger.pool_size_min",
        "at most",
        id="pool",
    ),
    pytest.param(
        "[pipeline]\nrequest_deadline_ms = 1\n",
        "pipeline.request_deadline_ms",
        "from 50",
        id="deadline",
    ),
    pytest.param(
        "[pipeline]\nslow_request_ms = 0\n",
        "pipeline.slow_request_ms",
        "from 1",
        id="slow",
    ),
    pytest.param(
        'environment = "prod"\n', "environment", "one of development, production", id="env"
    ),
    pytest.param(
        'environment = "production"\n', "admin.token", "a token of your own", id="dev-token-in-prod"
    ),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD_FILES)
def test_invalid_file_names_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert caught.value.source == str(path)
    assert caught.value.key == key
    assert expected in caught.value.expected
    assert str(path) in str(caught.value)


def test_invalid_environment_override_names_the_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, {"SWITCH__LISTENER__MAX_FRAME_BYTES": "10"})
    assert caught.value.key == "listener.max_frame_bytes"
    assert "environment" in caught.value.source


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="an existing TOML file"):
        load_settings(tmp_path / "nope.toml")

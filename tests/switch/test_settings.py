"""Settings: defaults, the shipped file, environment overrides, and errors that say where."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from switch.iso8583 import Dialect
from switch.production import dsn_password
from switch.settings import DEVELOPMENT_ADMIN_TOKEN, SettingsError, load_settings

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


STRONG_TOKEN = "f3a9c0d1e2b4a5968778695a4b3c2d1e0f9e8d7c"
STRONG_PASSWORD = "Vq7pL2m-xR9tK4wZ"
PRODUCTION_ENV: dict[str, str] = {}
# A PHK key block under some production LMK: settings check its presence, the HSM the rest.
PHK_BLOCK = "D0208M7HG00E0400PHK-UNDER-THE-PRODUCTION-LMK"


def production_file(tmp_path: Path, dsn: str | None = None, token: str = STRONG_TOKEN) -> Path:
    path = tmp_path / "production.toml"
    text = f'environment = "production"\n[admin]\ntoken = "{token}"\n'
    text += f'[hsm]\npan_hash_key = "{PHK_BLOCK}"\n'
    if dsn is not None:
        text += f'[ledger]\ndsn = "{dsn}"\n'
    path.write_text(text)
    return path


# (token, dsn, extra environment, key refused, what was expected)
WEAK_IN_PRODUCTION = [
    pytest.param(
        "short-token", None, {}, "admin.token", "at least 32 characters", id="token-short"
    ),
    pytest.param(
        "x" * 40, None, {}, "admin.token", "not one character repeated", id="token-one-char"
    ),
    pytest.param(
        DEVELOPMENT_ADMIN_TOKEN, None, {}, "admin.token", "a token of your own", id="token-dev"
    ),
    pytest.param(
        STRONG_TOKEN,
        "postgresql://ledger_switch@db.example/ledger?sslmode=require",
        {},
        "ledger.dsn",
        "got neither for db.example",
        id="dsn-trust",
    ),
    pytest.param(
        STRONG_TOKEN,
        "postgresql://ledger_switch@localhost,10.0.0.7:5433/ledger",
        {},
        "ledger.dsn",
        "got neither for 10.0.0.7",
        id="dsn-trust-second-host",
    ),
    pytest.param(
        STRONG_TOKEN,
        "postgresql:///ledger?host=db.example",
        {},
        "ledger.dsn",
        "got neither for db.example",
        id="dsn-trust-host-in-query",
    ),
    pytest.param(
        STRONG_TOKEN,
        "postgresql:///ledger",
        {"PGHOST": "db.example"},
        "ledger.dsn",
        "got neither for db.example",
        id="dsn-trust-pghost",
    ),
    pytest.param(
        STRONG_TOKEN,
        "postgresql://ledger_switch:secret@db.example/ledger",
        {},
        "ledger.dsn",
        "a password of at least 16 characters",
        id="dsn-password-short",
    ),
    pytest.param(
        STRONG_TOKEN,
        "postgresql://ledger_switch@localhost/ledger?password=" + "a" * 20,
        {},
        "ledger.dsn",
        "not one character repeated",
        id="dsn-password-one-char",
    ),
    pytest.param(
        STRONG_TOKEN,
        "host=db.example user=ledger_switch",
        {},
        "ledger.dsn",
        "a postgresql:// URI",
        id="dsn-not-a-uri",
    ),
]


@pytest.mark.parametrize(("token", "dsn", "env", "key", "expected"), WEAK_IN_PRODUCTION)
def test_production_refuses_weak_secrets_and_a_trust_dsn(
    tmp_path: Path,
    *,
    token: str,
    dsn: str | None,
    env: dict[str, str | None],
    key: str,
    expected: str,
) -> None:
    path = production_file(tmp_path, dsn, token)
    merged = {name: value for name, value in {**PRODUCTION_ENV, **env}.items() if value}
    with pytest.raises(SettingsError) as caught:
        load_settings(path, merged)
    assert caught.value.key == key
    assert expected in caught.value.expected
    where = "environment" if key == "LEDGER_PAN_HASH_KEY" else str(path)
    assert caught.value.source == where
    assert str(caught.value).startswith(f"{where}: {key}: expected ")
    # A secret is named, never shown.
    shown = [token, merged.get("LEDGER_PAN_HASH_KEY") or token, dsn_password(dsn or "") or token]
    assert not [secret for secret in shown if secret in str(caught.value)]


ACCEPTED_IN_PRODUCTION = [
    pytest.param(None, {}, id="private-cluster"),
    pytest.param(f"postgresql://ledger_switch:{STRONG_PASSWORD}@db.example/ledger", {}, id="pw"),
    pytest.param("postgresql://ledger_switch@db.example/ledger?sslmode=verify-full", {}, id="cert"),
    pytest.param("postgresql://ledger_switch@db.example/ledger", {"PGPASSWORD": "x"}, id="pgpass"),
    pytest.param("postgresql://s@db.example/ledger?passfile=/etc/kiosk/pgpass", {}, id="passfile"),
    pytest.param("postgresql://ledger_switch@localhost/ledger", {}, id="localhost"),
    pytest.param("postgresql://ledger_switch@127.0.0.1:5432/ledger", {}, id="loopback"),
    pytest.param("postgresql://ledger_switch@[::1]:5432/ledger", {}, id="loopback-v6"),
    pytest.param("postgresql://ledger_switch@%2Fvar%2Frun%2Fpostgresql/ledger", {}, id="socket"),
    pytest.param("postgresql:///ledger?host=/var/run/postgresql", {}, id="socket-in-query"),
]


@pytest.mark.parametrize(("dsn", "env"), ACCEPTED_IN_PRODUCTION)
def test_production_accepts_strong_secrets_and_a_guarded_dsn(
    tmp_path: Path, dsn: str | None, env: dict[str, str]
) -> None:
    settings = load_settings(production_file(tmp_path, dsn), {**PRODUCTION_ENV, **env})
    assert settings.environment == "production"
    assert settings.hsm.pan_hash_key == PHK_BLOCK
    assert settings.ledger.dsn == dsn


def test_card_numbers_are_hashed_by_the_hsm_whose_key_production_must_name(
    tmp_path: Path,
) -> None:
    assert load_settings().hsm.pan_hash_key is None  # development: the development PHK
    path = tmp_path / "production.toml"
    path.write_text(f'environment = "production"\n[admin]\ntoken = "{STRONG_TOKEN}"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(path, PRODUCTION_ENV)
    assert caught.value.key == "hsm.pan_hash_key"
    assert "a PAN-hash key (PHK) block under the LMK in production" in caught.value.expected
    networked = '[hsm]\nbackend = "network"\n'  # the HSM servers hold it
    path.write_text(path.read_text() + networked)
    assert load_settings(path, PRODUCTION_ENV).hsm.pan_hash_key is None


def test_tls_settings_and_a_subject_match_that_needs_a_client_ca(tmp_path: Path) -> None:
    for name in ("switch.crt", "switch.key", "terminal-ca.crt"):
        (tmp_path / name).write_text("PEM")
    path = tmp_path / "tls.toml"
    tls = '[listener.tls]\ncert_file = "switch.crt"\nkey_file = "switch.key"\n'
    path.write_text(tls + 'client_ca_file = "terminal-ca.crt"\nrequire_subject_match = true\n')
    settings = load_settings(path).listener.tls
    assert settings is not None
    assert settings.require_subject_match
    assert (settings.certificate_expiry_warning_days, settings.refused_log_lines_max) == (30, 10)
    assert settings.refused_log_interval_ms == 60_000
    path.write_text(tls + "require_subject_match = true\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert caught.value.key == "listener.tls.require_subject_match"
    assert "client_ca_file" in caught.value.expected


def test_the_production_example_loads_with_its_secrets_from_the_environment(
    tmp_path: Path,
) -> None:
    example = tmp_path / "switch.toml"
    example.write_text((REPO / "config" / "switch.production.example.toml").read_text())
    (tmp_path / "tls").mkdir()
    for name in ("switch.crt", "switch.key", "terminal-ca.crt"):
        (tmp_path / "tls" / name).write_text("PEM")
    with pytest.raises(SettingsError) as caught:
        load_settings(example, PRODUCTION_ENV)
    assert caught.value.key == "admin.token"
    settings = load_settings(example, {**PRODUCTION_ENV, "SWITCH__ADMIN__TOKEN": STRONG_TOKEN})
    assert settings.environment == "production"
    assert settings.listener.tls is not None
    assert settings.listener.tls.require_subject_match

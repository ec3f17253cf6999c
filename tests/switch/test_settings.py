"""Settings: defaults, the shipped file, environment overrides, and errors that say where."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ledger.settings import LedgerSettings
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, ApiKey, Role, config_lines, mint
from switch.iso8583 import Dialect
from switch.production import dsn_password
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


def test_the_ledger_table_is_the_ledgers_own_settings(tmp_path: Path) -> None:
    """[ledger] parses into ledger.settings.LedgerSettings: its defaults where a key is unset,
    every key settable (stale_retries_max was not), and no PAN-hash key (the HSM hashes)."""
    assert load_settings().ledger == replace(LedgerSettings(), pan_hash_key=None)
    path = tmp_path / "switch.toml"
    path.write_text('[ledger]\nstale_retries_max = 7\nbatch_size_max = 8\nha_dir = "ha"\n')
    settings = load_settings(path, {"SWITCH__LEDGER__PIN_TRIES_MAX": "5"})
    assert settings.ledger == replace(
        LedgerSettings(), pan_hash_key=None, stale_retries_max=7, batch_size_max=8,
        ha_dir=Path("ha"), pin_tries_max=5,
    )  # fmt: skip


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
        "[ledger]\nstale_retries_max = 0\n",
        "ledger.stale_retries_max",
        "from 1",
        id="stale-retries",
    ),
    pytest.param(
        '[ledger]\nha = true\ndsn = "postgresql://ledger_switch@db.example/ledger"\n',
        "ledger.ha",
        "false with a dsn",
        id="ha-and-dsn",
    ),
    pytest.param("[ledger]\nha = 1\n", "ledger.ha", "true or false", id="ha-not-a-flag"),
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
        '[admin]\ntoken = "development-only-admin-token"\n',
        "admin.token",
        "no token: the operations app takes API keys with roles instead",
        id="admin-token-migrated",
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


OWN = mint(Role.VIEWER, "prometheus")
OWN_KEY = config_lines(OWN.key)
STRONG_PASSWORD = "Vq7pL2m-xR9tK4wZ"
PRODUCTION_ENV: dict[str, str] = {}
# A PHK key block under some production LMK: settings check its presence, the HSM the rest.
PHK_BLOCK = "D0208M7HG00E0400PHK-UNDER-THE-PRODUCTION-LMK"


def production_file(tmp_path: Path, dsn: str | None = None, keys: str = OWN_KEY) -> Path:
    path = tmp_path / "production.toml"
    text = f'environment = "production"\n{keys}'
    text += f'[hsm]\npan_hash_key = "{PHK_BLOCK}"\n'
    if dsn is not None:
        text += f'[ledger]\ndsn = "{dsn}"\n'
    path.write_text(text)
    return path


# (API keys, dsn, extra environment, key refused, what was expected)
WEAK_IN_PRODUCTION = [
    pytest.param(
        config_lines(DEVELOPMENT_KEYS[1]),
        None,
        {},
        "admin.keys[0].hash",
        "a key of your own in production (`python -m switch keys new`), got the development key"
        " dev-auditor",
        id="key-dev",
    ),
    pytest.param(
        # The development hash under an id of one's own is still the development key.
        config_lines(DEVELOPMENT_KEYS[2]).replace("dev-viewer", "prometheus"),
        None,
        {},
        "admin.keys[0].hash",
        "got the development key dev-viewer",
        id="key-dev-renamed",
    ),
    pytest.param(
        OWN_KEY + config_lines(ApiKey.derive("dev-operator", Role.OPERATOR, "x.y", bytes(16))),
        None,
        {},
        "admin.keys[1].hash",
        "got the development key dev-operator",
        id="key-dev-id",
    ),
    pytest.param(
        OWN_KEY,
        "postgresql://ledger_switch@db.example/ledger?sslmode=require",
        {},
        "ledger.dsn",
        "got neither for db.example",
        id="dsn-trust",
    ),
    pytest.param(
        OWN_KEY,
        "postgresql://ledger_switch@localhost,10.0.0.7:5433/ledger",
        {},
        "ledger.dsn",
        "got neither for 10.0.0.7",
        id="dsn-trust-second-host",
    ),
    pytest.param(
        OWN_KEY,
        "postgresql:///ledger?host=db.example",
        {},
        "ledger.dsn",
        "got neither for db.example",
        id="dsn-trust-host-in-query",
    ),
    pytest.param(
        OWN_KEY,
        "postgresql:///ledger",
        {"PGHOST": "db.example"},
        "ledger.dsn",
        "got neither for db.example",
        id="dsn-trust-pghost",
    ),
    pytest.param(
        OWN_KEY,
        "postgresql://ledger_switch:secret@db.example/ledger",
        {},
        "ledger.dsn",
        "a password of at least 16 characters",
        id="dsn-password-short",
    ),
    pytest.param(
        OWN_KEY,
        "postgresql://ledger_switch@localhost/ledger?password=" + "a" * 20,
        {},
        "ledger.dsn",
        "not one character repeated",
        id="dsn-password-one-char",
    ),
    pytest.param(
        OWN_KEY,
        "host=db.example user=ledger_switch",
        {},
        "ledger.dsn",
        "a postgresql:// URI",
        id="dsn-not-a-uri",
    ),
]


@pytest.mark.parametrize(("keys", "dsn", "env", "key", "expected"), WEAK_IN_PRODUCTION)
def test_production_refuses_weak_secrets_and_a_trust_dsn(
    tmp_path: Path,
    *,
    keys: str,
    dsn: str | None,
    env: dict[str, str | None],
    key: str,
    expected: str,
) -> None:
    path = production_file(tmp_path, dsn, keys)
    merged = {name: value for name, value in {**PRODUCTION_ENV, **env}.items() if value}
    with pytest.raises(SettingsError) as caught:
        load_settings(path, merged)
    assert caught.value.key == key
    assert expected in caught.value.expected
    where = str(path)
    assert caught.value.source == where
    assert str(caught.value).startswith(f"{where}: {key}: expected ")
    # A secret is named, never shown.
    shown = [
        dsn_password(dsn or ""),
        *DEVELOPMENT_TOKENS.values(),
    ]
    assert not [secret for secret in shown if secret and secret in str(caught.value)]


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
    path.write_text(f'environment = "production"\n{OWN_KEY}')
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
    settings = load_settings(example, PRODUCTION_ENV)
    assert settings.environment == "production"
    assert settings.listener.tls is not None
    assert settings.listener.tls.require_subject_match
    # No development key in production: none until the operator adds their own.
    assert settings.admin.keys == ()
    assert settings.ledger.audit_dsn is not None
    assert "ledger_auditor" not in repr(settings)
    # Keys as the environment gives them: an array of inline tables.
    own = f'[{{id = "prometheus", role = "viewer", hash = "{OWN.key.hash_text}"}}]'
    settings = load_settings(example, {**PRODUCTION_ENV, "SWITCH__ADMIN__KEYS": own})
    assert settings.admin.keys == (OWN.key,)


def test_development_has_one_published_key_per_role() -> None:
    keys = load_settings().admin.keys
    assert keys == DEVELOPMENT_KEYS
    assert [key.role for key in keys] == list(Role)
    assert all(key.matches(DEVELOPMENT_TOKENS[key.role]) for key in keys)
    assert load_settings(None, {"SWITCH__ADMIN__KEYS": "[]"}).admin.keys == ()


def _keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return path


_HASH = OWN.key.hash_text
BAD_KEYS = [
    pytest.param(
        f'[[admin.keys]]\nid = "a"\nrole = "viewer"\nhash = "{OWN.token}"\n',
        "admin.keys[0].hash",
        "the hash `python -m switch keys new` printed",
        id="key-in-clear",
    ),
    pytest.param(
        f'[[admin.keys]]\nid = "a"\nrole = "viewer"\nhash = "{_HASH[:-1]}"\n',
        "admin.keys[0].hash",
        "hmac-sha256$<salt: 32 hex>$<digest: 64 hex>",
        id="hash-short",
    ),
    pytest.param(
        f'[[admin.keys]]\nid = "a"\nhash = "{_HASH}"\n',
        "admin.keys[0].role",
        "one of operator, auditor, viewer",
        id="role-missing",
    ),
    pytest.param(
        f'[[admin.keys]]\nid = "a"\nrole = "admin"\nhash = "{_HASH}"\n',
        "admin.keys[0].role",
        "one of operator, auditor, viewer, got 'admin'",
        id="role-unknown",
    ),
    pytest.param(
        f'[[admin.keys]]\nid = "a.b"\nrole = "viewer"\nhash = "{_HASH}"\n',
        "admin.keys[0].id",
        "1 to 63 letters, digits",
        id="id-dot",
    ),
    pytest.param(
        f'[[admin.keys]]\nrole = "viewer"\nhash = "{_HASH}"\n',
        "admin.keys[0].id",
        "1 to 63 letters, digits",
        id="id-missing",
    ),
    pytest.param(
        f'[[admin.keys]]\nid = "a"\nrole = "viewer"\nhash = "{_HASH}"\nsecret = "x"\n',
        "admin.keys[0].secret",
        "no such key",
        id="secret-field",
    ),
    pytest.param(
        f'[[admin.keys]]\nid = "a"\nrole = "viewer"\nhash = "{_HASH}"\n'
        f'[[admin.keys]]\nid = "a"\nrole = "auditor"\nhash = "{_HASH}"\n',
        "admin.keys[1].id",
        "a unique id, 'a' is taken",
        id="id-twice",
    ),
    pytest.param('[admin]\nkeys = "x"\n', "admin.keys", "an array of tables", id="not-tables"),
    pytest.param(
        '[ledger]\naudit_dsn = "host=db user=a"\n',
        "ledger.audit_dsn",
        "a postgresql:// URI",
        id="audit-dsn",
    ),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD_KEYS)
def test_bad_api_keys_are_named_and_never_shown(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_keys_file(tmp_path, text))
    assert caught.value.key == key
    assert expected in caught.value.expected
    assert OWN.token.partition(".")[2] not in str(caught.value)


def test_production_checks_the_audit_dsn_as_the_ledger_dsn(tmp_path: Path) -> None:
    path = production_file(tmp_path)
    path.write_text(
        path.read_text() + '[ledger]\naudit_dsn = "postgresql://auditor@db.example/ledger"\n'
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path, PRODUCTION_ENV)
    assert caught.value.key == "ledger.audit_dsn"
    assert "got neither for db.example" in caught.value.expected


@pytest.mark.parametrize("table", ["admin", "alerts"])
def test_an_audit_dsn_where_it_used_to_be_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, table: str
) -> None:
    path = tmp_path / "switch.toml"
    path.write_text(f'[{table}]\naudit_dsn = "postgresql://auditor@db.example/ledger"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"{path}: {table}.audit_dsn: expected no audit_dsn here: it is [ledger] audit_dsn,"
        " which the auditor API and the journal check both read"
    )

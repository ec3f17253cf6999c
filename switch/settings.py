"""Settings: read once from a TOML file plus environment overrides into frozen dataclasses.

Every key has a default (the same values `config/switch.toml` documents), so no file is needed
for development. An override is `SWITCH__<TABLE>__<KEY>=<value>`, e.g.
`SWITCH__LISTENER__PORT=9000`; the value is read as a TOML value when it parses as one
(`true`, `42`, `"text"`), else as a string. Any invalid or unknown key is a `SettingsError` that
names the file (or variable), the key and what was expected. With `environment = "production"`,
development and weak secrets are refused the same way (see `switch.production`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from ledger.settings import LedgerSettings
from switch.access import DEVELOPMENT_KEYS, HASH_FORMAT, KEY_ID, ApiKey, Role, development_key_in
from switch.iso8583.spec import (
    BINARY_FIELD_ENCODINGS,
    BITMAP_ENCODINGS,
    LENGTH_HEADER_KINDS,
    Dialect,
)
from switch.production import (
    PASSWORD_CHARS_MIN,
    POSTGRES_SCHEMES,
    dsn_password,
    unguarded_dsn,
    weak_secret,
)
from tomltable import TomlTable

ENV_PREFIX = "SWITCH__"
LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
Environment = Literal["development", "production"]
ENVIRONMENTS: tuple[Environment, ...] = ("development", "production")


class SettingsError(Exception):
    """A configuration value is missing, unknown or invalid; says where and what was expected."""

    def __init__(self, source: str, key: str, expected: str) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        super().__init__(f"{source}: {key}: expected {expected}")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    # With a client CA, terminals must present a certificate it signed (mutual TLS).
    client_ca_file: Path | None
    handshake_timeout_ms: int
    # The certificate's subject CN must be the terminal id the connection signs on as.
    require_subject_match: bool
    # A terminal whose certificate expires within this many days is warned about on connecting.
    certificate_expiry_warning_days: int
    # Refused handshakes are logged at most this many lines per reason per interval.
    refused_log_lines_max: int
    refused_log_interval_ms: int


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    host: str
    port: int
    dialect: Dialect
    max_connections: int
    max_in_flight_per_connection: int
    max_frame_bytes: int
    idle_timeout_ms: int
    # A frame that has begun arriving must be complete within this (slow senders are closed).
    frame_timeout_ms: int
    tls: TlsSettings | None
    # Set for the workers of `serve --workers N` (never from a file): their listeners share
    # the port with SO_REUSEPORT.
    reuse_port: bool = False


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: LogFormat
    level: str


@dataclass(frozen=True, slots=True)
class AdminSettings:
    enabled: bool
    host: str
    port: int
    # The API keys (their hashes) and roles; unset in development: the published development
    # keys (switch.access.DEVELOPMENT_TOKENS), refused in production.
    keys: tuple[ApiKey, ...]
    # As `ListenerSettings.reuse_port`: the workers of `--workers` share this port too.
    reuse_port: bool = False


HsmBackend = Literal["local", "network"]
HSM_BACKENDS: tuple[HsmBackend, ...] = ("local", "network")


@dataclass(frozen=True, slots=True)
class HsmTlsSettings:
    # The CA that signed the HSMs' certificates, and this switch's own certificate and key (the
    # HSM gives the switch profile to its certificate's CN).
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class HsmSettings:
    backend: HsmBackend
    # Local backend: the LMK file (64 hex, owner-only); none = $HSM_LMK, else the development LMK.
    lmk_file: Path | None
    # Network backend: "host:port" of each HSM, tried in order with failover.
    addresses: tuple[str, ...]
    pool_size: int
    timeout_ms: int
    # Network backend: mutual TLS to the HSMs (`[hsm.tls]`); none = plain TCP (development).
    tls: HsmTlsSettings | None
    # Local backend: the PAN-hash key (role PHK) as a key block under the LMK; none = the
    # development key (refused in production).
    pan_hash_key: str | None


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    # One budget per request across HSM and ledger; well under a terminal's own timeout.
    request_deadline_ms: int
    # Verify F64/F128 on every request after key change, and MAC every response.
    require_mac: bool
    # A financial request whose pipeline takes this long is logged again as `slow_request`,
    # with the time of each step it went through.
    slow_request_ms: int
    # A chip card's ATC this far or further above its last is logged as `atc_jump` (a card used
    # offline many times, or a clone that started ahead); it is not declined.
    atc_jump_logged: int


@dataclass(frozen=True, slots=True)
class OperationsSettings:
    """The `[operations]` table: terminal events and traffic recorded in the ledger."""

    flush_interval_ms: int
    traffic_flush_interval_ms: int
    # Traffic is counted per terminal in buckets this long (the SLA's and the rules' grain).
    bucket_ms: int
    events_queue_max: int
    traffic_buckets_max: int
    batch_max: int
    beat_interval_ms: int
    pool_size: int
    # Each operations database call's time limit (its own pool: never the requests').
    timeout_ms: int
    # The fleet's snapshot is read at most once per this, however many pages poll.
    fleet_cache_ms: int


@dataclass(frozen=True, slots=True)
class WebhookSection:
    urls: tuple[str, ...]
    timeout_ms: int
    attempts_max: int
    backoff_ms: int
    backoff_max_ms: int
    queue_max: int


@dataclass(frozen=True, slots=True)
class AlertsSettings:
    """The `[alerts]` table: rule thresholds, the journal check and the webhooks."""

    evaluate_interval_ms: int
    terminal_offline_after_ms: int
    window_ms: int
    baseline_ms: int
    decline_ratio_min: float
    decline_spike_factor: float
    requests_min: int
    unavailable_ratio_max: float
    arqc_failure_ratio_max: float
    latency_p99_slo_ms: int
    dependency_for_ms: int
    audit_interval_ms: int
    audit_timeout_ms: int
    webhook: WebhookSection


@dataclass(frozen=True, slots=True)
class Settings:
    environment: Environment
    listener: ListenerSettings
    admin: AdminSettings
    hsm: HsmSettings
    # The HSM hashes card numbers (pan_hash_key None): see hsm.pan_hash_key.
    ledger: LedgerSettings
    pipeline: PipelineSettings
    logging: LoggingSettings
    shutdown_grace_ms: int
    source: str
    operations: OperationsSettings
    alerts: AlertsSettings
    # `[switch] workers`: processes sharing the listener and the operations port (1: this one).
    workers: int = 1


WORKERS_MAX = 64


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or only defaults), apply `SWITCH__…` overrides from `env`, validate."""
    data: dict[str, object] = {}
    source = "built-in defaults"
    base = Path.cwd()
    if path is not None:
        source = str(path)
        base = path.parent
        data = _read_toml(path)
    overridden = _apply_env(data, env or {})
    source = source if not overridden else f"{source} + environment"
    table = TomlTable(data, "", source, error=SettingsError, base=base)
    return _parse(table, env or {})


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(str(path), "(file)", "an existing TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), "(file)", f"valid TOML: {exc}") from None


def _apply_env(data: dict[str, object], env: Mapping[str, str]) -> bool:
    overridden = False
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            raise SettingsError(name, "(variable name)", "SWITCH__TABLE__KEY")
        table = data
        for key in keys[:-1]:
            child = table.setdefault(key, {})
            if not isinstance(child, dict):
                raise SettingsError(name, ".".join(keys), "a key inside a table")
            table = child
        table[keys[-1]] = _env_value(raw)
        overridden = True
    return overridden


def _env_value(raw: str) -> object:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _parse(root: TomlTable, env: Mapping[str, str]) -> Settings:
    environment = root.choice("environment", "development", ENVIRONMENTS)
    listener = _parse_listener(root.table("listener"))
    admin = _parse_admin(root.table("admin"), environment, env)
    hsm = _parse_hsm(root.table("hsm"), environment)
    ledger = _parse_ledger(root.table("ledger"), environment, env)
    pipeline_table = root.table("pipeline")
    pipeline = PipelineSettings(
        request_deadline_ms=pipeline_table.integer(
            "request_deadline_ms", 2_000, minimum=50, maximum=60_000
        ),
        require_mac=pipeline_table.flag("require_mac", True),
        slow_request_ms=pipeline_table.integer(
            "slow_request_ms", 1_000, minimum=1, maximum=600_000
        ),
        atc_jump_logged=pipeline_table.integer("atc_jump_logged", 100, minimum=2, maximum=65_535),
    )
    pipeline_table.finish()
    logs = root.table("logging")
    logging = LoggingSettings(
        format=logs.choice("format", "auto", LOG_FORMATS),
        level=logs.choice("level", "info", LOG_LEVELS),
    )
    logs.finish()
    shutdown = root.table("shutdown")
    grace_ms = shutdown.integer("grace_ms", 5_000, minimum=0, maximum=600_000)
    shutdown.finish()
    operations = _parse_operations(root.table("operations"))
    alerts = _parse_alerts(root.table("alerts"), environment, env)
    process = root.table("switch")
    workers = process.integer("workers", 1, minimum=1, maximum=WORKERS_MAX)
    process.finish()
    root.finish()
    return Settings(
        environment,
        listener,
        admin,
        hsm,
        ledger,
        pipeline,
        logging,
        grace_ms,
        root.source,
        operations,
        alerts,
        workers=workers,
    )


def _parse_operations(table: TomlTable) -> OperationsSettings:
    settings = OperationsSettings(
        flush_interval_ms=table.integer("flush_interval_ms", 1_000, minimum=10, maximum=60_000),
        traffic_flush_interval_ms=table.integer(
            "traffic_flush_interval_ms", 10_000, minimum=10, maximum=600_000
        ),
        bucket_ms=table.integer("bucket_ms", 60_000, minimum=100, maximum=3_600_000),
        events_queue_max=table.integer("events_queue_max", 10_000, minimum=10, maximum=10_000_000),
        traffic_buckets_max=table.integer(
            "traffic_buckets_max", 50_000, minimum=10, maximum=10_000_000
        ),
        batch_max=table.integer("batch_max", 1_000, minimum=1, maximum=100_000),
        beat_interval_ms=table.integer("beat_interval_ms", 5_000, minimum=10, maximum=600_000),
        pool_size=table.integer("pool_size", 2, minimum=1, maximum=100),
        timeout_ms=table.integer("timeout_ms", 5_000, minimum=10, maximum=600_000),
        fleet_cache_ms=table.integer("fleet_cache_ms", 1_000, minimum=0, maximum=600_000),
    )
    if (3_600_000 % settings.bucket_ms) != 0:
        # Buckets tile hours (and so business days, which start on a whole minute).
        raise SettingsError(table.source, table.key_name("bucket_ms"), "a divisor of an hour")
    table.finish()
    return settings


def _parse_alerts(
    table: TomlTable, environment: Environment, env: Mapping[str, str]
) -> AlertsSettings:
    _refuse_moved_audit_dsn(table)
    settings = AlertsSettings(
        evaluate_interval_ms=table.integer(
            "evaluate_interval_ms", 5_000, minimum=10, maximum=600_000
        ),
        terminal_offline_after_ms=table.integer(
            "terminal_offline_after_ms", 300_000, minimum=0, maximum=86_400_000
        ),
        window_ms=table.integer("window_ms", 300_000, minimum=100, maximum=86_400_000),
        baseline_ms=table.integer("baseline_ms", 3_600_000, minimum=100, maximum=604_800_000),
        decline_ratio_min=table.ratio("decline_ratio_min", 0.2, minimum=0, maximum=1),
        decline_spike_factor=table.ratio("decline_spike_factor", 3.0, minimum=1, maximum=1_000),
        requests_min=table.integer("requests_min", 20, minimum=1, maximum=1_000_000),
        unavailable_ratio_max=table.ratio("unavailable_ratio_max", 0.05, minimum=0, maximum=1),
        arqc_failure_ratio_max=table.ratio("arqc_failure_ratio_max", 0.02, minimum=0, maximum=1),
        latency_p99_slo_ms=table.integer("latency_p99_slo_ms", 1_000, minimum=1, maximum=600_000),
        dependency_for_ms=table.integer("dependency_for_ms", 10_000, minimum=0, maximum=3_600_000),
        audit_interval_ms=table.integer(
            "audit_interval_ms", 3_600_000, minimum=1_000, maximum=604_800_000
        ),
        audit_timeout_ms=table.integer(
            "audit_timeout_ms", 600_000, minimum=1_000, maximum=86_400_000
        ),
        webhook=_parse_webhook(table.table("webhook")),
    )
    table.finish()
    return settings


def _parse_webhook(table: TomlTable) -> WebhookSection:
    settings = WebhookSection(
        urls=table.urls("urls"),
        timeout_ms=table.integer("timeout_ms", 2_000, minimum=10, maximum=60_000),
        attempts_max=table.integer("attempts_max", 5, minimum=1, maximum=100),
        backoff_ms=table.integer("backoff_ms", 500, minimum=1, maximum=600_000),
        backoff_max_ms=table.integer("backoff_max_ms", 30_000, minimum=1, maximum=3_600_000),
        queue_max=table.integer("queue_max", 1_000, minimum=1, maximum=1_000_000),
    )
    table.finish()
    return settings


def _parse_hsm(table: TomlTable, environment: Environment) -> HsmSettings:
    backend = table.choice("backend", "local", HSM_BACKENDS)
    addresses = table.addresses("addresses", ("127.0.0.1:1500",))
    settings = HsmSettings(
        backend=backend,
        lmk_file=table.path("lmk_file"),
        addresses=addresses,
        pool_size=table.integer("pool_size", 4, minimum=1, maximum=256),
        timeout_ms=table.integer("timeout_ms", 1_000, minimum=10, maximum=60_000),
        tls=_parse_hsm_tls(table.table("tls")) if table.has("tls") else None,
        pan_hash_key=table.optional_text("pan_hash_key"),
    )
    if environment == "production" and backend == "local" and settings.pan_hash_key is None:
        problem = "a PAN-hash key (PHK) block under the LMK in production"
        raise SettingsError(table.source, table.key_name("pan_hash_key"), problem)
    table.finish()
    return settings


def _parse_hsm_tls(table: TomlTable) -> HsmTlsSettings:
    settings = HsmTlsSettings(
        ca_file=table.pem_file("ca_file"),
        cert_file=table.pem_file("cert_file"),
        key_file=table.pem_file("key_file"),
    )
    table.finish()
    return settings


_LEDGER_DEFAULTS = LedgerSettings()


def _parse_ledger(
    table: TomlTable, environment: Environment, env: Mapping[str, str]
) -> LedgerSettings:
    """The `[ledger]` table. A DSN with a password belongs in the environment
    (SWITCH__LEDGER__DSN)."""
    dsn = table.optional_text("dsn")
    if dsn is not None:
        _check_dsn(table, dsn, environment, env)
    audit_dsn = table.optional_text("audit_dsn")
    if audit_dsn is not None:
        _check_dsn(table, audit_dsn, environment, env, key="audit_dsn")
    ha = table.flag("ha", _LEDGER_DEFAULTS.ha)
    if ha and dsn is not None:
        raise SettingsError(
            table.source,
            table.key_name("ha"),
            "false with a dsn: ha = true runs a local formation and uses its DSN (for a"
            " formation of your own, set dsn to its multi-host DSN and leave ha unset)",
        )
    pool_size_min = table.integer(
        "pool_size_min", _LEDGER_DEFAULTS.pool_size_min, minimum=1, maximum=1_000
    )
    pool_size_max = table.integer(
        "pool_size_max", _LEDGER_DEFAULTS.pool_size_max, minimum=1, maximum=1_000
    )
    if pool_size_min > pool_size_max:
        raise SettingsError(table.source, table.key_name("pool_size_min"), "at most pool_size_max")
    calls_in_flight_max = table.integer(
        "calls_in_flight_max", _LEDGER_DEFAULTS.calls_in_flight_max, minimum=1, maximum=1_000
    )
    if 2 * calls_in_flight_max > pool_size_max:
        # Reads and writes each have calls_in_flight_max calls; sign-ons need a connection too.
        raise SettingsError(
            table.source, table.key_name("calls_in_flight_max"), "at most pool_size_max / 2"
        )
    settings = LedgerSettings(
        dsn=dsn,
        audit_dsn=audit_dsn,
        # Relative to the working directory, as for `python -m ledger --data-dir`.
        data_dir=Path(table.optional_text("data_dir") or _LEDGER_DEFAULTS.data_dir),
        ha=ha,
        ha_dir=Path(table.optional_text("ha_dir") or _LEDGER_DEFAULTS.ha_dir),
        pool_size_min=pool_size_min,
        pool_size_max=pool_size_max,
        pan_hash_key=None,  # the HSM hashes card numbers (RequestProcessor's lookup)
        pin_tries_max=table.integer(
            "pin_tries_max", _LEDGER_DEFAULTS.pin_tries_max, minimum=1, maximum=99
        ),
        business_day_cutover=table.time_of_day(
            "business_day_cutover", _LEDGER_DEFAULTS.business_day_cutover
        ),
        cross_customer_transfers=table.flag(
            "cross_customer_transfers", _LEDGER_DEFAULTS.cross_customer_transfers
        ),
        statement_timeout_ms=table.integer(
            "statement_timeout_ms",
            _LEDGER_DEFAULTS.statement_timeout_ms,
            minimum=100,
            maximum=600_000,
        ),
        calls_in_flight_max=calls_in_flight_max,
        batch_size_max=table.integer(
            "batch_size_max", _LEDGER_DEFAULTS.batch_size_max, minimum=1, maximum=1_000
        ),
        stale_retries_max=table.integer(
            "stale_retries_max", _LEDGER_DEFAULTS.stale_retries_max, minimum=1, maximum=10_000
        ),
    )
    table.finish()
    return settings


def _refuse_moved_audit_dsn(table: TomlTable) -> None:
    # [admin] and [alerts] each had one; a config still carrying it would otherwise be read
    # with the journal quietly unread.
    if table.has("audit_dsn"):
        raise SettingsError(
            table.source,
            table.key_name("audit_dsn"),
            "no audit_dsn here: it is [ledger] audit_dsn, which the auditor API and the"
            " journal check both read",
        )


def _check_dsn(
    table: TomlTable,
    dsn: str,
    environment: Environment,
    env: Mapping[str, str],
    *,
    key: str = "dsn",
) -> None:
    key = table.key_name(key)
    if urlsplit(dsn).scheme not in POSTGRES_SCHEMES:
        # asyncpg reads only the URI form; the key=value form would fail at connection time.
        raise SettingsError(table.source, key, "a postgresql:// URI")
    if environment != "production":
        return
    password = dsn_password(dsn)
    problem = unguarded_dsn(dsn, env) or (
        weak_secret(password, "a password", "character", PASSWORD_CHARS_MIN)
        if password is not None
        else None
    )
    if problem is not None:
        raise SettingsError(table.source, key, problem)


def _parse_admin(
    table: TomlTable, environment: Environment, env: Mapping[str, str]
) -> AdminSettings:
    if table.has("token"):
        raise SettingsError(
            table.source,
            table.key_name("token"),
            "no token: the operations app takes API keys with roles instead ([[admin.keys]];"
            " mint one with `python -m switch keys new --role operator`)",
        )
    _refuse_moved_audit_dsn(table)
    key_tables = table.tables("keys")
    if key_tables is None:
        keys = DEVELOPMENT_KEYS if environment == "development" else ()
    else:
        keys = tuple(_parse_key(key_table, environment) for key_table in key_tables)
    for index, key in enumerate(keys):
        if key.key_id in [other.key_id for other in keys[:index]]:
            raise SettingsError(
                table.source,
                table.key_name(f"keys[{index}].id"),
                f"a unique id, {key.key_id!r} is taken",
            )
    settings = AdminSettings(
        enabled=table.flag("enabled", True),
        host=table.text("host", "127.0.0.1"),
        port=table.integer("port", 8584, minimum=0, maximum=65535),
        keys=keys,
    )
    table.finish()
    return settings


def _parse_key(table: TomlTable, environment: Environment) -> ApiKey:
    """One `[[admin.keys]]` entry: id, role and the hash `python -m switch keys new` printed."""
    key_id = table.text("id", "")
    if not KEY_ID.fullmatch(key_id):
        expected = f"1 to 63 letters, digits, '-' or '_' (not first), got {key_id!r}"
        raise SettingsError(table.source, table.key_name("id"), expected)
    if not table.has("role"):
        expected = f"one of {', '.join(Role)} (what the key may do)"
        raise SettingsError(table.source, table.key_name("role"), expected)
    role = Role(table.choice("role", Role.VIEWER, tuple(Role)))
    hash_text = table.text("hash", "")
    try:
        key = ApiKey.from_hash(key_id, role, hash_text)
    except ValueError:
        # Never echo the value: it may be a key pasted in clear by mistake.
        expected = f"the hash `python -m switch keys new` printed ({HASH_FORMAT}), never a key"
        raise SettingsError(table.source, table.key_name("hash"), expected) from None
    development = development_key_in(key)
    if environment == "production" and development is not None:
        expected = (
            "a key of your own in production (`python -m switch keys new`),"
            f" got the development key {development}"
        )
        raise SettingsError(table.source, table.key_name("hash"), expected)
    table.finish()
    return key


def _parse_listener(table: TomlTable) -> ListenerSettings:
    dialect = Dialect(
        bitmap=table.choice("bitmap", "binary", BITMAP_ENCODINGS),
        binary_fields=table.choice("binary_fields", "raw", BINARY_FIELD_ENCODINGS),
        length_header=table.choice("length_header", "2b", LENGTH_HEADER_KINDS),
        tpdu=table.flag("tpdu", False),
    )
    settings = ListenerSettings(
        host=table.text("host", "127.0.0.1"),
        port=table.integer("port", 8583, minimum=0, maximum=65535),
        dialect=dialect,
        max_connections=table.integer("max_connections", 2_000, minimum=1, maximum=100_000),
        max_in_flight_per_connection=table.integer(
            "max_in_flight_per_connection", 16, minimum=1, maximum=1_024
        ),
        max_frame_bytes=table.integer("max_frame_bytes", 4_096, minimum=64, maximum=65_535),
        idle_timeout_ms=table.integer("idle_timeout_ms", 300_000, minimum=100, maximum=86_400_000),
        frame_timeout_ms=table.integer("frame_timeout_ms", 10_000, minimum=100, maximum=600_000),
        tls=_parse_tls(table.table("tls")) if table.has("tls") else None,
    )
    table.finish()
    return settings


def _parse_tls(table: TomlTable) -> TlsSettings:
    cert_file = table.path("cert_file")
    key_file = table.path("key_file")
    for key, value in (("cert_file", cert_file), ("key_file", key_file)):
        if value is None or not value.is_file():
            raise SettingsError(
                table.source, table.key_name(key), f"a readable PEM file, got {value}"
            )
    client_ca_file = table.path("client_ca_file")
    if client_ca_file is not None and not client_ca_file.is_file():
        raise SettingsError(
            table.source,
            table.key_name("client_ca_file"),
            f"a readable PEM file, got {client_ca_file}",
        )
    settings = TlsSettings(
        cert_file=cast(Path, cert_file),
        key_file=cast(Path, key_file),
        client_ca_file=client_ca_file,
        handshake_timeout_ms=table.integer(
            "handshake_timeout_ms", 10_000, minimum=100, maximum=120_000
        ),
        require_subject_match=table.flag("require_subject_match", False),
        certificate_expiry_warning_days=table.integer(
            "certificate_expiry_warning_days", 30, minimum=0, maximum=3_650
        ),
        refused_log_lines_max=table.integer("refused_log_lines_max", 10, minimum=1, maximum=10_000),
        refused_log_interval_ms=table.integer(
            "refused_log_interval_ms", 60_000, minimum=1_000, maximum=86_400_000
        ),
    )
    if settings.require_subject_match and client_ca_file is None:
        raise SettingsError(
            table.source,
            table.key_name("require_subject_match"),
            "client_ca_file as well (only a client certificate names a terminal)",
        )
    table.finish()
    return settings

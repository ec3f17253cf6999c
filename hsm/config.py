"""``python -m hsm serve``'s configuration: the ``[hsm]`` table of a TOML file, read once into
frozen values. Like the switch's settings, an invalid, missing or unknown key is a
``ConfigError`` that names the file, the key and what was expected. Relative paths are relative
to the file. Command-line options arrive as overrides of the table's keys.
"""

from __future__ import annotations

import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from hsm.access import PROFILES, SHA256_LENGTH, AccessPolicy, ClientRule
from hsm.errors import KeyBlockError
from hsm.keys import KeyRole, StoredKey
from hsm.ratelimit import PinRateLimit
from hsm.server import ServerConfig
from hsm.tls import ServerTls, server_context
from tomltable import TomlTable


class ConfigError(Exception):
    """A configuration value is missing, unknown or invalid; says where and what was expected."""

    def __init__(self, source: str, key: str, expected: str) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        super().__init__(f"{source}: {key}: expected {expected}")


@dataclass(frozen=True)
class HsmConfig:
    source: str
    server: ServerConfig
    production: bool
    lmk_file: Path | None
    lmk_hex: str | None
    pan_hash_key: StoredKey | None
    # None: off in development, PinRateLimit() in production (see hsm.engine).
    pin_rate_limit: PinRateLimit | None


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> HsmConfig:
    """Read the ``[hsm]`` table of ``path`` (or only defaults), apply ``overrides``, validate."""
    data: dict[str, object] = {}
    source, base = "built-in defaults (no --config file)", Path.cwd()
    if path is not None:
        source, base = str(path), path.parent
        data = _read_toml(path)
    hsm = data.get("hsm", {})
    if not isinstance(hsm, Mapping):
        raise ConfigError(source, "hsm", f"a table, got {hsm!r}")
    merged = {**cast(Mapping[str, object], hsm), **(overrides or {})}
    if overrides:
        source = f"{source} + command line"
    return _parse(TomlTable(merged, "hsm.", source, error=ConfigError, base=base))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError:
        raise ConfigError(str(path), "(file)", "an existing, readable TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(file)", f"valid TOML: {exc}") from None


def _parse(table: TomlTable) -> HsmConfig:
    production = table.flag("production", False)
    tls_table = table.optional_table("tls")
    tls = None if tls_table is None else _tls(tls_table)
    clients = tuple(_client(t) for t in table.tables("clients") or ())
    _check_access(table, tls, clients, production=production)
    server = ServerConfig(
        host=table.text("host", ServerConfig.host),
        port=table.integer("port", ServerConfig.port, minimum=0, maximum=65_535),
        connections_max=table.integer(
            "connections_max", ServerConfig.connections_max, minimum=1, maximum=100_000
        ),
        idle_timeout_ms=table.integer(
            "idle_timeout_ms", ServerConfig.idle_timeout_ms, minimum=100, maximum=86_400_000
        ),
        tls=tls,
        access=AccessPolicy(clients),
    )
    config = HsmConfig(
        source=table.source,
        server=server,
        production=production,
        lmk_file=table.file("lmk_file"),
        lmk_hex=table.optional_text("lmk_hex"),
        pan_hash_key=_pan_hash_key(table),
        pin_rate_limit=_pin_rate_limit(table),
    )
    table.finish()
    return config


def _tls(table: TomlTable) -> ServerTls:
    tls = ServerTls(
        cert_file=table.required_file("cert_file"),
        key_file=table.required_file("key_file"),
        client_ca_file=table.required_file("client_ca_file"),
        handshake_timeout_ms=table.integer(
            "handshake_timeout_ms", ServerTls.handshake_timeout_ms, minimum=100, maximum=120_000
        ),
    )
    table.finish()
    try:
        server_context(tls)  # loaded now so a wrong file stops start-up with its key named
    except (ssl.SSLError, OSError) as exc:
        raise table.error(
            "", f"PEM files that load, key_file holding cert_file's private key ({exc})"
        ) from None
    return tls


def _client(table: TomlTable) -> ClientRule:
    cn = table.optional_text("cn")
    if cn is None:
        raise table.error("cn", "the subject common name of the client's certificate")
    profile = table.optional_text("profile")
    if profile is None or profile not in PROFILES:
        raise table.error("profile", f"one of {', '.join(sorted(PROFILES))}, got {profile!r}")
    pin = table.optional_text("sha256")
    rule = ClientRule(cn, profile, None if pin is None else _fingerprint(table, pin))
    table.finish()
    return rule


def _fingerprint(table: TomlTable, text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != SHA256_LENGTH:
        raise table.error("sha256", f"the certificate's SHA-256 fingerprint (64 hex), got {text!r}")
    return raw


def _check_access(
    table: TomlTable, tls: ServerTls | None, clients: tuple[ClientRule, ...], *, production: bool
) -> None:
    if tls is None and production:
        raise table.error(
            "tls",
            "a [hsm.tls] table (cert_file, key_file, client_ca_file): production = true "
            "serves only over mutual TLS",
        )
    if tls is None and clients:
        raise table.error("tls", "a [hsm.tls] table: clients are known by their certificates")
    if tls is not None and not clients:
        raise table.error(
            "clients",
            "at least one [[hsm.clients]] (cn, profile): with TLS, an unlisted client "
            "may run nothing",
        )
    names = [rule.cn for rule in clients]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise table.error(f"clients[{index}].cn", f"a CN no other client has, got {name!r}")


def _pan_hash_key(table: TomlTable) -> StoredKey | None:
    text = table.optional_text("pan_hash_key")
    if text is None:
        return None
    try:
        key = StoredKey.from_text(text)
    except KeyBlockError:
        key = None
    if key is None or key.role is not KeyRole.PHK:
        raise table.error("pan_hash_key", "a PHK key block (TR-31 version D, under the LMK)")
    return key


def _pin_rate_limit(table: TomlTable) -> PinRateLimit | None:
    keys = ("pin_verifications_per_minute_max", "pin_cards_tracked_max")
    if not any(table.has(key) for key in keys):
        return None
    return PinRateLimit(
        per_minute_max=table.integer(
            keys[0], PinRateLimit.per_minute_max, minimum=1, maximum=10_000
        ),
        cards_tracked_max=table.integer(
            keys[1], PinRateLimit.cards_tracked_max, minimum=1, maximum=10_000_000
        ),
    )

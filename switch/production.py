"""What production refuses in the switch's settings: weak secrets, and a database on another host
reached with neither a password nor a verified TLS server. Pure: each check says what was
expected, or None when the value passes; `switch.settings` turns that into a `SettingsError`.

What a DSN alone cannot show: the server's pg_hba rules, and ~/.pgpass (read by asyncpg when no
password is given). So a database on another host needs a password named where the switch can
see it (the DSN, `?passfile=`, $PGPASSWORD or $PGPASSFILE) or `sslmode=verify-full` (a client
certificate, over TLS to a server whose name is verified).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

KEY_BYTES_MIN = 32
# Database passwords: long enough to resist guessing at the server's rate, short enough for the
# password rules of managed PostgreSQL services.
PASSWORD_CHARS_MIN = 16
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def weak_secret(secret: str | bytes, noun: str, unit: str, length_min: int) -> str | None:
    """E.g. `weak_secret(password, "a password", "character", PASSWORD_CHARS_MIN)`."""
    if len(secret) < length_min:
        return f"{noun} of at least {length_min} {unit}s in production, got {len(secret)}"
    if len(set(secret)) == 1:
        return f"{noun} that is not one {unit} repeated, in production"
    return None


def dsn_password(dsn: str) -> str | None:
    parts = urlsplit(dsn)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        return unquote(userinfo.partition(":")[2])
    given = parse_qs(parts.query).get("password")
    return given[-1] if given else None


def unguarded_dsn(dsn: str, env: Mapping[str, str]) -> str | None:
    """Why the switch could reach a database on another host with no password and no verified
    TLS (so only the server's `trust` rules would stand between any client and the ledger)."""
    query = parse_qs(urlsplit(dsn).query)
    remote = [host for host in _hosts(dsn, query, env) if not _is_local(host)]
    if not remote:
        return None
    password_named = (
        dsn_password(dsn) is not None
        or "passfile" in query
        or "PGPASSWORD" in env
        or "PGPASSFILE" in env
    )
    sslmode = query.get("sslmode", [env.get("PGSSLMODE", "prefer")])[-1]
    if password_named or sslmode == "verify-full":
        return None
    return (
        "a password (in the DSN, ?passfile=, $PGPASSWORD or $PGPASSFILE) or sslmode=verify-full"
        f" for a database on another host in production, got neither for {remote[0]}"
    )


def _hosts(dsn: str, query: Mapping[str, list[str]], env: Mapping[str, str]) -> list[str]:
    """Every host the DSN may connect to; "" stands for libpq's default, the local socket."""
    _, _, host_list = urlsplit(dsn).netloc.rpartition("@")
    named = [_host_of(entry) for entry in host_list.split(",") if entry]
    named += [host for value in query.get("host", []) for host in value.split(",")]
    if not any(named):
        return env.get("PGHOST", "").split(",")
    return named


def _host_of(entry: str) -> str:
    """The host of "host", "host:port" or "[v6]:port", percent-decoded (a socket directory)."""
    if entry.startswith("["):
        return entry[1:].partition("]")[0]
    return unquote(entry.rpartition(":")[0] if ":" in entry else entry)


def _is_local(host: str) -> bool:
    if host in ("", "localhost") or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: wherever it resolves, it may be another machine

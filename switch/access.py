"""API keys and roles for the operations app. Pure: no I/O, no clock.

A key is `<id>.<secret>`: the id names it in logs and in the configuration, the secret is 32
random bytes (base64url). The switch keeps only a hash of the whole key, written
`hmac-sha256$<salt>$<digest>` (both hex): HMAC-SHA256 keyed with a random 16-byte salt of its
own, over the key's UTF-8 bytes. A slow password KDF would add nothing: the secret is random and
256 bits long, so nothing can be guessed, while a KDF's tens of milliseconds of CPU on every
request (a Prometheus scrape each 15 s per process, a flood of wrong keys) would be a cost paid
by the switch. The salt keeps two configurations' hashes of one key apart; hashing the id with
the secret keeps a hash from being reused under another id.

The development keys' secrets are published (config/switch.toml, README): a development
convenience, refused when `environment = "production"`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HASH_SCHEME = "hmac-sha256"
SALT_BYTES = 16
SECRET_BYTES = 32
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_HASH = re.compile(rf"{HASH_SCHEME}\$([0-9a-f]{{{2 * SALT_BYTES}}})\$([0-9a-f]{{64}})")
HASH_FORMAT = f"{HASH_SCHEME}$<salt: {2 * SALT_BYTES} hex>$<digest: 64 hex>"


class Role(enum.StrEnum):
    OPERATOR = "operator"  # runs the fleet: terminals, metrics (and alerts, cash, as they come)
    AUDITOR = "auditor"  # reads the journal, its reports and its verification
    VIEWER = "viewer"  # sees the fleet and the metrics, changes nothing


class Refusal(enum.StrEnum):
    """Why a request was not let through, as logged and counted."""

    NO_KEY = "no_key"  # no Authorization header
    MALFORMED = "malformed"  # not `Bearer <id>.<secret>`
    UNKNOWN_KEY = "unknown_key"  # no configured key has that id
    WRONG_SECRET = "wrong_secret"  # noqa: S105 - a reason: the id is known, not its secret
    WRONG_ROLE = "wrong_role"  # a good key whose role may not call this route

    @property
    def status(self) -> int:
        """401: present a (valid) key; 403: this key will never do."""
        return 403 if self is Refusal.WRONG_ROLE else 401


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its id, its role and the hash of `<id>.<secret>`."""

    key_id: str
    role: Role
    salt: bytes
    digest: bytes

    def __post_init__(self) -> None:
        assert KEY_ID.fullmatch(self.key_id), self.key_id
        assert len(self.salt) == SALT_BYTES, "salt"
        assert len(self.digest) == hashlib.sha256().digest_size, "digest"

    @classmethod
    def from_hash(cls, key_id: str, role: Role, text: str) -> ApiKey:
        """From the configured `hmac-sha256$<salt>$<digest>`; ValueError if it is not one."""
        match = _HASH.fullmatch(text)
        if match is None:
            raise ValueError(f"not {HASH_FORMAT}")
        return cls(key_id, role, bytes.fromhex(match[1]), bytes.fromhex(match[2]))

    @classmethod
    def derive(cls, key_id: str, role: Role, token: str, salt: bytes) -> ApiKey:
        return cls(key_id, role, salt, _digest(salt, token))

    @property
    def hash_text(self) -> str:
        return f"{HASH_SCHEME}${self.salt.hex()}${self.digest.hex()}"

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(_digest(self.salt, token), self.digest)


def _digest(salt: bytes, token: str) -> bytes:
    return hmac.new(salt, token.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class MintedKey:
    """A new key: `token` is shown once to its holder, `key` (its hash) goes in the config."""

    token: str
    key: ApiKey


def mint(role: Role, key_id: str | None = None) -> MintedKey:
    key_id = f"{role}-{secrets.token_hex(4)}" if key_id is None else key_id
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"a key id is 1 to 63 letters, digits, '-' or '_', not starting with '-' or '_'"
            f", got {key_id!r}"
        )
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    token = f"{key_id}.{secret}"
    return MintedKey(token, ApiKey.derive(key_id, role, token, secrets.token_bytes(SALT_BYTES)))


def config_lines(key: ApiKey) -> str:
    """The TOML to add to the switch's configuration for `key`."""
    return f'[[admin.keys]]\nid = "{key.key_id}"\nrole = "{key.role}"\nhash = "{key.hash_text}"\n'


# Published development keys, one per role: `Authorization: Bearer <token>`. Fixed salts, so
# that config/switch.toml can show the very hashes the built-in defaults hold.
DEVELOPMENT_TOKENS: Mapping[Role, str] = {
    role: f"dev-{role}.development-only-{role}-key" for role in Role
}
DEVELOPMENT_KEYS: tuple[ApiKey, ...] = tuple(
    ApiKey.derive(
        token.partition(".")[0], role, token, hashlib.sha256(token.encode()).digest()[:SALT_BYTES]
    )
    for role, token in DEVELOPMENT_TOKENS.items()
)


def development_key_in(key: ApiKey) -> str | None:
    """The development key `key` is (by id, or by hash under another id), if any."""
    for development in DEVELOPMENT_KEYS:
        if key.key_id == development.key_id or key.matches(DEVELOPMENT_TOKENS[development.role]):
            return development.key_id
    return None


@dataclass(frozen=True, slots=True)
class Granted:
    key: ApiKey


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    # The id the request claimed, when it had the shape of one (never the secret).
    key_id: str | None = None
    role: Role | None = None


# Compared against when the id is unknown, so that an unknown id costs the same HMAC as a
# known one with a wrong secret.
_DECOY = ApiKey("decoy", Role.VIEWER, bytes(SALT_BYTES), bytes(32))


class Keyring:
    """The configured keys by id; decides who a request is and whether it may call a route."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = {key.key_id: key for key in keys}

    def authorize(self, authorization: str | None, roles: frozenset[Role]) -> Granted | Refused:
        """`authorization`: the request's Authorization header; `roles`: those the route
        admits (never empty: open routes are not checked)."""
        assert roles, "an open route is not checked"
        if authorization is None:
            return Refused(Refusal.NO_KEY)
        scheme, _, token = authorization.partition(" ")
        key_id, dot, secret = token.strip().partition(".")
        if scheme.lower() != "bearer" or not dot or not secret or not KEY_ID.fullmatch(key_id):
            return Refused(Refusal.MALFORMED)
        key = self._keys.get(key_id)
        if key is None:
            _DECOY.matches(token.strip())
            return Refused(Refusal.UNKNOWN_KEY, key_id)
        if not key.matches(token.strip()):
            return Refused(Refusal.WRONG_SECRET, key_id, key.role)
        if key.role not in roles:
            return Refused(Refusal.WRONG_ROLE, key_id, key.role)
        return Granted(key)

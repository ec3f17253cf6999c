"""API keys: minted, hashed, matched, and who a request is (pure)."""

from __future__ import annotations

import re

import pytest

from switch.access import (
    DEVELOPMENT_KEYS,
    DEVELOPMENT_TOKENS,
    ApiKey,
    Granted,
    Keyring,
    Refusal,
    Refused,
    Role,
    config_lines,
    development_key_in,
    mint,
)

AUDITOR = frozenset({Role.AUDITOR})
FLEET = frozenset({Role.OPERATOR, Role.VIEWER})


def test_a_minted_key_is_its_id_and_256_random_bits_kept_only_as_a_salted_hash() -> None:
    minted = mint(Role.AUDITOR)
    key_id, _, secret = minted.token.partition(".")
    assert re.fullmatch(r"auditor-[0-9a-f]{8}", key_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert re.fullmatch(r"hmac-sha256\$[0-9a-f]{32}\$[0-9a-f]{64}", minted.key.hash_text)
    assert secret not in minted.key.hash_text
    assert ApiKey.from_hash(key_id, Role.AUDITOR, minted.key.hash_text) == minted.key
    assert minted.key.matches(minted.token)
    assert not minted.key.matches(minted.token + "x")
    again = mint(Role.AUDITOR, "alice")
    assert again.token.startswith("alice.")
    assert again.key.salt != minted.key.salt


def test_a_hash_is_bound_to_its_id() -> None:
    minted = mint(Role.VIEWER, "prometheus")
    secret = minted.token.partition(".")[2]
    assert not minted.key.matches(f"grafana.{secret}")


@pytest.mark.parametrize("key_id", ["", "-a", "_a", "a.b", "a b", "é", "a" * 64])
def test_a_key_id_is_letters_digits_dash_underscore(key_id: str) -> None:
    with pytest.raises(ValueError, match="a key id is 1 to 63 letters"):
        mint(Role.VIEWER, key_id)


@pytest.mark.parametrize(
    "text",
    ["", "hmac-sha256$00$00", "sha256$" + "0" * 32 + "$" + "0" * 64, "x.secret"],
)
def test_only_a_hash_is_taken_for_one(text: str) -> None:
    with pytest.raises(ValueError, match="not hmac-sha256"):
        ApiKey.from_hash("a", Role.VIEWER, text)


def test_config_lines_are_the_toml_of_the_key() -> None:
    minted = mint(Role.OPERATOR, "ops")
    assert config_lines(minted.key) == (
        f'[[admin.keys]]\nid = "ops"\nrole = "operator"\nhash = "{minted.key.hash_text}"\n'
    )


OWN = mint(Role.AUDITOR, "alice")
KEYRING = Keyring([OWN.key, *DEVELOPMENT_KEYS])
# (Authorization header, roles the route admits, the decision's reason, the id it names)
DECISIONS = [
    (None, AUDITOR, Refusal.NO_KEY, None),
    ("", AUDITOR, Refusal.MALFORMED, None),
    (f"Basic {OWN.token}", AUDITOR, Refusal.MALFORMED, None),
    (OWN.token, AUDITOR, Refusal.MALFORMED, None),
    ("Bearer alice", AUDITOR, Refusal.MALFORMED, None),
    ("Bearer alice.", AUDITOR, Refusal.MALFORMED, None),
    ("Bearer a.b/c.d", AUDITOR, Refusal.UNKNOWN_KEY, "a"),
    ("Bearer bob.secret", AUDITOR, Refusal.UNKNOWN_KEY, "bob"),
    ("Bearer alice.secret", AUDITOR, Refusal.WRONG_SECRET, "alice"),
    (f"Bearer {OWN.token}", FLEET, Refusal.WRONG_ROLE, "alice"),
    (f"Bearer {DEVELOPMENT_TOKENS[Role.VIEWER]}", AUDITOR, Refusal.WRONG_ROLE, "dev-viewer"),
]


@pytest.mark.parametrize(("header", "roles", "reason", "key_id"), DECISIONS)
def test_who_is_refused_and_why(
    header: str | None, roles: frozenset[Role], reason: Refusal, key_id: str | None
) -> None:
    decision = KEYRING.authorize(header, roles)
    assert isinstance(decision, Refused)
    assert (decision.reason, decision.key_id) == (reason, key_id)
    assert decision.reason.status == (403 if reason is Refusal.WRONG_ROLE else 401)


def test_a_key_of_a_permitted_role_is_granted() -> None:
    assert KEYRING.authorize(f"Bearer {OWN.token}", AUDITOR) == Granted(OWN.key)
    assert KEYRING.authorize(f"bearer  {OWN.token} ", AUDITOR) == Granted(OWN.key)
    for role in (Role.OPERATOR, Role.VIEWER):
        decision = KEYRING.authorize(f"Bearer {DEVELOPMENT_TOKENS[role]}", FLEET)
        assert isinstance(decision, Granted)
        assert decision.key.role is role


def test_development_keys_are_known_by_id_or_by_hash() -> None:
    assert [development_key_in(key) for key in DEVELOPMENT_KEYS] == [
        "dev-operator",
        "dev-auditor",
        "dev-viewer",
    ]
    renamed = ApiKey("mine", Role.VIEWER, DEVELOPMENT_KEYS[2].salt, DEVELOPMENT_KEYS[2].digest)
    assert development_key_in(renamed) == "dev-viewer"
    assert development_key_in(OWN.key) is None

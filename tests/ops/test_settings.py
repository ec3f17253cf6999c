"""The [operations] and [alerts] settings: defaults, limits, and errors that name the key."""

from __future__ import annotations

import pytest

from switch.settings import SettingsError, load_settings


def test_defaults() -> None:
    settings = load_settings()
    assert settings.operations.bucket_ms == 60_000
    assert settings.alerts.terminal_offline_after_ms == 300_000
    assert settings.alerts.decline_ratio_min == 0.2
    assert settings.ledger.audit_dsn is None
    assert settings.alerts.webhook.urls == ()


def test_environment_overrides_reach_the_nested_webhook_table() -> None:
    settings = load_settings(
        env={
            "SWITCH__ALERTS__WEBHOOK__URLS": '["https://hooks.example/a", "http://10.0.0.5:9000/b"]',
            "SWITCH__ALERTS__DECLINE_SPIKE_FACTOR": "4",
            "SWITCH__OPERATIONS__BUCKET_MS": "1000",
        }
    )
    assert settings.alerts.webhook.urls == ("https://hooks.example/a", "http://10.0.0.5:9000/b")
    assert settings.alerts.decline_spike_factor == 4.0
    assert settings.operations.bucket_ms == 1_000


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        ("OPERATIONS__BUCKET_MS", "7000", "operations.bucket_ms", "a divisor of an hour"),
        ("ALERTS__DECLINE_RATIO_MIN", "1.5", "alerts.decline_ratio_min", "a number from 0 to 1"),
        ("ALERTS__DECLINE_RATIO_MIN", "true", "alerts.decline_ratio_min", "a number from 0 to 1"),
        ("ALERTS__WEBHOOK__URLS", '["ftp://x/"]', "alerts.webhook.urls", "http(s):// URLs"),
        ("ALERTS__WEBHOOK__ATTEMPTS_MAX", "0", "alerts.webhook.attempts_max", "from 1 to 100"),
        ("LEDGER__AUDIT_DSN", '"host=db"', "ledger.audit_dsn", "a postgresql:// URI"),
        ("ALERTS__AUDIT_DSN", '"postgresql://db/x"', "alerts.audit_dsn", "[ledger] audit_dsn"),
        ("ALERTS__LOUDNESS", "11", "alerts.loudness", "no such key"),
    ],
)
def test_bad_values_name_the_key(variable: str, value: str, key: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={f"SWITCH__{variable}": value})
    assert caught.value.key == key
    assert expected in caught.value.expected

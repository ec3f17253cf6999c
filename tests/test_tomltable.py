"""The TOML table reader the switch's settings and the HSM's config share: each raises its own
error type with the same "source: key: expected …" message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hsm.config import ConfigError
from switch.settings import SettingsError
from tomltable import TomlTable


@pytest.mark.parametrize("error", [SettingsError, ConfigError])
@pytest.mark.parametrize(
    ("data", "read", "message"),
    [
        ({"port": 70000}, lambda t: t.integer("port", 1, minimum=0, maximum=65535),
         "f.toml: hsm.port: expected an integer from 0 to 65535, got 70000"),
        ({"tls": 1}, lambda t: t.table("tls"), "f.toml: hsm.tls: expected a table, got 1"),
        ({"clients": {}}, lambda t: t.tables("clients"),
         "f.toml: hsm.clients: expected an array of tables ([[hsm.clients]]), got {}"),
        ({"tls": {"cert": 1}}, lambda t: t.table("tls").finish(),
         "f.toml: hsm.tls.cert: expected no such key (check its spelling)"),
        ({"cn": ""}, lambda t: t.optional_text("cn"),
         "f.toml: hsm.cn: expected a non-empty string, got ''"),
    ],
)  # fmt: skip
def test_each_reader_raises_its_own_error(
    error: type[Exception],
    data: dict[str, object],
    read: Callable[[TomlTable], object],
    message: str,
) -> None:
    table = TomlTable(data, "hsm.", "f.toml", error=error, base=Path())
    with pytest.raises(error) as caught:
        read(table)
    assert str(caught.value) == message

"""One TOML table being read into typed values, for the switch's settings and the HSM's config.

Each reader raises its own error type (`SettingsError`, `ConfigError`): the table is given a
factory `(source, key, expected) -> Exception`, so every message reads "source: key: expected
what". The table remembers which keys were read, so `finish()` reports a leftover (misspelt)
key. Lives outside both packages because the HSM must not import the switch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import time
from pathlib import Path
from typing import TypeVar, cast
from urllib.parse import urlsplit

ErrorFactory = Callable[[str, str, str], Exception]

_C = TypeVar("_C", bound=str)
_ADDRESS = re.compile(r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}")


class TomlTable:
    """`prefix` is the table's dotted name with a trailing dot (`"admin."`, `""` for the root);
    `base` is the folder relative paths are read from."""

    def __init__(
        self,
        data: Mapping[str, object],
        prefix: str,
        source: str,
        *,
        error: ErrorFactory,
        base: Path,
    ) -> None:
        self._data = data
        self._prefix = prefix
        self.source = source
        self.base = base
        self._error = error
        self._used: set[str] = set()

    def key_name(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def error(self, key: str, expected: str) -> Exception:
        """An error about `key` of this table, or about the table itself when `key` is empty."""
        return self._error(self.source, self.key_name(key).rstrip("."), expected)

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str) -> object:
        self._used.add(key)
        return self._data.get(key)

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(key, f"an integer from {minimum} to {maximum}, got {value!r}")
        return value

    def ratio(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = None
        if value is None or not minimum <= value <= maximum:
            raise self.error(
                key, f"a number from {minimum:g} to {maximum:g}, got {self._data.get(key)!r}"
            )
        return float(value)

    def text(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self.error(key, f"a non-empty string, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self._data.get(key) is None else self.text(key, "")

    def choice(self, key: str, default: _C, choices: tuple[_C, ...]) -> _C:
        value = self._get(key)
        if value is None:
            return default
        if value not in choices:
            raise self.error(key, f"one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"true or false, got {value!r}")
        return value

    def urls(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
            isinstance(v, str) and urlsplit(v).scheme in ("http", "https") and urlsplit(v).netloc
            for v in value
        ):
            raise self.error(key, f"a list of http(s):// URLs, got {value!r}")
        return tuple(value)

    def addresses(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return default
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and _ADDRESS.fullmatch(v) for v in value)
        ):
            raise self.error(key, f'a list of "host:port" strings, got {value!r}')
        return tuple(value)

    def time_of_day(self, key: str, default: time) -> time:
        value = self._get(key)
        if value is None:
            return default
        expected = f'a time of day "HH:MM", got {value!r}'
        if not isinstance(value, str):
            raise self.error(key, expected)
        try:
            return time.fromisoformat(value)
        except ValueError:
            raise self.error(key, expected) from None

    def path(self, key: str) -> Path | None:
        """A path relative to `base`, not checked for existence."""
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, f"a file path, got {value!r}")
        return self.base / value

    def pem_file(self, key: str) -> Path:
        value = self.path(key)
        if value is None or not value.is_file():
            raise self.error(key, f"a readable PEM file, got {value}")
        return value

    def file(self, key: str) -> Path | None:
        text = self.optional_text(key)
        if text is None:
            return None
        path = self.base / text
        if not path.is_file():
            raise self.error(key, f"a readable file, got {path}")
        return path

    def required_file(self, key: str) -> Path:
        path = self.file(key)
        if path is None:
            raise self.error(key, "a file path (this key is required)")
        return path

    def table(self, key: str) -> TomlTable:
        """The table `[key]`, empty when absent."""
        return self.optional_table(key) or self._child({}, f"{key}.")

    def optional_table(self, key: str) -> TomlTable | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.error(key, f"a table, got {value!r}")
        return self._child(cast(Mapping[str, object], value), f"{key}.")

    def tables(self, key: str) -> list[TomlTable] | None:
        """An array of tables (`[[key]]`), None when absent."""
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise self.error(key, f"an array of tables ([[{self.key_name(key)}]]), got {value!r}")
        return [self._child(item, f"{key}[{index}].") for index, item in enumerate(value)]

    def _child(self, data: Mapping[str, object], prefix: str) -> TomlTable:
        return TomlTable(
            data, self.key_name(prefix), self.source, error=self._error, base=self.base
        )

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise self.error(unknown[0], "no such key (check its spelling)")

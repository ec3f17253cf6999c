"""structlog, configured once: JSON when stderr is not a terminal, console when it is.

`redact_card_data` runs before any renderer: it drops every field that may hold a PIN, PIN block,
track or ICC data or key material, and masks anything that looks like a card number (13–19
digits) to its first 6 and last 4 digits, wherever it appears in a value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from ledger.pan import mask_pan
from switch.settings import LoggingSettings

SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "pin",
        "pin_block",
        "track",
        "track1",
        "track2",
        "track3",
        "icc",
        "clear_key",
        "key",
        "lmk",
        "tmk",
        "tpk",
        "tak",
        "pvk",
        "bdk",
        "zpk",
        "field_35",
        "field_36",
        "field_45",
        "field_52",
        "field_55",
    }
)
PAN_DIGITS_MIN = 13
_PAN_LIKE = re.compile(rf"(?<![0-9])[0-9]{{{PAN_DIGITS_MIN},19}}(?![0-9])")
_REDACTED = "<redacted>"
# Values that cannot hold a card number, passed over without a look (a request's log line is
# made of them): shorter strings than a PAN, smaller integers, floats, None.
_TOO_SHORT_FOR_A_PAN = 10 ** (PAN_DIGITS_MIN - 1)


def mask_pans(text: str) -> str:
    return _PAN_LIKE.sub(lambda match: mask_pan(match.group(0)), text)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return mask_pans(value)
    if isinstance(value, dict):
        return {k: _REDACTED if k in SENSITIVE_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10**12:
        return mask_pans(str(value))
    return value


def redact_card_data(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in SENSITIVE_KEYS.intersection(event_dict):
        del event_dict[key]
    for key, value in event_dict.items():
        kind = type(value)
        if (kind is str and len(value) < PAN_DIGITS_MIN) or value is None or kind is float:
            continue
        if kind is int and value < _TOO_SHORT_FOR_A_PAN:
            continue
        event_dict[key] = _scrub(value)
    return event_dict


def _mask_exception(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A traceback renders late; mask it after formatting, before the renderer writes it.
    exception = event_dict.get("exception")
    if isinstance(exception, str):
        event_dict["exception"] = mask_pans(exception)
    return event_dict


def configure_logging(
    settings: LoggingSettings,
    stream: TextIO | None = None,
    *,
    fields: Mapping[str, object] | None = None,
) -> None:
    """`fields`: added to every line (a worker of `--workers` adds its pid)."""
    out = stream if stream is not None else sys.stderr
    constant = dict(fields or {})

    def add_fields(
        _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in constant.items():
            event_dict.setdefault(key, value)
        return event_dict

    console = settings.format == "console" or (settings.format == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_card_data,
        structlog.processors.format_exc_info,
        _mask_exception,
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

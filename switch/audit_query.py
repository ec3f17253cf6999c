"""The auditor API's query parameters: declared once (for the OpenAPI document and for the check
that refuses the unknown ones) and parsed here, with no I/O. A bad parameter is a
`BadParameter` naming it and what it must be; the app answers it with 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from ledger.journal_query import PAGE_ROWS_MAX, JournalFilter
from switch.routes import Parameter

PAGE_ROWS_DEFAULT = 100
ExportFormat = Literal["csv", "jsonl"]
# Exports without a bound: every record ever recorded (timestamptz holds both).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
_TIME_TEXT = (
    "an ISO 8601 date or date-time, UTC when it names no zone (in a URL, + is %2B),"
    " e.g. 2026-11-23 or 2026-11-23T10:15:00Z"
)


class BadParameter(Exception):
    """A query parameter that is unknown, repeated or malformed: the client's mistake."""

    def __init__(self, parameter: str, expected: str) -> None:
        self.parameter = parameter
        self.expected = expected
        super().__init__(f"{parameter}: expected {expected}")


TERMINAL = Parameter(
    "terminal",
    "Only this terminal's records (its id, ISO 8583 field 41).",
    {"type": "string", "minLength": 1, "maxLength": 16},
)
FROM = Parameter(
    "from", f"Records recorded at or after this time: {_TIME_TEXT}.", {"type": "string"}
)
TO = Parameter("to", f"Records recorded before this time: {_TIME_TEXT}.", {"type": "string"})
RESPONSE_CODE = Parameter(
    "response_code",
    "Only records answered with this response code (field 39), e.g. 51.",
    {"type": "string", "pattern": "^[0-9A-Z]{2}$"},
)
RRN = Parameter(
    "rrn",
    "Only records with this retrieval reference number (field 37).",
    {"type": "string", "pattern": "^[0-9A-Za-z]{1,12}$"},
)
PAN_LAST4 = Parameter(
    "pan_last4",
    "Only records of cards whose number ends in these four digits (as the masked PAN shows).",
    {"type": "string", "pattern": "^[0-9]{4}$"},
)
LIMIT = Parameter(
    "limit",
    f"Records per page, at most {PAGE_ROWS_MAX} (default {PAGE_ROWS_DEFAULT}).",
    {"type": "integer", "minimum": 1, "maximum": PAGE_ROWS_MAX, "default": PAGE_ROWS_DEFAULT},
)
CURSOR = Parameter(
    "cursor",
    "Where the next page starts: the `next_cursor` of the page before; absent for the first.",
    {"type": "string"},
)
EXPORT_FORMAT = Parameter(
    "format",
    "csv (with a header line) or jsonl (one JSON object a line); default csv.",
    {"type": "string", "enum": ["csv", "jsonl"], "default": "csv"},
)
BUSINESS_DATE = Parameter(
    "business_date",
    "The business day, YYYY-MM-DD (default: the current one, by ledger.business_day_cutover).",
    {"type": "string", "format": "date"},
)
JOB_ID = Parameter(
    "job_id", "A verification job's id, as its start returned it.", {"type": "string"}, "path"
)

JOURNAL_PARAMETERS = (TERMINAL, FROM, TO, RESPONSE_CODE, RRN, PAN_LAST4, LIMIT, CURSOR)
EXPORT_PARAMETERS = (EXPORT_FORMAT, FROM, TO, TERMINAL)
REPORT_PARAMETERS = (BUSINESS_DATE,)

_RESPONSE_CODE = re.compile(r"[0-9A-Z]{2}")
_RRN = re.compile(r"[0-9A-Za-z]{1,12}")
_PAN_LAST4 = re.compile(r"[0-9]{4}")
_TERMINAL = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,15}")
_CURSOR = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class JournalQuery:
    journal_filter: JournalFilter
    after_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class ExportQuery:
    start: datetime
    end: datetime
    terminal_id: str | None
    output_format: ExportFormat


def _given_once(
    pairs: Iterable[tuple[str, str]], parameters: tuple[Parameter, ...]
) -> dict[str, str]:
    """Each known parameter's value; an unknown or repeated one is refused."""
    known = {parameter.name for parameter in parameters}
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise BadParameter(name, f"no such parameter here (known: {', '.join(sorted(known))})")
        if name in values:
            raise BadParameter(name, "one value, given once")
        values[name] = value
    return values


def _matching(pattern: re.Pattern[str], expected: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if not pattern.fullmatch(value):
            raise BadParameter(name, expected)
        return value

    return parse


def _time(name: str, value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(name, _TIME_TEXT) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _range(values: dict[str, str]) -> tuple[datetime | None, datetime | None]:
    start = _time("from", values["from"]) if "from" in values else None
    end = _time("to", values["to"]) if "to" in values else None
    if start is not None and end is not None and end <= start:
        raise BadParameter("to", "a time after from")
    return start, end


_terminal = _matching(_TERMINAL, "a terminal id: 1 to 16 printable ASCII characters")
_response_code = _matching(_RESPONSE_CODE, "a response code: two digits or capitals, e.g. 51")
_rrn = _matching(_RRN, "a retrieval reference number: 1 to 12 letters or digits")
_pan_last4 = _matching(_PAN_LAST4, "the last four digits of a card number")


def _limit(value: str) -> int:
    expected = f"an integer from 1 to {PAGE_ROWS_MAX}"
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= PAGE_ROWS_MAX:
        raise BadParameter("limit", expected)
    return int(value)


def _cursor(value: str) -> int:
    if not _CURSOR.fullmatch(value) or int(value) >= 2**63:
        raise BadParameter("cursor", "the next_cursor of an earlier page")
    return int(value)


def _optional(values: dict[str, str], name: str, parse: Callable[[str, str], str]) -> str | None:
    return parse(name, values[name]) if name in values else None


def journal_query(pairs: Iterable[tuple[str, str]]) -> JournalQuery:
    values = _given_once(pairs, JOURNAL_PARAMETERS)
    start, end = _range(values)
    journal_filter = JournalFilter(
        terminal_id=_optional(values, "terminal", _terminal),
        start=start,
        end=end,
        response_code=_optional(values, "response_code", _response_code),
        rrn=_optional(values, "rrn", _rrn),
        pan_last4=_optional(values, "pan_last4", _pan_last4),
    )
    limit = _limit(values["limit"]) if "limit" in values else PAGE_ROWS_DEFAULT
    after_id = _cursor(values["cursor"]) if "cursor" in values else 0
    return JournalQuery(journal_filter, after_id, limit)


def export_query(pairs: Iterable[tuple[str, str]]) -> ExportQuery:
    values = _given_once(pairs, EXPORT_PARAMETERS)
    start, end = _range(values)
    output_format = values.get("format", "csv")
    if output_format not in ("csv", "jsonl"):
        raise BadParameter("format", "csv or jsonl")
    return ExportQuery(
        start or EARLIEST,
        end or LATEST,
        _optional(values, "terminal", _terminal),
        "csv" if output_format == "csv" else "jsonl",
    )


def report_query(pairs: Iterable[tuple[str, str]], today: date) -> date:
    """The business day asked for; `today`, the current business day, is the default."""
    values = _given_once(pairs, REPORT_PARAMETERS)
    if "business_date" not in values:
        return today
    try:
        return date.fromisoformat(values["business_date"])
    except ValueError:
        raise BadParameter("business_date", "a date YYYY-MM-DD") from None

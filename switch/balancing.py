"""Terminal balancing on the wire: an 0500 read into the ledger's terms, and the fields of its
0510. Pure (docs/cash.md, "Terminal balancing: 0500 and 0510").

`parse_balancing` either returns the terminal's report, every field present and consistent, or
the refusal: 30 a field missing or malformed (F15 not a date, F97 or F124 off their layout),
13 figures that contradict themselves (F97 is not the net of the amounts) or a currency the
switch does not know.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import astuple, fields
from datetime import date
from types import MappingProxyType

from ledger.balancing import Balancing, DayFigures, TerminalReport
from switch.iso8583.elements import (
    CURRENCY_ALPHA,
    ElementFormatError,
    decode_cassette_counters,
    decode_net_amount,
    encode_cassette_counters,
    encode_net_amount,
)
from switch.iso8583.message import Message
from switch.response_codes import ResponseCode
from switch.transaction import Refusal, valid_transmission_time

# The figures' fields in DayFigures' order (F97, the net, is last and signed).
COUNT_FIELDS: tuple[int, ...] = (74, 75, 76, 77, 78, 79, 80)
AMOUNT_FIELDS: tuple[int, ...] = (86, 87, 88, 89)
NET_FIELD = 97
COUNTERS_FIELD = 124
REQUIRED_FIELDS: tuple[int, ...] = (7, 11, 15, 41, 50, *COUNT_FIELDS, *AMOUNT_FIELDS, NET_FIELD)
# What an 0510 repeats of its 0500, besides the response's usual echo.
ECHOED: tuple[int, ...] = (15, 50)
_WIDTHS: Mapping[int, int] = MappingProxyType(
    {**dict.fromkeys(COUNT_FIELDS, 10), **dict.fromkeys(AMOUNT_FIELDS, 16)}
)


def business_date_of(mmdd: str, today: date) -> date | None:
    """F15's date: of the years around today's, the one that puts it nearest to today; None
    when it is not a date at all."""
    if len(mmdd) != 4 or not mmdd.isdigit():
        return None
    month, day = int(mmdd[:2]), int(mmdd[2:])
    candidates = [
        date(year, month, day)
        for year in (today.year - 1, today.year, today.year + 1)
        if 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
    ]
    return min(candidates, key=lambda d: abs(d - today)) if candidates else None


def net_of(figures: DayFigures) -> int:
    """F97's value: debits less their reversals, less credits net of theirs."""
    return (figures.debits_minor - figures.debit_reversals_minor) - (
        figures.credits_minor - figures.credit_reversals_minor
    )


def parse_balancing(request: Message, today: date) -> TerminalReport | Refusal:
    missing = [n for n in REQUIRED_FIELDS if n not in request]
    if missing:
        return Refusal(ResponseCode.FORMAT_ERROR, f"missing fields {missing}")
    if not valid_transmission_time(request.fields[7]):
        return Refusal(ResponseCode.FORMAT_ERROR, "field 7 is not a date and time MMDDhhmmss")
    business_date = business_date_of(request.fields[15], today)
    if business_date is None:
        return Refusal(ResponseCode.FORMAT_ERROR, "field 15 is not a date MMDD")
    bad = [n for n, width in _WIDTHS.items() if not _digits(request.fields[n], width)]
    if bad:
        return Refusal(ResponseCode.FORMAT_ERROR, f"fields {bad} are not counts or amounts")
    try:
        net_minor = decode_net_amount(request.fields[NET_FIELD])
        counters = decode_cassette_counters(request.get(COUNTERS_FIELD) or "")
    except ElementFormatError as exc:
        return Refusal(ResponseCode.FORMAT_ERROR, str(exc))
    currency = CURRENCY_ALPHA.get(request.fields[50])
    if currency is None:
        return Refusal(ResponseCode.INVALID_AMOUNT, f"currency {request.fields[50]} not supported")
    names = [f.name for f in fields(DayFigures)]
    figures = DayFigures(
        **{name: int(request.fields[n]) for name, n in zip(names, _WIDTHS, strict=False)},
        net_minor=net_minor,
    )
    if net_minor != net_of(figures):
        return Refusal(ResponseCode.INVALID_AMOUNT, "field 97 is not the net of the amounts")
    return TerminalReport(
        terminal_id=request.fields[41].strip(),
        transmission_time=request.fields[7],
        stan=request.fields[11],
        business_date=business_date,
        currency=currency,
        figures=figures,
        cassettes=counters,
    )


def _digits(text: str, width: int) -> bool:
    return len(text) == width and text.isdigit()


def host_fields(found: Balancing) -> dict[int, str]:
    """An imbalance's 0510 carries the host's figures and counters, so the terminal can print
    both (F124 only where the host counts the terminal's notes)."""
    values = astuple(found.host_figures)
    host = {n: f"{value:0{_WIDTHS[n]}d}" for n, value in zip(_WIDTHS, values, strict=False)}
    host[NET_FIELD] = encode_net_amount(found.host_figures.net_minor)
    if found.host_cassettes:
        host[COUNTERS_FIELD] = encode_cassette_counters(list(found.host_cassettes))
    return host

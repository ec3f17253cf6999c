"""Terminal balancing on the wire: an 0500 read into the ledger's terms, and the fields of its
0510. Pure (docs/cash.md, "Terminal balancing: 0500 and 0510").

`parse_balancing` either returns the terminal's report, every field present and consistent, or
the refusal: 30 a field missing or malformed (F15 not a date, F97 or F124 off their layout),
13 figures that contradict themselves (F97 is not the net of the amounts) or a currency the
switch does not know.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import date

from ledger.balancing import Balancing, DayFigures, TerminalReport
from switch.iso8583.elements import (
    BALANCING_TOTALS,
    COUNTERS_FIELD,
    CURRENCY_ALPHA,
    NET_FIELD,
    ElementFormatError,
    business_date_of,
    decode_cassette_counters,
    decode_net_amount,
    encode_cassette_counters,
    encode_net_amount,
)
from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode
from switch.transaction import Refusal, valid_transmission_time

REQUIRED_FIELDS: tuple[int, ...] = (7, 11, 15, 41, 50, *BALANCING_TOTALS, NET_FIELD)
# What an 0510 repeats of its 0500, besides the response's usual echo.
ECHOED: tuple[int, ...] = (15, 50)
assert [name for name, _ in BALANCING_TOTALS.values()] == [
    f.name for f in fields(DayFigures) if f.name != "net_minor"
], "the 0500's totals are DayFigures' fields, in order"


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
    bad = [n for n, (_, width) in BALANCING_TOTALS.items() if not _digits(request.fields[n], width)]
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
    figures = DayFigures(
        **{name: int(request.fields[n]) for n, (name, _) in BALANCING_TOTALS.items()},
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
    host = {
        n: f"{getattr(found.host_figures, name):0{width}d}"
        for n, (name, width) in BALANCING_TOTALS.items()
    }
    host[NET_FIELD] = encode_net_amount(found.host_figures.net_minor)
    if found.host_cassettes:
        host[COUNTERS_FIELD] = encode_cassette_counters(list(found.host_cassettes))
    return host

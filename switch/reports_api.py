"""GET /reports/sla?from=YYYY-MM-DD&to=YYYY-MM-DD&format=csv|json|html&hours=HH:MM-HH:MM: the
SLA report (ledger.sla) over the switch role's functions, the same figures as
`python -m ledger report sla`. Both days default to the current business day. Its queries run
within [operations] timeout_ms: for long ranges over a large fleet, use the CLI.

GET /reports/settlement?date=YYYY-MM-DD&format=json|csv: the settlement report of a closed
business day (ledger.settlement), the same document as `python -m ledger report settlement`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from aiohttp import web

from ledger import settlement, sla
from ledger.errors import LedgerError
from ledger.rules import business_day
from ledger.sla_page import as_html
from switch.access import Role
from switch.operations import OPERATIONS_KEY
from switch.routes import Parameter, Reply, Route

FORMATS: dict[str, tuple[Callable[[Any], str], str]] = {
    "csv": (sla.as_csv, "text/csv"),
    "json": (sla.as_json, "application/json"),
    "html": (as_html, "text/html"),
}


def _error(status: type[web.HTTPError], message: str) -> web.HTTPError:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def _day(request: web.Request, parameter: str, default: date) -> date:
    text = request.query.get(parameter)
    if text is None:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _error(
            web.HTTPBadRequest, f"{parameter}: expected YYYY-MM-DD, got {text!r}"
        ) from None


Renderer = tuple[Callable[[Any], str], str]


def _renderer(
    request: web.Request, parameters: set[str], formats: Mapping[str, Renderer]
) -> Renderer:
    """The `format` asked for (json by default), once no parameter is unknown."""
    unknown = sorted(set(request.query) - parameters - {"format"})
    if unknown:
        raise _error(web.HTTPBadRequest, f"{unknown[0]}: no such parameter")
    output_format = request.query.get("format", "json")
    if output_format not in formats:
        raise _error(web.HTTPBadRequest, f"format: expected one of {', '.join(formats)}")
    return formats[output_format]


async def sla_report(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    render, content_type = _renderer(request, {"from", "to", "hours"}, FORMATS)
    now = operations.clock()
    today = business_day(now, operations.cutover)
    try:
        hours_text = request.query.get("hours")
        hours = None if hours_text is None else sla.ServiceHours.parse(hours_text)
        first_day = _day(request, "from", today)
        last_day = _day(request, "to", today)
        async with operations.store.connection(timeout_ms=operations.timeout_ms) as conn:
            report = await sla.fetch_report(
                conn, first_day, last_day, cutover=operations.cutover, hours=hours, now=now,
                timeout_ms=operations.timeout_ms,
            )  # fmt: skip
    except sla.ReportError as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from None
    except LedgerError as exc:
        raise _error(web.HTTPServiceUnavailable, f"the ledger cannot be read: {exc}") from None
    return web.Response(text=render(report), content_type=content_type, charset="utf-8")


SETTLEMENT_FORMATS: dict[str, tuple[Callable[[Any], str], str]] = {
    "csv": (settlement.as_csv, "text/csv"),
    "json": (settlement.as_json, "application/json"),
}


async def settlement_report(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    render, content_type = _renderer(request, {"date"}, SETTLEMENT_FORMATS)
    if "date" not in request.query:
        raise _error(web.HTTPBadRequest, "date: required, YYYY-MM-DD")
    day = _day(request, "date", date.min)
    try:
        async with operations.store.connection(timeout_ms=operations.timeout_ms) as conn:
            report = await settlement.fetch(conn, day, timeout_s=operations.timeout_ms / 1000)
    except settlement.DayNotClosed as exc:
        raise _error(web.HTTPNotFound, str(exc)) from None
    except LedgerError as exc:
        raise _error(web.HTTPServiceUnavailable, f"the ledger cannot be read: {exc}") from None
    return web.Response(text=render(report), content_type=content_type, charset="utf-8")


REPORT_ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/reports/sla", sla_report, frozenset({Role.OPERATOR, Role.AUDITOR}),
        "The SLA report per terminal and business day: availability, requests, approval rate,"
        " financial latency p50/p99, 91/96 counts, alerts and time to acknowledge.",
        (Reply(200, "The report.", ("application/json", "text/csv", "text/html")),
         Reply(400, "A bad parameter, named.")),
        (Parameter("from", "First business day, YYYY-MM-DD.", {"type": "string"}),
         Parameter("to", "Last business day, YYYY-MM-DD.", {"type": "string"}),
         Parameter("format", "json (default), csv or html.", {"type": "string",
                   "enum": ["json", "csv", "html"]}),
         Parameter("hours", "The scheduled service hours, HH:MM-HH:MM.", {"type": "string"})),
    ),
    Route(
        "GET", "/reports/settlement", settlement_report, frozenset({Role.OPERATOR, Role.AUDITOR}),
        "The settlement report of a closed business day, per terminal: host totals, the totals"
        " of its last 0500, their difference, the balancing verdict, cassettes at open and close.",
        (Reply(200, "The report.", ("application/json", "text/csv")),
         Reply(400, "A bad parameter, named."),
         Reply(404, "The business day is not closed.")),
        (Parameter("date", "The business day, YYYY-MM-DD (required).", {"type": "string"}),
         Parameter("format", "json (default) or csv.", {"type": "string",
                   "enum": ["json", "csv"]})),
    ),
)  # fmt: skip

"""Alerts over HTTP: GET /alerts (open ones, then those of the last day), POST
/alerts/{alert_id}/acknowledge (an operator takes a firing alert), POST /alerts/audit-verify
(run the journal check now rather than at its next interval)."""

from __future__ import annotations

import json

from aiohttp import web

from ledger.errors import LedgerError
from ledger.operations import ALERT_STATES
from switch.access import Role
from switch.operations import OPERATIONS_KEY
from switch.routes import Parameter, Reply, Route

# Who acknowledged: a name the operator gives (the API keys of the roles work replace it).
BY_CHARS_MAX = 64
STATE_FILTERS = (*ALERT_STATES, "open")


def _bad(parameter: str, expected: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": f"{parameter}: expected {expected}"}),
        content_type="application/json",
    )


def _unavailable(exc: LedgerError) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(
        text=json.dumps({"error": f"the ledger cannot be reached: {exc}"}),
        content_type="application/json",
    )


async def list_alerts(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in STATE_FILTERS:
        raise _bad("state", f"one of {', '.join(STATE_FILTERS)}")
    try:
        snapshot = await request.app[OPERATIONS_KEY].reader.read()
    except LedgerError as exc:
        raise _unavailable(exc) from None
    alerts = [
        alert.as_json()
        for alert in snapshot.alerts
        if state is None or alert.state == state or (state == "open" and alert.is_open)
    ]
    return web.json_response({"alerts": alerts})


async def acknowledge(request: web.Request) -> web.Response:
    try:
        alert_id = int(request.match_info["alert_id"])
    except ValueError:
        raise _bad("alert_id", "an integer") from None
    by = "operator"
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            raise _bad("body", 'JSON such as {"by": "name"}') from None
        given = body.get("by", by) if isinstance(body, dict) else None
        if not isinstance(given, str) or not 0 < len(given) <= BY_CHARS_MAX:
            raise _bad("by", f"a name of 1 to {BY_CHARS_MAX} characters")
        by = given
    try:
        result = await request.app[OPERATIONS_KEY].alerting.acknowledge(alert_id, by)
    except LedgerError as exc:
        raise _unavailable(exc) from None
    if result.outcome == "unknown":
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no alert {alert_id}"}), content_type="application/json"
        )
    assert result.alert is not None
    status = 200 if result.outcome == "acknowledged" else 409
    return web.json_response({"alert": result.alert.as_json()}, status=status)


async def audit_verify(request: web.Request) -> web.Response:
    checker = request.app[OPERATIONS_KEY].checker
    if checker is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "no journal check: set [ledger] audit_dsn"}),
            content_type="application/json",
        )
    started = checker.request()
    return web.json_response({"started": started, "running": True}, status=202 if started else 409)


ALERT_ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/alerts", list_alerts, frozenset({Role.OPERATOR, Role.VIEWER}),
        "The alerts, firing, acknowledged and resolved (newest first).",
        (Reply(200, "The alerts."), Reply(400, "A bad parameter, named.")),
        (Parameter("state", "Only alerts in this state.", {"type": "string",
                   "enum": ["firing", "acknowledged", "resolved"]}),),
    ),
    Route(
        "POST", "/alerts/{alert_id}/acknowledge", acknowledge, frozenset({Role.OPERATOR}),
        "Acknowledge a firing alert.",
        (Reply(200, "The alert, acknowledged."), Reply(404, "No such firing alert.")),
        (Parameter("alert_id", "The alert.", {"type": "integer"}, "path"),),
    ),
    Route(
        "POST", "/alerts/audit-verify", audit_verify, frozenset({Role.OPERATOR}),
        "Run the journal check now (`audit verify`): its failure raises an alert.",
        (Reply(202, "Started."), Reply(409, "Already running."), Reply(404, "No journal check.")),
    ),
)  # fmt: skip

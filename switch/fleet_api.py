"""GET /fleet: every provisioned terminal, its state and traffic today, its alerts, and the
fleet's summary, from the ledger's durable terminal events (switch.fleet_view). When the ledger
cannot be read, the last snapshot comes back with `stale` saying why (503 if there is none)."""

from __future__ import annotations

from aiohttp import web

from ledger.errors import LedgerError
from switch.access import Role
from switch.fleet_view import fleet_json
from switch.operations import OPERATIONS_KEY
from switch.routes import Reply, Route


async def fleet(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    reader = operations.reader
    stale = None
    try:
        snapshot = await reader.read()
    except LedgerError as exc:
        stale = f"the ledger cannot be read: {exc}"
        if reader.last is None:
            return web.json_response({"error": stale}, status=503)
        snapshot = reader.last
    body = fleet_json(
        snapshot,
        now=operations.clock(),
        process_dead_after=reader.windows.process_dead_after,
        window=reader.windows.recent,
        readiness=operations.alerting.checks,
        stale_reason=stale,
    )
    return web.json_response(body)


FLEET_ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/fleet", fleet, frozenset({Role.OPERATOR, Role.VIEWER}),
        "Every provisioned terminal (never seen ones too) with its state, last seen, traffic and"
        " alerts, and the fleet's summary, from the ledger's terminal events.",
        (Reply(200, "The fleet."), Reply(503, "The ledger does not answer.")),
    ),
)  # fmt: skip

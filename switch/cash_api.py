"""POST /terminals/{terminal_id}/cassettes/{cassette}/replenish: an operator reloads a cassette
(ledger/cassettes.py): the notes moved are posted against the vault, journalled and recorded."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ledger import cassettes
from ledger.cassettes import NoSuchCassette, ReplenishmentRefused
from ledger.errors import LedgerError
from switch.access import Role
from switch.operations import OPERATIONS_KEY
from switch.routes import Parameter, Reply, Route

BY_CHARS_MAX = 64
NOTES_MAX = 10_000  # more than any cassette holds
_EXAMPLE = '{"notes": 2000, "denomination_minor": 2000, "by": "name"}'


def _error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def _whole(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _error(web.HTTPBadRequest, f"{name}: expected an integer from {low} to {high}")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _error(web.HTTPBadRequest, f"body: expected JSON such as {_EXAMPLE}")
    return body


async def replenish(request: web.Request) -> web.Response:
    try:
        cassette = int(request.match_info["cassette"])
    except ValueError:
        raise _error(web.HTTPBadRequest, "cassette: expected an integer") from None
    body = await _body(request)
    notes = _whole(body, "notes", 0, NOTES_MAX)
    if notes is None:
        raise _error(web.HTTPBadRequest, "notes: expected the notes loaded, an integer")
    denomination_minor = _whole(body, "denomination_minor", 1, 10**12 - 1)
    by = body.get("by", "operator")
    if not isinstance(by, str) or not 0 < len(by) <= BY_CHARS_MAX:
        raise _error(web.HTTPBadRequest, f"by: expected a name of 1 to {BY_CHARS_MAX} characters")
    operations = request.app[OPERATIONS_KEY]
    try:
        async with operations.store.connection(timeout_ms=operations.timeout_ms) as conn:
            done = await cassettes.replenish(
                conn, request.match_info["terminal_id"], cassette, notes,
                denomination_minor=denomination_minor, by=by, at=operations.clock(),
                timeout_ms=operations.timeout_ms,
            )  # fmt: skip
    except NoSuchCassette as exc:
        raise _error(web.HTTPNotFound, str(exc)) from None
    except ReplenishmentRefused as exc:
        raise _error(web.HTTPConflict, str(exc)) from None
    except LedgerError as exc:
        raise _error(web.HTTPServiceUnavailable, f"the ledger cannot be reached: {exc}") from None
    operations.reader.expire()  # the page shows the new counts at its next read
    return web.json_response({"replenishment": cassettes.replenishment_json(done)})


CASH_ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/terminals/{terminal_id}/cassettes/{cassette}/replenish", replenish,
        frozenset({Role.OPERATOR}),
        "Replenish a cassette: the notes taken out go back to the vault, `notes` notes are"
        " loaded (`denomination_minor`, when given, must be the cassette's), the difference is"
        " posted against the vault account and journalled, and the replenishment is recorded.",
        (Reply(200, "The replenishment."), Reply(400, "A bad parameter, named."),
         Reply(404, "No such cassette."), Reply(409, "Not the cassette's denomination."),
         Reply(503, "The ledger does not answer.")),
        (Parameter("terminal_id", "The terminal.", {"type": "string"}, "path"),
         Parameter("cassette", "The cassette slot, 1-8.", {"type": "integer"}, "path")),
    ),
)  # fmt: skip

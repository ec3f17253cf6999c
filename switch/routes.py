"""The operations app's routes as data: who may call each, what it takes and what it answers.
The app registers its routes from these tables and `/openapi.json` is built from the same
tables, so the document cannot leave a route out or say another role than the one enforced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp.typedefs import Handler

from switch.access import HASH_FORMAT, Role

JSON = "application/json"
OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    description: str
    schema: Mapping[str, Any]
    location: str = "query"  # or "path"

    @property
    def required(self) -> bool:
        return self.location == "path"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    description: str
    content_types: tuple[str, ...] = (JSON,)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    # Who may call it; empty: anyone, with no key (health checks, the page shell, this document).
    roles: frozenset[Role]
    summary: str
    replies: tuple[Reply, ...]
    parameters: tuple[Parameter, ...] = ()

    @property
    def open(self) -> bool:
        return not self.roles


ERROR_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, as a word"},
        "detail": {"type": "string"},
        "parameter": {"type": "string", "description": "the query parameter refused (400)"},
        "expected": {"type": "string", "description": "what that parameter must be (400)"},
    },
}
_SECURITY_DESCRIPTION = (
    "An API key, `Authorization: Bearer <id>.<secret>`, minted by `python -m switch keys new "
    f"--role ROLE`; the switch keeps only its hash ({HASH_FORMAT}). Each route names the roles "
    "that may call it (`x-roles`): another role's key gets 403, no key or a wrong one 401."
)


def document(routes: Iterable[Route], title: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": API_VERSION},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": _SECURITY_DESCRIPTION}
            },
            "schemas": {"Error": ERROR_SCHEMA},
        },
    }


def _operation(route: Route) -> dict[str, Any]:
    replies = list(route.replies)
    if any(p.location == "query" for p in route.parameters):
        replies.append(Reply(400, "A query parameter is unknown, repeated or malformed."))
    if not route.open:
        replies.append(Reply(401, "No API key, or not a valid one."))
        replies.append(Reply(403, "The key's role may not call this route."))
    who = "Open: no key needed." if route.open else f"Roles: {', '.join(sorted(route.roles))}."
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "description": who,
        "x-roles": sorted(route.roles),
        "parameters": [_parameter(p) for p in route.parameters],
        "responses": {str(reply.status): _response(reply) for reply in replies},
    }
    operation["security"] = [] if route.open else [{"apiKey": []}]
    return operation


def _parameter(parameter: Parameter) -> dict[str, Any]:
    return {
        "name": parameter.name,
        "in": parameter.location,
        "required": parameter.required,
        "description": parameter.description,
        "schema": dict(parameter.schema),
    }


def _response(reply: Reply) -> dict[str, Any]:
    errors = reply.status >= 400
    schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"} if errors else {}
    return {
        "description": reply.description,
        "content": {content_type: {"schema": schema} for content_type in reply.content_types},
    }

"""The operations HTTP app (aiohttp): health, readiness, Prometheus metrics, the fleet view, the
auditor API and its OpenAPI document.

Routes are data (`switch.routes.Route`): each names the roles that may call it, and one
middleware checks every request against that before the handler runs. `/health`, `/ready`,
`/openapi.json` and the fleet page's shell `/` are open (the page holds no data: it reads
`/terminals` with the key it is given); everything else needs `Authorization: Bearer <key>` of
a permitted role (switch.access). Refusals are logged (at most `REFUSALS_LOGGED_MAX` lines per
reason a minute, the rest counted in the next line) and counted on /metrics; every call by an
operator or auditor is logged with the key's id, never its secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from switch import auditor_api
from switch.access import ApiKey, Granted, Keyring, Refusal, Refused, Role
from switch.alerts_api import ALERT_ROUTES
from switch.auditor_api import JOURNAL_KEY, JournalSettings, open_journal
from switch.cash_api import CASH_ROUTES
from switch.fleet_api import FLEET_ROUTES
from switch.metrics import multiprocess
from switch.monitor import Monitor
from switch.operations import OPERATIONS_KEY, Operations
from switch.ratelimit import LogRateLimiter
from switch.reports_api import REPORT_ROUTES
from switch.routes import JSON, Reply, Route, document
from switch.server import Stats

log = structlog.get_logger("switch.admin")

ReadinessCheck = Callable[[], Awaitable[Mapping[str, bool]]]
READY_TIMEOUT_S = 2.0
REFUSALS_LOGGED_MAX = 20
REFUSALS_LOG_INTERVAL_S = 60.0
# With several processes, how old another process's connection count may be on /metrics.
FIGURES_REFRESH_S = 1.0
TITLE = "Kiosk switch operations API"

MONITOR_KEY = web.AppKey("monitor", Monitor)
STATS_KEY: web.AppKey[Callable[[], Stats]] = web.AppKey("stats")
READINESS_KEY: web.AppKey[ReadinessCheck] = web.AppKey("readiness")
LEDGER_FIGURES_KEY: web.AppKey[Callable[[], Mapping[str, float]]] = web.AppKey("ledger")
OPENAPI_KEY: web.AppKey[bytes] = web.AppKey("openapi")


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        checks = dict(await asyncio.wait_for(request.app[READINESS_KEY](), READY_TIMEOUT_S))
    except TimeoutError:
        checks = {"timeout": False}
    status = 200 if all(checks.values()) else 503
    return web.json_response({"ready": status == 200, "checks": checks}, status=status)


def _figures(app: web.Application) -> dict[str, float]:
    stats = app[STATS_KEY]()
    return {
        "connections": float(stats.connections),
        "in_flight_requests": float(stats.in_flight),
        "refused_connections_total": float(stats.refused_connections),
        **app[LEDGER_FIGURES_KEY](),
    }


async def metrics(request: web.Request) -> web.Response:
    monitor = request.app[MONITOR_KEY]
    monitor.metrics.refresh(_figures(request.app))
    days_left = monitor.fleet.certificate_days_left_min()
    fleet = {} if days_left is None else {"tls_client_certificate_days_left_min": days_left}
    # The cash as the operations' last fleet read saw it: a scrape does no ledger read.
    operations = request.app.get(OPERATIONS_KEY)
    last = None if operations is None else operations.reader.last
    body = monitor.metrics.exposition(fleet, () if last is None else last.cash)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def terminals(request: web.Request) -> web.Response:
    return web.json_response({"terminals": request.app[MONITOR_KEY].fleet.snapshot()})


async def fleet_page(_request: web.Request) -> web.Response:
    page = resources.files("switch").joinpath("admin_static/fleet.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type=JSON)


_OPEN: frozenset[Role] = frozenset()
_FLEET = frozenset({Role.OPERATOR, Role.VIEWER})

OPERATIONS_ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, _OPEN, "The process is up.", (Reply(200, "Up."),)),
    Route(
        "GET",
        "/ready",
        ready,
        _OPEN,
        "The database and the HSM answer.",
        (Reply(200, "Ready, with each check."), Reply(503, "Not ready: the failing check.")),
    ),
    Route(
        "GET",
        "/",
        fleet_page,
        _OPEN,
        "The fleet page (it holds no data: it reads /terminals with the key it is given).",
        (Reply(200, "The page.", ("text/html",)),),
    ),
    Route(
        "GET",
        "/openapi.json",
        openapi,
        _OPEN,
        "This document.",
        (Reply(200, "The OpenAPI document."),),
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        _FLEET,
        "Prometheus metrics (text format 0.0.4).",
        (Reply(200, "The metrics.", ("text/plain",)),),
    ),
    Route(
        "GET",
        "/terminals",
        terminals,
        _FLEET,
        "Each terminal: signed on or not, last seen, counts, approval rate, certificate expiry.",
        (Reply(200, "The terminals."),),
    ),
)
# The fleet, alerts and reports read the ledger's terminal events: served when the switch runs
# its operations (create_admin_app's `operations`), and always in the document.
EVENT_ROUTES: tuple[Route, ...] = FLEET_ROUTES + ALERT_ROUTES + REPORT_ROUTES + CASH_ROUTES
ROUTES: tuple[Route, ...] = OPERATIONS_ROUTES + auditor_api.ROUTES + EVENT_ROUTES


def _refusal(decision: Refused, route: Route) -> web.HTTPException:
    if decision.reason is Refusal.WRONG_ROLE:
        needed = " or ".join(sorted(route.roles))
        detail = (
            f"key {decision.key_id} ({decision.role}) may not call"
            f" {route.method} {route.path}: it needs {needed}"
        )
        body = {"error": "forbidden", "detail": detail}
        return web.HTTPForbidden(text=json.dumps(body), content_type=JSON)
    body = {"error": "unauthorized", "detail": "an API key is needed: Authorization: Bearer <key>"}
    return web.HTTPUnauthorized(
        text=json.dumps(body), content_type=JSON, headers={"WWW-Authenticate": "Bearer"}
    )


def _access_middleware(
    keyring: Keyring, routes: Mapping[web.AbstractRoute, Route], monitor: Monitor
) -> Middleware:
    limiter = LogRateLimiter(REFUSALS_LOGGED_MAX, REFUSALS_LOG_INTERVAL_S)

    def refused(request: web.Request, route: Route, decision: Refused) -> web.HTTPException:
        monitor.metrics.count_api_refusal(decision.reason)
        allowance = limiter.admit(decision.reason, time.monotonic())
        if allowance.log:
            log.warning(
                "api_refused",
                status=decision.reason.status,
                reason=str(decision.reason),
                key_id=decision.key_id,
                role=str(decision.role) if decision.role else None,
                method=request.method,
                path=request.path,
                peer=request.remote,
                suppressed=allowance.suppressed,
            )
        return _refusal(decision, route)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # no such route: 404 or 405
            return await handler(request)
        route = routes.get(request.match_info.route)
        if route is None:
            # Fail closed: a route added without its roles is nobody's.
            log.error("route_without_roles", method=request.method, path=request.path)
            raise web.HTTPForbidden(text='{"error": "forbidden"}', content_type=JSON)
        if route.open:
            return await handler(request)
        decision = keyring.authorize(request.headers.get("Authorization"), route.roles)
        if isinstance(decision, Refused):
            raise refused(request, route, decision)
        return await _logged(request, handler, decision)

    return check


async def _logged(request: web.Request, handler: Handler, granted: Granted) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # A viewer's calls (a Prometheus scrape every few seconds) only at debug level.
        emit = log.debug if granted.key.role is Role.VIEWER else log.info
        emit(
            "api_access",
            key_id=granted.key.key_id,
            role=str(granted.key.role),
            method=request.method,
            path=request.path,
            query=request.query_string,
            status=status,
            duration_ms=round(1000 * (time.monotonic() - started), 1),
        )


def _journal_context(
    settings: JournalSettings | None, wall_clock: Callable[[], datetime]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def journal(app: web.Application) -> AsyncIterator[None]:
        if settings is None:
            app[JOURNAL_KEY] = None
            yield
            return
        async with open_journal(settings, wall_clock) as opened:
            app[JOURNAL_KEY] = opened
            yield

    return journal


async def _refresh_figures(app: web.Application) -> AsyncIterator[None]:
    """With several processes, each copies its figures in every second: a scrape is answered
    by one process, from every process's files."""
    if not multiprocess():
        yield
        return

    async def refresh() -> None:
        while True:
            app[MONITOR_KEY].metrics.refresh(_figures(app))
            await asyncio.sleep(FIGURES_REFRESH_S)

    task = asyncio.create_task(refresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def add_routes(app: web.Application, routes: Iterable[Route]) -> dict[web.AbstractRoute, Route]:
    return {app.router.add_route(r.method, r.path, r.handler): r for r in routes}


def create_admin_app(
    keys: Sequence[ApiKey],
    *,
    monitor: Monitor,
    stats: Callable[[], Stats],
    readiness: ReadinessCheck,
    ledger_figures: Callable[[], Mapping[str, float]] = dict,
    journal: JournalSettings | None = None,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    operations: Operations | None = None,
) -> web.Application:
    """`journal`: where the auditor API reads the ledger; None: its routes answer 503.
    `operations`: the terminal events, alerts and reports; None: their routes are not served."""
    routes: dict[web.AbstractRoute, Route] = {}
    app = web.Application(
        middlewares=[_access_middleware(Keyring(keys), routes, monitor)],
        client_max_size=64 * 1024,
    )
    app[MONITOR_KEY] = monitor
    app[STATS_KEY] = stats
    app[READINESS_KEY] = readiness
    app[LEDGER_FIGURES_KEY] = ledger_figures
    app[OPENAPI_KEY] = json.dumps(document(ROUTES, TITLE), indent=1).encode()
    routes.update(add_routes(app, OPERATIONS_ROUTES + auditor_api.ROUTES))
    if operations is not None:
        app[OPERATIONS_KEY] = operations
        routes.update(add_routes(app, EVENT_ROUTES))
    app.cleanup_ctx.append(_journal_context(journal, wall_clock))
    app.cleanup_ctx.append(_refresh_figures)
    return app

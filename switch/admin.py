"""The operations HTTP app (aiohttp): health, readiness, Prometheus metrics, the fleet view.

`/health` and `/ready` are open (for load balancers and orchestrators); everything else needs
`Authorization: Bearer <admin.token>`. The fleet page itself holds no data: it asks for the token
and reads `/terminals` with it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from switch.alerts_api import add_alert_routes
from switch.fleet_api import add_fleet_routes
from switch.monitor import Monitor
from switch.operations import OPERATIONS_KEY, Operations
from switch.reports_api import add_report_routes
from switch.server import Stats

ReadinessCheck = Callable[[], Awaitable[Mapping[str, bool]]]
OPEN_PATHS = frozenset({"/health", "/ready", "/"})
READY_TIMEOUT_S = 2.0

MONITOR_KEY = web.AppKey("monitor", Monitor)
STATS_KEY: web.AppKey[Callable[[], Stats]] = web.AppKey("stats")
READINESS_KEY: web.AppKey[ReadinessCheck] = web.AppKey("readiness")
LEDGER_FIGURES_KEY: web.AppKey[Callable[[], Mapping[str, float]]] = web.AppKey("ledger")


def _bearer_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(
                text="a bearer token is required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        return await handler(request)

    return check


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        checks = dict(await asyncio.wait_for(request.app[READINESS_KEY](), READY_TIMEOUT_S))
    except TimeoutError:
        checks = {"timeout": False}
    status = 200 if all(checks.values()) else 503
    return web.json_response({"ready": status == 200, "checks": checks}, status=status)


async def metrics(request: web.Request) -> web.Response:
    stats = request.app[STATS_KEY]()
    gauges = {
        "connections": float(stats.connections),
        "in_flight_requests": float(stats.in_flight),
        "refused_connections_total": float(stats.refused_connections),
        **request.app[LEDGER_FIGURES_KEY](),
    }
    monitor = request.app[MONITOR_KEY]
    days_left = monitor.fleet.certificate_days_left_min()
    if days_left is not None:
        gauges["tls_client_certificate_days_left_min"] = days_left
    body = monitor.metrics.render(gauges)
    return web.Response(text=body, content_type="text/plain", charset="utf-8")


async def terminals(request: web.Request) -> web.Response:
    return web.json_response({"terminals": request.app[MONITOR_KEY].fleet.snapshot()})


async def fleet_page(_request: web.Request) -> web.Response:
    page = resources.files("switch").joinpath("admin_static/fleet.html").read_text()
    return web.Response(text=page, content_type="text/html")


def create_admin_app(
    *,
    token: str,
    monitor: Monitor,
    stats: Callable[[], Stats],
    readiness: ReadinessCheck,
    ledger_figures: Callable[[], Mapping[str, float]] = dict,
    operations: Operations | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_bearer_middleware(token)], client_max_size=64 * 1024)
    app[MONITOR_KEY] = monitor
    app[STATS_KEY] = stats
    app[READINESS_KEY] = readiness
    app[LEDGER_FIGURES_KEY] = ledger_figures
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/terminals", terminals)
    app.router.add_get("/", fleet_page)
    if operations is not None:
        app[OPERATIONS_KEY] = operations
        add_fleet_routes(app)
        add_alert_routes(app)
        add_report_routes(app)
    return app

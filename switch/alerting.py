"""The alert loop: every interval it probes this process's dependencies, reads the fleet's
snapshot, evaluates the rules (switch.alerts), raises and resolves alerts in the ledger as the
plan says, and notifies each transition it made. Operators acknowledge through it too.

It runs beside the request path and shares nothing with it but the readiness probe; a ledger
that cannot be read leaves the fleet alerts as they are until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from ledger import operations
from ledger.errors import LedgerError
from ledger.migrations import Connection
from ledger.operations import Acknowledgement, OperationsStore
from switch.alerts import (
    AlertRules,
    HeldCertificate,
    Observation,
    Pending,
    Plan,
    ProcessAlerts,
    Transition,
    evaluate,
    plan,
)
from switch.fleet_reader import FleetReader
from switch.fleet_view import TerminalState, TerminalView, terminal_views
from switch.notify import Notifier

log = structlog.get_logger("switch.alerting")
Probe = Callable[[], Awaitable[Mapping[str, bool]]]
# The certificates this process holds now (its listener's, its signed-on terminals').
Certificates = Callable[[], Sequence[HeldCertificate]]
# This process's dependency alerts waiting to be written while the ledger is down.
PROCESS_ALERTS_MAX = 32


@dataclass(frozen=True, slots=True)
class AlertingSettings:
    rules: AlertRules
    evaluate_interval_ms: int
    # Each ledger call's (and the probe's) time limit.
    timeout_ms: int


def notification(
    state: str, alert: Mapping[str, object], process_id: str, now: datetime
) -> dict[str, object]:
    """The webhook's JSON body for one transition."""
    return {
        "kind": "alert",
        "state": state,
        "alert": dict(alert),
        "switch_process": process_id,
        "sent_at": now.isoformat(),
    }


class Alerting:
    def __init__(
        self,
        settings: AlertingSettings,
        *,
        reader: FleetReader,
        store: OperationsStore,
        process_id: str,
        probe: Probe,
        notifier: Notifier,
        clock: Callable[[], datetime],
        certificates: Certificates = tuple,
    ) -> None:
        self._settings = settings
        self._certificates = certificates
        self._reader = reader
        self._store = store
        self.process_id = process_id
        self._probe = probe
        self._notifier = notifier
        self._clock = clock
        self._pending = Pending()
        self._process_alerts = ProcessAlerts(PROCESS_ALERTS_MAX)
        # The latest probe results, and the terminals as last read (for /metrics and /fleet).
        self.checks: Mapping[str, bool] = {}
        self.views: list[TerminalView] = []
        self.evaluations = 0
        self.evaluation_failures = 0

    async def run(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:  # a bug in a rule must not end alerting for good
                self.evaluation_failures += 1
                log.exception("alert_evaluation_failed")
            await asyncio.sleep(self._settings.evaluate_interval_ms / 1000)

    async def evaluate(self) -> None:
        """One round: probe, read, evaluate, bring the ledger in line, notify."""
        self.evaluations += 1
        self.checks = await self._checks()
        now = self._clock()
        try:
            snapshot = await self._reader.read()
        except LedgerError as exc:
            self.evaluation_failures += 1
            log.warning("fleet_unreadable", error=str(exc))
            snapshot = None
        windows = self._reader.windows
        if snapshot is not None:
            self.views = terminal_views(snapshot, now, windows.process_dead_after)
        rules = self._settings.rules
        observation = Observation(
            now, self.process_id, self.checks, snapshot, self.views, self._certificates()
        )
        active = self._pending.held(evaluate(observation, rules), now, rules)
        for transition in self._process_alerts.update(active, now):
            self._notify(transition, now)
        with contextlib.suppress(LedgerError):  # logged where raised; retried next round
            await self._write_process_alerts()
            if snapshot is not None:
                open_alerts = [alert for alert in snapshot.alerts if alert.is_open]
                live = snapshot.live_processes
                await self._apply(
                    plan(active, open_alerts, process_id=self.process_id, live_processes=live),
                    now,
                )

    async def _checks(self) -> Mapping[str, bool]:
        try:
            async with asyncio.timeout(self._settings.timeout_ms / 1000):
                return await self._probe()
        except TimeoutError:
            return {"hsm": False, "database": False}

    async def _apply(self, decided: Plan, now: datetime) -> None:
        if not decided.fire and not decided.resolve:
            return
        timeout_ms = self._settings.timeout_ms
        async with self._connection() as conn:
            for condition in decided.fire:
                alert, created = await operations.fire_alert(
                    conn, condition.new_alert(), now, self.process_id, timeout_ms=timeout_ms
                )
                if created:  # another process may have raised it first
                    log.warning("alert_firing", rule=alert.rule, subject=alert.subject)
                    self._notify(Transition("firing", alert.as_json()), now)
            for open_alert in decided.resolve:
                resolved = await operations.resolve_alert(
                    conn, open_alert.alert_id, now, self.process_id, timeout_ms=timeout_ms
                )
                if resolved is not None:
                    log.info("alert_resolved", rule=resolved.rule, subject=resolved.subject)
                    self._notify(Transition("resolved", resolved.as_json()), now)
        self._reader.expire()

    async def _write_process_alerts(self) -> None:
        unwritten = self._process_alerts.unwritten()
        if not unwritten:
            return
        timeout_ms = self._settings.timeout_ms
        async with self._connection() as conn:
            for local in unwritten:
                alert_id = local.alert_id
                if alert_id is None:
                    alert, _ = await operations.fire_alert(
                        conn, local.condition.new_alert(), local.raised_at, self.process_id,
                        timeout_ms=timeout_ms,
                    )  # fmt: skip
                    alert_id = alert.alert_id
                if local.resolved_at is not None:
                    await operations.resolve_alert(
                        conn, alert_id, local.resolved_at, self.process_id, timeout_ms=timeout_ms
                    )
                self._process_alerts.written(local, alert_id)
        self._reader.expire()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            async with self._store.connection(timeout_ms=self._settings.timeout_ms) as conn:
                yield conn
        except LedgerError as exc:
            log.warning("alerts_not_written", error=str(exc))
            raise

    def _notify(self, transition: Transition, now: datetime) -> None:
        self._notifier.notify(
            notification(transition.state, transition.alert, self.process_id, now)
        )

    async def acknowledge(self, alert_id: int, by: str) -> Acknowledgement:
        """An operator acknowledges a firing alert (raises LedgerError when the ledger cannot
        be reached)."""
        now = self._clock()
        timeout_ms = self._settings.timeout_ms
        async with self._store.connection(timeout_ms=timeout_ms) as conn:
            result = await operations.acknowledge_alert(
                conn, alert_id, by, now, self.process_id, timeout_ms=timeout_ms
            )
        if result.outcome == "acknowledged":
            assert result.alert is not None
            log.info("alert_acknowledged", alert_id=alert_id, by=by)
            self._notify(Transition("acknowledged", result.alert.as_json()), now)
            self._reader.expire()
        return result

    def figures(self) -> dict[str, float]:
        """For /metrics: the probes (1 reachable, 0 not), the fleet's terminals by state and
        the longest a seen terminal has been down, the open alerts and the terminals that did
        not balance as last read."""
        now = self._clock()
        figures = {f"{name}_up": float(up) for name, up in self.checks.items()}
        for state in TerminalState:
            figures[f"terminals_{state.value}"] = float(
                sum(1 for view in self.views if view.state is state)
            )
        figures["terminals_down_seconds_max"] = max(
            (
                (now - view.down_since).total_seconds()
                for view in self.views
                if view.state is TerminalState.DOWN and view.down_since is not None
            ),
            default=0.0,
        )
        last = self._reader.last
        if last is not None:
            figures["alerts_open"] = float(sum(1 for a in last.alerts if a.is_open))
            figures["terminals_imbalanced"] = float(len(last.imbalances))
            if last.audit is not None:
                figures["audit_verify_ok"] = float(last.audit.outcome == "ok")
                figures["audit_verify_timestamp_seconds"] = last.audit.checked_at.timestamp()
        figures["alert_evaluations_total"] = float(self.evaluations)
        figures["alert_evaluation_failures_total"] = float(self.evaluation_failures)
        return figures


@contextlib.asynccontextmanager
async def running_alerting(alerting: Alerting) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(alerting.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""Alert rules and alert state, without I/O: what holds now is a pure function of an
observation (the time, the fleet's snapshot from the ledger, this process's probes), and
bringing the ledger's open alerts in line with it is a plan computed from both.

Rules (each also in config/prometheus-alerts.yml, over /metrics):

- terminal_offline: a terminal seen before has been down longer than the threshold;
- decline_rate_spike: a terminal's decline ratio in the recent window is over an absolute floor
  and over a multiple of its own ratio in the baseline window before it;
- unavailable_ratio: the fleet's financial requests answered 91 or 96 over a ratio;
- latency_p99_over_slo: the fleet's financial latency p99 in the recent window over the SLO;
- hsm_unreachable, database_unreachable: this process's probe failed for a while;
- audit_verify_failing: the latest `audit verify` found damage or could not finish;
- certificate_expiring: this process's server certificate, or the client certificate of a
  terminal signed on to it, expires within the warning window;
- cash_low, cash_out: a terminal's cassettes (as the ledger counts them) are at a low mark, or
  hold no note at all (its withdrawals are declined at once);
- terminal_imbalance: a terminal's latest 0500 (terminal balancing) of the last two business
  days did not balance: its counters and the host's differ, until it balances again;
- arqc_failure_ratio: the fleet's chip requests refused for the card's security (answered 63:
  an ARQC that does not verify, a replayed ATC, a wrong PSN) over a ratio: a wrong IMK in a
  profile, or cloned cards at work.

Fleet rules read only the ledger, so every switch process reaches the same conclusion and the
ledger's unique open alert per rule and subject makes exactly one of them raise (and notify) it.
Dependency rules are about the process that probes: their subject is the process id, and the
process keeps them itself (`ProcessAlerts`), since the database may be what is down.
Certificate alerts are about what only one process sees (its own certificate, the terminals
connected to it): they are kept in the ledger like fleet alerts, but only the process that
raised one resolves it (or any process, once that one is gone).

Another subsystem adds a rule by adding a function to `FLEET_RULES` over what it puts in the
snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from ledger.activity import TrafficCounts, add_traffic
from ledger.cash import CashLevel, cash_level
from ledger.operations import AlertRecord, NewAlert
from switch.fleet_view import FleetSnapshot, TerminalState, TerminalView


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class Rule(StrEnum):
    TERMINAL_OFFLINE = "terminal_offline"
    DECLINE_RATE_SPIKE = "decline_rate_spike"
    UNAVAILABLE_RATIO = "unavailable_ratio"
    LATENCY_P99_OVER_SLO = "latency_p99_over_slo"
    HSM_UNREACHABLE = "hsm_unreachable"
    DATABASE_UNREACHABLE = "database_unreachable"
    AUDIT_VERIFY_FAILING = "audit_verify_failing"
    CERTIFICATE_EXPIRING = "certificate_expiring"
    CASH_LOW = "cash_low"
    CASH_OUT = "cash_out"
    ARQC_FAILURE_RATIO = "arqc_failure_ratio"
    TERMINAL_IMBALANCE = "terminal_imbalance"


# About the process that raises them: subject = its process id.
PROCESS_RULES: Mapping[Rule, str] = {
    Rule.HSM_UNREACHABLE: "hsm",
    Rule.DATABASE_UNREACHABLE: "database",
}
# Seen by one process only: another process's silence about them says nothing.
HELD_RULES = frozenset({Rule.CERTIFICATE_EXPIRING})
FLEET_SUBJECT = "fleet"
JOURNAL_SUBJECT = "journal"


@dataclass(frozen=True, slots=True)
class AlertRules:
    """The thresholds (settings [alerts])."""

    terminal_offline_after: timedelta
    # A terminal's recent decline ratio must reach the floor and the factor × its baseline.
    decline_ratio_min: float
    decline_spike_factor: float
    # Fewer financial requests than this in a window say nothing about a ratio or a p99.
    requests_min: int
    unavailable_ratio_max: float
    # Chip requests answered 63 (card security), as a share of the chip requests.
    arqc_failure_ratio_max: float
    latency_p99_slo_ms: float
    # How long a dependency probe must keep failing before its alert fires.
    dependency_for: timedelta
    # A certificate that ends within this is about to take its terminal (or the switch) down.
    certificate_expiry_warning: timedelta


@dataclass(frozen=True, slots=True)
class Condition:
    rule: Rule
    subject: str
    terminal_id: str | None
    severity: Severity
    summary: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule.value, self.subject)

    def new_alert(self) -> NewAlert:
        return NewAlert(
            self.rule.value, self.subject, self.terminal_id, self.severity.value, self.summary
        )


@dataclass(frozen=True, slots=True)
class HeldCertificate:
    """A certificate this process holds: the one its listener serves (terminal_id None), or
    the client certificate a terminal signed on with. `subject` names it in the alert."""

    subject: str
    terminal_id: str | None
    not_valid_after: datetime


@dataclass(frozen=True, slots=True)
class Observation:
    now: datetime
    process_id: str
    # This process's probes, by dependency ("hsm", "database"): reachable or not.
    checks: Mapping[str, bool]
    # None when the ledger could not be read: the fleet rules then decide nothing.
    snapshot: FleetSnapshot | None
    views: Sequence[TerminalView]
    certificates: Sequence[HeldCertificate] = ()


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def terminal_offline(observation: Observation, rules: AlertRules) -> list[Condition]:
    now = observation.now
    return [
        Condition(
            Rule.TERMINAL_OFFLINE,
            view.record.terminal_id,
            view.record.terminal_id,
            Severity.WARNING,
            f"terminal {view.record.terminal_id} ({view.record.location}) down since"
            f" {view.down_since:%Y-%m-%d %H:%M:%S} UTC",
        )
        for view in observation.views
        if view.state is TerminalState.DOWN
        and view.down_since is not None
        and now - view.down_since >= rules.terminal_offline_after
    ]


def decline_rate_spike(observation: Observation, rules: AlertRules) -> list[Condition]:
    snapshot = observation.snapshot
    assert snapshot is not None
    conditions = []
    for terminal_id, recent in sorted(snapshot.recent.items()):
        ratio = _declined_ratio(recent)
        if recent.financial < rules.requests_min or ratio < rules.decline_ratio_min:
            continue
        baseline = snapshot.baseline.get(terminal_id)
        if baseline is not None and baseline.financial >= rules.requests_min:
            base_ratio = _declined_ratio(baseline)
            if ratio < rules.decline_spike_factor * base_ratio:
                continue
            against = f"{100 * base_ratio:.1f}% before"
        else:
            against = "no baseline yet"
        conditions.append(
            Condition(
                Rule.DECLINE_RATE_SPIKE,
                terminal_id,
                terminal_id,
                Severity.WARNING,
                f"terminal {terminal_id} declined {recent.declined} of {recent.financial}"
                f" financial requests ({100 * ratio:.1f}%; {against})",
            )
        )
    return conditions


def _declined_ratio(counts: TrafficCounts) -> float:
    return _ratio(counts.declined, counts.financial)


def unavailable_ratio(observation: Observation, rules: AlertRules) -> list[Condition]:
    assert observation.snapshot is not None
    recent = add_traffic(list(observation.snapshot.recent.values()))
    ratio = _ratio(recent.unavailable, recent.financial)
    if recent.financial < rules.requests_min or ratio <= rules.unavailable_ratio_max:
        return []
    return [
        Condition(
            Rule.UNAVAILABLE_RATIO,
            FLEET_SUBJECT,
            None,
            Severity.CRITICAL,
            f"{recent.unavailable} of {recent.financial} financial requests answered 91 or 96"
            f" ({100 * ratio:.1f}%, over {100 * rules.unavailable_ratio_max:g}%)",
        )
    ]


def arqc_failure_ratio(observation: Observation, rules: AlertRules) -> list[Condition]:
    assert observation.snapshot is not None
    recent = observation.snapshot.recent
    fleet = add_traffic(list(recent.values()))
    ratio = _ratio(fleet.chip_refused, fleet.chip)
    if fleet.chip < rules.requests_min or ratio <= rules.arqc_failure_ratio_max:
        return []
    worst = sorted(
        ((counts.chip_refused, terminal_id) for terminal_id, counts in recent.items()),
        key=lambda item: (-item[0], item[1]),
    )
    at = ", ".join(f"{terminal_id} {count}" for count, terminal_id in worst[:3] if count)
    return [
        Condition(
            Rule.ARQC_FAILURE_RATIO,
            FLEET_SUBJECT,
            None,
            Severity.CRITICAL,
            f"{fleet.chip_refused} of {fleet.chip} chip requests refused for the card's security"
            f" (63; {100 * ratio:.1f}%, over {100 * rules.arqc_failure_ratio_max:g}%); most at"
            f" {at}",
        )
    ]


def cash(observation: Observation, _rules: AlertRules) -> list[Condition]:
    """Cash out (critical: withdrawals are declined) or low (warning), never both at once; not
    for a terminal out of service, which takes no withdrawals anyway."""
    snapshot = observation.snapshot
    assert snapshot is not None
    in_service = {
        view.record.terminal_id: view.record.location
        for view in observation.views
        if view.state is not TerminalState.OUT_OF_SERVICE
    }
    conditions = []
    for terminal_id, cassettes in sorted(snapshot.cassettes().items()):
        location = in_service.get(terminal_id)
        level = cash_level((c.remaining_notes, c.low_notes) for c in cassettes)
        if location is None or level is None or level is CashLevel.OK:
            continue
        if level is CashLevel.OUT:
            rule, severity, what = Rule.CASH_OUT, Severity.CRITICAL, "no note left"
        else:
            low = [c for c in cassettes if c.remaining_notes <= c.low_notes]
            rule, severity = Rule.CASH_LOW, Severity.WARNING
            what = "; ".join(
                f"cassette {c.cassette_no} (notes of {c.denomination_minor} {c.currency} minor"
                f" units) {c.remaining_notes} left, low mark {c.low_notes}"
                for c in low
            )
        summary = f"terminal {terminal_id} ({location}) cash {level.value}: {what}"
        conditions.append(Condition(rule, terminal_id, terminal_id, severity, summary))
    return conditions


def terminal_imbalance(observation: Observation, _rules: AlertRules) -> list[Condition]:
    """A terminal whose counters disagree with the host's: cash or transactions unaccounted
    for, to be counted at the ATM before its next business day is settled."""
    snapshot = observation.snapshot
    assert snapshot is not None
    return [
        Condition(
            Rule.TERMINAL_IMBALANCE,
            imbalance.terminal_id,
            imbalance.terminal_id,
            Severity.CRITICAL,
            f"terminal {imbalance.terminal_id} does not balance for business day"
            f" {imbalance.business_date:%Y-%m-%d} ({imbalance.currency}): its"
            f" {', '.join(imbalance.differences)} differ from the host's",
        )
        for imbalance in snapshot.imbalances
    ]


def latency_p99_over_slo(observation: Observation, rules: AlertRules) -> list[Condition]:
    assert observation.snapshot is not None
    recent = add_traffic(list(observation.snapshot.recent.values()))
    p99 = recent.latency_ms(0.99)
    if recent.financial < rules.requests_min or p99 is None or p99 <= rules.latency_p99_slo_ms:
        return []
    return [
        Condition(
            Rule.LATENCY_P99_OVER_SLO,
            FLEET_SUBJECT,
            None,
            Severity.WARNING,
            f"financial latency p99 {p99:.0f} ms over the {rules.latency_p99_slo_ms:g} ms SLO"
            f" ({recent.financial} requests)",
        )
    ]


def audit_verify_failing(observation: Observation, _rules: AlertRules) -> list[Condition]:
    assert observation.snapshot is not None
    check = observation.snapshot.audit
    if check is None or check.outcome == "ok":
        return []
    verb = "found damage" if check.outcome == "damaged" else "did not finish"
    return [
        Condition(
            Rule.AUDIT_VERIFY_FAILING,
            JOURNAL_SUBJECT,
            None,
            Severity.CRITICAL,
            f"audit verify at {check.checked_at:%Y-%m-%d %H:%M:%S} UTC {verb}: {check.problem}",
        )
    ]


def unreachable(observation: Observation, _rules: AlertRules) -> list[Condition]:
    return [
        Condition(
            rule,
            observation.process_id,
            None,
            Severity.CRITICAL,
            f"switch process {observation.process_id} cannot reach the {name}",
        )
        for rule, name in PROCESS_RULES.items()
        if not observation.checks.get(name, True)
    ]


def certificate_expiring(observation: Observation, rules: AlertRules) -> list[Condition]:
    now = observation.now
    conditions = []
    for held in observation.certificates:
        left = held.not_valid_after - now
        if left >= rules.certificate_expiry_warning:
            continue
        whose = (
            "this switch's server certificate"
            if held.terminal_id is None
            else f"the client certificate of terminal {held.terminal_id}"
        )
        when = f"{held.not_valid_after:%Y-%m-%d %H:%M:%S} UTC"
        days = left.total_seconds() / 86_400
        conditions.append(
            Condition(
                Rule.CERTIFICATE_EXPIRING,
                held.subject,
                held.terminal_id,
                Severity.WARNING,
                f"{whose} expired at {when}"
                if days <= 0
                else f"{whose} expires at {when} ({days:.1f} days left)",
            )
        )
    return conditions


RuleFunction = Callable[[Observation, AlertRules], list[Condition]]
FLEET_RULES: tuple[RuleFunction, ...] = (
    terminal_offline,
    decline_rate_spike,
    unavailable_ratio,
    arqc_failure_ratio,
    latency_p99_over_slo,
    audit_verify_failing,
    cash,
    terminal_imbalance,
)


def evaluate(observation: Observation, rules: AlertRules) -> list[Condition]:
    """The conditions that hold now; the fleet rules only when the snapshot could be read."""
    conditions = unreachable(observation, rules) + certificate_expiring(observation, rules)
    if observation.snapshot is not None:
        for rule in FLEET_RULES:
            conditions += rule(observation, rules)
    return conditions


class Pending:
    """Conditions must hold for their rule's duration before they count (a probe that fails
    once is not an outage). Bounded by the conditions that hold now."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str], datetime] = {}

    def held(
        self, conditions: Sequence[Condition], now: datetime, rules: AlertRules
    ) -> list[Condition]:
        self._since = {c.key: self._since.get(c.key, now) for c in conditions}
        return [c for c in conditions if now - self._since[c.key] >= _duration(c.rule, rules)]


def _duration(rule: Rule, rules: AlertRules) -> timedelta:
    return rules.dependency_for if rule in PROCESS_RULES else timedelta(0)


@dataclass(frozen=True, slots=True)
class Plan:
    fire: list[Condition]
    resolve: list[AlertRecord]


def plan(
    active: Sequence[Condition],
    open_alerts: Sequence[AlertRecord],
    *,
    process_id: str,
    live_processes: frozenset[str],
) -> Plan:
    """Fleet conditions without an open alert fire; open fleet alerts whose condition no
    longer holds resolve, and so do the dependency alerts of processes no longer alive (nobody
    else would). This process's own dependency alerts are `ProcessAlerts`' business. A held
    alert (a certificate's) resolves when the process that raised it no longer sees its
    condition, or is gone."""
    active_keys = {c.key for c in active}
    open_keys = {(a.rule, a.subject) for a in open_alerts}
    fire = [c for c in active if c.rule not in PROCESS_RULES and c.key not in open_keys]
    resolve = []
    for alert in open_alerts:
        if alert.rule in PROCESS_RULES:
            if alert.subject != process_id and alert.subject not in live_processes:
                resolve.append(alert)
        elif alert.rule in HELD_RULES:
            ours = alert.raised_by == process_id
            if (ours and (alert.rule, alert.subject) not in active_keys) or (
                not ours and alert.raised_by not in live_processes
            ):
                resolve.append(alert)
        elif (alert.rule, alert.subject) not in active_keys:
            resolve.append(alert)
    return Plan(fire, resolve)


@dataclass(frozen=True, slots=True)
class ProcessAlert:
    condition: Condition
    raised_at: datetime
    resolved_at: datetime | None = None
    # Set once written to the ledger.
    alert_id: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A state an alert entered, to notify."""

    state: str
    alert: dict[str, object]


@dataclass
class ProcessAlerts:
    """This process's dependency alerts: fired, resolved and notified here as soon as the
    probes say so, and written to the ledger when it can be reached (the ledger may be what is
    down). Bounded: at most `limit` alerts wait to be written; past that the oldest resolved
    one is forgotten (it was notified) and counted."""

    limit: int
    alerts: list[ProcessAlert] = field(default_factory=list)
    forgotten: int = 0

    def update(self, active: Sequence[Condition], now: datetime) -> list[Transition]:
        wanted = {c.key: c for c in active if c.rule in PROCESS_RULES}
        transitions = []
        for index, alert in enumerate(self.alerts):
            if alert.resolved_at is None and alert.condition.key not in wanted:
                self.alerts[index] = replace(alert, resolved_at=now)
                transitions.append(Transition("resolved", self.as_json(self.alerts[index])))
        firing = {a.condition.key for a in self.alerts if a.resolved_at is None}
        for key, condition in wanted.items():
            if key not in firing:
                self.alerts.append(ProcessAlert(condition, now))
                transitions.append(Transition("firing", self.as_json(self.alerts[-1])))
        while len(self.alerts) > self.limit:
            oldest = next((a for a in self.alerts if a.resolved_at is not None), None)
            if oldest is None:
                break
            self.alerts.remove(oldest)
            self.forgotten += 1
        return transitions

    def written(self, alert: ProcessAlert, alert_id: int) -> None:
        """`alert` was raised in the ledger as `alert_id` (resolved there too, if it was)."""
        index = self.alerts.index(alert)
        if alert.resolved_at is not None:
            del self.alerts[index]
        else:
            self.alerts[index] = replace(alert, alert_id=alert_id)

    def unwritten(self) -> list[ProcessAlert]:
        return [a for a in self.alerts if a.alert_id is None or a.resolved_at is not None]

    @staticmethod
    def as_json(alert: ProcessAlert) -> dict[str, object]:
        condition = alert.condition
        return {
            "alert_id": alert.alert_id,
            "rule": condition.rule.value,
            "subject": condition.subject,
            "terminal_id": condition.terminal_id,
            "severity": condition.severity.value,
            "summary": condition.summary,
            "state": "firing" if alert.resolved_at is None else "resolved",
            "raised_at": alert.raised_at.isoformat(),
            "resolved_at": None if alert.resolved_at is None else alert.resolved_at.isoformat(),
        }

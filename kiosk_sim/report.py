"""A load run's report: throughput, latency percentiles, response codes, failures.

As text for a terminal, JSON for machines and Markdown for notes. Pure.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

from kiosk_sim.histogram import Histogram

PERCENTILES: tuple[float, ...] = (50, 90, 99, 99.9)


@dataclass
class Report:
    duration_s: float = 0.0
    terminals: int = 0
    target_rate_per_s: float | None = None
    latency: Histogram = field(default_factory=Histogram)
    response_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    # Sessions started, per kind (a session is one or more requests: a partial dispense is a
    # withdrawal and its reversal, a duplicate sends its 0200 twice).
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    idle_echoes: int = 0
    timeouts: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    # None until an end-state check has run.
    differences: list[str] | None = None
    # Per account: the ledger's balance minus the model's (only accounts that differ).
    discrepancies: dict[str, int] | None = None

    @property
    def answered(self) -> int:
        return sum(self.response_codes.values())

    @property
    def approved(self) -> int:
        return self.response_codes["00"]

    @property
    def sessions(self) -> int:
        return sum(self.kinds.values())

    @property
    def mode(self) -> str:
        if self.target_rate_per_s is None:
            return "closed loop"
        return f"open loop at {self.target_rate_per_s:,.1f} sessions/s"

    def rate_per_s(self, count: int) -> float:
        return count / self.duration_s if self.duration_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        figures = {f"p{p:g}": self.latency.percentile_us(p) / 1000 for p in PERCENTILES}
        figures["max"] = self.latency.max_us / 1000
        return figures

    def as_dict(self) -> dict[str, object]:
        return {
            "duration_s": round(self.duration_s, 3),
            "terminals": self.terminals,
            "target_rate_per_s": self.target_rate_per_s,
            "sessions": self.sessions,
            "sessions_per_s": round(self.rate_per_s(self.sessions), 1),
            "answered": self.answered,
            "answered_per_s": round(self.rate_per_s(self.answered), 1),
            "approved": self.approved,
            "approved_per_s": round(self.rate_per_s(self.approved), 1),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms().items()},
            "response_codes": dict(sorted(self.response_codes.items())),
            "kinds": dict(sorted(self.kinds.items())),
            "idle_echoes": self.idle_echoes,
            "timeouts": self.timeouts,
            "errors": dict(sorted(self.errors.items())),
            "end_state_differences": None if self.differences is None else len(self.differences),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_text(self) -> str:
        latency = "  ".join(f"{k} {v:.1f} ms" for k, v in self.latency_ms().items())
        codes = "  ".join(f"{code}: {n}" for code, n in sorted(self.response_codes.items()))
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))
        lines = [
            f"{self.terminals} terminals, {self.duration_s:.1f} s, {self.mode}",
            f"answered  {self.answered} ({self.rate_per_s(self.answered):,.1f}/s), "
            f"approved {self.approved} ({self.rate_per_s(self.approved):,.1f}/s)",
            f"sessions  {self.sessions} ({self.rate_per_s(self.sessions):,.1f}/s)"
            + (f": {kinds}" if kinds else ""),
            f"latency   {latency}",
            f"codes     {codes or '-'}",
            f"timeouts  {self.timeouts}   errors {sum(self.errors.values())}",
        ]
        if self.differences is not None:
            lines.append(f"end state {len(self.differences)} differences")
            lines += [f"  - {difference}" for difference in self.differences[:20]]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        latency = self.latency_ms()
        rows = [
            ("terminals", str(self.terminals)),
            ("duration", f"{self.duration_s:.1f} s"),
            ("mode", self.mode),
            ("sessions/s", f"{self.rate_per_s(self.sessions):,.1f}"),
            ("answered/s", f"{self.rate_per_s(self.answered):,.1f}"),
            ("approved/s", f"{self.rate_per_s(self.approved):,.1f}"),
            *((f"latency {name}", f"{value:.1f} ms") for name, value in latency.items()),
            ("timeouts", str(self.timeouts)),
            ("errors", str(sum(self.errors.values()))),
        ]
        if self.differences is not None:
            rows.append(("end-state differences", str(len(self.differences))))
        return "\n".join(["| figure | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])

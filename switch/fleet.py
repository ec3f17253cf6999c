"""The terminal fleet as operators see it: signed on or not, last seen, counts, approval rate,
and when the client certificate it signed on with expires."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from switch.session import FINANCIAL_CLASSES
from switch.tls import PeerCertificate


@dataclass
class TerminalStatus:
    terminal_id: str
    signed_on: bool = False
    last_seen: datetime | None = None
    requests: int = 0
    financial: int = 0
    approved: int = 0
    # The client certificate of the connection it last signed on over (mutual TLS only).
    certificate: PeerCertificate | None = None

    def as_json(self, now: datetime) -> dict[str, object]:
        certificate = self.certificate
        return {
            "terminal_id": self.terminal_id,
            "signed_on": self.signed_on,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "requests": self.requests,
            "financial_requests": self.financial,
            "approved": self.approved,
            "approval_rate": round(self.approved / self.financial, 4) if self.financial else None,
            "certificate_expires_at": (
                certificate.not_valid_after.isoformat() if certificate else None
            ),
            "certificate_days_left": round(certificate.days_left(now), 1) if certificate else None,
        }


class Fleet:
    """Bounded by the number of terminals that ever signed on, which provisioning bounds."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._terminals: dict[str, TerminalStatus] = {}

    def observe(
        self,
        terminal_id: str | None,
        mti: str,
        network_code: str | None,
        response_code: str | None,
        certificate: PeerCertificate | None,
    ) -> None:
        if terminal_id is None:
            return
        approved = response_code == "00"
        if mti == "0800" and network_code == "001" and not approved:
            return  # a refused sign-on does not make a terminal known
        status = self._terminals.get(terminal_id)
        if status is None:  # not setdefault: that builds a status on every message
            status = self._terminals[terminal_id] = TerminalStatus(terminal_id)
        status.last_seen = self._clock()
        status.requests += 1
        if mti == "0800" and approved and network_code in ("001", "002"):
            status.signed_on = network_code == "001"
            if status.signed_on:
                status.certificate = certificate
        if mti[:3] in FINANCIAL_CLASSES:
            status.financial += 1
            status.approved += approved

    def disconnected(self, terminal_id: str | None) -> None:
        status = self._terminals.get(terminal_id or "")
        if status is not None:
            status.signed_on = False

    def snapshot(self) -> list[dict[str, object]]:
        now = self._clock()
        return [self._terminals[t].as_json(now) for t in sorted(self._terminals)]

    def certificates(self) -> list[tuple[str, PeerCertificate]]:
        """Each signed-on terminal's client certificate (mutual TLS only)."""
        return [
            (terminal_id, status.certificate)
            for terminal_id, status in sorted(self._terminals.items())
            if status.signed_on and status.certificate is not None
        ]

    def certificate_days_left_min(self) -> float | None:
        """The fewest days any signed-on terminal's certificate has left; None without one."""
        now = self._clock()
        return min((c.days_left(now) for _, c in self.certificates()), default=None)

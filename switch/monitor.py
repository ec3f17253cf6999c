"""The server's observer: feeds every answered message to the metrics and the fleet view."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from switch.fleet import Fleet
from switch.iso8583.message import Message
from switch.metrics import Metrics
from switch.tls import HandshakeFailure, PeerCertificate


class Monitor:
    def __init__(self, wall_clock: Callable[[], datetime]) -> None:
        self.metrics = Metrics()
        self.fleet = Fleet(wall_clock)

    def message(
        self,
        terminal_id: str | None,
        request_mti: str,
        response: Message,
        latency_ms: float,
        certificate: PeerCertificate | None,
    ) -> None:
        code = response.response_code or ""
        self.metrics.observe(request_mti, code, latency_ms)
        self.fleet.observe(terminal_id, request_mti, response.network_code, code, certificate)

    def disconnected(self, terminal_id: str | None) -> None:
        self.fleet.disconnected(terminal_id)

    def tls_refused(self, reason: HandshakeFailure) -> None:
        self.metrics.count_tls_refusal(reason)

    def subject_mismatch(self) -> None:
        self.metrics.count_subject_mismatch()

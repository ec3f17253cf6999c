"""The server's observer: feeds every answered message to the metrics and the fleet view, and
every connection's life and traffic to the activity recorder (terminal events in the ledger)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from switch.activity import ActivityRecorder
from switch.fleet import Fleet
from switch.iso8583.message import Message
from switch.metrics import Metrics
from switch.server import ConnectionView
from switch.tls import HandshakeFailure


class Monitor:
    def __init__(
        self, wall_clock: Callable[[], datetime], activity: ActivityRecorder | None = None
    ) -> None:
        self.metrics = Metrics()
        self.fleet = Fleet(wall_clock)
        self.activity = activity

    def connected(self, connection: ConnectionView) -> None:
        if self.activity is not None:
            self.activity.connected(connection.seq, connection.peer)

    def message(
        self,
        terminal_id: str | None,
        request_mti: str,
        response: Message,
        latency_ms: float,
        connection: ConnectionView,
        *,
        chip: bool,
    ) -> None:
        code = response.response_code or ""
        self.metrics.observe(request_mti, code, latency_ms, chip=chip)
        self.fleet.observe(
            terminal_id, request_mti, response.network_code, code, connection.certificate
        )
        if self.activity is not None:
            self.activity.message(
                connection.session.terminal_id,
                connection.seq,
                request_mti=request_mti,
                network_code=response.network_code,
                response_code=code,
                latency_ms=latency_ms,
                chip=chip,
            )

    def disconnected(self, connection: ConnectionView, reason: str) -> None:
        self.fleet.disconnected(connection.session.terminal_id)
        if self.activity is not None:
            self.activity.disconnected(connection.session.terminal_id, connection.seq, reason)

    def tls_refused(self, reason: HandshakeFailure) -> None:
        self.metrics.count_tls_refusal(reason)

    def subject_mismatch(self) -> None:
        self.metrics.count_subject_mismatch()

"""The operations side of a running switch, built from settings: terminal activity recorded in
the ledger, the fleet's snapshot, alerting with webhook notifications and the journal check.
All of it runs beside the request path on a pool of its own; `running_operations` starts it
and, after the listener has closed, stops it in order (the last events are written first).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from aiohttp import web
from cryptography import x509

from ledger.activity import ProcessInfo
from ledger.operations import OperationsStore
from switch.activity import ActivityRecorder
from switch.alerting import Alerting, AlertingSettings, Probe, running_alerting
from switch.alerts import AlertRules, HeldCertificate
from switch.audit_check import AuditChecker, AuditCheckSettings, running_checker
from switch.fleet import Fleet
from switch.fleet_reader import FleetReader, Windows
from switch.notify import Notifier, WebhookSettings, running_notifier
from switch.recorder import ActivityWriter, RecorderSettings, running_writer
from switch.settings import AlertsSettings, OperationsSettings, TlsSettings


@dataclass(frozen=True, slots=True)
class Operations:
    process: ProcessInfo
    store: OperationsStore
    recorder: ActivityRecorder
    writer: ActivityWriter
    reader: FleetReader
    alerting: Alerting
    notifier: Notifier
    checker: AuditChecker | None
    cutover: time
    clock: Callable[[], datetime]
    timeout_ms: int

    def figures(self) -> dict[str, float]:
        """For /metrics, in the existing style (names ending _total are counters)."""
        recorder, writer, sent = self.recorder, self.writer, self.notifier.figures
        return {
            "terminal_events_queued": float(recorder.events_queued),
            "terminal_events_written_total": float(writer.events_written),
            "terminal_events_dropped_total": float(recorder.events_dropped + writer.events_refused),
            "terminal_traffic_requests_dropped_total": float(recorder.traffic_dropped),
            "operations_write_failures_total": float(writer.write_failures),
            "alert_notifications_queued": float(self.notifier.queued),
            "alert_notifications_sent_total": float(sent.sent),
            "alert_notifications_failed_attempts_total": float(sent.failed_attempts),
            "alert_notifications_dropped_queue_full_total": float(sent.dropped_queue_full),
            "alert_notifications_dropped_after_retries_total": float(sent.dropped_attempts),
            **self.alerting.figures(),
        }


OPERATIONS_KEY = web.AppKey("operations", Operations)


def activity_recorder(settings: OperationsSettings, clock: Callable[[], float]) -> ActivityRecorder:
    """`clock`: the wall clock in seconds (time.time), read once per message."""
    return ActivityRecorder(
        clock=clock,
        bucket_ms=settings.bucket_ms,
        events_max=settings.events_queue_max,
        buckets_max=settings.traffic_buckets_max,
    )


@dataclass(frozen=True, slots=True)
class CertificateWatch:
    """What the certificate_expiring rule looks at: the listener's own certificate, read once
    (the switch serves it until it restarts), and the signed-on terminals' ones."""

    warning_days: int
    server: HeldCertificate
    fleet: Fleet

    def held(self) -> list[HeldCertificate]:
        terminals = [
            HeldCertificate(terminal_id, terminal_id, certificate.not_valid_after)
            for terminal_id, certificate in self.fleet.certificates()
        ]
        return [self.server, *terminals]


def certificate_watch(tls: TlsSettings | None, fleet: Fleet) -> CertificateWatch | None:
    """None without TLS (no certificate to watch). Raises ValueError when the listener's
    certificate file holds no PEM certificate."""
    if tls is None:
        return None
    return CertificateWatch(tls.certificate_expiry_warning_days, server_certificate(tls), fleet)


def server_certificate(tls: TlsSettings) -> HeldCertificate:
    # The first certificate of the file is the listener's own; the rest is its chain.
    certificate = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    return HeldCertificate(
        f"server {certificate.subject.rfc4514_string()}", None, certificate.not_valid_after_utc
    )


def alert_rules(settings: AlertsSettings, certificate_expiry_warning_days: int) -> AlertRules:
    return AlertRules(
        terminal_offline_after=timedelta(milliseconds=settings.terminal_offline_after_ms),
        decline_ratio_min=settings.decline_ratio_min,
        decline_spike_factor=settings.decline_spike_factor,
        requests_min=settings.requests_min,
        unavailable_ratio_max=settings.unavailable_ratio_max,
        arqc_failure_ratio_max=settings.arqc_failure_ratio_max,
        latency_p99_slo_ms=settings.latency_p99_slo_ms,
        dependency_for=timedelta(milliseconds=settings.dependency_for_ms),
        certificate_expiry_warning=timedelta(days=certificate_expiry_warning_days),
    )


def webhook_settings(settings: AlertsSettings) -> WebhookSettings:
    webhook = settings.webhook
    return WebhookSettings(
        urls=webhook.urls,
        timeout_ms=webhook.timeout_ms,
        attempts_max=webhook.attempts_max,
        backoff_ms=webhook.backoff_ms,
        backoff_max_ms=webhook.backoff_max_ms,
        queue_max=webhook.queue_max,
    )


@contextlib.asynccontextmanager
async def running_operations(
    settings: OperationsSettings,
    alerts: AlertsSettings,
    *,
    recorder: ActivityRecorder,
    store: OperationsStore,
    probe: Probe,
    cutover: time,
    audit_dsn: str | None,
    clock: Callable[[], datetime],
    process: ProcessInfo | None = None,
    certificates: CertificateWatch | None = None,
) -> AsyncIterator[Operations]:
    """`audit_dsn`: where `audit verify` reads the journal; None: no journal check. `process`:
    this process (tests run several in one). `certificates`: None without TLS."""
    process = process or ProcessInfo(socket.gethostname(), os.getpid(), clock())
    writer = ActivityWriter(
        recorder,
        store,
        process,
        RecorderSettings(
            flush_interval_ms=settings.flush_interval_ms,
            traffic_interval_ms=settings.traffic_flush_interval_ms,
            batch_max=settings.batch_max,
            beat_interval_ms=settings.beat_interval_ms,
            timeout_ms=settings.timeout_ms,
        ),
        clock=clock,
    )
    reader = FleetReader(
        store,
        windows=Windows(
            recent=timedelta(milliseconds=alerts.window_ms),
            baseline=timedelta(milliseconds=alerts.baseline_ms),
            # Three beats missed: the process is gone.
            process_dead_after=timedelta(milliseconds=3 * settings.beat_interval_ms),
        ),
        cutover=cutover,
        cache=timedelta(milliseconds=settings.fleet_cache_ms),
        timeout_ms=settings.timeout_ms,
        clock=clock,
    )
    notifier = Notifier(webhook_settings(alerts))
    warning_days = 0 if certificates is None else certificates.warning_days
    alerting = Alerting(
        AlertingSettings(
            alert_rules(alerts, warning_days), alerts.evaluate_interval_ms, settings.timeout_ms
        ),
        reader=reader,
        store=store,
        process_id=process.process_id,
        probe=probe,
        notifier=notifier,
        clock=clock,
        certificates=tuple if certificates is None else certificates.held,
    )
    checker = (
        None
        if audit_dsn is None
        else AuditChecker(
            AuditCheckSettings(
                audit_dsn, timedelta(milliseconds=alerts.audit_interval_ms), alerts.audit_timeout_ms
            ),
            store,
            process.process_id,
            clock=clock,
            store_timeout_ms=settings.timeout_ms,
        )
    )
    operations = Operations(
        process, store, recorder, writer, reader, alerting, notifier, checker, cutover, clock,
        settings.timeout_ms,
    )  # fmt: skip
    # Stopped in reverse: the checker and alerting first, then the writer, whose last flush
    # comes after the listener closed (in the caller's block) and so holds its disconnects.
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_notifier(notifier))
        await stack.enter_async_context(running_writer(writer))
        await stack.enter_async_context(running_alerting(alerting))
        if checker is not None:
            await stack.enter_async_context(running_checker(checker))
        yield operations

"""Webhook notifications: delivered, retried with backoff, dropped and counted, and never in
the way of the switch, whatever the receiver does (hangs, answers 500, refuses connections)."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import replace

import pytest
import structlog

from hsm.devkeys import DevKeys
from switch.notify import Notifier, WebhookSettings
from tests.e2e.conftest import PIN
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import OpsStack, eventually, ops_stack, webhook_receiver

FAST = WebhookSettings(
    urls=(), timeout_ms=200, attempts_max=3, backoff_ms=20, backoff_max_ms=40, queue_max=10
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def settings(url: str, **changes: int) -> WebhookSettings:
    return replace(FAST, urls=(url,), **changes)


async def test_a_notification_is_posted_as_json() -> None:
    async with webhook_receiver() as receiver:
        notifier = Notifier(settings(receiver.url))
        await notifier.start()
        try:
            notifier.notify({"kind": "alert", "state": "firing", "alert": {"rule": "r"}})
            await eventually(lambda: _true(receiver.bodies))
        finally:
            await notifier.close()
    assert receiver.bodies == [{"kind": "alert", "state": "firing", "alert": {"rule": "r"}}]
    assert (notifier.figures.sent, notifier.figures.failed_attempts) == (1, 0)


async def _true(value: object) -> bool:
    return bool(value)


@pytest.mark.parametrize("mode", ["error", "hang", "refuse"])
async def test_a_failing_receiver_gets_every_attempt_then_the_notification_is_dropped(
    mode: str,
) -> None:
    async with webhook_receiver() as receiver:
        receiver.mode = mode
        url = f"http://127.0.0.1:{closed_port()}/hook" if mode == "refuse" else receiver.url
        notifier = Notifier(settings(url))
        await notifier.start()
        try:
            with structlog.testing.capture_logs() as logs:
                started = time.monotonic()
                notifier.notify({"state": "firing"})
                assert time.monotonic() - started < 0.01  # queued, not sent, by the caller
                await eventually(lambda: _true(notifier.figures.dropped_attempts))
        finally:
            await notifier.close()
    assert notifier.figures.failed_attempts == 3
    assert (notifier.figures.sent, notifier.figures.dropped_attempts) == (0, 1)
    if mode != "refuse":
        assert receiver.attempts == 3
    [dropped] = [log for log in logs if log["event"] == "notification_dropped"]
    assert "3 attempts failed" in dropped["reason"]
    assert "s3cret" not in str(dropped)  # the URL's path may hold a secret: never logged


async def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    url = f"http://127.0.0.1:{closed_port()}/hook"
    notifier = Notifier(
        settings(url, attempts_max=5, backoff_ms=100, backoff_max_ms=300),
        sleep=sleep,
        rng=random.Random(3),
    )
    await notifier.start()
    try:
        notifier.notify({"state": "firing"})
        await eventually(lambda: _true(notifier.figures.dropped_attempts))
    finally:
        await notifier.close()
    # 100, 200, 300 (capped), 300 ms, each between half and all of it.
    assert len(slept) == 4
    for seconds, full in zip(slept, (0.1, 0.2, 0.3, 0.3), strict=True):
        assert full / 2 <= seconds <= full


async def test_a_full_queue_drops_the_oldest_notification_and_counts_it() -> None:
    async with webhook_receiver() as receiver:
        receiver.mode = "hang"
        notifier = Notifier(settings(receiver.url, queue_max=2, timeout_ms=5_000))
        await notifier.start()
        try:
            for n in range(5):  # no await between: the worker has taken none yet
                notifier.notify({"n": n})
            assert notifier.figures.dropped_queue_full == 3
            assert notifier.queued == 2
        finally:
            await notifier.close()


@pytest.mark.parametrize("mode", ["hang", "error", "refuse"])
async def test_the_switch_keeps_serving_while_the_receiver_fails(
    ops_db: OpsDatabase, dev_keys: DevKeys, mode: str
) -> None:
    async with webhook_receiver() as receiver:
        receiver.mode = mode
        if mode == "refuse":
            receiver.url = f"http://127.0.0.1:{closed_port()}/hook"
        async with ops_stack(ops_db, dev_keys, receiver=receiver) as stack:
            dying = await stack.terminal(0)
            await dying.client.close()  # an alert to notify
            terminal = await stack.terminal(1)
            pan = stack.world.customers[0].pan
            await eventually(lambda: stack.alerts(rule="terminal_offline"))
            latencies = []
            for _ in range(8):
                started = time.monotonic()
                answer = await terminal.send(terminal.balance_inquiry(pan, PIN))
                latencies.append(time.monotonic() - started)
                assert answer.code == "00"
            assert max(latencies) < 0.5, latencies
            metrics = await eventually(lambda: _dropped_metrics(stack))
    assert "switch_alert_notifications_sent_total 0" in metrics
    assert "switch_alert_notifications_failed_attempts_total 3" in metrics


async def _dropped_metrics(stack: OpsStack) -> str | None:
    text: str = await stack.get("/metrics")
    dropped = "switch_alert_notifications_dropped_after_retries_total 1"
    return text if dropped in text else None


async def test_notify_never_waits_for_the_receiver() -> None:
    async with webhook_receiver() as receiver:
        receiver.mode = "hang"
        notifier = Notifier(settings(receiver.url, queue_max=1_000, timeout_ms=5_000))
        await notifier.start()
        try:
            started = time.monotonic()
            for n in range(1_000):
                notifier.notify({"n": n})
                await asyncio.sleep(0)
            assert time.monotonic() - started < 1.0
        finally:
            await notifier.close()

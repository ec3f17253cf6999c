"""Alert notifications by webhook: a JSON POST per alert transition to each configured URL.

`notify` only appends to a bounded queue per URL and returns: a receiver that hangs, answers
500 or refuses connections never slows the switch. Each URL has one worker that sends in order,
with a time limit per attempt and exponential backoff with jitter between attempts; after the
last attempt the notification is dropped, and so is the oldest queued one when the queue is
full. Both are counted on /metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import structlog

log = structlog.get_logger("switch.notify")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...]
    # One attempt, connection included.
    timeout_ms: int
    attempts_max: int
    # Wait before the second attempt; doubled for each next one, up to backoff_max_ms.
    backoff_ms: int
    backoff_max_ms: int
    # Notifications waiting per URL.
    queue_max: int


@dataclass
class NotifyFigures:
    sent: int = 0
    failed_attempts: int = 0
    dropped_queue_full: int = 0
    dropped_attempts: int = 0


def _where(url: str) -> str:
    """A URL as logged: scheme, host and port only (a path or query may hold a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class _Destination:
    def __init__(self, url: str, settings: WebhookSettings) -> None:
        self.url = url
        self.queue: collections.deque[Mapping[str, object]] = collections.deque()
        self.ready = asyncio.Event()
        self._settings = settings

    def put(self, payload: Mapping[str, object], figures: NotifyFigures) -> None:
        if len(self.queue) >= self._settings.queue_max:
            self.queue.popleft()  # the newest state of an alert matters more than the oldest
            figures.dropped_queue_full += 1
            log.warning("notification_dropped", url=_where(self.url), reason="queue full")
        self.queue.append(payload)
        self.ready.set()


class Notifier:
    def __init__(
        self,
        settings: WebhookSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        assert settings.attempts_max > 0, settings.attempts_max
        assert settings.queue_max > 0, settings.queue_max
        self._settings = settings
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._destinations = [_Destination(url, settings) for url in settings.urls]
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.figures = NotifyFigures()

    @property
    def queued(self) -> int:
        return sum(len(d.queue) for d in self._destinations)

    def notify(self, payload: Mapping[str, object]) -> None:
        for destination in self._destinations:
            destination.put(payload, self.figures)

    async def start(self) -> None:
        if not self._destinations:
            return
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_ms / 1000)
        self._session = aiohttp.ClientSession(timeout=timeout)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(d)) for d in self._destinations]

    async def close(self) -> None:
        """Stop at once: what is still queued is not sent (alerts are in the ledger)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _work(self, destination: _Destination) -> None:
        while True:
            await destination.ready.wait()
            while destination.queue:
                await self._deliver(destination, destination.queue.popleft())
            destination.ready.clear()

    async def _deliver(self, destination: _Destination, payload: Mapping[str, object]) -> None:
        settings = self._settings
        for attempt in range(1, settings.attempts_max + 1):
            problem = await self._post(destination.url, payload)
            if problem is None:
                self.figures.sent += 1
                return
            self.figures.failed_attempts += 1
            if attempt == settings.attempts_max:
                break
            backoff_ms = min(settings.backoff_ms * 2 ** (attempt - 1), settings.backoff_max_ms)
            # Equal jitter: switch processes that failed together do not retry together.
            await self._sleep(backoff_ms * (0.5 + self._rng.random() / 2) / 1000)
        self.figures.dropped_attempts += 1
        log.warning(
            "notification_dropped",
            url=_where(destination.url),
            reason=f"{settings.attempts_max} attempts failed, the last: {problem}",
        )

    async def _post(self, url: str, payload: Mapping[str, object]) -> str | None:
        """None when the receiver took it (2xx), else why not."""
        assert self._session is not None
        try:
            async with self._session.post(url, json=payload, allow_redirects=False) as reply:
                if 200 <= reply.status < 300:
                    return None
                return f"HTTP {reply.status}"
        except TimeoutError:
            return f"no answer within {self._settings.timeout_ms} ms"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"


@contextlib.asynccontextmanager
async def running_notifier(notifier: Notifier) -> AsyncIterator[None]:
    await notifier.start()
    try:
        yield
    finally:
        await notifier.close()

"""What terminals do, gathered for the ledger: session events and traffic per time bucket.

Sans-I/O and cheap: the monitor feeds it on the event loop as messages are answered and
connections open and close; `switch.recorder` drains it into the ledger in the background.
Both holdings are bounded: when the ledger cannot take them for long, events about no terminal
are dropped first, then the oldest, and traffic for new buckets is dropped, each counted on
/metrics.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ledger.activity import (
    APPROVED_CODE,
    HISTOGRAM_SIZE,
    EventKind,
    TerminalEvent,
    TrafficCounts,
    latency_bucket,
)
from ledger.operations import TrafficBucket
from switch.session import FINANCIAL_CLASSES

# Approved 0800 network messages that change a terminal's session, by field 70.
SESSION_EVENTS = {"001": EventKind.SIGN_ON, "002": EventKind.SIGN_OFF, "161": EventKind.KEY_CHANGE}


@dataclass(slots=True)
class _Counts:
    requests: int = 0
    financial: int = 0
    approved: int = 0
    response_codes: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_SIZE)
    chip: int = 0
    # Seconds since the epoch: counted per message, so the cheapest clock there is.
    last_seen_s: float = 0.0

    def add(self, counts: TrafficCounts, last_seen_at: datetime) -> None:
        self.requests += counts.requests
        self.financial += counts.financial
        self.approved += counts.approved
        self.chip += counts.chip
        for code, count in counts.response_codes.items():
            self.response_codes[code] = self.response_codes.get(code, 0) + count
        for slot, count in enumerate(counts.latency_counts):
            self.latency_counts[slot] += count
        self.last_seen_s = max(self.last_seen_s, last_seen_at.timestamp())

    def frozen(self) -> TrafficCounts:
        return TrafficCounts(
            self.requests,
            self.financial,
            self.approved,
            dict(self.response_codes),
            tuple(self.latency_counts),
            self.chip,
        )


class ActivityRecorder:
    """`clock`: the wall clock in seconds since the epoch (time.time)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        bucket_ms: int,
        events_max: int,
        buckets_max: int,
    ) -> None:
        assert bucket_ms > 0, bucket_ms
        assert events_max > 0, events_max
        assert buckets_max > 0, buckets_max
        self._clock = clock
        self._bucket_ms = bucket_ms
        self._events: collections.deque[TerminalEvent] = collections.deque()
        self._events_max = events_max
        self._traffic: dict[tuple[str, int], _Counts] = {}
        self._buckets_max = buckets_max
        self.events_dropped = 0
        self.traffic_dropped = 0

    @property
    def events_queued(self) -> int:
        return len(self._events)

    # fed by the monitor

    def connected(self, connection_seq: int, peer: str) -> None:
        self._event(EventKind.CONNECT, connection_seq, None, {"peer": peer})

    def disconnected(self, terminal_id: str | None, connection_seq: int, reason: str) -> None:
        self._event(EventKind.DISCONNECT, connection_seq, terminal_id, {"reason": reason})

    def message(
        self,
        terminal_id: str | None,
        connection_seq: int,
        *,
        request_mti: str,
        network_code: str | None,
        response_code: str,
        latency_ms: float,
        chip: bool = False,
    ) -> None:
        """`terminal_id`: the one the connection signed on as (a provisioned terminal), so a
        stranger's field 41 never reaches the ledger. `chip`: the request carried chip data."""
        if terminal_id is None:
            return
        approved = response_code == APPROVED_CODE
        if request_mti == "0800" and approved and network_code in SESSION_EVENTS:
            self._event(SESSION_EVENTS[network_code], connection_seq, terminal_id, {})
        now_s = self._clock()
        key = (terminal_id, int(now_s * 1000) // self._bucket_ms * self._bucket_ms)
        counts = self._traffic.get(key)
        if counts is None:
            if len(self._traffic) >= self._buckets_max:
                self.traffic_dropped += 1
                return
            counts = self._traffic[key] = _Counts()
        counts.requests += 1
        counts.last_seen_s = now_s
        if request_mti[:3] in FINANCIAL_CLASSES:
            counts.financial += 1
            counts.approved += approved
            counts.chip += chip
            codes = counts.response_codes
            codes[response_code] = codes.get(response_code, 0) + 1
            counts.latency_counts[latency_bucket(latency_ms)] += 1

    def _event(
        self,
        kind: EventKind,
        connection_seq: int,
        terminal_id: str | None,
        detail: dict[str, str],
    ) -> None:
        if len(self._events) >= self._events_max:
            self.events_dropped += 1
            if terminal_id is None:
                return  # the newest event about no terminal: the one to drop
            self._drop_one()
        at = datetime.fromtimestamp(self._clock(), UTC)
        self._events.append(TerminalEvent(kind, at, connection_seq, terminal_id, detail))

    def _drop_one(self) -> None:
        """Make room for an event about a terminal: drop the oldest held event about none (a
        connection that never signed on), else the oldest. A flood of connections while the
        ledger is down thus cannot push out the sign-ons and disconnects the fleet view is
        decided from. Scans only when full, which only a long outage makes it."""
        for index, held in enumerate(self._events):
            if held.terminal_id is None:
                del self._events[index]
                return
        self._events.popleft()

    # drained by the writer

    def take_events(self, limit: int) -> list[TerminalEvent]:
        taken: list[TerminalEvent] = []
        while self._events and len(taken) < limit:
            taken.append(self._events.popleft())
        return taken

    def give_back_events(self, events: Sequence[TerminalEvent]) -> None:
        """Events a write could not store, back at the front (as room allows) for the next:
        past the room, those about no terminal go first, then the oldest."""
        room = self._events_max - len(self._events)
        kept = list(events)
        while len(kept) > room:
            noise = next((e for e in kept if e.terminal_id is None), kept[0])
            kept.remove(noise)
            self.events_dropped += 1
        self._events.extendleft(reversed(kept))

    def take_traffic(self) -> list[TrafficBucket]:
        taken = [
            TrafficBucket(
                terminal_id,
                datetime.fromtimestamp(start_ms / 1000, UTC),
                counts.frozen(),
                datetime.fromtimestamp(counts.last_seen_s, UTC),
            )
            for (terminal_id, start_ms), counts in self._traffic.items()
        ]
        self._traffic.clear()
        return taken

    def give_back_traffic(self, buckets: Sequence[TrafficBucket]) -> None:
        """Traffic a write could not store, added back (as room allows) for the next."""
        for bucket in buckets:
            key = (bucket.terminal_id, int(bucket.bucket_start.timestamp() * 1000))
            counts = self._traffic.get(key)
            if counts is None:
                if len(self._traffic) >= self._buckets_max:
                    self.traffic_dropped += bucket.counts.requests
                    continue
                counts = self._traffic[key] = _Counts()
            counts.add(bucket.counts, bucket.last_seen_at)

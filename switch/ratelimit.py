"""A log rate limit per key, so that a flood of one kind of event cannot fill the disk. Pure.

Each key has a fixed window that opens at its first event: the first `lines_max` events in the
window are logged, the rest only counted. The first line logged after a suppression carries
how many lines were left out since the previous one. Time is passed in, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Allowance:
    log: bool
    # With `log`: lines left out for this key since the last one logged.
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class _Window:
    started_s: float
    lines: int
    suppressed: int


class LogRateLimiter:
    """Keys are a small fixed vocabulary chosen by the caller: the state is one window per key."""

    def __init__(self, lines_max: int, interval_s: float) -> None:
        assert lines_max > 0, "lines_max"
        assert interval_s > 0, "interval_s"
        self._lines_max = lines_max
        self._interval_s = interval_s
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str, now_s: float) -> Allowance:
        window = self._windows.get(key)
        if window is None or now_s - window.started_s >= self._interval_s:
            suppressed = window.suppressed if window is not None else 0
            self._windows[key] = _Window(now_s, 1, 0)
            return Allowance(True, suppressed)
        if window.lines < self._lines_max:
            self._windows[key] = replace(window, lines=window.lines + 1)
            return Allowance(True)
        self._windows[key] = replace(window, suppressed=window.suppressed + 1)
        return Allowance(False)

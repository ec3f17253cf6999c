"""A run's chart: latency (p50, p99) and answers per second over the run, drawn to a PNG.

Drawn on matplotlib's Agg canvas directly, without pyplot, so it needs no display and touches no
global state. matplotlib is a declared dependency, but a report is not lost for want of it: the
chart is then skipped and the report says so.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from kiosk_sim.report import Chart, Summary

FIGURE_SIZE_IN = (10.0, 6.0)
DPI = 100


def _nan_if_none(value: float | None) -> float:
    # matplotlib leaves a gap at NaN: a second with nothing answered has no latency, not zero.
    return math.nan if value is None else value


def draw(summary: Summary, path: Path) -> Chart:
    # Imported here, not at the top: only a written report pays matplotlib's import time
    # (most of a second), and only here can its absence be turned into a skipped chart.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        return Chart(skipped_because="matplotlib is not installed")
    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    latency_axes, rate_axes = figure.subplots(2, 1, sharex=True)
    figure.suptitle(
        f"seed {summary.seed}, {summary.terminals} terminals, {summary.mode},"
        f" started {summary.started_at_iso}"
    )
    # Each second is drawn over [second, second + 1): counts as stairs, latency at its middle.
    # The last one ends where the run did (it drained in part of it), so it is drawn that narrow.
    first = summary.seconds_dropped
    edges = [*range(first, first + len(summary.seconds)), summary.duration_s]
    middles = [(start + end) / 2 for start, end in itertools.pairwise(edges)]
    for name, values in (
        ("p50", [second.latency_p50_ms for second in summary.seconds]),
        ("p99", [second.latency_p99_ms for second in summary.seconds]),
    ):
        latency_axes.plot(middles, [_nan_if_none(v) for v in values], marker=".", label=name)
    # Logarithmic, so a steady few milliseconds and a stall of seconds both read off it.
    latency_axes.set_yscale("log")
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.legend(loc="upper left")
    failed = [second.timeouts + second.errors for second in summary.seconds]
    for name, counts, style in (
        ("answered", [second.answered for second in summary.seconds], "-"),
        ("approved", [second.approved for second in summary.seconds], "--"),
        ("timeouts + errors", failed, "-"),
    ):
        rate_axes.stairs(counts, edges, label=name, linestyle=style)
    rate_axes.set_ylabel("per second")
    rate_axes.set_xlabel("seconds from the start")
    rate_axes.set_ylim(bottom=0)
    rate_axes.legend(loc="upper left")
    figure.savefig(path)
    return Chart(file_name=path.name)

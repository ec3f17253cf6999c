"""CPU time per process and the machine's steal, read from /proc.

On a shared virtual machine the wall-clock rates move with the CPU the host takes away (steal),
from run to run and within a run. The CPU seconds a process spends per transaction move far
less, so the bench reports them next to the rates, with the steal seen while measuring: a
throughput ratio and a CPU ratio that agree are a figure to trust; when they differ, the machine
was not the same for both runs.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class MachineTicks:
    """The first line of /proc/stat: all CPUs together, in clock ticks."""

    total: int
    steal: int

    @classmethod
    def parse(cls, line: str) -> MachineTicks:
        name, *fields = line.split()
        assert name == "cpu", line
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        # already counted in user and nice.
        ticks = [int(field) for field in fields[:8]]
        assert len(ticks) == 8, line
        return cls(total=sum(ticks), steal=ticks[7])

    @classmethod
    def read(cls) -> MachineTicks:
        with open("/proc/stat") as stat:
            return cls.parse(stat.readline())


def steal_percent(before: MachineTicks, after: MachineTicks) -> float:
    """The share of the machine's CPU time that the host took between two readings."""
    total = after.total - before.total
    return 0.0 if total <= 0 else 100 * (after.steal - before.steal) / total


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds a running process has spent."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def postmaster_pid(data_dir: Path) -> int:
    """The pid of the PostgreSQL server running on `data_dir` (first line of postmaster.pid)."""
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def cluster_cpu_s(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live processes, and (through the
    postmaster's children totals) the ones that have exited, such as closed connections."""
    fields = _stat_fields(postmaster)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICKS_PER_S
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    return total


def own_and_children_cpu_s() -> tuple[float, float]:
    """CPU seconds of this process, and of its waited-for child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime

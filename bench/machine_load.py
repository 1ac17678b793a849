"""How much of the machine other work took while something was measured.

A benchmark on a shared machine must not report a figure that someone else's work slowed down.
The load average cannot tell: it lags by a minute and counts the benchmark's own threads. This
counts CPU time directly: the machine's busy time (/proc/stat) minus the time of this process
and everything it started (live descendants from /proc, finished ones from os.times), over the
wall time, in cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_TICKS = os.sysconf("SC_CLK_TCK")
Result = TypeVar("Result")


def machine_busy_seconds() -> float:
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / _TICKS


def _descendants_seconds(root: int) -> float:
    """CPU seconds of the live processes below `root` (not root itself)."""
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return sum(times[pid] for pid in below)


def own_seconds() -> float:
    """CPU seconds of this process and every process it started, finished or not."""
    spent = os.times()
    return spent.user + spent.system + spent.children_user + spent.children_system + _descendants_seconds(os.getpid())


@dataclass
class Measured:
    value: object
    foreign_cores: float  # other work's CPU time over the wall time
    seconds: float


def measure_quietly(run: Callable[[], Result], threads: int, attempts: int = 4, wait_seconds: float = 600) -> Measured:
    """Runs `run` until other work took at most a quarter of a core meanwhile, waiting for a quiet
    machine between attempts (up to `wait_seconds` in all). After `attempts` loaded runs the last
    one is returned with its foreign load, for the caller to refuse. `threads` is what the
    measured work itself may use, for the message."""
    deadline = time.monotonic() + wait_seconds
    result = None
    for _ in range(attempts if wait_seconds > 0 else 1):
        while time.monotonic() < deadline and os.getloadavg()[0] > threads + 0.5:
            time.sleep(5)
        busy, own, started = machine_busy_seconds(), own_seconds(), time.monotonic()
        value = run()
        wall = time.monotonic() - started
        foreign = max(0.0, (machine_busy_seconds() - busy) - (own_seconds() - own)) / max(wall, 1e-6)
        result = Measured(value, foreign, wall)
        if foreign <= QUIET_FOREIGN_CORES:
            return result
        print(f"  other work took {foreign:.2f} cores meanwhile", flush=True)
    return result


# What other work may take while a figure is measured: a quarter of a core of the machine's.
QUIET_FOREIGN_CORES = 0.25

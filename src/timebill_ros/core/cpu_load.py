"""How much of this process's CPUs other processes are using: a sign of slow goals, reported
on /diagnostics.

On a robot the LLM shares its cores with perception and planning; an operator whose goals
run slower than calibrated wants to see whether a neighbour is the reason. It is not part of
the plan (core.conformal says why). `ForeignLoad` samples the busy time of the CPUs this process may run on and this
process's own CPU time every `period` seconds (psutil, as `core.calibration.busy_cores_now`):
the difference is the other processes' use, in cores.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque

import psutil

# Not busy: idle and I/O wait; guest time is already counted in user and nice on Linux.
NOT_BUSY = ("idle", "iowait", "guest", "guest_nice")


def busy_seconds(cpus: set[int]) -> float:
    """Busy CPU-seconds of CPUS since boot (user, nice, system, irq, softirq, steal, as reported)."""
    per_cpu = psutil.cpu_times(percpu=True)
    return sum(sum(t) - sum(getattr(t, f, 0.0) for f in NOT_BUSY) for i, t in enumerate(per_cpu) if i in cpus)


class ForeignLoad:
    """Cores' worth of CPU time other processes used, sampled in the background."""

    def __init__(self, period: float = 0.1, keep: float = 60.0) -> None:
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self.period = period
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(2, int(keep / period)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, name="timebill-cpu-load", daemon=True).start()

    def _sample(self) -> None:
        last = (time.monotonic(), busy_seconds(self.cpus), time.process_time())
        while not self._stop.wait(self.period):
            now = (time.monotonic(), busy_seconds(self.cpus), time.process_time())
            wall = now[0] - last[0]
            if wall > 0:
                foreign = ((now[1] - last[1]) - (now[2] - last[2])) / wall
                with self._lock:
                    self._samples.append((now[0], min(float(len(self.cpus)), max(0.0, foreign))))
            last = now

    def mean(self, since: float, until: float | None = None) -> float:
        """Mean foreign load (cores) over the samples taken in [SINCE, UNTIL] (monotonic
        seconds; UNTIL defaults to now); the newest sample when none falls in it; 0 when none."""
        until = time.monotonic() if until is None else until
        with self._lock:
            inside = [f for t, f in self._samples if since <= t <= until]
            newest = self._samples[-1][1] if self._samples else 0.0
        return sum(inside) / len(inside) if inside else newest

    def recent(self, seconds: float = 0.5) -> float:
        """Mean foreign load over the last SECONDS."""
        return self.mean(time.monotonic() - seconds)

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()


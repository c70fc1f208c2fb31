"""A time bound with a stated miss rate: adaptive conformal quantile tracking per phase.

The plan's bound for a phase is the fit's prediction times a point estimate of the
machine's recent pace (`ConformalTiming.point`) times q, a tracked quantile of the score
s = measured / (predicted x point). After every goal (Angelopoulos, Candes & Tibshirani 2023,
"Conformal PID control", the quantile tracker; Gibbs & Candes 2021, adaptive conformal
inference), in log space because s is a ratio:

    log q <- log q + eta * (miss - delta),    miss = 1 if s > q else 0.

Whatever the sequence of scores (any load, any drift), the long-run share of misses tends
to delta: over T goals it is within (log q_max - log q_0) / (eta * T) + ... of delta, so the
promise "at most delta of the phases run past their bound, in the long run" holds without
assuming the machine is steady. eta trades how fast a new load is followed (one miss
raises q by a factor e^(eta * (1 - delta))) against how long slack lingers after it (each
hit lowers q by e^(-eta * delta)).

A phase cut short by a kill or a cancel gives a lower bound on its score (the time it ran
over the fit's prediction for the whole phase): a miss when that bound already exceeds q,
otherwise no update (we do not know whether it would have missed).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass


@dataclass
class QuantileTracker:
    """One phase's tracked quantile q of the score measured / predicted."""

    q: float = 1.2  # where the tracker starts (the calibration's margins set it)
    delta: float = 0.005  # target miss rate of this phase
    eta: float = 0.05  # step in log q
    q_min: float = 0.2  # a machine faster than 5x its calibration is a wrong calibration
    q_max: float = 50.0
    updates: int = 0
    misses: int = 0

    def update(self, score: float, complete: bool = True) -> bool | None:
        """Feed one goal's SCORE (a lower bound when not COMPLETE); True for a miss, False for
        a covered phase, None when a lower bound says nothing."""
        if not math.isfinite(score) or score <= 0.0:
            return None
        miss = score > self.q
        if not complete and not miss:
            return None
        log_q = math.log(self.q) + self.eta * ((1.0 if miss else 0.0) - self.delta)
        self.q = min(self.q_max, max(self.q_min, math.exp(log_q)))
        self.updates += 1
        self.misses += int(miss)
        return miss

    @property
    def miss_rate(self) -> float:
        """Misses over updates so far (nan before any)."""
        return self.misses / self.updates if self.updates else float("nan")


class ConformalTiming:
    """A bound per phase (prefill, decode), thread-safe: the fit x a point estimate of the
    machine's pace x a tracked quantile q of the score measured / (fit x point).

    The point estimate is the phase's pace: the larger of the last PACE_WINDOW goals' ratios
    of measured to fit time. With the tracker on the ratio alone, a load that came and went
    left q at its level for ~1/(eta * delta) goals (thousands): slack that lingers after every
    busy spell. On the residual, q only has to cover how far one goal strays from the goals
    just before it.

    The other processes' CPU use (core.cpu_load) is not part of the point: scaled into it as
    1 + foreign cores x threads / cores, it cost 53-58 % mean slack through the node
    (docs/timing.md), because a neighbour's burst that had just ended read as load, the
    reading is halved while the node computes, and a busy neighbour slowed the node 4-5x,
    not the 2x the model said. A new load costs a miss or two until the pace has seen it."""

    def __init__(self, start: dict[str, float], delta: float = 0.01, eta: float = 0.05, pace_window: int = 2) -> None:
        # The goal's bound is missed when either phase misses: half the budget each (union bound).
        self.start, self.delta, self.eta = dict(start), delta, eta
        self.trackers = {phase: QuantileTracker(q=q, delta=delta / 2, eta=eta) for phase, q in start.items()}
        self._paces = {phase: deque(maxlen=pace_window) for phase in start}
        self._lock = threading.Lock()

    def point(self, phase: str) -> float:
        """The point estimate of the next goal's ratio: the phase's recent pace over the fit (1
        before any goal)."""
        with self._lock:
            return max(self._paces[phase], default=1.0)

    def factor(self, phase: str) -> float:
        """What the fit of PHASE is multiplied by to plan: point x q."""
        with self._lock:
            q = self.trackers[phase].q
        return self.point(phase) * q

    def quantile(self, phase: str) -> float:
        """The phase's current q."""
        with self._lock:
            return self.trackers[phase].q

    def observe(self, phase: str, measured: float, predicted: float, complete: bool = True, *,
                point: float = 1.0) -> bool | None:
        """One goal's PHASE took MEASURED seconds against PREDICTED by the fit (for the whole
        phase; MEASURED is a lower bound when not COMPLETE); it was planned with POINT."""
        if predicted <= 0.0 or point <= 0.0:
            return None
        ratio = measured / predicted
        with self._lock:
            miss = self.trackers[phase].update(ratio / point, complete)
            if complete or ratio > max(self._paces[phase], default=1.0):  # a cut phase: at least this slow
                self._paces[phase].append(ratio)
        return miss

    def reset(self) -> None:
        """Back to the starting quantiles and pace, no updates counted."""
        with self._lock:
            for phase, q in self.start.items():
                t = self.trackers[phase]
                t.q, t.updates, t.misses = q, 0, 0
                self._paces[phase].clear()

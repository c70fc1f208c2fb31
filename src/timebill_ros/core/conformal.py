"""A time bound with a stated miss rate: one adaptive conformal threshold on each goal's total.

A goal is planned with the fit times a point estimate of the machine's pace per phase
(`ConformalTiming.point`) times one margin, exp(z x sigma):
- the point is the median of the last PACE_WINDOW goals' ratios of measured to fit time,
  counted since the last change of regime (below);
- sigma is the spread of the recent residuals e = log(measured total / planned total at the
  point), so the margin is wide while the machine is erratic and narrow once it is steady;
- z is the threshold on the normalized score e / sigma, tracked after every goal by the
  quantile tracker of conformal prediction under drift (Gibbs & Candes 2021, adaptive conformal
  inference; Angelopoulos, Candes & Tibshirani 2023, "Conformal PID control"):

      z <- z + eta * (miss - delta),    miss = 1 if the goal ran past its bound.

Whatever the sequence of scores (any load, any drift), the share of misses over T goals is
within (|z_0| + z_max + eta) / (eta * T) of delta: the promise "in the long run at most delta
of the goals run past their first plan's bound" holds without assuming the machine is steady.

Why this form (docs/timing.md, docs/results/timing_under_load.json): the previous tracker
had a quantile per phase, on the ratio over the pace, each at delta / 2. A miss raised it by
e^eta and a covered goal lowered it by e^(-eta delta), so one load spell left ~200 goals of
slack behind (44.5 % mean slack in the idle phase after it), and per-phase misses raised it
even when the goal's total stayed in its bound. Here the goal's total is scored once, and
what a busy spell leaves behind (a wide sigma) leaves with the residual window.

A change of regime (a residual beyond CHANGE x sigma: a load that started or stopped) clears
the pace and residual windows, so the next goal plans at the new pace with a wider sigma
(twice the calibration's) until three goals have been seen.

A goal cut short in prefill (a kill or a cancel) gives a lower bound on its score (the time
it ran over the plan for the whole prefill): a miss when that bound already exceeds the
margin, otherwise no update (we do not know whether it would have missed).
"""
from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass

PHASES = ("prefill", "decode")
DEFAULT_Z = 2.5  # a normal score's 99.4 % quantile: where z starts before any goal


@dataclass
class QuantileTracker:
    """A tracked threshold z on scores: after each score, z <- z + eta * (miss - delta)."""

    z: float = DEFAULT_Z
    delta: float = 0.01  # target miss rate
    eta: float = 0.3  # step, in the score's units
    z_min: float = -1.0
    z_max: float = 20.0
    updates: int = 0
    misses: int = 0

    def update(self, score: float, complete: bool = True, threshold: float | None = None) -> bool | None:
        """Feed one goal's SCORE (a lower bound when not COMPLETE), judged against THRESHOLD (the z
        it was planned with; the current z if None). True for a miss, False for a covered
        goal, None when a lower bound says nothing."""
        if not math.isfinite(score):
            return None
        miss = score > (self.z if threshold is None else threshold)
        if not complete and not miss:
            return None
        self.z = min(self.z_max, max(self.z_min, self.z + self.eta * ((1.0 if miss else 0.0) - self.delta)))
        self.updates += 1
        self.misses += int(miss)
        return miss

    @property
    def miss_rate(self) -> float:
        """Misses over updates so far (nan before any)."""
        return self.misses / self.updates if self.updates else float("nan")


@dataclass(frozen=True)
class Plan:
    """What one goal was planned with: the pace per phase and the margin exp(z x sigma)."""

    prefill_point: float = 1.0
    decode_point: float = 1.0
    z: float = DEFAULT_Z
    sigma: float = 0.0

    @property
    def margin(self) -> float:
        """The factor over the pace: exp(z x sigma)."""
        return math.exp(self.z * self.sigma)

    def point(self, phase: str) -> float:
        """The pace PHASE was planned with."""
        return self.prefill_point if phase == "prefill" else self.decode_point


class ConformalTiming:
    """The bound for each phase is the fit x the phase's pace x one margin exp(z x sigma);
    thread-safe (goals observe from the engine's thread, diagnostics read from another)."""

    def __init__(self, spread: float, delta: float = 0.01, *, z: float = DEFAULT_Z, eta: float = 0.3,
                 pace_window: int = 5, spread_window: int = 20, change: float = 3.5,
                 min_spread: float = 0.03) -> None:
        # SPREAD: the calibration's spread of log(measured / fit), sigma until goals have shown theirs.
        self.start_spread, self.start_z, self.delta = max(min_spread, spread), z, delta
        self.change, self.min_spread = change, min_spread
        self.tracker = QuantileTracker(z=z, delta=delta, eta=eta)
        self._paces = {phase: deque(maxlen=pace_window) for phase in PHASES}
        self._residuals: deque[float] = deque(maxlen=spread_window)
        self._fresh = False  # a change was seen: sigma starts wider until 3 goals show the new one
        self.changes = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------- estimate
    def plan(self) -> Plan:
        """The pace per phase and the margin to plan the next goal with."""
        with self._lock:
            return Plan(self._point("prefill"), self._point("decode"), self.tracker.z, self._spread())

    def point(self, phase: str) -> float:
        """The pace of PHASE: the median recent ratio of measured to fit time (1 before any goal)."""
        with self._lock:
            return self._point(phase)

    def factor(self, phase: str) -> float:
        """What the fit of PHASE is multiplied by to plan: pace x margin."""
        plan = self.plan()
        return plan.point(phase) * plan.margin

    def _point(self, phase: str) -> float:
        paces = self._paces[phase]
        return statistics.median(paces) if paces else 1.0

    def _spread(self) -> float:
        if len(self._residuals) < 3:
            return 2.0 * self.start_spread if self._fresh else self.start_spread
        return max(self.min_spread, statistics.pstdev(self._residuals))

    # -------------------------------------------------------------- observe
    def observe(self, measured: dict[str, float], predicted: dict[str, float], plan: Plan,
                complete: bool = True) -> bool | None:
        """One goal took MEASURED seconds per phase against PREDICTED by the fit for the same
        work; it was planned with PLAN. Not COMPLETE: the goal was cut in prefill, MEASURED is
        what it ran and PREDICTED the fit for the whole prefill (a lower bound on its score)."""
        planned = sum(predicted.get(phase, 0.0) * plan.point(phase) for phase in PHASES)
        spent = sum(measured.get(phase, 0.0) for phase in PHASES)
        if planned <= 0.0 or spent <= 0.0 or plan.sigma <= 0.0:
            return None
        residual = math.log(spent / planned)
        with self._lock:
            miss = self.tracker.update(residual / plan.sigma, complete, threshold=plan.z)
            changed = len(self._residuals) >= 3 and abs(residual) > self.change * plan.sigma
            if changed:  # a load started or stopped: forget the old pace and spread
                self.changes += 1
                self._residuals.clear()
                for paces in self._paces.values():
                    paces.clear()
            self._fresh = self._fresh or changed
            if complete and not changed:
                self._residuals.append(residual)
            for phase in PHASES:
                self._add_pace(phase, measured.get(phase, 0.0), predicted.get(phase, 0.0), complete)
        return miss

    def _add_pace(self, phase: str, measured: float, predicted: float, complete: bool) -> None:
        if predicted <= 0.0 or measured <= 0.0:
            return
        ratio = measured / predicted
        if complete or ratio > self._point(phase):  # a cut phase: at least this slow
            self._paces[phase].append(ratio)

    def reset(self) -> None:
        """Back to the starting threshold and spread, no goals seen."""
        with self._lock:
            self.tracker.z, self.tracker.updates, self.tracker.misses = self.start_z, 0, 0
            self._residuals.clear()
            for paces in self._paces.values():
                paces.clear()
            self._fresh, self.changes = False, 0

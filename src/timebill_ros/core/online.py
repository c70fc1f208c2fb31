"""Timing that follows the machine: the calibration is the prior, served goals update it.

A calibration is made once, often on an idle machine. On a robot, perception and planning
share the cores and the CPU throttles when hot, so every plan made from the stored fit
turns optimistic. Each served goal measures its own phases (the prefill chunks and decode
steps that completed, killed and canceled goals included) against what the *unmargined*
fit predicted for exactly that work. The ratio, one per goal and phase, is a slow-down
factor; the planner scales the fit by the live factor and then adds the calibration's
margins as before.

The estimator (per phase, over a sliding window of the last `window` goals):
- the **second-largest** ratio in the window. An upper statistic because a plan must
  bound the time, not average it; the second rather than the largest so that one
  outlier goal cannot swing it. A load that starts shows after two goals; a load that
  stops leaves the estimate once all but one slow goal has left the window;
- never below 1 (the prior) until the window is full: planning faster than calibrated
  needs `window` goals of evidence;
- goals whose predicted phase time is below `min_seconds` are not counted: the ratio of
  a few milliseconds is jitter, not load.
`bench/online_bench.py` measures it against the static calibration under a changing load.
Thread-safe: goals observe from the engine's thread, diagnostics read from another.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from timebill_ros.core.conformal import ConformalTiming, GoalConformal
from timebill_ros.core.cpu_load import ForeignLoad
from timebill_ros.core.timing import TimingModel

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Margins:
    """The calibration's bounding margins: plan = fit * factor * (1 + ratio) + seconds * factor."""

    prefill_ratio: float = 0.0
    prefill_s: float = 0.0
    decode_ratio: float = 0.0
    decode_s: float = 0.0


@dataclass(frozen=True)
class TimingSnapshot:
    """The planning model one goal is planned with, and the factors behind it."""

    timing: TimingModel
    prefill_factor: float
    decode_factor: float
    # The conformal bound's point estimates (its factor over q): observe() scores the goal against them.
    prefill_point: float = 1.0
    decode_point: float = 1.0

    def point(self, phase: str) -> float:
        """The conformal point estimate PHASE was planned with."""
        return self.prefill_point if phase == "prefill" else self.decode_point


@dataclass
class PhaseWork:
    """What one goal's phase cost: the unmargined fit's seconds for the work that completed,
    and the seconds it took. A phase cut short (a kill in prefill) also says how long it ran
    (SPENT) against the fit's seconds for the WHOLE phase: a lower bound on its score."""

    predicted: float = 0.0
    measured: float = 0.0
    complete: bool = True
    spent: float = 0.0
    whole: float = 0.0

    def add(self, predicted: float, measured: float) -> None:
        """Count one completed piece (a prefill chunk or a decode step)."""
        self.predicted += predicted
        self.measured += measured


class OnlineTiming:
    """The live execution-time model: BASE (the fit, prefill already raised by the predictor's
    contention, no margins) scaled by a slow-down factor per phase, then MARGINS added.

    With ENABLED false it still observes (diagnostics report the live factors) but plans
    with the prior, as the paper does."""

    def __init__(self, base: TimingModel, margins: Margins, *, window: int = 5, enabled: bool = True,
                 min_seconds: float = 0.02, band: tuple[float, float] = (0.0, 0.0),
                 conformal: ConformalTiming | GoalConformal | None = None, load: ForeignLoad | None = None) -> None:
        if window < 2:
            raise ValueError(f"the online timing window must hold at least 2 goals, got {window}")
        self.base, self.margins, self.enabled = base, margins, enabled
        # When set, plans use its tracked quantiles instead of the window estimate plus margins
        # (the window estimate is still kept and reported beside it).
        self.conformal = conformal
        # The other processes' CPU use, for diagnostics only (None: not watched): planning with
        # it cost more slack than it saved misses (core.conformal.ConformalTiming).
        self.load = load
        self.window, self.min_seconds = window, min_seconds
        # How far a factor may stray from 1 before diagnostics warn: the calibration's own
        # error band per phase (its margin, or its held-out error if larger).
        self.band = dict(zip(PHASES, band))
        self._ratios: dict[str, deque[float]] = {phase: deque(maxlen=window) for phase in PHASES}
        self._lock = threading.Lock()

    # ------------------------------------------------------------- estimate
    def factor(self, phase: str) -> float:
        """The live slow-down factor of PHASE (1 = as calibrated)."""
        with self._lock:
            ratios = sorted(self._ratios[phase])
        if len(ratios) < 2:
            return 1.0
        estimate = ratios[-2]
        return estimate if len(ratios) == self.window else max(1.0, estimate)

    def bound_factor(self, phase: str) -> float:
        """What the fit of PHASE is multiplied by to plan: the conformal quantile, or the window
        estimate (the calibration's margins are added on top of the latter)."""
        if self.conformal is None:
            return self.factor(phase)
        return self.conformal.factor(phase)

    def snapshot(self) -> TimingSnapshot:
        """The model to plan one goal with (the prior when disabled)."""
        if self.conformal is not None and self.enabled:
            plan = self.conformal.plan()  # once: both phases from the same state
            (p_point, pre), (d_point, dec) = plan["prefill"], plan["decode"]
            return TimingSnapshot(self.base.scaled(pre, dec), pre, dec, p_point, d_point)
        pre, dec = (self.factor("prefill"), self.factor("decode")) if self.enabled else (1.0, 1.0)
        m = self.margins
        timing = self.base.scaled(pre * (1.0 + m.prefill_ratio), dec * (1.0 + m.decode_ratio),
                                  pre * m.prefill_s, dec * m.decode_s)
        return TimingSnapshot(timing, pre, dec)

    # -------------------------------------------------------------- observe
    def close(self) -> None:
        """Stop watching the other processes' CPU use."""
        if self.load is not None:
            self.load.close()

    def observe(self, prefill: PhaseWork, decode: PhaseWork, snapshot: TimingSnapshot | None = None) -> None:
        """Feed one goal's completed work (planned with SNAPSHOT); phases too short to time are skipped."""
        with self._lock:
            for phase, work in zip(PHASES, (prefill, decode)):
                if work.complete and work.predicted >= self.min_seconds and work.measured > 0.0:
                    self._ratios[phase].append(work.measured / work.predicted)
        if self.conformal is None:
            return
        points = {phase: snapshot.point(phase) if snapshot else 1.0 for phase in PHASES}
        self.conformal.observe_goal({"prefill": prefill, "decode": decode}, points, self.min_seconds)

    def reset(self) -> None:
        """Forget every observation (after work that does not show the machine's pace, e.g. warm-up)."""
        with self._lock:
            for ratios in self._ratios.values():
                ratios.clear()
        if self.conformal is not None:
            self.conformal.reset()

    # ---------------------------------------------------------- diagnostics
    def observations(self, phase: str) -> int:
        """How many goals the PHASE's window holds."""
        with self._lock:
            return len(self._ratios[phase])

    def out_of_band(self) -> list[str]:
        """One sentence per phase whose live factor left the calibration's error band."""
        out = []
        for phase in PHASES:
            f, band = self.factor(phase), self.band[phase]
            if f > 1.0 + band or f < 1.0 / (1.0 + band):
                out.append(f"{phase} runs {f:.2f}x its calibration (error band +-{100 * band:.0f} %)"
                           + ("" if self.enabled else "; online_timing is off, plans use the calibration"))
        return out


def online_timing_from(calibration, *, window: int, enabled: bool, estimator: str = "conformal",
                       miss_rate: float = 0.01, watch_load: bool = False) -> OnlineTiming:
    """The live model whose prior is CALIBRATION (a core.calibration.Calibration). ESTIMATOR
    "conformal" plans with a tracked quantile per phase aiming at MISS_RATE (core.conformal),
    starting where the calibration's samples were all bounded; "conformal_goal" with one
    windowed conformal quantile of the goal's whole time (core.conformal.GoalConformal);
    "window" with the second-largest ratio of the last WINDOW goals plus the calibration's margins."""
    contention = max(1.0, calibration.prefill_contention)
    base = calibration.fitted_timing()
    margins = Margins(calibration.prefill_margin, calibration.prefill_margin_s * contention,
                      calibration.decode_margin, calibration.decode_margin_s)
    band = (max(calibration.prefill_margin, calibration.prefill_mape / 100.0),
            max(calibration.decode_margin, calibration.decode_mape / 100.0))
    conformal = None
    start = {"prefill": bounding_ratio(calibration.prefill_samples, calibration.timing.prefill),
             "decode": bounding_ratio(calibration.decode_samples, calibration.timing.decode_step)}
    if estimator == "conformal":
        conformal = ConformalTiming(start, delta=miss_rate, eta=step_size(calibration))
    elif estimator == "conformal_goal":
        conformal = GoalConformal(start, delta=miss_rate)
    return OnlineTiming(base, margins, window=window, enabled=enabled, band=band, conformal=conformal,
                        load=ForeignLoad() if watch_load else None)


def bounding_ratio(samples: list[tuple[int, float]], fit) -> float:
    """The largest sample over the fit's time (at least 1): where a tracker starts."""
    ratios = [t / fit(n) for n, t in samples if fit(n) > 0]
    return max([1.0, *ratios])


def step_size(calibration) -> float:
    """The tracker's step in log q, scaled to the spread of the calibration's log ratios
    (clamped to [0.02, 0.2]): a noisier machine takes bigger steps."""
    import math
    import statistics

    logs = [math.log(t / calibration.timing.prefill(n)) for n, t in calibration.prefill_samples
            if calibration.timing.prefill(n) > 0 and t > 0]
    logs += [math.log(t / calibration.timing.decode_step(n)) for n, t in calibration.decode_samples
             if calibration.timing.decode_step(n) > 0 and t > 0]
    spread = statistics.pstdev(logs) if len(logs) > 1 else 0.05
    return min(0.2, max(0.02, 2.0 * spread))

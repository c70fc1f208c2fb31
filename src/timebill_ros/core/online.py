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


@dataclass
class PhaseWork:
    """What one goal's phase cost: the unmargined fit's seconds for the work that completed,
    and the seconds it took."""

    predicted: float = 0.0
    measured: float = 0.0

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
                 min_seconds: float = 0.02, band: tuple[float, float] = (0.0, 0.0)) -> None:
        if window < 2:
            raise ValueError(f"the online timing window must hold at least 2 goals, got {window}")
        self.base, self.margins, self.enabled = base, margins, enabled
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

    def snapshot(self) -> TimingSnapshot:
        """The model to plan one goal with (the prior when disabled)."""
        pre, dec = (self.factor("prefill"), self.factor("decode")) if self.enabled else (1.0, 1.0)
        m = self.margins
        timing = self.base.scaled(pre * (1.0 + m.prefill_ratio), dec * (1.0 + m.decode_ratio),
                                  pre * m.prefill_s, dec * m.decode_s)
        return TimingSnapshot(timing, pre, dec)

    # -------------------------------------------------------------- observe
    def observe(self, prefill: PhaseWork, decode: PhaseWork) -> None:
        """Feed one goal's completed work; phases too short to time are skipped."""
        with self._lock:
            for phase, work in zip(PHASES, (prefill, decode)):
                if work.predicted >= self.min_seconds and work.measured > 0.0:
                    self._ratios[phase].append(work.measured / work.predicted)

    def reset(self) -> None:
        """Forget every observation (after work that does not show the machine's pace, e.g. warm-up)."""
        with self._lock:
            for ratios in self._ratios.values():
                ratios.clear()

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


def online_timing_from(calibration, *, window: int, enabled: bool) -> OnlineTiming:
    """The live model whose prior is CALIBRATION (a core.calibration.Calibration)."""
    contention = max(1.0, calibration.prefill_contention)
    base = calibration.timing.scaled(contention, 1.0)
    margins = Margins(calibration.prefill_margin, calibration.prefill_margin_s * contention,
                      calibration.decode_margin, calibration.decode_margin_s)
    band = (max(calibration.prefill_margin, calibration.prefill_mape / 100.0),
            max(calibration.decode_margin, calibration.decode_mape / 100.0))
    return OnlineTiming(base, margins, window=window, enabled=enabled, band=band)

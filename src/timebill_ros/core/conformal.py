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


class _ScoredBound:
    """What the bounds share: score a goal against q, count it, step (subclasses: q, _step)."""

    q: float
    updates: int
    misses: int

    def update(self, score: float, complete: bool = True, learn: bool = True) -> bool | None:
        """Feed one goal's SCORE (a lower bound when not COMPLETE); True for a miss, False for
        a covered goal, None when a lower bound says nothing. Not LEARN (the goal ran through a
        change of load, `pace_changed`): judged only, the bound and its counts stay."""
        miss = self.judge(score, complete)
        if miss is None or not learn:
            return miss
        self._step(score, miss)
        self.updates += 1
        self.misses += int(miss)
        return miss

    def judge(self, score: float, complete: bool = True) -> bool | None:
        """Would SCORE miss the bound, without feeding it: None for no score, or for a lower
        bound (not COMPLETE) under the bound, which says nothing."""
        if not math.isfinite(score) or score <= 0.0:
            return None
        miss = score > self.q
        return miss if complete or miss else None

    def _step(self, score: float, miss: bool) -> None:
        raise NotImplementedError

    @property
    def miss_rate(self) -> float:
        """Misses over updates so far (nan before any)."""
        return self.misses / self.updates if self.updates else float("nan")


@dataclass
class QuantileTracker(_ScoredBound):
    """One phase's tracked quantile q of the score measured / predicted."""

    q: float = 1.2  # where the tracker starts (the calibration's margins set it)
    delta: float = 0.005  # target miss rate of this phase
    eta: float = 0.05  # step in log q
    q_min: float = 0.2  # a machine faster than 5x its calibration is a wrong calibration
    q_max: float = 50.0
    updates: int = 0
    misses: int = 0

    def _step(self, score: float, miss: bool) -> None:
        log_q = math.log(self.q) + self.eta * ((1.0 if miss else 0.0) - self.delta)
        self.q = min(self.q_max, max(self.q_min, math.exp(log_q)))


# A goal whose pace is this many times its plan's (or 1/this) ran through a change of load,
# not through noise: on an idle host 99 % of prefills ran within 1.51x of the median
# (docs/results/noise_floor.json); a core taken by another process slowed goals 2.6-8.9x.
PACE_CHANGE = 2.0


def pace_changed(change: float, complete: bool = True) -> bool:
    """Did work that ran CHANGE times its planned pace (measured / (fit x point)) run through a
    change of load rather than noise: more than PACE_CHANGE slower, or (a complete phase: a cut
    one's ratio is only a lower bound) PACE_CHANGE faster?"""
    return change > PACE_CHANGE or (complete and change < 1.0 / PACE_CHANGE)


def regime(point: float) -> int:
    """The pace regime of a point estimate: its power of two, rounded (0 holds paces of
    0.71-1.41x the calibration, 1 holds 1.41-2.83x, ...)."""
    return round(math.log2(point)) if point > 0.0 and math.isfinite(point) else 0


def timed_work(work, min_seconds: float) -> tuple[float, float, bool] | None:
    """(seconds, fit seconds, complete) of one phase's work (core.online.PhaseWork): what
    completed against its fit, or for a phase cut short what it ran against the whole phase's
    fit (a lower bound). None when the fit is under MIN_SECONDS: jitter, not pace."""
    if work.complete:
        return (work.measured, work.predicted, True) if work.predicted >= min_seconds else None
    return (work.spent, work.whole, False) if work.whole >= min_seconds else None


class Paces:
    """Each phase's recent pace: the larger of the last WINDOW goals' ratios of measured to fit
    time (1 before any goal). Not thread-safe: its owner holds the lock."""

    def __init__(self, phases, window: int = 2) -> None:
        self._ratios = {phase: deque(maxlen=window) for phase in phases}

    def point(self, phase: str) -> float:
        """The point estimate of the next goal's ratio."""
        return max(self._ratios[phase], default=1.0)

    def add(self, phase: str, ratio: float, complete: bool) -> None:
        """One goal's ratio (a lower bound when not COMPLETE: counted only when it is slower)."""
        if complete or ratio > self.point(phase):  # a cut phase: at least this slow
            self._ratios[phase].append(ratio)

    def clear(self) -> None:
        for ratios in self._ratios.values():
            ratios.clear()


class ConformalTiming:
    """A bound per phase (prefill, decode), thread-safe: the fit x a point estimate of the
    machine's pace x a tracked quantile q of the score measured / (fit x point).

    The point estimate is the phase's pace: the larger of the last PACE_WINDOW goals' ratios
    of measured to fit time. With the tracker on the ratio alone, a load that came and went
    left q at its level for ~1/(eta * delta) goals (thousands): slack that lingers after every
    busy spell. On the residual, q only has to cover how far one goal strays from the goals
    just before it.

    q is tracked per pace regime (`regime`: the point's power of two), a Mondrian split of
    the scores (conformal prediction per category): a loaded machine's goals stray further
    from their recent pace (its pace is bimodal: the node sometimes gets its core back for a
    goal), and with one q per phase the misses a load caused raised q for the ~1/(eta * delta)
    goals after it (44.5 % mean slack when idle again, against 27.5 % before the load;
    docs/timing.md). Each regime's q keeps the tracker's guarantee on the goals planned in it;
    a goal is scored in the regime it was planned in, so the misses at the start of a load
    (planned at the idle pace) are the idle regime's. A regime seen for the first time starts
    from the q of the nearest one seen before it. Through the node (docs/timing.md) the split
    held every phase's coverage, but the slack stayed: per phase, q ratchets up on phase misses.

    A phase that ran more than PACE_CHANGE x its planned pace (`pace_changed`: a load began or
    ended during the goal) is judged but does not move q: it is not the regime's noise. Fed to
    the tracker, the first goals of a load (planned at the idle pace, or cut in prefill) raised
    the idle regime's q by e^eta each, and that stayed for ~1/(eta * delta) goals: 36 % mean
    slack idle again against 28 % before the load (docs/timing.md). Such a goal still counts
    where coverage is measured, and the pace follows it; the tracker's long-run miss rate holds
    on the goals it scores.

    The other processes' CPU use (core.cpu_load) is not part of the point: scaled into it as
    1 + foreign cores x threads / cores, it cost 53-58 % mean slack through the node
    (docs/timing.md), because a neighbour's burst that had just ended read as load, the
    reading is halved while the node computes, and a busy neighbour slowed the node 4-5x,
    not the 2x the model said. A new load costs a miss or two until the pace has seen it."""

    def __init__(self, start: dict[str, float], delta: float = 0.01, eta: float = 0.05, pace_window: int = 2) -> None:
        # The goal's bound is missed when either phase misses: half the budget each (union bound).
        self.start, self.delta, self.eta = dict(start), delta, eta
        self.trackers: dict[str, dict[int, QuantileTracker]] = {}
        self._paces = Paces(start, pace_window)
        self._lock = threading.Lock()
        self.reset()

    def point(self, phase: str) -> float:
        """The point estimate of the next goal's ratio: the phase's recent pace over the fit (1
        before any goal)."""
        with self._lock:
            return self._paces.point(phase)

    def plan(self) -> dict[str, tuple[float, float]]:
        """PHASE -> (point, factor) to plan the next goal with."""
        return {phase: (self.point(phase), self.factor(phase)) for phase in self.start}

    def observe_goal(self, works: dict, points: dict[str, float], min_seconds: float) -> None:
        """One goal's work per phase (core.online.PhaseWork), planned with POINTS; phases whose
        fit is under MIN_SECONDS are jitter, not pace."""
        for phase, work in works.items():
            if timed := timed_work(work, min_seconds):
                seconds, fit, complete = timed
                self.observe(phase, seconds, fit, complete=complete, point=points[phase])

    def factor(self, phase: str) -> float:
        """What the fit of PHASE is multiplied by to plan: point x q (of the point's regime)."""
        point = self.point(phase)
        with self._lock:
            return point * self._tracker(phase, point).q

    def quantile(self, phase: str, point: float | None = None) -> float:
        """The phase's q in the regime of POINT (default: the current point)."""
        point = self.point(phase) if point is None else point
        with self._lock:
            return self._tracker(phase, point).q

    def _tracker(self, phase: str, point: float) -> QuantileTracker:
        """The regime's tracker, made from the nearest known regime's q (lock held)."""
        trackers, key = self.trackers[phase], regime(point)
        if key not in trackers:
            nearest = min(trackers, key=lambda k: (abs(k - key), -k))  # ties: the slower regime's q
            trackers[key] = QuantileTracker(q=trackers[nearest].q, delta=self.delta / 2, eta=self.eta)
        return trackers[key]

    def observe(self, phase: str, measured: float, predicted: float, complete: bool = True, *,
                point: float = 1.0) -> bool | None:
        """One goal's PHASE took MEASURED seconds against PREDICTED by the fit (for the whole
        phase; MEASURED is a lower bound when not COMPLETE); it was planned with POINT."""
        if predicted <= 0.0 or point <= 0.0:
            return None
        ratio = measured / predicted
        with self._lock:
            changed = pace_changed(ratio / point, complete)
            self.shifted += changed
            miss = self._tracker(phase, point).update(ratio / point, complete, learn=not changed)
            self._paces.add(phase, ratio, complete)
        return miss

    def misses(self, phase: str) -> tuple[int, int]:
        """(misses, updates) of PHASE over every regime."""
        with self._lock:
            trackers = list(self.trackers[phase].values())
        return sum(t.misses for t in trackers), sum(t.updates for t in trackers)

    def tally(self) -> tuple[int, int, int]:
        """(misses, scored, through a change of load) over both phases: what /diagnostics reports."""
        (pm, pn), (dm, dn) = self.misses("prefill"), self.misses("decode")
        return pm + dm, pn + dn, self.shifted

    def reset(self) -> None:
        """Back to the starting quantile (one regime, the calibration's pace) and pace, no updates counted."""
        with self._lock:
            self.trackers = {phase: {0: QuantileTracker(q=q, delta=self.delta / 2, eta=self.eta)}
                             for phase, q in self.start.items()}
            self.shifted = 0  # phases not scored: the pace changed during them (pace_changed)
            self._paces.clear()


@dataclass
class WindowQuantile(_ScoredBound):
    """The (1 - alpha_t) empirical quantile of the last WINDOW scores, with alpha_t adapted
    after every score (Adaptive Conformal Inference, Gibbs & Candes 2021):

        alpha <- alpha + gamma * (delta - miss).

    Split conformal on a sliding window follows the score's distribution as it is (a steady
    machine's quantile is near its own tail, not above it), and ACI's level keeps the long-run
    miss rate at delta when the distribution moves. Unlike QuantileTracker's log q, a run of
    misses can raise the bound only to the window's largest score (x HEADROOM when the level
    asks for more than the window holds): it comes back down once those scores leave the window,
    instead of over ~1/(eta * delta) goals (the ratchet docs/timing.md measured)."""

    start: float = 1.2  # the bound until MIN_SCORES scores are in (never below it before then)
    delta: float = 0.01
    gamma: float = 0.01  # step of the level alpha_t
    window: int = 100  # >= 1/delta, so that the (1 - delta) quantile lies inside the window
    min_scores: int = 10
    headroom: float = 1.05  # over the largest score when the level asks beyond the window
    updates: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        self.alpha = self.delta
        self.scores: deque[float] = deque(maxlen=self.window)

    @property
    def q(self) -> float:
        """The bound on the next score."""
        n = len(self.scores)
        if n < self.min_scores:
            return max(self.start, *self.scores) if self.scores else self.start
        # Split conformal's finite-sample rank; alpha >= 1 (a long run of covered goals) asks
        # for the smallest score, alpha <= 1 / (n + 1) for more than the window holds.
        rank = max(1, math.ceil((1.0 - self.alpha) * (n + 1)))
        return sorted(self.scores)[rank - 1] if rank <= n else max(self.scores) * self.headroom

    def _step(self, score: float, miss: bool) -> None:
        self.alpha += self.gamma * (self.delta - (1.0 if miss else 0.0))
        self.scores.append(score)


class GoalConformal:
    """One bound on the goal's whole time, thread-safe: the fit of each phase x its pace
    (`Paces`, as ConformalTiming) x one q, the windowed conformal quantile (`WindowQuantile`)
    of the goal's score

        s = (prefill + decode measured) / (prefill fit x its point + decode fit x its point).

    What the node promises is the goal's time, not each phase's: ConformalTiming's union bound
    (each phase at delta / 2) held 0.5 % misses on the measured idle noise for 1 % asked, and
    paid 28-31 % mean slack where the best fixed bound had 22-26 % (docs/timing.md,
    tracker_replay). One score per goal at delta, and a window that lets a load's misses go
    once they leave it, aim at that floor. q is kept per pace regime of the slower phase's
    point (`regime`), as ConformalTiming keeps it per phase. A goal cut in prefill scores
    its prefill's lower bound against the prefill's share of the plan: a miss when that alone
    exceeds q, else nothing."""

    def __init__(self, start: dict[str, float], delta: float = 0.01, gamma: float = 0.01, window: int = 100,
                 pace_window: int = 2) -> None:
        self.start, self.delta, self.gamma, self.window = dict(start), delta, gamma, window
        self.trackers: dict[int, WindowQuantile] = {}
        self._paces = Paces(start, pace_window)
        self._lock = threading.Lock()
        self.reset()

    def point(self, phase: str) -> float:
        """The point estimate of PHASE's next ratio to its fit."""
        with self._lock:
            return self._paces.point(phase)

    def quantile(self, points: dict[str, float] | None = None) -> float:
        """The goal's q in the regime of POINTS (default: the current ones)."""
        with self._lock:
            points = points or {phase: self._paces.point(phase) for phase in self.start}
            return self._tracker(points).q

    def factor(self, phase: str) -> float:
        """What the fit of PHASE is multiplied by to plan: its point x the goal's q."""
        return self.plan()[phase][1]

    def plan(self) -> dict[str, tuple[float, float]]:
        """PHASE -> (point, factor) to plan the next goal with."""
        with self._lock:
            points = {phase: self._paces.point(phase) for phase in self.start}
            q = self._tracker(points).q
        return {phase: (point, point * q) for phase, point in points.items()}

    def _tracker(self, points: dict[str, float]) -> WindowQuantile:
        """The regime's bound (lock held); a new regime starts from the nearest known one's q."""
        key = regime(max(points.values()))
        if key not in self.trackers:
            nearest = min(self.trackers, key=lambda k: (abs(k - key), -k))
            self.trackers[key] = self._new(start=self.trackers[nearest].q)
        return self.trackers[key]

    def _new(self, start: float) -> WindowQuantile:
        return WindowQuantile(start=start, delta=self.delta, gamma=self.gamma, window=self.window)

    def observe_goal(self, works: dict, points: dict[str, float], min_seconds: float) -> bool | None:
        """One goal's work per phase (core.online.PhaseWork: prefill, decode), planned with POINTS.
        True for a miss, False for a covered goal, None when it says nothing.

        A goal during which the machine's pace changed by more than PACE_CHANGE (its slowest
        phase ran that much faster or slower than the slowest planned point: a load began or
        ended) is not scored: it belongs to neither regime. Scored in the regime it was planned
        in, the first goal of a load left a score 2-3x the idle ones in the idle window, and the
        bound after the load stayed at 1.05 x that score for the window's 100 goals (47 % mean
        slack idle again against 18 % before the load, through the node). Its miss still counts
        where coverage is measured (the benchmark), and the pace follows it."""
        prefill, decode = works["prefill"], works["decode"]
        timed = {phase: t for phase, work in works.items() if (t := timed_work(work, min_seconds)) and t[0] > 0.0}
        with self._lock:
            tracker = self._tracker(points)
            if prefill.complete:
                fit = prefill.predicted * points["prefill"] + decode.predicted * points["decode"]
                score, complete = (prefill.measured + decode.measured) / fit if fit else 0.0, True
                scored = fit >= min_seconds and prefill.measured > 0.0
            else:
                fit = prefill.whole * points["prefill"]
                score, complete, scored = prefill.spent / fit if fit else 0.0, False, prefill.whole >= min_seconds
            changed = scored and self._pace_changed(timed, points)
            self.shifted += changed
            miss = tracker.update(score, complete, learn=not changed) if scored else None
            for phase, (seconds, phase_fit, phase_complete) in timed.items():
                self._paces.add(phase, seconds / phase_fit, phase_complete)
        return miss

    def _pace_changed(self, timed: dict[str, tuple[float, float, bool]], points: dict[str, float]) -> bool:
        """Did the goal run more than PACE_CHANGE x faster or slower than planned (its slowest
        timed phase's ratio to the fit against the slowest point)? A cut phase's ratio is a lower
        bound: it can only say slower."""
        ratios = {phase: seconds / fit for phase, (seconds, fit, _) in timed.items()}
        if not ratios:
            return False
        change = max(ratios.values()) / max(points.values())
        return pace_changed(change, all(complete for _, _, complete in timed.values()))

    def misses(self, phase: str | None = None) -> tuple[int, int]:
        """(misses, updates) of the goal's bound over every regime (PHASE is ignored: one bound)."""
        with self._lock:
            trackers = list(self.trackers.values())
        return sum(t.misses for t in trackers), sum(t.updates for t in trackers)

    def tally(self) -> tuple[int, int, int]:
        """(misses, scored, through a change of load) of the goal's bound: what /diagnostics reports."""
        return (*self.misses(), self.shifted)

    def reset(self) -> None:
        """Back to the starting bound (the largest phase's start) and pace, no updates counted."""
        with self._lock:
            self.trackers = {0: self._new(start=max(self.start.values()))}
            self.shifted = 0  # goals not scored: the pace changed during them (_pace_changed)
            self._paces.clear()

"""The conformal bound replayed on this host's measured idle noise: how much slack a stated
miss rate costs when the machine is as steady as it gets.

No model runs here: docs/results/noise_floor.json holds the same 512-token prefill and
decode steps repeated for 12 minutes on an idle machine. Each repetition is one goal whose
prefill and decode run at those measured paces (as ratios to the first runs' median), with
the prefill's SHARE of the goal's fit time (0.3: a short prompt, 0.7: a long one). Every goal
is planned before it runs, then observed, as the node does (the estimators' plan() and
observe_goal(), the node's own classes):
- `per_phase`: `timing_estimator: conformal` (core.conformal.ConformalTiming), a log-space
  quantile tracker per phase at delta/2 each (a goal misses when either phase does: the union
  bound), at several steps eta;
- `goal`: `timing_estimator: conformal_goal` (core.conformal.GoalConformal), one windowed
  conformal quantile of the goal's whole time at delta;
- `oracle`: one fixed bound, the totals' own (1 - delta) quantile known in advance: the least
  slack any bound at that miss rate can have on this series.
Prints JSON (results/bench/tracker_replay.json): misses and mean slack per variant.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from common import write

from timebill_ros.core.conformal import ConformalTiming, GoalConformal
from timebill_ros.core.online import PhaseWork

NOISE = Path(__file__).resolve().parents[1] / "docs" / "results" / "noise_floor.json"
SHARES = (0.3, 0.7)
ETAS = (0.05, 0.1, 0.2)
START_Q = 1.2  # where every bound starts (the calibration sets it in the node)


def paces(noise: dict) -> list[tuple[float, float]]:
    """(prefill, decode step) of each repetition over the median of the first 20."""
    pre, dec = noise["series"]["prefill_s"], noise["series"]["decode_step_s"]
    p0, d0 = statistics.median(pre[:20]), statistics.median(dec[:20])
    return [(p / p0, d / d0) for p, d in zip(pre, dec)]


def replay(goals: list[tuple[float, float]], share: float, bound: ConformalTiming | GoalConformal) -> dict:
    """Plan, run and observe every goal with BOUND; the share of misses and the mean slack of covered goals."""
    misses, slacks = 0, []
    for pre, dec in goals:
        plan = bound.plan()
        planned = share * plan["prefill"][1] + (1 - share) * plan["decode"][1]
        took = share * pre + (1 - share) * dec
        if took > planned:
            misses += 1
        else:
            slacks.append((planned - took) / planned)
        works = {"prefill": PhaseWork(predicted=share, measured=share * pre),
                 "decode": PhaseWork(predicted=1 - share, measured=(1 - share) * dec)}
        bound.observe_goal(works, {phase: point for phase, (point, _) in plan.items()}, 0.0)
    return {"goals": len(goals), "miss_pct": 100.0 * misses / len(goals),
            "mean_slack_pct": 100.0 * statistics.fmean(slacks) if slacks else None}


def oracle(goals: list[tuple[float, float]], share: float, delta: float = 0.01) -> dict:
    """The fixed bound at the totals' (1 - DELTA) quantile, known in advance."""
    took = sorted(share * pre + (1 - share) * dec for pre, dec in goals)
    planned = took[min(len(took) - 1, int((1 - delta) * len(took)))]
    covered = [t for t in took if t <= planned]
    return {"goals": len(took), "miss_pct": 100.0 * (len(took) - len(covered)) / len(took),
            "mean_slack_pct": 100.0 * statistics.fmean((planned - t) / planned for t in covered)}


def main() -> None:
    if not NOISE.exists():
        sys.exit(f"no {NOISE}: run bench/noise_floor.py first")
    noise = json.loads(NOISE.read_text())
    goals = paces(noise)
    start = {"prefill": START_Q, "decode": START_Q}
    rows = [{"variant": "per_phase", "prefill_share": share, "eta": eta,
             **replay(goals, share, ConformalTiming(start, delta=0.01, eta=eta))} for share in SHARES for eta in ETAS]
    rows += [{"variant": "goal", "prefill_share": share, **replay(goals, share, GoalConformal(start, delta=0.01))}
             for share in SHARES]
    rows += [{"variant": "oracle", "prefill_share": share, **oracle(goals, share)} for share in SHARES]
    write("tracker_replay", {"source": "docs/results/noise_floor.json", "source_machine": noise["machine"],
                             "target_miss_pct": 1.0, "start_q": START_Q, "rows": rows})


if __name__ == "__main__":
    main()

"""Timing under a load that changes: the static calibration against the online model.

Three phases, one after the other: idle; a CPU-bound process pinned to one of the cores
(started here); idle again (that process stopped here). In every phase the same goals
run twice, back to back, through the one engine the node runs (in-process, so both timing
models meet exactly the same machine state, goal by goal):
- static: planned with the stored calibration (online_timing off: the paper's behaviour);
- online: planned with the calibration scaled by the live slow-down (core.online).
Each arm's timing model observes only its own goals.

Goals are forced to a known length (EOS ignored, N_hat = N_W = N), so a first-plan WCET
below the measured time is the timing model's error alone, never the length predictor's.
Budgets are multiples of the prior's alpha = 0 WCET, so idle goals fit and loaded ones
need eviction or cannot fit at all (best effort: they run, at alpha_max).

Reported per arm and phase: first-plan WCET coverage (measured total <= first plan's
WCET), goals that ran late although their first plan promised the budget ("broken
promises"), late goals in all, average alpha, the factors planned with, and the goals the
online model needed after each change until every later first plan covered its goal.
A replay of the static arm's per-goal slow-down ratios through candidate estimators shows
why the online model uses the second-largest ratio of its window.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

from common import calibrated_engine, parser, random_ids, write

from timebill_ros.core.jobs import CancelToken, Request, Status
from timebill_ros.core.online import Margins, OnlineTiming, PhaseWork, online_timing_from
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel

LENGTHS = (256, 512, 768, 1024)
BUDGET_SCALES = (1.1, 1.5, 2.0, 2.6)  # x the prior's alpha = 0 WCET
TOKENS = 24


def recording(timing: OnlineTiming) -> OnlineTiming:
    """TIMING, also keeping every goal's per-phase ratio in `timing.ratios` (for the replay)."""
    timing.ratios = []
    observe = timing.observe

    def observe_and_record(prefill: PhaseWork, decode: PhaseWork) -> None:
        timing.ratios.append((prefill.measured / max(prefill.predicted, 1e-12),
                              decode.measured / max(decode.predicted, 1e-12)))
        observe(prefill, decode)

    timing.observe = observe_and_record
    return timing


@contextmanager
def cpu_load(core: int):
    """A busy-looping Python process pinned to CORE, stopped on exit."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(proc.pid, {core})
        time.sleep(0.5)  # let the scheduler settle
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def run_goal(engine, timing: OnlineTiming, ids: list[int], budget: float) -> dict:
    """One goal planned with TIMING, forced to TOKENS tokens; what the comparison needs."""
    engine.online = timing
    result = engine.run(Request(ids, budget=budget, max_new_tokens=TOKENS, k=1.0, ignore_eos=True), CancelToken())
    first = result.first_plan
    return {"prompt_tokens": len(ids), "budget_s": budget, "total_s": result.timings.total,
            "first_wcet_s": first.wcet, "first_feasible": first.feasible, "alpha": result.plan.alpha,
            "late": result.status is Status.COMPLETED_LATE, "status": result.status.name,
            "prefill_factor": result.prefill_factor, "decode_factor": result.decode_factor}


def run_phase(engine, arms: dict, goals: int, prior) -> dict:
    """GOALS goal pairs (one per arm, same prompt and budget), lengths and budgets cycled."""
    vocab = engine.loaded.model.config.vocab_size
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for i in range(goals):
        n = LENGTHS[i % len(LENGTHS)]
        budget = BUDGET_SCALES[(i // len(LENGTHS) + i) % len(BUDGET_SCALES)] * prior.end_to_end(n, 0.0, TOKENS)
        ids = random_ids(n, vocab, seed=1000 + i)
        for name, timing in arms.items():
            runs[name].append(run_goal(engine, timing, ids, budget))
    return runs


def phase_summary(runs: list[dict]) -> dict:
    """Coverage, broken promises, lateness, alpha, factors and adaptation of one arm's phase."""
    covered = [r["total_s"] <= r["first_wcet_s"] for r in runs]
    uncovered = [i for i, c in enumerate(covered) if not c]
    return {
        "goals": len(runs),
        "first_plan_coverage_pct": 100.0 * sum(covered) / len(runs),
        # The estimator needs two goals to see a change (second-largest ratio): coverage from
        # the third goal of the phase on shows the steady state apart from the detection delay.
        "first_plan_coverage_from_goal_3_pct": 100.0 * sum(covered[2:]) / max(1, len(covered[2:])),
        "broken_promises": sum(r["late"] and r["first_feasible"] for r in runs),
        "late": sum(r["late"] for r in runs),
        "planned_infeasible": sum(not r["first_feasible"] for r in runs),
        "mean_alpha": statistics.fmean(r["alpha"] for r in runs),
        "mean_prefill_factor": statistics.fmean(r["prefill_factor"] for r in runs),
        "mean_decode_factor": statistics.fmean(r["decode_factor"] for r in runs),
        # Goals after the phase began until every later first plan covered its goal.
        "goals_to_adapt": (uncovered[-1] + 1) if uncovered else 0,
        "runs": runs,
    }


def second_largest(window: list[float], size: int) -> float:
    """The estimator core.online uses, run on WINDOW (the goals before the one estimated)."""
    timing = OnlineTiming(TimingModel(0, 0, 0, 0, 0), Margins(), window=size, min_seconds=0.0)
    for ratio in window:
        timing.observe(PhaseWork(1.0, ratio), PhaseWork(1.0, ratio))
    return timing.factor("prefill")


ESTIMATORS = {
    "second_largest_of_window": second_largest,
    "median_of_window": lambda w, size: statistics.median(w) if w else 1.0,
    "largest_of_window": lambda w, size: max(w) if w else 1.0,
    "last_goal": lambda w, size: w[-1] if w else 1.0,
}


def replay(ratios: list[float], margin: float, window: int) -> dict:
    """Each estimator over the measured per-goal RATIOS of one phase kind: how often
    factor * (1 + margin) bounded the next goal's ratio, and how pessimistic it was."""
    out = {}
    for name, estimate in ESTIMATORS.items():
        hits, over = [], []
        for i, ratio in enumerate(ratios):
            f = estimate(ratios[max(0, i - window):i], window)
            hits.append(f * (1 + margin) >= ratio)
            over.append(f * (1 + margin) / ratio - 1)
        out[name] = {"bounded_pct": 100.0 * sum(hits) / len(hits),
                     "mean_overestimate_pct": 100 * statistics.fmean(over)}
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--goals", type=int, default=12, help="goal pairs per phase")
    p.add_argument("--window", type=int, default=5, help="online_window")
    args = p.parse_args()
    engine, cal = calibrated_engine(args, FixedLengthPredictor(TOKENS))
    engine.warm_up()
    arms = {"static": recording(online_timing_from(cal, window=args.window, enabled=False)),
            "online": recording(online_timing_from(cal, window=args.window, enabled=True))}
    goals = 4 if args.quick else args.goals
    load_core = max(os.sched_getaffinity(0))
    phases = {}
    print(f"[bench] idle: {goals} goal pairs", file=sys.stderr)
    phases["idle"] = run_phase(engine, arms, goals, cal.planning_timing())
    with cpu_load(load_core):
        print(f"[bench] loaded (busy process on core {load_core}): {goals} goal pairs", file=sys.stderr)
        phases["loaded"] = run_phase(engine, arms, goals, cal.planning_timing())
    print(f"[bench] idle again: {goals} goal pairs", file=sys.stderr)
    phases["idle_again"] = run_phase(engine, arms, goals, cal.planning_timing())
    engine.close()
    static_ratios = arms["static"].ratios
    write("online_timing", {
        "model": args.model, "tokens_per_goal": TOKENS, "prompt_lengths": LENGTHS,
        "budget_scales_of_prior_wcet": BUDGET_SCALES, "window": args.window, "load_core": load_core,
        "calibration_margins": {"prefill": cal.prefill_margin, "decode": cal.decode_margin},
        "arms": {name: {ph: phase_summary(runs[name]) for ph, runs in phases.items()} for name in arms},
        "estimator_replay": {
            "prefill": replay([r for r, _ in static_ratios], cal.prefill_margin, args.window),
            "decode": replay([r for _, r in static_ratios], cal.decode_margin, args.window),
        },
    })


if __name__ == "__main__":
    main()

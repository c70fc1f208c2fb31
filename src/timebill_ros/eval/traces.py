"""The paper's comparison computed from measured traces instead of one node run per goal.

Every method's goal on one prompt runs the same prefill, and every method that keeps the
same share of the cache runs the same decode: only the budget, the planned alpha and the
overrun policy differ between them. So each prompt's prefill is measured once and its
decode once per alpha of a small grid, with a timestamp per token; every method's outcome
at every budget level, under Kill and under Skip-Next, is then computed from those traces.
TimeBill's planned alpha (and the true-length arm's) is rounded UP to the next grid point:
more eviction, never a later finish than the plan asked for; the report says so.

What the traces leave out, against the node: the in-goal re-plan (a goal whose live steps
run slow, or whose answer runs past its N_W, evicts again; off in the comparison's node, as
in the paper, and replayed beside it by `with_in_goal_replan`), the control timer's period (a kill lands
within one period of the deadline; here it lands on it) and the predictor's thread beside
prefill (its contention is in the measured prefill when the traces are made with the
predictor running, see `measure`). `agreement` checks the path: a sample of the same goals
replayed through bags against `timebill_node`, and how often both agree on complete.
"""
from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from timebill_ros.core.online import OnlineTiming, PhaseWork
from timebill_ros.core.planner import PAPER_K, plan, worst_case_tokens
from timebill_ros.core.replan import paced_by_prefill, replan_floor, replan_keep, tokens_left
from timebill_ros.core.timing import TimingModel
from timebill_ros.eval.metrics import score
from timebill_ros.eval.workload import GoalId

# The alphas whose decodes are measured: the fixed baselines and enough points between them
# for TimeBill's rounding up to cost little.
ALPHA_GRID = (0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
POLICIES = ("kill", "skip_next")


@dataclass(frozen=True)
class Trace:
    """One prompt's run at one alpha: the prefill, the eviction, then the decode's tokens."""

    example_id: str
    task: str
    alpha: float
    prompt_tokens: int
    prefill_s: float
    evict_s: float
    # Seconds from the end of eviction to each generated token (cumulative, one per token).
    token_s: tuple[float, ...]
    text: str
    hit_cap: bool = False  # stopped at max_new_tokens, not at its end of turn
    # A run that evicted again once AGAIN_AT tokens were decoded, down to KEEP prompt entries
    # (what the node's in-goal re-plan does there; 0: one eviction, the paper's).
    again_at: int = 0
    keep: int = 0

    @property
    def second_eviction_key(self) -> tuple[float, int, int]:
        """(alpha, tokens out at the second eviction, prompt entries it kept): what a run that
        evicts again is found by (`second_evictions_wanted`)."""
        return self.alpha, self.again_at, self.keep

    @property
    def total_s(self) -> float:
        """Prefill + eviction + decode: the goal's time from its start."""
        return self.prefill_s + self.evict_s + (self.token_s[-1] if self.token_s else 0.0)


@dataclass(frozen=True)
class Method:
    """A compared method: a fixed alpha, or TimeBill's plan with pessimism K (0: the
    predictor's own, as the node plans; for the true-length arm, the target's own length as N_hat)."""

    name: str
    fixed_alpha: float | None = None
    k: float = 1.0
    true_length: bool = False


METHODS = (
    Method("vanilla", fixed_alpha=0.0),
    Method("fixed_0.25", fixed_alpha=0.25),
    Method("fixed_0.5", fixed_alpha=0.5),
    Method("fixed_0.75", fixed_alpha=0.75),
    Method("fixed_0.95", fixed_alpha=0.95),
    Method("timebill", k=0.0),
    Method("timebill_true_length", k=1.0, true_length=True),
)


def grid_alpha(alpha: float, grid: tuple[float, ...] = ALPHA_GRID) -> float:
    """The smallest grid alpha at or above ALPHA (the largest when ALPHA is above them all)."""
    i = bisect.bisect_left(grid, alpha - 1e-9)
    return grid[min(i, len(grid) - 1)]


def planned_alpha(method: Method, timing: TimingModel, *, prompt_tokens: int, prefill_s: float, budget: float,
                  n_hat: int, true_tokens: int, n_max: int, alpha_max: float = 0.95, min_kept: int = 0,
                  predictor_k: float = 0.0, grid: tuple[float, ...] = ALPHA_GRID) -> float:
    """The alpha METHOD runs at: its fixed value, or the node's plan after prefill (the measured
    prefill as the fixed time), rounded up to GRID."""
    if method.fixed_alpha is not None:
        return method.fixed_alpha
    n = true_tokens if method.true_length else n_hat
    k = method.k or predictor_k or PAPER_K
    chosen = plan(timing, n_x=prompt_tokens, n_hat=max(1, n), budget=budget, t_fixed=prefill_s, k=k,
                  alpha_max=alpha_max, n_max=n_max, min_kept=min_kept)
    return grid_alpha(chosen.alpha, grid)


@dataclass
class Outcome:
    """One goal's end as the node would deliver it."""

    status: str  # SUCCEEDED | KILLED_AT_DEADLINE | COMPLETED_LATE | SKIPPED
    score: float
    alpha: float
    end_s: float  # when its work ended, from its start (0 when skipped)
    margin: float = float("nan")  # (budget - the whole traced work's time) / budget: < 0 when late

    @property
    def completed(self) -> bool:
        """Whether the goal delivered its answer by the deadline (what completion counts)."""
        return self.status == "SUCCEEDED"


def outcome(trace: Trace, reference: str, budget: float, policy: str) -> Outcome:
    """A goal that starts at once: Kill ends it at the deadline (score 0), Skip-Next lets it
    finish late (kept, scored 0 as a missed deadline, as the report scores the node's)."""
    margin = (budget - trace.total_s) / budget
    if margin >= 0.0:
        return Outcome("SUCCEEDED", score(trace.task, trace.text, reference), trace.alpha, trace.total_s, margin)
    if policy == "kill":
        return Outcome("KILLED_AT_DEADLINE", 0.0, trace.alpha, budget, margin)
    return Outcome("COMPLETED_LATE", 0.0, trace.alpha, trace.total_s, margin)


def replay_skip_next(goals: list[tuple[Trace, str, float]]) -> list[Outcome]:
    """A sequence of goals (trace, reference, budget), each arriving one budget after the one
    before (the control loop's period): a goal that arrives while an overrunning one still
    runs is skipped."""
    out, arrival, busy_until = [], 0.0, 0.0
    for trace, reference, budget in goals:
        if arrival < busy_until:
            out.append(Outcome("SKIPPED", 0.0, trace.alpha, 0.0))
        else:
            done = outcome(trace, reference, budget, "skip_next")
            busy_until = arrival + done.end_s
            out.append(done)
        arrival += budget
    return out


@dataclass
class Cell:
    """A (policy, method, level) cell: its outcomes and their summary with standard errors."""

    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict:
        """n, mean score and completion with their standard errors, misses, mean alpha."""
        scores = [o.score for o in self.outcomes]
        done = [float(o.completed) for o in self.outcomes]
        ran = [o.alpha for o in self.outcomes if o.status != "SKIPPED"]
        return {"n": len(scores), "score": statistics.fmean(scores), "score_se": standard_error(scores),
                "completion": statistics.fmean(done), "completion_se": standard_error(done),
                "deadline_misses": sum(o.status in ("KILLED_AT_DEADLINE", "COMPLETED_LATE") for o in self.outcomes),
                "skipped": sum(o.status == "SKIPPED" for o in self.outcomes),
                "alpha_mean": statistics.fmean(ran) if ran else None}


def standard_error(values: list[float]) -> float:
    """The standard error of the mean (0 for fewer than two values)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Prompt:
    """One test prompt with everything its goals need: its traces by alpha, the reference,
    the predictor's N_hat and the prefill every method's goal shares."""

    example_id: str
    task: str
    reference: str
    n_hat: int
    traces: dict[float, Trace]
    # The prefills measured (spread over the alpha runs); every trace carries their median.
    prefill_samples: tuple[float, ...] = ()
    # Which predictor read N_HAT (core.predictor.predictor_digest): "" in traces saved before it was kept.
    n_hat_from: str = ""
    # Runs with a second eviction (Trace.again_at), measured where TimeBill's re-plan would make one.
    second_evictions: tuple[Trace, ...] = ()

    @property
    def prefill_s(self) -> float:
        """The prompt's prefill shared by its runs (the median of its measured prefills; of the
        traces, for traces saved before runs shared it)."""
        return statistics.median(t.prefill_s for t in self.traces.values())

    @property
    def true_tokens(self) -> int:
        """The target's own answer length (its vanilla decode)."""
        return len(self.traces[0.0].token_s)

    def trace(self, alpha: float) -> Trace:
        """The run at ALPHA with the prompt's shared prefill."""
        return replace(self.traces[alpha], prefill_s=self.prefill_s)

    def second_eviction(self, alpha: float, at: int, keep: int) -> Trace:
        """The run at ALPHA that evicted again to KEEP prompt entries at AT tokens decoded."""
        for t in self.second_evictions:
            if t.second_eviction_key == (alpha, at, keep):
                return replace(t, prefill_s=self.prefill_s)
        raise KeyError(f"{self.example_id}: no run measured that evicts again at {at} tokens to {keep} "
                       f"entries after alpha {alpha:g}; run eval-traces with the model to measure it")

    def score_at(self, alpha: float) -> float:
        """The quality of the answer measured at ALPHA against the reference, deadlines aside."""
        return score(self.task, self.traces[alpha].text, self.reference)

    def fitting_alphas(self, budget: float) -> list[float]:
        """The measured alphas, least eviction first, whose traced work fits BUDGET."""
        return [a for a in sorted(self.traces) if self.trace(a).total_s <= budget]

    def planned_alpha(self, method: Method, timing: TimingModel, prefill_s: float, budget: float, *, n_max: int,
                      min_kept: int, predictor_k: float, grid: tuple[float, ...]) -> float:
        """The alpha METHOD runs this prompt at when its prefill took PREFILL_S (`planned_alpha`)."""
        return planned_alpha(method, timing, prompt_tokens=self.traces[0.0].prompt_tokens, prefill_s=prefill_s,
                             budget=budget, n_hat=self.n_hat, true_tokens=self.true_tokens, n_max=n_max,
                             min_kept=min_kept, predictor_k=predictor_k, grid=grid)


def budget_levels(prompts: list[Prompt], quantiles: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Per task, budget levels at quantiles of vanilla's measured time over its prompts."""
    levels: dict[str, dict[str, float]] = {}
    for task in sorted({p.task for p in prompts}):
        times = sorted(p.trace(0.0).total_s for p in prompts if p.task == task)
        levels[task] = {f"q{round(100 * q)}": _quantile(times, q) for q in quantiles}
    return levels


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of SORTED_VALUES."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def goal_outcomes(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel, *, n_max: int,
                  methods: tuple[Method, ...] = METHODS, policies: tuple[str, ...] = POLICIES,
                  min_kept: int = 0, predictor_k: float = 0.0) -> dict[str, Outcome]:
    """Every goal's outcome, keyed as the bags' request ids ("policy/level/method/example"),
    computed from the traces. Under Skip-Next each (method, level) is one sequence over the
    prompts in their order."""
    out: dict[str, Outcome] = {}
    grid = _grid(prompts)
    for policy in policies:
        for method in methods:
            for level in next(iter(levels.values())):
                goals = []
                for p in prompts:
                    budget = levels[p.task][level]
                    alpha = p.planned_alpha(method, timing, p.prefill_s, budget, n_max=n_max, min_kept=min_kept,
                                            predictor_k=predictor_k, grid=grid)
                    goals.append((p.trace(alpha), p.reference, budget))
                ended = (replay_skip_next(goals) if policy == "skip_next"
                         else [outcome(t, ref, b, policy) for t, ref, b in goals])
                for p, o in zip(prompts, ended):
                    out[str(GoalId(policy, level, method.name, p.example_id))] = o
    return out


def evaluate(outcomes: dict[str, Outcome]) -> dict:
    """policy -> method -> level -> Cell.summary() of goal_outcomes' OUTCOMES."""
    cells: dict = {}
    for goal, o in outcomes.items():
        g = GoalId.parse(goal)
        cells.setdefault(g.policy, {}).setdefault(g.method, {}).setdefault(g.level, Cell()).outcomes.append(o)
    return {policy: {method: {level: cell.summary() for level, cell in by_level.items()}
                     for method, by_level in by_method.items()} for policy, by_method in cells.items()}


FIXED = ("vanilla", "fixed_0.25", "fixed_0.5", "fixed_0.75", "fixed_0.95")


def by_task(outcomes: dict[str, Outcome], prompts: list[Prompt], policy: str = "kill") -> dict:
    """task -> method -> level -> Cell.summary() under POLICY: `evaluate` on each task's goals,
    to see where TimeBill gains or loses against the true-length arm and the fixed alphas."""
    task_of = {p.example_id: p.task for p in prompts}
    goals: dict[str, dict[str, Outcome]] = {}
    for goal, o in outcomes.items():
        goals.setdefault(task_of[GoalId.parse(goal).example], {})[goal] = o
    return {task: evaluate(mine).get(policy, {}) for task, mine in sorted(goals.items())}


def best_fixed(methods: dict, level: str) -> str:
    """The fixed alpha (vanilla included) with the highest score at LEVEL among METHODS' cells."""
    return max((m for m in FIXED if m in methods), key=lambda m: methods[m][level]["score"])


def claims(table: dict, policy: str = "kill", min_levels: int = 4) -> dict:
    """The comparison's claims (issue 29) on TABLE's POLICY, each held or not with its numbers:
    TimeBill scores at least every fixed alpha's (vanilla included) at MIN_LEVELS levels or
    more, within 0.05 of the true-length arm at every level, and completes within 5 points of
    fixed 0.95 at every level."""
    methods = table[policy]
    levels = list(methods["timebill"])
    tb = methods["timebill"]
    best = {lv: best_fixed(methods, lv) for lv in levels}
    ahead = [lv for lv in levels if tb[lv]["score"] >= methods[best[lv]][lv]["score"] - 1e-9]
    out = {"policy": policy,
           "ahead_of_every_fixed_alpha": {
               "held": len(ahead) >= min(min_levels, len(levels)), "levels_held": ahead,
               "per_level": {lv: {"timebill": tb[lv]["score"], "best_fixed": best[lv],
                                  "best_fixed_score": methods[best[lv]][lv]["score"]} for lv in levels}}}
    if "timebill_true_length" in methods:
        gaps = {lv: methods["timebill_true_length"][lv]["score"] - tb[lv]["score"] for lv in levels}
        out["within_0.05_of_true_length"] = {"held": all(g <= 0.05 + 1e-9 for g in gaps.values()),
                                              "true_length_minus_timebill": gaps}
    if "fixed_0.95" in methods:
        gaps = {lv: 100 * (tb[lv]["completion"] - methods["fixed_0.95"][lv]["completion"]) for lv in levels}
        out["completion_within_5_pts_of_fixed_0.95"] = {"held": all(abs(g) <= 5 + 1e-9 for g in gaps.values()),
                                                         "timebill_minus_fixed_0.95_pts": gaps}
    return out


def paired_gaps(outcomes: dict[str, Outcome], table: dict, policy: str = "kill") -> dict:
    """level -> TimeBill's score minus the best fixed alpha's of that level (`best_fixed`), with
    the standard error of that difference taken goal by goal: both arms meet the same prompts,
    so a paired error leaves out how hard each prompt is, which an arm's own error carries."""
    methods = table[policy]
    scores = _per_goal(outcomes, policy, lambda o: o.score)
    return {level: {"best_fixed": (best := best_fixed(methods, level)),
                    **_paired(scores[("timebill", level)], scores[(best, level)])} for level in methods["timebill"]}


def completion_gaps(outcomes: dict[str, Outcome], table: dict, policy: str = "kill") -> dict:
    """level -> TimeBill's completion minus fixed 0.95's, in points, goal by goal with its paired
    standard error (the third claim's gap, as `paired_gaps` gives the first's)."""
    done = _per_goal(outcomes, policy, lambda o: 100.0 * o.completed)
    return {level: _paired(done[("timebill", level)], done[("fixed_0.95", level)])
            for level in table[policy]["timebill"]}


def _per_goal(outcomes: dict[str, Outcome], policy: str, of: Callable[[Outcome], float]) -> dict:
    """(method, level) -> example -> OF(its outcome), for POLICY's goals."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    for goal, o in outcomes.items():
        g = GoalId.parse(goal)
        if g.policy == policy:
            values.setdefault((g.method, g.level), {})[g.example] = of(o)
    return values


def _paired(a: dict[str, float], b: dict[str, float]) -> dict:
    """A's mean minus B's over the same examples, its paired standard error, whether it is
    decided (DECIDED_SE errors from 0) and about how many goals would decide it."""
    diffs = [a[e] - b[e] for e in a]
    mean, se = statistics.fmean(diffs), standard_error(diffs)
    return {"difference": mean, "paired_se": se, "decided": abs(mean) >= DECIDED_SE * se and mean != 0.0,
            "goals_to_decide": goals_to_decide(mean, se, len(diffs))}


# A paired difference counts as decided at this many standard errors (about 95 % two-sided).
DECIDED_SE = 2.0


def goals_to_decide(difference: float, se: float, goals: int) -> int | None:
    """About how many goals a level would need for DIFFERENCE to lie DECIDED_SE paired standard
    errors from 0, if the goals' spread stayed what GOALS of them showed (SE shrinks as 1/sqrt(n));
    None when nothing differs."""
    if difference == 0.0:
        return None
    return max(goals, math.ceil(goals * (DECIDED_SE * se / abs(difference)) ** 2))


def hindsight(prompts: list[Prompt], levels: dict[str, dict[str, float]]) -> dict:
    """level -> the ceiling of any per-prompt choice of alpha under Kill: each prompt at the
    measured alpha that scores best among those whose traced work fits the budget (the least
    eviction on a tie; 0 where none fits), known after the fact. What adapting alpha can buy at
    all is this minus the best fixed alpha; what the true-length arm leaves of it is the plan's
    (WCET margins, the grid); TimeBill leaves the predictor's error on top. Summary as
    Cell.summary() (alpha_mean: the alphas chosen)."""
    out = {}
    for level in next(iter(levels.values())):
        cell = Cell()
        for p in prompts:
            budget = levels[p.task][level]
            if fits := p.fitting_alphas(budget):  # max keeps the first, least-evicting, of equal scores
                best = max(fits, key=p.score_at)
                cell.outcomes.append(outcome(p.trace(best), p.reference, budget, "kill"))
            else:
                cell.outcomes.append(Outcome("KILLED_AT_DEADLINE", 0.0, max(p.traces), budget))
        out[level] = cell.summary()
    return out


# How a planned alpha compares with the least eviction that would have finished (plan_losses).
LOSS_KINDS = ("no alpha fits", "as little as needed", "more than needed", "killed, another alpha fits")


def plan_losses(prompts: list[Prompt], levels: dict[str, dict[str, float]], outcomes: dict[str, Outcome],
                methods: tuple[str, ...] = ("timebill", "timebill_true_length")) -> dict:
    """method -> kind -> goals and score lost, under Kill over every level: each goal's planned
    alpha (its Kill outcome in OUTCOMES, as goal_outcomes computed them) against the smallest
    measured alpha whose traced work fits its budget (known after the fact). Evicting more than
    that costs score where quality falls with alpha; planning too little is a kill. score_lost is
    per goal of all, so a method's kinds add up to its mean shortfall against that least-eviction arm."""
    out = {}
    for method in methods:
        tally = {kind: {"goals": 0, "score_lost": 0.0} for kind in LOSS_KINDS}
        goals = 0
        for level in next(iter(levels.values())):
            for p in prompts:
                fits = p.fitting_alphas(levels[p.task][level])
                ended = outcomes[str(GoalId("kill", level, method, p.example_id))]
                done = ended.completed
                kind = LOSS_KINDS[0 if not fits else 3 if not done else 2 if ended.alpha > fits[0] else 1]
                least = p.score_at(fits[0]) if fits else 0.0
                tally[kind]["goals"] += 1
                tally[kind]["score_lost"] += least - ended.score
                goals += 1
        for row in tally.values():
            row["score_lost"] /= goals
        out[method] = tally
    return out


# The pessimism factors the k sweep replans TimeBill with (the node's own k is added to them).
# Below 1 too: the plan's time model already bounds every calibration sample (its worst
# overrun) and planned alphas round up to the grid, so k x N_hat under the length can still finish,
# and on v9 the validation sweep's best sat at its lowest point, 1, when the sweep began there.
SWEEP_K = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0)


def k_sweep(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel, table: dict, *,
            n_max: int, min_kept: int = 0, ks: tuple[float, ...] = SWEEP_K, policy: str = "kill") -> dict:
    """TimeBill under POLICY planned with each pessimism k in KS, from the same traces: per k,
    its cells (level -> Cell.summary()) and the claims with it in TimeBill's place in TABLE
    (`evaluate`'s, for the fixed alphas and the true-length arm). The k the node uses is set on
    validation (issue 29); this shows what that choice costs on these prompts, it chooses nothing."""
    return {f"{k:g}": replanned(prompts, levels, timing, table, k=k, n_max=n_max, min_kept=min_kept, policy=policy)
            for k in ks}


def replanned(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel, table: dict, *,
              k: float, n_max: int, min_kept: int = 0, policy: str = "kill") -> dict:
    """TimeBill under POLICY planned with TIMING and pessimism K from the same traces: its cells
    (level -> Cell.summary()) and the claims with it in TimeBill's place in TABLE."""
    name = f"timebill_k{k:g}"
    outcomes = goal_outcomes(prompts, levels, timing, n_max=n_max, min_kept=min_kept,
                             methods=(Method(name, k=k),), policies=(policy,))
    return in_timebill_s_place(outcomes, name, table, policy)


def in_timebill_s_place(outcomes: dict[str, Outcome], name: str, table: dict, policy: str = "kill") -> dict:
    """The cells of method NAME in OUTCOMES, and the claims with them in TimeBill's place in TABLE."""
    cells = evaluate(outcomes)[policy][name]
    return {"cells": cells, "claims": claims({policy: {**table[policy], "timebill": cells}}, policy)}


def with_online_timing(prompts: list[Prompt], levels: dict[str, dict[str, float]],
                       online_for: Callable[[], OnlineTiming], table: dict, *, k: float, n_max: int,
                       min_kept: int = 0) -> dict:
    """TimeBill under Kill planned as the node plans with online timing on (its default): each
    level's goals in order through one live timing model (ONLINE_FOR() makes it afresh per level
    from the calibration), each planned after prefill from its
    snapshot, then observed as the engine observes a goal: its prefill and the decode steps done
    by the deadline against the fit without margins. The node's in-goal re-plan is not replayed
    (the traces hold one eviction a run). Cells and claims as `replanned`."""
    name, grid, out = "timebill_online", _grid(prompts), {}
    method = Method(name, k=k)
    for level in next(iter(levels.values())):
        online = online_for()
        for p in prompts:
            budget, snapshot = levels[p.task][level], online.snapshot()
            alpha = p.planned_alpha(method, snapshot.timing, p.prefill_s, budget, n_max=n_max,
                                    min_kept=min_kept, predictor_k=k, grid=grid)
            trace = p.trace(alpha)
            out[str(GoalId("kill", level, name, p.example_id))] = outcome(trace, p.reference, budget, "kill")
            online.observe(*phase_work(trace, online.base, budget), snapshot)
    return in_timebill_s_place(out, name, table)


def phase_work(trace: Trace, fit: TimingModel, budget: float) -> tuple[PhaseWork, PhaseWork]:
    """(prefill, decode) core.online.PhaseWork of TRACE run to BUDGET under Kill, as the engine
    counts them: the prefill (cut short when the deadline fell in it) and every decode step
    that ended by the deadline, each against FIT's time for it."""
    prefill, decode = PhaseWork(), PhaseWork()
    if trace.prefill_s > budget:  # killed in prefill: how long it ran against the whole phase's fit
        prefill.complete, prefill.spent, prefill.whole = False, budget, fit.prefill(trace.prompt_tokens)
        return prefill, decode
    prefill.add(fit.prefill(trace.prompt_tokens), trace.prefill_s)
    start = trace.prefill_s + trace.evict_s
    done = sum(1 for t in trace.token_s[1:] if start + t <= budget)  # the first token comes from prefill
    if done:
        decode.add(fit.decode(trace.prompt_tokens, trace.alpha, done + 1), trace.token_s[done] - trace.token_s[0])
    return prefill, decode


# ------------------------------------------------------------------- the in-goal re-plan
# The node re-plans inside a goal (core.replan) unless replan_steps is 0, as the comparison's
# node runs, like the paper. Beside it, the traces replay TimeBill's first re-plan on its traced
# decode and take the rest from a run measured to evict again there; a further re-plan on that
# run is not replayed (counted as `replans_after`).

def replan_point(trace: Trace, budget: float, timing: TimingModel, *, n_w: int, n_max: int, steps: int,
                 kept: int, floor: int, after: int = 0) -> tuple[int, int] | None:
    """(tokens decoded, prompt entries to keep) where the node's in-goal re-plan would first
    evict again on TRACE's decode after AFTER tokens, run to BUDGET with KEPT prompt entries,
    N_W planned and TIMING its plan's (core.engine.Job.replan_if_late with STEPS steps a window
    and FLOOR the fewest entries kept); None when it would not. The step times and the time
    left are the trace's own, read where the engine reads its clock."""
    if not steps:  # replan_steps 0: the paper's single plan
        return None
    start, recent = trace.prefill_s + trace.evict_s, []
    for i in range(after + 1, len(trace.token_s)):  # i tokens out; the step making token i + 1 has just run
        recent.append(trace.token_s[i] - trace.token_s[i - 1])
        remaining = tokens_left(n_w, i, n_max)
        if len(recent) < steps or remaining < 2:
            continue
        keep = replan_keep(timing, kept=kept, floor=floor, decoded=i - 1, remaining=remaining,
                           left=budget - start - trace.token_s[i], live_step_s=statistics.fmean(recent[-steps:]))
        if keep is None:
            continue
        recent.clear()
        if keep < kept:
            return i, keep
    return None


def after_second_eviction(first: Trace, again: Trace) -> Trace:
    """FIRST's run up to the tokens AGAIN (the same prompt and alpha) evicted again at, then
    AGAIN's steps from there on: the goal as the node's re-plan would have run it. Its alpha
    is the share of the prompt evicted in all."""
    at = again.again_at
    shift = first.token_s[at - 1] - again.token_s[at - 1]
    return replace(again, alpha=1.0 - again.keep / again.prompt_tokens, prefill_s=first.prefill_s,
                   evict_s=first.evict_s, token_s=first.token_s[:at] + tuple(t + shift for t in again.token_s[at:]))


class _ReplanGoal(NamedTuple):
    """A TimeBill goal as `_replan_goals` plans it: its TRACE at the planned alpha, the TIMING
    and N_W its plan read, and where its first re-plan would evict again (None: nowhere)."""

    level: str
    prompt: Prompt
    budget: float
    trace: Trace
    timing: TimingModel
    n_w: int
    point: tuple[int, int] | None


def _replan_goals(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel, *, k: float,
                  n_max: int, min_kept: int, steps: int, alpha_max: float) -> Iterator[_ReplanGoal]:
    """Every TimeBill goal planned with K as the node with re-plans on plans it: after prefill,
    with the decode paced by a prefill far slower than planned."""
    from timebill_ros.core.eviction import kept_count

    method, grid = Method("timebill", k=k), _grid(prompts)
    for level in next(iter(levels.values())):
        for p in prompts:
            budget, n_x = levels[p.task][level], p.traces[0.0].prompt_tokens
            paced = paced_by_prefill(timing, timing.prefill(n_x), p.prefill_s)
            alpha = p.planned_alpha(method, paced, p.prefill_s, budget, n_max=n_max, min_kept=min_kept,
                                    predictor_k=k, grid=grid)
            first, n_w = p.trace(alpha), worst_case_tokens(max(1, p.n_hat), k, n_max)
            point = replan_point(first, budget, paced, n_w=n_w, n_max=n_max, steps=steps,
                                 kept=kept_count(n_x, alpha, min_kept), floor=replan_floor(n_x, alpha_max, min_kept))
            yield _ReplanGoal(level, p, budget, first, paced, n_w, point)


def second_evictions_wanted(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel, *,
                            k: float, n_max: int, min_kept: int, steps: int,
                            alpha_max: float = 0.95) -> dict[str, set[tuple[float, int, int]]]:
    """Example id -> the (alpha, tokens decoded, entries kept) runs `with_in_goal_replan` reads
    for it: one a TimeBill goal that would re-plan (`measure_second_evictions` makes them)."""
    wanted: dict[str, set[tuple[float, int, int]]] = {}
    for g in _replan_goals(prompts, levels, timing, k=k, n_max=n_max, min_kept=min_kept, steps=steps,
                           alpha_max=alpha_max):
        if g.point:
            wanted.setdefault(g.prompt.example_id, set()).add((g.trace.alpha, *g.point))
    return wanted


def with_in_goal_replan(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel,
                        table: dict, *, k: float, n_max: int, min_kept: int, steps: int, alpha_max: float = 0.95,
                        outcomes: dict[str, Outcome] | None = None, node_records: list[dict] | None = None) -> dict:
    """TimeBill under Kill as the node runs it with its in-goal re-plan on (replan_steps STEPS):
    each goal's first re-plan replayed on its trace and, where it evicts again, the run measured
    to do so (Prompt.second_evictions; a KeyError names a missing one). Cells and claims as
    `replanned`, with the goals that re-planned, how many of them completed, how many a second
    re-plan would have changed (the replay makes one) and the median pace of the measured runs
    over their traces' on the steps before the re-plan (both ran them; the runs may be measured
    later, on a host whose pace has moved). With the table's OUTCOMES, also both claims' paired
    gaps (`paired_gaps`, `completion_gaps`) with these goals in TimeBill's place, and with
    NODE_RECORDS (the same goals replayed through a node with its re-plan on) the `agreement`
    and how often node and replay agree on whether a goal re-planned."""
    name, out, pace, replans = "timebill_in_goal_replan", {}, [], {}
    counts = {"goals": 0, "replanned": 0, "replanned_completed": 0, "replans_after": 0}
    for g in _replan_goals(prompts, levels, timing, k=k, n_max=n_max, min_kept=min_kept, steps=steps,
                           alpha_max=alpha_max):
        counts["goals"] += 1
        trace = g.trace
        if g.point:
            at, keep = g.point
            again = g.prompt.second_eviction(g.trace.alpha, at, keep)
            if g.trace.token_s[at - 1] > 0.0:  # the same steps before the re-plan, in two runs
                pace.append(again.token_s[at - 1] / g.trace.token_s[at - 1])
            trace = after_second_eviction(g.trace, again)
            counts["replanned"] += 1
            # The re-plan's own N_W (core.engine: the tokens out plus the worst case left then).
            further = replan_point(trace, g.budget, g.timing, n_w=at + tokens_left(g.n_w, at, n_max), n_max=n_max,
                                   steps=steps, kept=keep, floor=replan_floor(trace.prompt_tokens, alpha_max, min_kept),
                                   after=at)
            counts["replans_after"] += further is not None
        ended = outcome(trace, g.prompt.reference, g.budget, "kill")
        counts["replanned_completed"] += bool(g.point) and ended.completed
        out[str(GoalId("kill", g.level, name, g.prompt.example_id))] = ended
        replans[str(GoalId("kill", g.level, "timebill", g.prompt.example_id))] = g.point is not None
    # Measured later than the traces: how the host's pace then compares, over the steps both ran.
    runs_over_traces = statistics.median(pace) if pace else None
    report = {"replan_steps": steps, **counts, "runs_over_traces_pace": runs_over_traces,
              **in_timebill_s_place(out, name, table)}
    if outcomes is not None:
        mine = {**outcomes, **{str(replace(GoalId.parse(goal), method="timebill")): o for goal, o in out.items()}}
        placed = {"kill": {**table["kill"], "timebill": report["cells"]}}
        report |= {"paired_gaps": paired_gaps(mine, placed), "completion_gaps": completion_gaps(mine, placed)}
        if node_records:
            both = [(replans[r["request_id"]], bool(r.get("replans"))) for r in node_records
                    if r.get("request_id") in replans]
            report["node_agreement"] = {**agreement(mine, node_records), "replans_agree_pct": _agree_pct(both),
                                        "replanned_by_node": sum(b for _, b in both)}
    return report


def at_traced_pace(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel, table: dict,
                   pace: dict, *, k: float, n_max: int, min_kept: int = 0) -> dict | None:
    """TimeBill under Kill replanned as if its calibration had been made at the pace the traces
    ran: the plan's decode (and eviction) scaled by the traced decodes' median over the
    calibration's fit (PACE, `machine_pace` with a fit), margins kept. Prefill needs no scaling:
    a plan takes the prefill measured. It says whether a host faster than calibrated (a loose
    plan) is what keeps TimeBill from a claim. None without that pace."""
    if not (factor := pace.get("decode_over_calibration")):
        return None
    return {"decode_factor": factor,
            **replanned(prompts, levels, timing.scaled(1.0, factor), table, k=k, n_max=n_max, min_kept=min_kept)}


def validation_choice(report: dict, model: str | None, digest: str | None) -> float | None:
    """The k a traces REPORT chose on the validation split (`best_k`) when it was made for MODEL
    with the predictor of DIGEST (core.predictor.predictor_digest: a retrained predictor needs
    its own choice); None for any other report."""
    if (report.get("split") == "validation" and report.get("model") == model
            and report.get("predictor_digest") == digest and report.get("best_k")):
        return float(report["best_k"]["k"])
    return None


def best_k(sweep: dict) -> dict:
    """The k of SWEEP (`k_sweep`'s) with the highest mean score over its levels (the larger k on
    a tie: fewer kills), and every k's mean. Measured on the validation split's prompts it is the
    k to plan the test prompts with, chosen for what this target loses to eviction and to a
    kill; the 90 % cover of `train.predictor.pessimism_k` looks at the lengths alone."""
    means = {key: statistics.fmean(cell["score"] for cell in row["cells"].values()) for key, row in sweep.items()}
    chosen = max(means, key=lambda key: (round(means[key], 9), float(key)))
    return {"k": float(chosen), "mean_score": means}


# A goal whose traced work ends within this share of its budget from the deadline is a coin
# flip between two runs on this host: the same prefill repeated minutes apart differs by 8.6 %
# on average (docs/results/noise_floor.json).
NEAR_DEADLINE = 0.05


def agreement(outcomes: dict[str, Outcome], node_records: list[dict], near: float = NEAR_DEADLINE) -> dict:
    """How often the node and the traces agree on complete / incomplete for the same goals
    (NODE_RECORDS: result records with a request_id, as `timebill eval` reads them), over all
    of them and over those whose traced work ends more than NEAR x the budget from the
    deadline (the rest are decided by the host's noise as much as by the plan)."""
    pairs = [(outcomes[r["request_id"]].completed, r["status_name"] == "SUCCEEDED",
              abs(outcomes[r["request_id"]].margin) > near)
             for r in node_records if r.get("request_id") in outcomes]
    clear = [(a, b) for a, b, far in pairs if far]
    return {"goals": len(pairs), "agree_pct": _agree_pct([(a, b) for a, b, _ in pairs]),
            "trace_complete_node_not": sum(a and not b for a, b, _ in pairs),
            "node_complete_trace_not": sum(b and not a for a, b, _ in pairs),
            "clear_of_deadline": {"near": near, "goals": len(clear), "agree_pct": _agree_pct(clear)}}


def self_agreement(first: list[dict], again: list[dict]) -> dict:
    """How often the node agrees with itself: the same goals (request ids) replayed twice through
    it, complete / incomplete compared. The host's run-to-run noise flips goals planned near
    their deadline whatever the traces do, so this is about the most any trace-vs-node agreement
    can reach on the host (TimeBill plans to the edge of the budget by design): a sample, not a
    bound; a trace-vs-node figure above it is luck of the same size."""
    runs = {r["request_id"]: r["status_name"] == "SUCCEEDED" for r in first if r.get("request_id")}
    pairs = [(runs[r["request_id"]], r["status_name"] == "SUCCEEDED") for r in again if r.get("request_id") in runs]
    return {"goals": len(pairs), "agree_pct": _agree_pct(pairs)}


def agreement_at_node_prefill(prompts: list[Prompt], levels: dict[str, dict[str, float]], timing: TimingModel,
                              node_records: list[dict], *, n_max: int, min_kept: int = 0,
                              predictor_k: float = 0.0) -> dict:
    """Agreement with each Kill goal's traced outcome recomputed from the prefill the NODE
    measured for it (the plan after prefill read from that time, the decode at the alpha it
    gives): what is left when the host's pace during prefill, which moved most disagreements
    (docs/evaluation.md), is the node's in both. A goal killed in prefill carries the time until
    the kill. A diagnostic beside `agreement`, not instead."""
    by_id, methods = {p.example_id: p for p in prompts}, {m.name: m for m in METHODS}
    grid, pairs = _grid(prompts), []
    for r in node_records:
        g = GoalId.parse(r.get("request_id"))
        if not g or g.policy != "kill" or not (p := by_id.get(g.example)) or g.method not in methods \
                or g.level not in levels[p.task]:
            continue
        budget, prefill_s = levels[p.task][g.level], float(r["prefill_time"])
        if prefill_s <= 0.0:  # ended before prefill (rejected): no pace of the node's to read
            continue
        alpha = p.planned_alpha(methods[g.method], timing, prefill_s, budget, n_max=n_max, min_kept=min_kept,
                                predictor_k=predictor_k, grid=grid)
        traced = outcome(replace(p.traces[alpha], prefill_s=prefill_s), p.reference, budget, "kill")
        pairs.append((traced.completed, r["status_name"] == "SUCCEEDED"))
    return {"goals": len(pairs), "agree_pct": _agree_pct(pairs)}


def _grid(prompts: list[Prompt]) -> tuple[float, ...]:
    """The alphas the traces measured, whatever grid they came from."""
    return tuple(sorted(prompts[0].traces))


def _agree_pct(pairs: list[tuple[bool, bool]]) -> float | None:
    return 100.0 * sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def node_pace(prompts: list[Prompt], node_records: list[dict]) -> dict:
    """How fast the node ran the same prompts as the traces (medians over the goals that got
    that far): its prefill over the trace's, and its decode of N tokens over the trace's first
    N at the same alpha. Above 1 the traces are optimistic and disagree one way: complete where
    the node was killed."""
    by_id = {p.example_id: p for p in prompts}
    prefill, decode = [], []
    for r in node_records:
        g = GoalId.parse(r.get("request_id"))
        if not g or not (p := by_id.get(g.example)):
            continue
        if r["decode_time"] > 0 or r["status_name"] == "SUCCEEDED":
            prefill.append(r["prefill_time"] / p.prefill_s)
        n, trace = r["response_tokens"], p.traces.get(r["alpha"])
        if trace and 0 < n <= len(trace.token_s) and r["decode_time"] > 0:
            decode.append(r["decode_time"] / trace.token_s[n - 1])
    return {"node_over_trace_prefill": statistics.median(prefill) if prefill else None,
            "node_over_trace_decode": statistics.median(decode) if decode else None,
            "pace_goals": {"prefill": len(prefill), "decode": len(decode)}}


def measure(engine, examples, *, alphas: tuple[float, ...] = ALPHA_GRID, max_new_tokens: int = 384,
            prefill_samples: int = 1, n_hat_from: str = "", tick=lambda: None) -> list[Prompt]:
    """Run every example once per alpha on ENGINE (greedy, no deadline, its predictor beside
    prefill as in the node) and keep each run's trace; N_hat is the predictor's. The prompt is
    prefilled PREFILL_SAMPLES times, spread over its alpha runs (core.engine.PrefillMemo: the
    other runs start from a copy of the last prefill's cache), and every trace carries the
    median of those prefills: every goal on the prompt rests on that one figure, and a single
    sample taken in a slow second of the host decided 11 of 13 node disagreements in a run here.
    N_HAT_FROM names the engine's predictor (core.predictor.predictor_digest)."""
    from timebill_ros.core.engine import PrefillMemo
    from timebill_ros.core.jobs import CancelToken, Request
    from timebill_ros.core.model import encode_prompt

    fresh = {round(j * len(alphas) / prefill_samples) for j in range(min(prefill_samples, len(alphas)))}
    prompts = []
    try:
        for ex in examples:
            ids = encode_prompt(engine.loaded.tokenizer, ex.prompt)
            runs, n_hat, samples = {}, 0, []
            for i, alpha in enumerate(alphas):
                if i in fresh:
                    engine.prefill_memo = PrefillMemo()  # this run prefills for real
                r = engine.run(Request(ids, budget=1e9, max_new_tokens=max_new_tokens, fixed_alpha=alpha),
                               CancelToken())
                if r.status.name != "SUCCEEDED":
                    raise RuntimeError(f"{ex.id} at alpha {alpha}: {r.status.name} {r.reason}")
                n_hat = n_hat or (r.plan.predicted_tokens if r.plan else 0)
                if i in fresh:
                    samples.append(r.timings.prefill)
                runs[alpha] = Trace(ex.id, ex.task, alpha, len(ids), 0.0, r.timings.evict,
                                    tuple(r.timings.token_s), r.text, hit_cap=len(r.token_ids) >= max_new_tokens)
                tick()
            shared = statistics.median(samples)
            runs = {alpha: replace(t, prefill_s=shared) for alpha, t in runs.items()}
            prompts.append(Prompt(ex.id, ex.task, ex.answer, n_hat, runs, tuple(samples), n_hat_from))
    finally:
        engine.prefill_memo = None
    return prompts


def measure_second_evictions(engine, examples, prompts: list[Prompt], wanted: dict[str, set[tuple[float, int, int]]],
                             *, max_new_tokens: int = 384, tick=lambda: None) -> list[Prompt]:
    """PROMPTS with a run measured for each (alpha, tokens decoded, entries kept) of WANTED (by
    example id, `second_evictions_wanted`) they do not hold yet: on ENGINE, greedy, no deadline,
    the prompt's cache evicted at alpha and then again down to the entries kept once that many
    tokens are out (core.engine.EvictsAgainAt, the eviction the node's re-plan makes). One
    prefill a prompt; its other runs start from a copy of its cache."""
    from timebill_ros.core.engine import EvictsAgainAt, PrefillMemo
    from timebill_ros.core.jobs import Request
    from timebill_ros.core.model import encode_prompt

    by_id, out = {ex.id: ex for ex in examples}, []
    try:
        for p in prompts:
            new = sorted(wanted.get(p.example_id, set()) - {t.second_eviction_key for t in p.second_evictions})
            if new:
                ids = encode_prompt(engine.loaded.tokenizer, by_id[p.example_id].prompt)
                engine.prefill_memo = PrefillMemo()
                runs = []
                for alpha, at, keep in new:
                    request = Request(ids, budget=1e9, max_new_tokens=max_new_tokens, fixed_alpha=alpha)
                    r = engine.run_job(EvictsAgainAt(engine, request, at, keep))
                    if r.status.name != "SUCCEEDED" or r.replans != 1:
                        raise RuntimeError(f"{p.example_id} at alpha {alpha}, again at {at} to {keep}: {r.status.name} "
                                           f"{r.reason} ({r.replans} second evictions)")
                    runs.append(Trace(p.example_id, p.task, alpha, len(ids), 0.0, r.timings.evict,
                                      tuple(r.timings.token_s), r.text, len(r.token_ids) >= max_new_tokens, at, keep))
                    tick()
                p = replace(p, second_evictions=p.second_evictions + tuple(runs))
            out.append(p)
    finally:
        engine.prefill_memo = None
    return out


def reread_n_hat(engine, examples, prompts: list[Prompt], n_hat_from: str, tick=lambda: None) -> list[Prompt]:
    """PROMPTS with N_hat read again by ENGINE's predictor (named N_HAT_FROM), their traces kept:
    N_hat does not change what a run at a given alpha does, only which alpha a plan picks, so a
    new predictor needs one short run a prompt (its prefill, one token), not the decodes again."""
    from timebill_ros.core.jobs import CancelToken, Request
    from timebill_ros.core.model import encode_prompt

    by_id = {ex.id: ex for ex in examples}
    out = []
    for p in prompts:
        ids = encode_prompt(engine.loaded.tokenizer, by_id[p.example_id].prompt)
        r = engine.run(Request(ids, budget=1e9, max_new_tokens=1, fixed_alpha=0.0), CancelToken())
        if r.status.name != "SUCCEEDED" or not r.plan:
            raise RuntimeError(f"{p.example_id}: no N_hat ({r.status.name} {r.reason})")
        out.append(replace(p, n_hat=r.plan.predicted_tokens, n_hat_from=n_hat_from))
        tick()
    return out


def to_json(prompts: list[Prompt]) -> list[dict]:
    """PROMPTS as plain dicts (traces keyed by alpha), for results/eval/traces.json."""
    from dataclasses import asdict

    return [{**{k: v for k, v in asdict(p).items() if k not in ("traces", "second_evictions")},
             "traces": [asdict(t) for t in p.traces.values()],
             "second_evictions": [asdict(t) for t in p.second_evictions]} for p in prompts]


def from_json(rows: list[dict]) -> list[Prompt]:
    """The inverse of to_json."""
    out = []
    def trace(t: dict) -> Trace:
        return Trace(**{**t, "token_s": tuple(t["token_s"])})

    for row in rows:
        runs = {float(t["alpha"]): trace(t) for t in row["traces"]}
        out.append(Prompt(row["example_id"], row["task"], row["reference"], int(row["n_hat"]), runs,
                          tuple(row.get("prefill_samples", ())), row.get("n_hat_from", ""),
                          tuple(trace(t) for t in row.get("second_evictions", ()))))
    return out


STEADY_SPREAD = 1.5  # largest / smallest prefill-over-fit ratio of one run that still counts as steady


# Decodes shorter than this are a few steps of jitter; plans that matter decode longer.
PACE_MIN_TOKENS = 8


def machine_pace(prompts: list[Prompt], timing: TimingModel, fit: TimingModel | None = None) -> dict:
    """Each prompt's measured prefill over TIMING (the plan's: the calibration's fit with its
    margins): how steady the machine was while the traces were measured. Every cell of a
    prompt rests on its prefill (the median of its samples), so a slow spell of the host (a run
    here saw 0.62x to 2.02x) moves budgets' outcomes, not the method's. Then every traced decode
    of PACE_MIN_TOKENS or more over what TIMING plans for it: the share over 1 is how often a
    plan made right at the deadline, with the true length, would have been killed.

    With FIT (the calibration's fit without margins, `Calibration.fitted_timing`), the medians
    of both over it too: the pace the host ran at against its calibration's. Apart, the two say
    whether a loose plan comes from the margins or from a host that ran faster than calibrated."""
    ratios = [p.prefill_s / timing.prefill(p.traces[0.0].prompt_tokens) for p in prompts]
    low, high = min(ratios), max(ratios)
    paced = _paced_decodes(prompts)
    decodes = sorted(_decode_over(t, timing) for t in paced)
    pace = {"prefill_over_fit_min": low, "prefill_over_fit_median": statistics.median(ratios),
            "prefill_over_fit_max": high, "steady": high / low <= STEADY_SPREAD}
    if decodes:
        pace.update(decode_over_plan_median=statistics.median(decodes), decode_over_plan_p90=_quantile(decodes, 0.9),
                    decode_over_plan_max=decodes[-1],
                    decode_over_plan_share=sum(r > 1.0 for r in decodes) / len(decodes),
                    decodes=len(decodes), decode_min_tokens=PACE_MIN_TOKENS)
    if fit is not None:
        pace["prefill_over_calibration"] = statistics.median(
            p.prefill_s / fit.prefill(p.traces[0.0].prompt_tokens) for p in prompts)
        if decodes:
            pace["decode_over_calibration"] = statistics.median(_decode_over(t, fit) for t in paced)
    return pace


def _paced_decodes(prompts: list[Prompt]) -> list[Trace]:
    """Every trace long enough for its decode to show the host's pace (PACE_MIN_TOKENS)."""
    return [t for p in prompts for t in p.traces.values() if len(t.token_s) >= PACE_MIN_TOKENS]


def _decode_over(trace: Trace, timing: TimingModel) -> float:
    """TRACE's decode after its first token over what TIMING gives the same steps."""
    return (trace.token_s[-1] - trace.token_s[0]) / timing.decode(trace.prompt_tokens, trace.alpha, len(trace.token_s))


def decode_share(prompts: list[Prompt], levels: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per task, vanilla's mean share of its time spent decoding: eviction can only buy from
    that share (the issue asks for levels where it is at least half)."""
    out = {}
    for task in levels:
        runs = [p.trace(0.0) for p in prompts if p.task == task]
        out[task] = statistics.fmean((r.total_s - r.prefill_s) / r.total_s for r in runs if r.total_s > 0)
    return out


def _step_s(trace: Trace) -> float | None:
    """A trace's mean decode step after its first token (None under two tokens)."""
    steps = trace.token_s
    return (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) >= 2 else None


def _median_ratio(prompts: list[Prompt], alpha: float, of: Callable[[Trace], float | None]) -> float | None:
    """Median over PROMPTS of OF(the trace at ALPHA) / OF(vanilla's), where both are defined."""
    ratios = [a / v for p in prompts if (v := of(p.trace(0.0))) and (a := of(p.traces[alpha])) is not None]
    return statistics.median(ratios) if ratios else None


def mechanism(prompts: list[Prompt], predictor_k: float) -> dict:
    """Per task, what eviction buys and costs, without deadlines, and how well N_hat knew the
    length: each grid alpha's mean score (the answer's quality under eviction), mean time over
    vanilla's, and that time split in its two causes, the median decode step and the median
    answer length over vanilla's on the same prompt (eviction speeds the step, and it can also
    end an answer early or make it loop); mean answer tokens and share at the cap; the
    predictor's mean absolute error and how often k x N_hat covered the true length. The
    comparison's claims follow from these (docs/evaluation.md)."""
    out = {}
    for task in sorted({p.task for p in prompts}):
        mine = [p for p in prompts if p.task == task]
        alphas = sorted(set.intersection(*(set(p.traces) for p in mine)))
        out[task] = {
            "score_by_alpha": {f"{a:g}": statistics.fmean(p.score_at(a) for p in mine) for a in alphas},
            "time_over_vanilla_by_alpha": {f"{a:g}": statistics.fmean(
                p.trace(a).total_s / p.trace(0.0).total_s for p in mine) for a in alphas},
            "step_over_vanilla_by_alpha": {f"{a:g}": _median_ratio(mine, a, _step_s) for a in alphas},
            "length_over_vanilla_by_alpha": {f"{a:g}": _median_ratio(mine, a, lambda t: len(t.token_s) or None)
                                             for a in alphas},
            "tokens_by_alpha": {f"{a:g}": statistics.fmean(len(p.traces[a].token_s) for p in mine) for a in alphas},
            "capped_share_by_alpha": {f"{a:g}": statistics.fmean(p.traces[a].hit_cap for p in mine) for a in alphas},
            "true_tokens_mean": statistics.fmean(p.true_tokens for p in mine),
            "n_hat_mae": statistics.fmean(abs(p.n_hat - p.true_tokens) for p in mine),
            "k_n_hat_covers_share": statistics.fmean(predictor_k * p.n_hat >= p.true_tokens for p in mine)}
    return out

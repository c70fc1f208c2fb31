"""The closed-form eviction ratio alpha* (TimeBill section 3). Pure functions.

Solving  t_fixed + decode(N_x, alpha, N_W) <= T  for alpha, with the decode sum written
out (the paper's printed middle term has a stray p; summing the steps cancels it):

    alpha* = 1 - (T - t_fixed - (N_W - 1)*q) / (p * N_x * (N_W - 1)) + (N_W - 2) / (2 * N_x)

`t_fixed` is all time spent before decoding starts: prefill plus the share of the
prediction that is not hidden behind prefill (the paper's t_prefill + t_predict), plus,
when re-planning mid-job, the time already elapsed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from timebill_ros.core.timing import TimingModel

PAPER_K = 5.0  # the paper's pessimistic factor: the default where the length predictor brings none of its own
# The smallest k a goal or the node may set. Below 1 plans for less than N_hat: under Kill a
# steep loss of score to eviction can make that the better bet (the k v9 scores best with on
# validation is 0.9, docs/evaluation.md); below K_MIN nearly every plan would be for one token.
K_MIN = 0.1


@dataclass(frozen=True)
class Plan:
    """What the planner decided for one job."""

    alpha: float  # eviction ratio to apply, within [0, alpha_ceiling]
    alpha_unclamped: float  # the closed form before clamping (inf when no alpha helps)
    alpha_ceiling: float  # the largest alpha allowed for this prompt
    feasible: bool  # True when the WCET at `alpha` fits inside the budget
    predicted_tokens: int  # N_hat
    worst_case_tokens: int  # N_W
    wcet: float  # t_fixed + worst-case decode time at `alpha`, seconds
    budget: float  # the T this plan was made for, seconds

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def worst_case_tokens(n_hat: int, k: float, n_max: int) -> int:
    """N_W = min(k * N_hat, N_max), at least 1."""
    return max(1, min(int(math.ceil(k * n_hat)), int(n_max)))


def alpha_ceiling(n_x: int, alpha_max: float, min_kept: int) -> float:
    """alpha_max, lowered so that at least `min_kept` prompt entries (the SnapKV window) stay."""
    if n_x <= min_kept:
        return 0.0
    return max(0.0, min(alpha_max, 1.0 - min_kept / n_x))


def optimal_alpha(timing: TimingModel, n_x: int, n_w: int, budget: float, t_fixed: float) -> float:
    """Smallest alpha whose WCET fits the budget, unclamped (may be < 0 or > 1, or inf)."""
    if n_w <= 1:
        # One token comes out of prefill: no decode step, alpha changes nothing.
        return 0.0 if t_fixed <= budget else math.inf
    slope = timing.p * n_x * (n_w - 1)
    if slope <= 0.0:
        # A decode time that does not grow with the cache: eviction cannot help.
        return 0.0 if t_fixed + timing.decode(n_x, 0.0, n_w) <= budget else math.inf
    return 1.0 - (budget - t_fixed - (n_w - 1) * timing.q) / slope + (n_w - 2) / (2.0 * n_x)


def plan(
    timing: TimingModel,
    *,
    n_x: int,
    n_hat: int,
    budget: float,
    t_fixed: float,
    k: float,
    alpha_max: float,
    n_max: int,
    min_kept: int = 0,
    fixed_alpha: float | None = None,
) -> Plan:
    """Choose alpha for a job: the closed form clamped to [0, ceiling], or a fixed baseline value."""
    n_w = worst_case_tokens(n_hat, k, n_max)
    ceiling = alpha_ceiling(n_x, alpha_max if fixed_alpha is None else fixed_alpha, min_kept)
    # Evicting costs its own phase (timing.evict): alpha* is solved with it when alpha > 0 is needed.
    raw = optimal_alpha(timing, n_x, n_w, budget, t_fixed + timing.evict(n_x, 0.0))
    if raw > 0.0:
        raw = optimal_alpha(timing, n_x, n_w, budget, t_fixed + timing.evict(n_x, 1.0))
    alpha = ceiling if fixed_alpha is not None else min(max(raw, 0.0), ceiling)
    wcet = t_fixed + timing.evict(n_x, alpha) + timing.decode(n_x, alpha, n_w)
    return Plan(
        alpha=float(alpha),
        alpha_unclamped=float(raw),
        alpha_ceiling=float(ceiling),
        feasible=bool(wcet <= budget + 1e-9 * max(1.0, abs(budget))),  # float slack at alpha = alpha*
        predicted_tokens=int(n_hat),
        worst_case_tokens=n_w,
        wcet=float(wcet),
        budget=float(budget),
    )

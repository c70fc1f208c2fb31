"""alpha*: exact values, the corrected closed form against brute force, and properties."""
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from timebill_ros.core.planner import alpha_ceiling, optimal_alpha, plan, worst_case_tokens
from timebill_ros.core.timing import TimingModel

T = TimingModel(a=1e-8, b=2e-5, c=0.005, p=2e-5, q=0.01)


def test_exact_alpha_matches_the_corrected_formula():
    n_x, n_w, budget, t_fixed = 1000, 11, 0.5, 0.1
    expected = 1 - (budget - t_fixed - 10 * T.q) / (T.p * n_x * 10) + 9 / (2 * n_x)
    assert optimal_alpha(T, n_x, n_w, budget, t_fixed) == pytest.approx(expected)
    # ... and at that alpha the decode time uses up the budget exactly.
    assert t_fixed + T.decode(n_x, expected, n_w) == pytest.approx(budget)


def test_the_planner_uses_the_corrected_form_not_the_papers_printed_one():
    """The printed middle term (N_W-2)/(2 p N_x) is a typo. With p = 0.01 s per entry both
    forms land inside [0, alpha_max], so the planner's alpha tells which one it uses: the
    corrected one uses the budget up exactly, the printed one over-evicts by ~0.45."""
    t2 = TimingModel(a=0.0, b=0.0, c=0.0, p=0.01, q=0.001)
    n_x, n_w, t_fixed = 1000, 11, 0.1
    budget = t_fixed + t2.decode(n_x, 0.3, n_w)
    printed = 1 - (budget - t_fixed - 10 * t2.q) / (t2.p * n_x * 10) + 9 / (2 * t2.p * n_x)
    p = plan(t2, n_x=n_x, n_hat=n_w, budget=budget, t_fixed=t_fixed, k=1.0, alpha_max=0.95, n_max=n_w)
    assert 0.3 < printed < 0.95 and abs(printed - 0.3) > 0.4
    assert p.alpha == pytest.approx(0.3) and p.wcet == pytest.approx(budget) and p.feasible


def test_worst_case_length_and_guards():
    assert worst_case_tokens(100, 5, 8192) == 500
    assert worst_case_tokens(100, 5, 256) == 256
    assert worst_case_tokens(0, 5, 256) == 1
    assert optimal_alpha(T, 100, 1, budget=1.0, t_fixed=0.5) == 0.0
    assert optimal_alpha(T, 100, 1, budget=1.0, t_fixed=2.0) == math.inf
    flat = TimingModel(0, 0, 0, p=0.0, q=0.01)
    assert optimal_alpha(flat, 100, 50, budget=10.0, t_fixed=0.0) == 0.0
    assert optimal_alpha(flat, 100, 50, budget=0.1, t_fixed=0.0) == math.inf


def test_window_limits_the_ceiling():
    assert alpha_ceiling(1000, 0.95, 32) == 0.95
    assert alpha_ceiling(100, 0.95, 32) == pytest.approx(0.68)
    assert alpha_ceiling(20, 0.95, 32) == 0.0


def test_infeasible_budget_is_flagged_and_clamped():
    p = plan(T, n_x=2000, n_hat=200, budget=0.05, t_fixed=0.04, k=5, alpha_max=0.95, n_max=1024)
    assert not p.feasible and p.alpha == 0.95 and p.alpha_unclamped > 0.95
    assert p.wcet > p.budget


def test_fixed_alpha_is_a_baseline_setting():
    p = plan(T, n_x=2000, n_hat=20, budget=100.0, t_fixed=0.0, k=5, alpha_max=0.95, n_max=1024, fixed_alpha=0.5)
    assert p.alpha == 0.5 and p.feasible


plans = st.fixed_dictionaries(
    {
        "n_x": st.integers(1, 8192),
        "n_hat": st.integers(1, 2000),
        "t_fixed": st.floats(0.0, 2.0),
        "k": st.floats(1.0, 8.0),
        "alpha_max": st.floats(0.0, 0.99),
        "n_max": st.integers(1, 4096),
        "min_kept": st.integers(0, 64),
    }
)


@given(args=plans, b1=st.floats(0.0, 60.0), b2=st.floats(0.0, 60.0))
def test_alpha_is_non_increasing_in_budget(args, b1, b2):
    low, high = sorted((b1, b2))
    assert plan(T, budget=high, **args).alpha <= plan(T, budget=low, **args).alpha + 1e-12


@given(args=plans, budget=st.floats(0.0, 60.0))
def test_alpha_within_bounds_and_wcet_within_budget_when_feasible(args, budget):
    p = plan(T, budget=budget, **args)
    assert 0.0 <= p.alpha <= min(args["alpha_max"], 1.0) + 1e-12
    assert p.alpha <= p.alpha_ceiling
    if p.feasible:
        assert p.wcet <= budget * (1 + 1e-9) + 1e-12
    # The plan's WCET is the time model's worst case at the chosen alpha.
    assert p.wcet == pytest.approx(args["t_fixed"] + T.decode(args["n_x"], p.alpha, p.worst_case_tokens))


@given(args=plans, share=st.floats(0.01, 1.0))
def test_alpha_inverts_the_time_model(args, share):
    """Pick the budget that some alpha uses up exactly: the planner must return that alpha."""
    args = {**args, "n_hat": max(args["n_hat"], 3), "n_max": max(args["n_max"], 3)}
    ceiling = alpha_ceiling(args["n_x"], args["alpha_max"], args["min_kept"])
    assume(ceiling > 0.01)
    target = share * ceiling
    n_w = worst_case_tokens(args["n_hat"], args["k"], args["n_max"])
    budget = args["t_fixed"] + T.decode(args["n_x"], target, n_w)
    p = plan(T, budget=budget, **args)
    assert p.feasible
    assert p.alpha == pytest.approx(target, abs=1e-6)


def test_the_eviction_phase_is_in_the_wcet_when_alpha_is_above_zero():
    t = TimingModel(a=1e-8, b=2e-5, c=0.005, p=2e-6, q=0.01, e0=0.004, e1=1e-5, v0=0.001, v1=2e-6)
    n_x, n_w = 2000, 41
    tight = plan(t, n_x=n_x, n_hat=n_w, budget=0.6, t_fixed=0.1, k=1.0, alpha_max=0.95, n_max=512)
    assert 0.0 < tight.alpha < 0.95
    assert tight.wcet == pytest.approx(0.1 + t.evict(n_x, tight.alpha) + t.decode(n_x, tight.alpha, n_w))
    assert tight.wcet == pytest.approx(0.6)  # alpha* was solved with the eviction counted
    loose = plan(t, n_x=n_x, n_hat=n_w, budget=60.0, t_fixed=0.1, k=1.0, alpha_max=0.95, n_max=512)
    assert loose.alpha == 0.0 and loose.wcet == pytest.approx(0.1 + 0.001 + 2e-6 * n_x + t.decode(n_x, 0.0, n_w))

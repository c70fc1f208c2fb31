"""The in-goal re-plan's decisions (core.replan), shared by the engine and the traces replay."""
from timebill_ros.core.replan import live_timing, paced_by_prefill, replan_floor, replan_keep, tokens_left
from timebill_ros.core.timing import TimingModel

TIMING = TimingModel(a=1e-9, b=1e-5, c=1e-3, p=40e-6, q=3e-3)


def test_the_worst_case_left_is_the_plans_then_as_many_again_as_decoded():
    assert tokens_left(10, 3, 384) == 7  # within N_W: the rest of it
    assert tokens_left(10, 9, 384) == 9 and tokens_left(10, 30, 384) == 30  # past it: as long again
    assert tokens_left(10, 300, 384) == 84 and tokens_left(10, 384, 384) == 0  # never past max_new_tokens


def test_a_goal_on_time_keeps_its_cache_and_a_late_one_evicts_only_as_much_as_needed():
    args = dict(kept=1000, floor=50, decoded=20)
    assert replan_keep(TIMING, **args, remaining=10, left=1.0, live_step_s=0.043) is None  # 0.43 s fit
    some = replan_keep(TIMING, **args, remaining=20, left=0.6, live_step_s=0.043)
    most = replan_keep(TIMING, **args, remaining=20, left=0.2, live_step_s=0.043)
    assert 50 <= most < some < 1000  # less time left: more evicted, never below the floor
    # What is kept fits: 20 steps over the kept and decoded entries at the live pace, in the time left.
    assert live_timing(TIMING, 0.043, 1020).decode(some + 20, 0.0, 21) <= 0.6
    assert replan_keep(TIMING, kept=50, floor=50, decoded=20, remaining=20, left=0.2, live_step_s=0.043) == 50
    assert replan_floor(1000, 0.95, 16) == 50 and replan_floor(100, 0.95, 16) == 16


def test_only_a_change_of_load_in_prefill_slows_the_planned_decode():
    assert paced_by_prefill(TIMING, 0.1, 0.15) is TIMING  # noise
    slowed = paced_by_prefill(TIMING, 0.1, 0.3)  # a load began: decode planned 3x slower
    assert abs(slowed.p - 3.0 * TIMING.p) < 1e-12 and abs(slowed.q - 3.0 * TIMING.q) < 1e-12

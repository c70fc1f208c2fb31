"""The online timing model: its estimator's safety rules, and the engine feeding and using it."""
import threading

import pytest

from timebill_ros.core.calibration import Calibration, CalibrationKey
from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.jobs import CancelToken, Request, Status
from timebill_ros.core.online import Margins, OnlineTiming, PhaseWork, online_timing_from
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel

BASE = TimingModel(a=1e-7, b=1e-3, c=1e-2, p=1e-5, q=1e-2)


def goal(online: OnlineTiming, prefill_ratio: float, decode_ratio: float | None = None) -> None:
    """Feed one goal whose phases ran RATIO times the fit (1 s of predicted work each)."""
    decode_ratio = prefill_ratio if decode_ratio is None else decode_ratio
    online.observe(PhaseWork(1.0, prefill_ratio), PhaseWork(1.0, decode_ratio))


def test_one_outlier_goal_does_not_move_the_estimate():
    online = OnlineTiming(BASE, Margins(), window=5)
    for ratio in (1.0, 1.0, 9.0, 1.0):
        goal(online, ratio)
    assert online.factor("prefill") == pytest.approx(1.0)


def test_a_load_shows_after_two_goals_and_leaves_after_the_window():
    online = OnlineTiming(BASE, Margins(), window=5)
    for _ in range(5):
        goal(online, 1.0)
    goal(online, 2.0)
    assert online.factor("decode") == pytest.approx(1.0)
    goal(online, 2.1)
    assert online.factor("decode") == pytest.approx(2.0)  # second-largest of the window
    for n in range(1, 5):  # the load stops: quiet goals push the slow ones out
        goal(online, 1.0)
        assert online.factor("decode") == pytest.approx(2.0 if n < 4 else 1.0)


def test_never_faster_than_the_prior_until_the_window_is_full():
    online = OnlineTiming(BASE, Margins(), window=4)
    for n in range(3):
        goal(online, 0.5)
        assert online.factor("prefill") == 1.0, n
    goal(online, 0.5)
    assert online.factor("prefill") == pytest.approx(0.5)


def test_phases_too_short_to_time_are_not_counted():
    online = OnlineTiming(BASE, Margins(), window=3, min_seconds=0.05)
    online.observe(PhaseWork(0.01, 0.5), PhaseWork(0.2, 0.4))
    assert online.observations("prefill") == 0 and online.observations("decode") == 1


def test_the_snapshot_at_factor_one_is_the_calibrations_planning_model():
    cal = Calibration(CalibrationKey("m", "float32", 2, "x"), BASE, [], [], 5.0, 2.0, prefill_margin=0.1,
                      decode_margin=0.05, prefill_margin_s=0.02, decode_margin_s=0.001, prefill_contention=1.3)
    online = online_timing_from(cal, window=3, enabled=True, estimator="window")
    assert online.snapshot().timing.to_dict() == pytest.approx(cal.planning_timing().to_dict())
    for _ in range(2):
        goal(online, 2.0, 3.0)
    snap = online.snapshot()
    assert (snap.prefill_factor, snap.decode_factor) == (2.0, 3.0)
    planned = cal.planning_timing()
    assert snap.timing.prefill(1000) == pytest.approx(2.0 * planned.prefill(1000))
    assert snap.timing.decode_step(500) == pytest.approx(3.0 * planned.decode_step(500))


def test_disabled_plans_with_the_prior_but_still_reports_and_warns():
    online = OnlineTiming(BASE, Margins(), window=3, enabled=False, band=(0.1, 0.1))
    for _ in range(2):
        goal(online, 1.5, 1.05)
    snap = online.snapshot()
    assert (snap.prefill_factor, snap.decode_factor) == (1.0, 1.0) and snap.timing == BASE
    assert online.factor("prefill") == pytest.approx(1.5)
    [warning] = online.out_of_band()  # decode at 1.05 is inside its +-10 % band
    assert warning.startswith("prefill runs 1.50x") and "online_timing is off" in warning


def test_a_window_below_two_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        OnlineTiming(BASE, Margins(), window=1)


def test_concurrent_observers_and_readers_lose_no_goal():
    online = OnlineTiming(BASE, Margins(), window=10_000)

    def feed():
        for _ in range(500):
            goal(online, 1.2)
            online.snapshot()

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert online.observations("prefill") == online.observations("decode") == 2000


# ------------------------------------------------------------------ engine
@pytest.fixture()
def engine(tiny):
    e = Engine(tiny, BASE, FixedLengthPredictor(16), EngineConfig(snapkv_window=16, prefill_chunk=128))
    yield e
    e.close()


def ids(n):
    return [(7 * i) % 250 for i in range(n)]


def test_a_served_goal_feeds_the_time_of_exactly_its_work(engine):
    # A base model that predicts 1 ns per piece of work: the ratio is the measured time / 1 ns.
    tiny_base = TimingModel(a=0.0, b=0.0, c=1e-9, p=0.0, q=1e-9)
    engine.online = OnlineTiming(tiny_base, Margins(), window=3, min_seconds=0.0)
    result = engine.run(Request(ids(300), budget=30.0, max_new_tokens=6, ignore_eos=True), CancelToken())
    assert result.status is Status.SUCCEEDED and (result.prefill_factor, result.decode_factor) == (1.0, 1.0)
    assert engine.online.observations("prefill") == engine.online.observations("decode") == 1
    # 300 tokens in chunks of 128: three chunks, each predicted c = 1 ns (only the first has c;
    # the telescoped differences of a constant are 0), 5 decode steps of 1 ns each.
    ratio_pre = engine.online._ratios["prefill"][0]
    ratio_dec = engine.online._ratios["decode"][0]
    assert 0.5 * result.timings.prefill < ratio_pre * 1e-9 <= result.timings.prefill
    assert 0.0 < ratio_dec * 5e-9 <= result.timings.decode
    # The next goals are planned with (and report) the factors the earlier ones produced.
    second = engine.run(Request(ids(300), budget=30.0, max_new_tokens=2, ignore_eos=True), CancelToken())
    assert second.prefill_factor == 1.0  # one goal is not evidence enough (second-largest of one)
    third = engine.run(Request(ids(300), budget=30.0, max_new_tokens=2, ignore_eos=True), CancelToken())
    assert third.prefill_factor > 1e6  # two goals: the machine is far slower than 1 ns


def test_a_killed_goal_feeds_the_steps_that_completed(engine):
    engine.online = OnlineTiming(TimingModel(0.0, 0.0, 1e-9, 0.0, 1e-9), Margins(), window=3, min_seconds=0.0)
    cancel = CancelToken()
    steps = []

    def kill_after_three_steps(event):
        steps.append(event)
        if event.phase == "decode" and len(event.tokens) >= 3:
            cancel.cancel(Status.KILLED_AT_DEADLINE, "deadline")

    engine.config.event_period = 0.0
    result = engine.run(Request(ids(200), budget=30.0, max_new_tokens=50, ignore_eos=True), cancel,
                        kill_after_three_steps)
    assert result.status is Status.KILLED_AT_DEADLINE
    assert engine.online.observations("decode") == 1
    # Two steps ran (tokens 2 and 3; the first token comes from prefill): 2 ns predicted.
    measured_steps = engine.online._ratios["decode"][0] * 2e-9
    assert 0.0 < measured_steps <= result.timings.decode

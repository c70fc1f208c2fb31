"""The engine end to end on a real (tiny) model: phases, plan, cancel, kill, infeasible."""
import threading
import time

import pytest

from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.jobs import CancelToken, OnInfeasible, Request, Status
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel

# Coefficients of the right shape; exact values do not matter for these tests.
TIMING = TimingModel(a=1e-9, b=1e-5, c=1e-3, p=1e-7, q=1e-3)


@pytest.fixture(scope="module")
def engine(tiny):
    e = Engine(tiny, TIMING, FixedLengthPredictor(16),
               EngineConfig(snapkv_window=16, prefill_chunk=128, event_period=0.0))
    yield e
    e.close()


def ids(n):
    return [(7 * i) % 250 for i in range(n)]


def test_phases_plan_and_result(engine):
    events = []
    result = engine.run(Request(ids(400), budget=30.0, max_new_tokens=20), CancelToken(), events.append)
    assert result.status is Status.SUCCEEDED and result.reason == ""
    phases = [e.phase for e in events]
    assert phases[0] == "prefill" and "planned" in phases and "evicted" in phases
    assert phases.index("planned") < phases.index("evicted") < phases.index("decode")
    planned = next(e for e in events if e.phase == "planned")
    assert planned.predicted_tokens == 16 and planned.worst_case_tokens == 20 and planned.wcet > 0
    assert result.plan.alpha == 0.0  # a generous budget needs no eviction
    assert result.prompt_tokens == result.kept_prompt_tokens == 400
    assert 1 <= len(result.token_ids) <= 20 and result.deadline_margin < 0
    t = result.timings
    assert t.prefill > 0 and t.decode > 0 and t.total >= t.prefill + t.decode


def test_tight_budget_evicts_and_shrinks_the_cache(engine):
    # A budget below the alpha = 0 WCET forces alpha > 0 (best effort keeps running).
    n = 1000
    wcet0 = TIMING.prefill(n) + TIMING.decode(n, 0.0, 80)
    req = Request(ids(n), budget=wcet0 * 0.999, max_new_tokens=80)
    result = engine.run(req, CancelToken())
    assert result.plan.alpha > 0.0
    assert result.kept_prompt_tokens < n


def test_fixed_alpha_baseline(engine):
    result = engine.run(Request(ids(400), budget=30.0, max_new_tokens=5, fixed_alpha=0.5), CancelToken())
    assert result.plan.alpha == 0.5 and result.kept_prompt_tokens == 200


def test_cancel_during_decode(engine):
    token = CancelToken()

    def on_event(event):
        if event.phase == "decode" and len(event.tokens) >= 3:
            token.cancel(Status.CANCELED, "canceled by the test")

    result = engine.run(Request(ids(100), budget=30.0, max_new_tokens=200), token, on_event)
    assert result.status is Status.CANCELED and result.reason == "canceled by the test"
    assert result.text == "" and result.token_ids == []


def test_cancel_before_prefill_runs_nothing(engine):
    token = CancelToken()
    token.cancel(Status.KILLED_AT_DEADLINE, "deadline")
    result = engine.run(Request(ids(100), budget=30.0), token)
    assert result.status is Status.KILLED_AT_DEADLINE and result.timings.decode == 0.0


def test_kill_from_another_thread_lands_within_a_few_steps(engine):
    token = CancelToken()

    def on_event(event):
        if event.phase == "decode" and len(event.tokens) == 10:
            threading.Thread(target=token.cancel, args=(Status.KILLED_AT_DEADLINE, "deadline")).start()

    result = engine.run(Request(ids(50), budget=30.0, max_new_tokens=500), token, on_event)
    assert result.status is Status.KILLED_AT_DEADLINE and result.text == ""


def test_infeasible_reject_runs_no_decode(engine):
    req = Request(ids(1500), budget=1e-4, max_new_tokens=100, on_infeasible=OnInfeasible.REJECT)
    result = engine.run(req, CancelToken())
    assert result.status is Status.INFEASIBLE
    assert "cannot be guaranteed" in result.reason and not result.plan.feasible
    assert result.token_ids == []


def test_completed_late_when_nothing_kills_it(engine):
    req = Request(ids(50), budget=1e-6, max_new_tokens=3, accepted_at=time.monotonic())
    result = engine.run(req, CancelToken())
    assert result.status is Status.COMPLETED_LATE and result.deadline_margin > 0
    assert len(result.token_ids) >= 1  # a late answer keeps its text


def test_int8_quantized_model_runs_through_the_same_engine(tiny_model_dir):
    from timebill_ros.core.model import load_model

    loaded = load_model(str(tiny_model_dir), threads=1, quantization="int8")
    assert loaded.dtype == "float32+int8"
    e = Engine(loaded, TIMING, FixedLengthPredictor(4))
    result = e.run(Request(ids(60), budget=30.0, max_new_tokens=4, fixed_alpha=0.0), CancelToken())
    e.close()
    assert result.status is Status.SUCCEEDED and len(result.token_ids) == 4


def test_kill_policy_discards_a_late_answer():
    from timebill_ros.core.jobs import OverrunPolicy, Result
    from timebill_ros.core.policy import apply_overrun_policy

    late = Result(Status.COMPLETED_LATE, reason="finished after the deadline", text="hi", token_ids=[1, 2])
    killed = apply_overrun_policy(late, OverrunPolicy.KILL)
    assert killed.status is Status.KILLED_AT_DEADLINE and killed.text == "" and killed.token_ids == []
    assert apply_overrun_policy(late, OverrunPolicy.SKIP_NEXT) is late
    ok = Result(Status.SUCCEEDED, text="hi")
    assert apply_overrun_policy(ok, OverrunPolicy.KILL) is ok

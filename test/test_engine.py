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


def test_a_chunk_shorter_than_the_snapkv_window_is_refused():
    from timebill_ros.core.engine import chunk_bounds

    with pytest.raises(ValueError, match="prefill_chunk"):
        EngineConfig(snapkv_window=32, prefill_chunk=16).validate()
    # Even so, the last piece is never shorter than the window (it was merged only once).
    assert chunk_bounds(100, 16, 32)[-1][1] - chunk_bounds(100, 16, 32)[-1][0] >= 32


def test_a_model_without_scorable_attention_on_every_layer_is_refused(tiny_model_dir):
    from timebill_ros.core.eviction import UnsupportedModelError
    from timebill_ros.core.model import load_model

    loaded = load_model(str(tiny_model_dir), threads=1)
    del loaded.model.model.layers[1].self_attn.q_proj  # as a fused-QKV attention would look
    with pytest.raises(UnsupportedModelError, match=loaded.name):
        Engine(loaded, TIMING, FixedLengthPredictor(4))


def test_eviction_without_scores_fails_loudly(engine):
    from timebill_ros.core.eviction import EvictionError, evict

    cache, _ = engine.prefill(ids(200))
    with pytest.raises(EvictionError, match="no SnapKV scores"):
        evict(cache, {}, 0.5, 16)


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


class CountingPredictor:
    """A length predictor that records its calls and can act while prefill runs."""

    def __init__(self, tokens=16, action=None):
        self.tokens, self.action, self.calls = tokens, action, 0

    def predict(self, prompt_ids):
        self.calls += 1
        if self.action:
            self.action()
        return self.tokens


def engine_with(model, predictor, **config):
    return Engine(model, TIMING, predictor, EngineConfig(**{"snapkv_window": 16, "prefill_chunk": 128,
                                                            "event_period": 0.0, **config}))


def test_cancel_before_prefill_runs_nothing(tiny):
    predictor = CountingPredictor()
    e = engine_with(tiny, predictor)
    token, events = CancelToken(), []
    token.cancel(Status.KILLED_AT_DEADLINE, "deadline")
    result = e.run(Request(ids(100), budget=30.0), token, events.append)
    e.close()
    assert result.status is Status.KILLED_AT_DEADLINE
    assert events == [] and predictor.calls == 0 and result.timings.prefill == 0.0 and result.plan is None


def test_kill_from_another_thread_lands_at_the_next_decode_step(engine, monkeypatch):
    token, events, steps, steps_at_kill = CancelToken(), [], [], []
    step = engine.decode_step
    monkeypatch.setattr(engine, "decode_step", lambda *args: steps.append(1) or step(*args))

    def on_event(event):
        events.append(event)
        if event.phase == "decode" and len(event.tokens) == 10:
            killer = threading.Thread(target=token.cancel, args=(Status.KILLED_AT_DEADLINE, "deadline"))
            killer.start()
            killer.join()
            steps_at_kill.append(len(steps))

    result = engine.run(Request(ids(50), budget=30.0, max_new_tokens=500, ignore_eos=True), token, on_event)
    assert result.status is Status.KILLED_AT_DEADLINE and result.text == ""
    # A kill that comes while feedback is sent lands before the next step, not after it.
    assert max(len(e.tokens) for e in events) == 10 and steps_at_kill == [len(steps)]


def test_an_armed_deadline_stops_decode_at_the_next_step_without_any_timer(engine):
    """Nobody calls cancel: the token, armed with a deadline that passes at token 10, stops
    the job itself at the engine's next check, with the armed reason."""
    token, events = CancelToken(), []

    def on_event(event):
        events.append(event)
        if event.phase == "decode" and len(event.tokens) == 10:
            token.arm_deadline(time.monotonic(), "killed at the deadline")

    result = engine.run(Request(ids(50), budget=30.0, max_new_tokens=500, ignore_eos=True), token, on_event)
    assert (result.status, result.reason) == (Status.KILLED_AT_DEADLINE, "killed at the deadline")
    assert max(len(e.tokens) for e in events) == 10 and token.is_set


def test_a_deadline_armed_in_the_future_lets_the_job_finish(engine):
    token = CancelToken()
    token.arm_deadline(time.monotonic() + 3600.0, "never")
    result = engine.run(Request(ids(50), budget=30.0, max_new_tokens=8), token)
    assert result.status is Status.SUCCEEDED and not token.is_set
    assert token.cancel(Status.CANCELED, "first") and not token.cancel(Status.KILLED_AT_DEADLINE, "second")
    assert (token.status, token.reason) == (Status.CANCELED, "first")


def run_then_release(e: Engine, hooks: list, request: Request, token: CancelToken):
    """E's result for REQUEST; then the HOOKS are removed and E closed, whatever happened."""
    try:
        return e.run(request, token)
    finally:
        for h in hooks:
            h.remove()
        e.close()


@pytest.mark.parametrize("kill", ["cancel", "armed deadline"])
def test_kill_during_prefill_lands_before_the_next_block_of_the_layer(tiny, kill):
    """One chunk holds the whole prompt; a kill set inside layer 0's attention (by a cancel,
    or by a deadline armed to pass there) stops it before layer 0's MLP runs."""
    token = CancelToken()
    stop = {"cancel": lambda: token.cancel(Status.KILLED_AT_DEADLINE, "deadline"),
            "armed deadline": lambda: token.arm_deadline(time.monotonic(), "deadline")}[kill]
    e = engine_with(tiny, CountingPredictor(), prefill_chunk=4096)
    layers = tiny.model.model.layers
    ran = []
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: ran.append(name))
             for i, layer in enumerate(layers) for name, m in ((f"attn{i}", layer.self_attn), (f"mlp{i}", layer.mlp))]
    hooks.append(layers[0].self_attn.register_forward_hook(lambda *a: stop() and None))
    result = run_then_release(e, hooks, Request(ids(300), budget=30.0), token)
    assert result.status is Status.KILLED_AT_DEADLINE and ran == ["attn0"]


def test_kill_inside_a_later_chunks_attention_lands_between_its_two_halves(tiny):
    """A kill set in layer 0's q projection of the second chunk (inside the attention block,
    after its pre-hook check) stops prefill before that block's output projection runs."""
    token = CancelToken()
    e = engine_with(tiny, CountingPredictor(), prefill_chunk=64)
    attn = tiny.model.model.layers[0].self_attn
    q_calls, o_calls = [], []

    def on_q(*args):
        q_calls.append(1)
        if len(q_calls) == 2:  # the second chunk: the first with cached positions before it
            token.cancel(Status.KILLED_AT_DEADLINE, "deadline")

    hooks = [attn.q_proj.register_forward_hook(on_q),
             attn.o_proj.register_forward_hook(lambda *a: o_calls.append(1))]
    result = run_then_release(e, hooks, Request(ids(300), budget=30.0), token)
    assert result.status is Status.KILLED_AT_DEADLINE and len(q_calls) == 2 and len(o_calls) == 1


def test_kill_during_prefill_does_not_wait_for_the_predictor(tiny):
    """The predictor kills the job and then blocks: the job must end while it still blocks."""
    token, release, finished = CancelToken(), threading.Event(), threading.Event()

    def kill_then_block():
        token.cancel(Status.KILLED_AT_DEADLINE, "deadline")
        release.wait(30)
        finished.set()

    e = engine_with(tiny, CountingPredictor(action=kill_then_block), prefill_chunk=32)
    result = e.run(Request(ids(600), budget=30.0), token)
    predictor_was_still_running = not finished.is_set()
    release.set()
    e.close()
    assert result.status is Status.KILLED_AT_DEADLINE and predictor_was_still_running


def test_a_failing_predictor_falls_back_and_never_fails_or_masks_the_goal(tiny, caplog):
    def boom():
        raise RuntimeError("predictor exploded")

    e = engine_with(tiny, CountingPredictor(action=boom), fallback_prediction_tokens=7)
    with caplog.at_level("WARNING"):
        result = e.run(Request(ids(200), budget=30.0, max_new_tokens=50), CancelToken())
    assert result.status is Status.SUCCEEDED and result.plan.predicted_tokens == 7
    assert "predictor exploded" in caplog.text

    token = CancelToken()

    def kill_then_fail():
        token.cancel(Status.KILLED_AT_DEADLINE, "deadline")
        raise RuntimeError("predictor exploded")

    e.predictor = CountingPredictor(action=kill_then_fail)
    result = e.run(Request(ids(200), budget=30.0, max_new_tokens=50), token)
    e.close()
    assert result.status is Status.KILLED_AT_DEADLINE


def test_first_plan_uses_the_predicted_prefill_and_the_replan_the_real_one(engine):
    n = 400
    result = engine.run(Request(ids(n), budget=30.0, max_new_tokens=20, ignore_eos=True), CancelToken())
    first, replan = result.first_plan, result.plan
    assert len(result.token_ids) == 20  # ignore_eos: forced to max_new_tokens (here N_W)
    n_w = first.worst_case_tokens
    assert first.wcet == pytest.approx(result.timings.queue + TIMING.prefill(n) + TIMING.decode(n, 0.0, n_w),
                                       abs=1e-3)
    # The re-plan's fixed part is the time really spent, not the prediction.
    assert replan.wcet - TIMING.decode(n, 0.0, n_w) >= result.timings.prefill


def test_infeasible_reject_runs_nothing_when_prefill_alone_misses(tiny):
    predictor = CountingPredictor()
    e = engine_with(tiny, predictor)
    events = []
    req = Request(ids(1500), budget=TIMING.prefill(1500) * 0.5, max_new_tokens=100,
                  on_infeasible=OnInfeasible.REJECT)
    result = e.run(req, CancelToken(), events.append)
    e.close()
    assert result.status is Status.INFEASIBLE and "prefill alone" in result.reason
    assert events == [] and predictor.calls == 0 and result.timings.prefill == 0.0


def test_infeasible_reject_stops_before_eviction_and_decode(engine):
    events = []
    n = 1500
    budget = TIMING.prefill(n) + 0.01  # prefill fits, 80 decode steps at 1 ms each do not
    req = Request(ids(n), budget=budget, max_new_tokens=100, on_infeasible=OnInfeasible.REJECT)
    result = engine.run(req, CancelToken(), events.append)
    assert result.status is Status.INFEASIBLE
    assert "cannot be guaranteed" in result.reason and not result.first_plan.feasible
    assert f"the {result.first_plan.worst_case_tokens} tokens planned (N_W = k x N_hat" in result.reason
    assert "evicted" not in [e.phase for e in events] and result.timings.decode == 0.0
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


# ------------------------------------------------------------- output control
def test_temperature_zero_is_greedy_and_a_seed_repeats_its_draw(engine):
    from timebill_ros.core.jobs import Sampling

    def text(sampling):
        request = Request(ids(120), budget=30.0, max_new_tokens=24, ignore_eos=True, sampling=sampling)
        return engine.run(request, CancelToken()).token_ids

    greedy = text(Sampling())
    assert text(Sampling(temperature=0.0, top_p=0.5, seed=3)) == greedy  # temperature 0 ignores the rest
    hot = Sampling(temperature=5.0, top_p=1.0, seed=11)
    assert text(hot) == text(hot)  # the same seed, the same draw
    draws = {tuple(text(Sampling(temperature=5.0, seed=s))) for s in range(4)}
    assert len(draws) > 1 and tuple(greedy) not in draws  # a hot random model does not follow argmax


def test_top_p_keeps_only_the_head_of_the_distribution():
    import torch

    from timebill_ros.core.jobs import Sampling
    from timebill_ros.core.sampling import TokenChooser

    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    chooser = TokenChooser(Sampling(temperature=1.0, top_p=0.8, seed=0))
    assert {chooser(logits) for _ in range(300)} == {0, 1}  # 0.6 + 0.3 covers 0.8; the tail is cut
    assert {TokenChooser(Sampling(1.0, 0.5, 0))(logits) for _ in range(50)} == {0}


def test_a_stop_string_ends_the_response_like_eos(engine):
    from timebill_ros.core.sampling import StopStrings

    full = engine.run(Request(ids(120), budget=30.0, max_new_tokens=30, ignore_eos=False), CancelToken())
    tokenizer = engine.loaded.tokenizer
    # A stop string taken from the middle of the greedy answer.
    pieces = [tokenizer.decode(full.token_ids[:i], skip_special_tokens=True) for i in range(1, len(full.token_ids))]
    cut = next(i for i, p in enumerate(pieces) if len(p.strip()) >= 4 and i >= 3)
    stop = tokenizer.decode(full.token_ids[cut:cut + 2], skip_special_tokens=True)
    assert stop.strip(), "the greedy answer has no text to stop on"
    stopped = engine.run(Request(ids(120), budget=30.0, max_new_tokens=30, stop=(stop,)), CancelToken())
    assert stopped.status is Status.SUCCEEDED
    assert len(stopped.token_ids) < len(full.token_ids)  # decoding stopped early, not just the text cut
    assert stop not in stopped.text and full.text.startswith(stopped.text)
    assert stopped.text == StopStrings(tokenizer, (stop,)).cut(full.text)


def test_the_callers_length_estimate_replaces_the_predictor(engine):
    events = []
    result = engine.run(Request(ids(200), budget=30.0, max_new_tokens=20, expected_tokens=3), CancelToken(),
                        events.append)
    planned = next(e for e in events if e.phase == "planned")
    assert planned.predicted_tokens == 3 and result.plan.predicted_tokens == 3  # the fixture's predictor says 16


def test_chunked_prefill_takes_the_mask_free_split_and_matches_one_forward(tiny, monkeypatch):
    """Later chunks attend to the cache and to themselves by two mask-free kernels merged by
    log-sum-exp (core/attention.py); the result equals one forward, and a plain forward
    outside the engine's prefill is untouched."""
    import torch

    from timebill_ros.core import attention
    from timebill_ros.core.engine import chunk_bounds

    assert tiny.model.config._attn_implementation == attention.NAME
    e = engine_with(tiny, FixedLengthPredictor(16), prefill_chunk=64)
    prompt = ids(300)
    calls = []
    split = attention._split
    monkeypatch.setattr(attention, "_split", lambda *args: calls.append(1) or split(*args))
    _, logits = e.prefill(prompt)
    layers = tiny.model.config.num_hidden_layers
    chunks = len(chunk_bounds(300, 64, 16))
    assert len(calls) == (chunks - 1) * layers
    with torch.inference_mode():
        whole = tiny.model(input_ids=torch.tensor([prompt]), logits_to_keep=1).logits[:, -1]
        cache = tiny.model(input_ids=torch.tensor([prompt[:200]]), use_cache=True).cache
        tiny.model(input_ids=torch.tensor([prompt[200:]]), cache=cache, use_cache=True)
    assert torch.allclose(logits, whole, atol=1e-4), (logits - whole).abs().max()
    assert len(calls) == (chunks - 1) * layers  # the plain forwards fell back
    e.close()


class SlowPrefillEngine(Engine):
    """The engine on a machine that turns slow during prefill: SLOW seconds added to it."""

    slow = 0.0

    def prefill(self, ids, cancel=None, on_chunk=None):
        time.sleep(self.slow)
        return super().prefill(ids, cancel, on_chunk)


def test_reject_is_honoured_at_the_replan_after_a_slow_prefill(tiny):
    # The first plan (predicted prefill: 1 ms) fits the budget; the prefill then takes 1.5 s
    # of a 1 s budget, so the re-plan cannot fit even at alpha_max: INFEASIBLE before any eviction.
    e = SlowPrefillEngine(tiny, TIMING, FixedLengthPredictor(4), EngineConfig(snapkv_window=16, event_period=0.0))
    e.slow = 1.5
    events = []
    req = Request(ids(100), budget=1.0, max_new_tokens=8, on_infeasible=OnInfeasible.REJECT)
    result = e.run(req, CancelToken(), events.append)
    e.close()
    assert result.first_plan.feasible and not result.plan.feasible
    assert result.status is Status.INFEASIBLE and result.reason.startswith("after prefill: needs ")
    assert "evicted" not in [ev.phase for ev in events] and result.token_ids == []


def test_a_kill_during_eviction_lands_between_layers(engine):
    from timebill_ros.core.engine import Stopped
    from timebill_ros.core.eviction import evict

    cache, _ = engine.prefill(ids(200))
    token, layers_done = CancelToken(), []

    def check():  # the engine's cancel check; the kill comes after the first layer
        if layers_done:
            token.cancel(Status.KILLED_AT_DEADLINE, "killed")
        layers_done.append(1)
        if token.is_set:
            raise Stopped(token.status, token.reason)

    with pytest.raises(Stopped):
        evict(cache, engine.scorer.scores, 0.5, 16, check)
    assert len(layers_done) == 2 and cache.layers[0].keys.shape[2] < 200 == cache.layers[1].keys.shape[2]


def test_the_cache_moves_to_the_decode_steps_dtype_before_the_first_step(tiny_model_dir):
    import torch

    from timebill_ros.core.model import load_model

    loaded = load_model(str(tiny_model_dir), threads=1, quantization="int8-decode")
    e = Engine(loaded, TIMING, FixedLengthPredictor(4), EngineConfig(snapkv_window=16))
    cache, logits = e.prefill(ids(100))
    before = cache.layers[0].keys.clone()
    checks = []
    e.prepare_for_decode(cache, lambda: checks.append(1))
    layer = cache.layers[0]
    assert len(checks) == len(cache.layers) and layer.keys.dtype == loaded.lean_step.kv_dtype
    torch.testing.assert_close(layer.keys.float(), before, atol=1e-2, rtol=1e-2)
    buffer = layer._key_buffer.data_ptr()
    e.decode_step(cache, int(logits.argmax(-1)), 100)  # writes one entry, converts nothing
    assert layer._key_buffer.data_ptr() == buffer and layer.keys.shape[2] == 101
    e.close()


class SlowingDecodeEngine(Engine):
    """The machine turns slow after the first decode steps, in proportion to the cache a step
    reads (as a memory-bound step does when another process takes the bandwidth)."""

    slow_after, per_entry = 5, 0.0

    def decode_step(self, cache, token, position):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps > self.slow_after:
            time.sleep(self.per_entry * cache.layers[0].keys.shape[2])
        return super().decode_step(cache, token, position)


def test_the_in_goal_replan_ends_a_slowed_goal_complete(tiny):
    def run(replan_steps):
        e = SlowingDecodeEngine(tiny, TIMING, FixedLengthPredictor(40),
                                EngineConfig(snapkv_window=16, event_period=0.0, replan_steps=replan_steps))
        e.per_entry = 40e-6  # 40 ms a step at 1,000 cached entries
        events = []
        req = Request(ids(1000), budget=1.0, max_new_tokens=40, ignore_eos=True, k=1.0)
        result = e.run(req, CancelToken(), events.append)
        e.close()
        return result, events

    planned_fast, _ = run(replan_steps=0)  # the paper: one plan
    assert planned_fast.plan.alpha == 0.0 and planned_fast.status is Status.COMPLETED_LATE
    result, events = run(replan_steps=8)
    assert result.status is Status.SUCCEEDED and len(result.token_ids) == 40
    assert result.replans >= 1 and result.kept_prompt_tokens < 1000
    replanned = [ev for ev in events if ev.phase == "replanned"]
    assert replanned and replanned[0].alpha > 0.0  # the feedback shows it


def test_an_answer_past_its_planned_length_is_replanned_and_ends_sooner(tiny):
    # Steps run at the planned pace (40 us a cached entry, as the timing says), so only the
    # length is wrong: N_W is 10 tokens, the answer 40. Once past N_W the worst case is as many
    # again as decoded, and when those steps at the live pace no longer fit the time left, the
    # goal evicts again. (Each re-plan fits its own guess exactly, so whether the goal then ends
    # by the deadline is the host's noise; that it ends much sooner is not.)
    timing = TimingModel(a=1e-9, b=1e-5, c=1e-3, p=40e-6, q=3e-3)

    def run(replan_steps):
        e = SlowingDecodeEngine(tiny, timing, FixedLengthPredictor(10),
                                EngineConfig(snapkv_window=16, event_period=0.0, replan_steps=replan_steps))
        e.slow_after, e.per_entry = 0, 40e-6
        events = []
        result = e.run(Request(ids(1000), budget=1.0, max_new_tokens=40, ignore_eos=True, k=1.0), CancelToken(),
                       events.append)
        e.close()
        return result, [ev for ev in events if ev.phase == "replanned"]

    paper, none = run(replan_steps=0)
    assert paper.plan.alpha == 0.0 and not none and paper.status is Status.COMPLETED_LATE
    result, replans = run(replan_steps=8)
    assert result.first_plan.alpha == 0.0 and result.first_plan.worst_case_tokens == 10
    assert len(result.token_ids) == 40 and result.replans == len(replans) >= 1 and result.kept_prompt_tokens < 1000
    # The first re-plan came from the length (past N_W, at the planned pace), and it grew N_W.
    assert len(replans[0].tokens) >= 9 and replans[0].worst_case_tokens > 10
    assert result.timings.decode < 0.85 * paper.timings.decode


def test_a_prefill_far_slower_than_planned_plans_the_decode_as_slow(tiny):
    # TIMING predicts ~12 ms for 1,000 prompt tokens; 0.3 s more is a load that began after the
    # first plan. Decode at the planned 1.1 ms a step fits the budget at alpha 0; at the
    # prefill's slow-down it does not, so the plan after prefill evicts.
    def run(replan_steps):
        e = SlowPrefillEngine(tiny, TIMING, FixedLengthPredictor(40),
                              EngineConfig(snapkv_window=16, event_period=0.0, replan_steps=replan_steps))
        e.slow = 0.3
        result = e.run(Request(ids(1000), budget=0.6, max_new_tokens=40, ignore_eos=True, k=1.0), CancelToken())
        e.close()
        return result

    paper = run(replan_steps=0)  # one plan at the planned pace: prefill's time counted, not its pace
    assert paper.first_plan.alpha == 0.0 == paper.plan.alpha
    paced = run(replan_steps=8)
    assert paced.first_plan.alpha == 0.0 < paced.plan.alpha and paced.kept_prompt_tokens < 1000

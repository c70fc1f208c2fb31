"""The hidden-state length probe: its fit, its files, and the engine reading it after prefill."""
import math

import numpy as np
import pytest
import torch

from timebill_ros.core import length_probe
from timebill_ros.core.engine import Engine, EngineConfig, PrefillMemo
from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.length_probe import HiddenStateProbe, LayerTap, tokens_from_log
from timebill_ros.core.predictor import PredictorSpec, load_predictor
from timebill_ros.core.timing import TimingModel
from timebill_ros.train import length_probe as train_probe

TIMING = TimingModel(a=1e-9, b=1e-5, c=1e-3, p=1e-7, q=1e-3)


def ids(n):
    return [(7 * i) % 250 for i in range(n)]


def test_tokens_from_log_clamps_to_one_and_the_cap():
    assert tokens_from_log(math.log1p(40), 384) == 40
    assert tokens_from_log(-5.0, 384) == 1
    assert tokens_from_log(50.0, 384) == 384  # no overflow from a wild output


def test_the_ridge_fit_recovers_a_log_linear_length_and_serves_it_from_its_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) * 3 + 1  # unscaled features: the fit standardizes, the weights do not
    lengths = np.round(np.expm1(1.5 + 0.4 * x[:, 0] - 0.2 * x[:, 3])).clip(1, 300).astype(int)
    weights, bias, _ = train_probe.fit(x, list(lengths))
    pred = train_probe.predict(x, weights, bias, 384)
    assert np.corrcoef(np.log1p(pred), np.log1p(lengths))[0, 1] > 0.97  # rounding to whole tokens blurs small ones
    spec = PredictorSpec(kind="probe", n_max=384, probe_layer=1, prior_tokens=33, target_model="t")
    length_probe.save(tmp_path, spec, weights.tolist(), bias)
    served = load_predictor(str(tmp_path), None, 64)
    assert isinstance(served, HiddenStateProbe) and served.reads_layer == 1
    assert served.predict([1, 2, 3]) == 33  # before prefill: the prior
    assert [served.predict_from_hidden(torch.tensor(row, dtype=torch.float32)) for row in x[:20]] == pred[:20]
    with pytest.raises(ValueError, match="8 weights"):
        served.predict_from_hidden(torch.zeros(5))


def test_a_tap_outside_the_model_is_refused(tiny):
    with pytest.raises(ValueError, match="decoder layer 9"):
        LayerTap(tiny.model, 9)


@pytest.fixture()
def probe_folder(tiny, tmp_path):
    """A probe on the tiny model's last layer whose weights sum the state (any fixed rule will do)."""
    hidden = tiny.model.config.hidden_size
    spec = PredictorSpec(kind="probe", n_max=64, probe_layer=1, prior_tokens=7, target_model=tiny.name)
    length_probe.save(tmp_path, spec, [0.01] * hidden, 2.0)
    return tmp_path


def test_the_engine_plans_first_with_the_prior_then_with_what_the_probe_reads_after_prefill(tiny, probe_folder):
    probe = load_predictor(str(probe_folder), None, 64)
    engine = Engine(tiny, TIMING, probe, EngineConfig(snapkv_window=16, prefill_chunk=128, event_period=0.0))
    try:
        events = []
        result = engine.run(Request(ids(300), budget=30.0, max_new_tokens=64), CancelToken(), events.append)
        first = next(e for e in events if e.phase == "planned")
        expected = probe.predict_from_hidden(engine.tap.last)
        assert first.predicted_tokens == 7
        assert result.plan.predicted_tokens == expected
        # Armed for prefill's last chunk only: the decode steps after it left the state as read.
        after_run = engine.tap.last
        engine.prefill(ids(300))
        assert torch.equal(engine.tap.last, after_run) and not engine.tap.armed
        # The state read is the prompt's last position after prefill: the same prompt again reads the same.
        again = engine.run(Request(ids(300), budget=30.0, max_new_tokens=64), CancelToken())
        assert again.plan.predicted_tokens == expected
        # A caller's own estimate is not replaced.
        told = engine.run(Request(ids(300), budget=30.0, max_new_tokens=64, expected_tokens=11), CancelToken())
        assert told.plan.predicted_tokens == 11
        # A prefill served from the evaluation's memo gives the probe the memo's state.
        engine.prefill_memo = PrefillMemo()
        engine.run(Request(ids(200), budget=30.0, max_new_tokens=8), CancelToken())
        fresh = engine.run(Request(ids(200), budget=30.0, max_new_tokens=8), CancelToken())
        assert engine.prefill_memo.hits == 1
        engine.prefill_memo = None
        plain = engine.run(Request(ids(200), budget=30.0, max_new_tokens=8), CancelToken())
        assert fresh.plan.predicted_tokens == plain.plan.predicted_tokens
    finally:
        engine.close()


def test_a_probe_that_fails_leaves_the_goal_planned_with_its_prior(tiny, probe_folder, monkeypatch):
    probe = load_predictor(str(probe_folder), None, 64)
    engine = Engine(tiny, TIMING, probe, EngineConfig(snapkv_window=16, prefill_chunk=128, event_period=0.0))
    try:
        monkeypatch.setattr(probe, "predict_from_hidden", lambda h: 1 / 0)
        result = engine.run(Request(ids(100), budget=30.0, max_new_tokens=16), CancelToken())
        assert result.status.name == "SUCCEEDED" and result.plan.predicted_tokens == 7
    finally:
        engine.close()


def test_train_picks_the_layer_with_the_lowest_validation_error_and_caches_the_states(tiny, tmp_path, monkeypatch):
    from timebill_ros.train.distilled import Sample

    monkeypatch.setattr(train_probe, "CANDIDATE_LAYERS", (0, 1))
    monkeypatch.setattr(train_probe, "cache_path", lambda target, split: tmp_path / "cache" / f"{split}.npz")
    engine = Engine(tiny, TIMING, load_predictor("", None, 16))
    rng = np.random.default_rng(1)
    samples = [Sample(f"train-x-0-{i}", ids(int(n)), int(n) // 4) for i, n in enumerate(rng.integers(20, 200, 30))]
    data = {"train": samples[:20], "validation": samples[20:]}
    record = train_probe.train(engine, data, tmp_path / "probe", tiny.name, 64)
    assert record["layer"] in (0, 1) and record["validation_MAE_by_layer"][str(record["layer"])] == min(
        record["validation_MAE_by_layer"].values())
    spec = PredictorSpec.load(tmp_path / "probe")
    assert spec.kind == "probe" and spec.pessimism_k >= 1.0 and spec.prior_tokens == round(
        np.mean([s.n_tokens for s in data["train"]]))
    calls = []
    monkeypatch.setattr(engine, "prefill", lambda *a, **k: calls.append(a))
    train_probe.hidden_states(engine, data["train"], tmp_path / "cache" / "train.npz", layers=(0, 1))
    assert calls == []  # read from the cache
    # A split grown by one prompt, and one prompt whose tokens changed: only those two are prefilled.
    changed = Sample(samples[0].id, ids(len(samples[0].prompt_ids) + 1), 5)
    grown = [changed, *data["train"][1:], samples[25]]
    prefilled = []

    def prefill(prompt, *args, **kwargs):
        prefilled.append(prompt)
        return Engine.prefill(engine, prompt, *args, **kwargs)

    monkeypatch.setattr(engine, "prefill", prefill)
    states = train_probe.hidden_states(engine, grown, tmp_path / "cache" / "train.npz", layers=(0, 1))
    assert prefilled == [changed.prompt_ids, samples[25].prompt_ids] and states[0].shape[0] == len(grown)
    engine.close()

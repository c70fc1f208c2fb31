"""Response-length predictors: label/N_hat arithmetic, input compression, and a small
end-to-end distil -> train -> evaluate run on the tiny model."""
import math

import pytest
import torch

from timebill_ros.core.engine import Engine
from timebill_ros.core.predictor import FixedLengthPredictor, ModelLengthPredictor, PredictorSpec, compress
from timebill_ros.core.timing import TimingModel
from timebill_ros.train import predictor as rlp


def test_bucket_labels_and_upper_edges():
    spec = PredictorSpec("buckets", n_max=8192, bucket_width=16)
    assert spec.n_classes == 512
    assert [spec.label(n) for n in (1, 16, 17, 32, 33, 8192, 9000)] == [0, 0, 1, 1, 2, 511, 511]
    one_hot = torch.zeros(512)
    one_hot[2] = 1
    assert spec.tokens(one_hot) == 48  # upper edge of (32, 48]
    last = torch.zeros(500)
    last[499] = 1
    assert PredictorSpec("buckets", n_max=8000, bucket_width=16).tokens(last) == 8000  # capped at N_max


def test_regression_and_classes():
    reg = PredictorSpec("regression", n_max=512, regression_scale=256.0)
    assert reg.label(128) == 0.5 and reg.tokens(torch.tensor([0.5])) == 128
    assert reg.tokens(torch.tensor([-3.0])) == 1 and reg.tokens(torch.tensor([9.0])) == 512
    cls = PredictorSpec("classes", n_max=512, class_values=[3.0, 40.0, 300.0], class_edges=[5.0, 100.0, 512.0])
    assert [cls.label(n) for n in (1, 5, 6, 100, 101, 512)] == [0, 0, 1, 1, 2, 2]
    assert cls.tokens(torch.tensor([0.1, 0.9, 0.0])) == 40


def test_input_budget_and_compression():
    spec = PredictorSpec("buckets", n_max=512, time_coefficients=[0.0, 1e-3, 0.01], max_input_tokens=2048)
    assert spec.input_budget(0.01 + 1e-3 * 500) == 500
    assert spec.input_budget(0.0) == spec.head_tokens + 16  # never below the instruction + a little
    assert spec.input_budget(100.0) == 2048
    ids = list(range(1000))
    kept = compress(ids, 100, 32)
    assert len(kept) == 100 and kept[:32] == ids[:32] and kept[32:] == ids[-68:]
    assert compress(ids[:50], 100, 32) == ids[:50]


def test_distil_train_evaluate_and_serve(tiny, tiny_model_dir, tmp_path):
    engine = Engine(tiny, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor())
    prompts = [(f"p{i}", "word " * (10 + 7 * i)) for i in range(12)]
    data = rlp.distill(engine, prompts, 24, tmp_path / "d.jsonl.gz")
    again = rlp.distill(engine, prompts, 24, tmp_path / "d.jsonl.gz")  # from the cache
    assert [s.n_tokens for s in data] == [s.n_tokens for s in again]
    assert all(1 <= s.n_tokens <= 24 for s in data)
    for name in ("buckets16", "regression", "proxy5"):
        spec = rlp.spec_for(name, data, 24, tiny.name)
        model = rlp.build_model(name, spec, tiny_model_dir, 1, len(tiny.tokenizer), tiny.tokenizer.pad_token_id)
        history = rlp.fit(model, spec, data[:8], data[8:], epochs=1, lr=1e-3, accumulate=2)
        assert math.isfinite(history["best_val_mae"])
        scores = rlp.evaluate(model.eval(), spec, data)
        assert scores["MAE"] >= 0 and scores["RMSE"] >= scores["MAE"] - 1e-9 and scores["n"] == 12
        spec.time_coefficients = rlp.profile_time(model, [16, 64, 128], len(tiny.tokenizer))
        folder = tmp_path / name
        model.save_pretrained(folder)
        spec.save(folder)
        served = ModelLengthPredictor(folder, prefill_time=lambda n: 1e-9)  # tiny budget: compress hard
        n_hat = served.predict(data[-1].prompt_ids)
        assert 1 <= n_hat <= 24
        assert served.last_input_tokens == min(len(data[-1].prompt_ids), spec.head_tokens + 16)
    engine.close()


def test_training_stops_after_three_epochs_without_a_better_validation_mae(monkeypatch, tiny, tiny_model_dir):
    maes = iter([10.0, 9.0, 11.0, 8.5, 12.0, 9.5, 8.7, 1.0])  # best 8.5 at epoch 4, then 3 worse: stop
    monkeypatch.setattr(rlp, "evaluate", lambda *a, **k: {"MAE": next(maes)})
    data = [rlp.Sample(f"s{i}", list(range(5, 15)), 3 + i) for i in range(4)]
    spec = rlp.spec_for("buckets16", data, 24, tiny.name)
    model = rlp.build_model("buckets16", spec, tiny_model_dir, 1, len(tiny.tokenizer), tiny.tokenizer.pad_token_id)
    history = rlp.fit(model, spec, data, data, epochs=8, lr=1e-3, accumulate=2)
    assert history["val_mae_by_epoch"] == [10.0, 9.0, 11.0, 8.5, 12.0, 9.5, 8.7] and history["best_val_mae"] == 8.5


def test_the_head_learns_at_its_own_rate_and_every_trainable_weight_is_in_one_group(tiny, tiny_model_dir):
    spec = rlp.spec_for("buckets16", [], 24, tiny.name)
    for rank in (0, 4):
        model = rlp.build_model("buckets16", spec, tiny_model_dir, 1, len(tiny.tokenizer),
                                tiny.tokenizer.pad_token_id, lora_rank=rank)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        head = [n for n in trainable if rlp._is_head(n)]
        assert len(head) == 1 and "score" in head[0] and len(trainable) > 1  # the new head, not its frozen copy


def test_the_expectation_readout_orders_prompts_where_the_argmax_settles_on_one_bucket():
    spec = PredictorSpec("buckets", n_max=64, bucket_width=16, readout="expectation")
    assert spec.tokens(torch.tensor([9.0, -9.0, -9.0, -9.0])) == 8  # all mass on (0, 16]: its midpoint
    short, long = torch.tensor([2.0, 1.0, 0.0, 0.0]), torch.tensor([2.0, 1.9, 1.5, 1.0])
    assert spec.tokens(short) < spec.tokens(long) <= 64  # same argmax, different lengths
    assert PredictorSpec("buckets", n_max=64, bucket_width=16).tokens(long) == 16  # the paper's argmax edge
    with pytest.raises(ValueError, match="readout"):
        PredictorSpec("buckets", n_max=64, readout="median")


def test_a_distillation_killed_mid_write_resumes_from_what_it_had(tiny, tmp_path):
    engine = Engine(tiny, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor())
    prompts = [(f"p{i}", "word " * (10 + 7 * i)) for i in range(6)]
    cache = tmp_path / "d.jsonl.gz"
    first = rlp.distill(engine, prompts[:4], 12, cache)
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) - 9])  # what a kill leaves: the stream's end is missing
    kept = rlp.read_distilled(cache)
    assert 0 < len(kept) <= 4 and all(kept[s.id].n_tokens == s.n_tokens for s in first if s.id in kept)
    again = rlp.distill(engine, prompts, 12, cache)  # resumes, answers the rest, file readable again
    complete = cache.read_bytes()
    assert rlp.distill(engine, prompts, 12, cache) == again and cache.read_bytes() == complete  # shipped: untouched
    engine.close()
    assert [s.id for s in again] == [p for p, _ in prompts] and len(rlp.read_distilled(cache)) == 6
    assert [s.n_tokens for s in again[:4]] == [s.n_tokens for s in first]


def test_a_cached_answer_to_a_prompt_that_changed_is_distilled_again(tiny, tmp_path):
    engine = Engine(tiny, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor())
    cache = tmp_path / "d.jsonl.gz"
    first = rlp.distill(engine, [("a", "word " * 10), ("b", "word " * 20)], 12, cache)
    changed = [("a", "word " * 10), ("b", "other " * 20 + "\n\nthe instruction again")]
    again = rlp.distill(engine, changed, 12, cache)
    engine.close()
    assert again[0] == first[0]  # unchanged: kept from the cache
    assert again[1].prompt_ids != first[1].prompt_ids  # its template changed: answered again
    assert rlp.read_distilled(cache)["b"] == again[1]


def test_free_form_distillation_prompts_come_from_the_splits_prose_only():
    from timebill_ros.eval import tasks
    from timebill_ros.train.predictor import predictor_prompts

    free = [text for pid, text in predictor_prompts("validation", 0, free=5) if "-free-" in pid]
    assert len(free) == 5
    assert free == [text for pid, text in predictor_prompts("validation", 0, free=5) if "-free-" in pid]
    pool = tasks.sentences("validation")
    for text in free:
        body = text.split("\n\n", 1)[1]
        assert any(body.startswith(s) for s in pool)  # not the default model's training chats


def test_a_lora_predictor_ships_only_its_adapter_and_serves_what_was_trained(tiny, tiny_model_dir, tmp_path):
    import torch

    engine = Engine(tiny, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor())
    data = rlp.distill(engine, [(f"p{i}", "word " * (10 + 7 * i)) for i in range(10)], 24, tmp_path / "d.jsonl.gz")
    engine.close()
    spec = rlp.spec_for("buckets16", data, 24, tiny.name)
    spec.backbone, spec.backbone_layers = str(tiny_model_dir), 1
    model = rlp.build_model("buckets16", spec, tiny_model_dir, 1, len(tiny.tokenizer), tiny.tokenizer.pad_token_id,
                            lora_rank=4)
    rlp.fit(model, spec, data[:8], data[8:], epochs=1, lr=1e-2, accumulate=2)
    folder = tmp_path / "lora"
    model.save_pretrained(folder)
    spec.save(folder)
    assert not (folder / "model.safetensors").exists() and (folder / "adapter_model.safetensors").exists()
    served = ModelLengthPredictor(folder)
    ids = torch.tensor([data[-1].prompt_ids])
    with torch.inference_mode():
        trained, merged = model.eval()(input_ids=ids).logits, served.model(input_ids=ids).logits
    assert torch.allclose(trained, merged, atol=1e-4)


def test_reference_predictors_measure_what_task_and_prompt_length_explain():
    from timebill_ros.train.predictor import Sample, reference_predictors

    def sample(i: int, task: str, n_prompt: int) -> Sample:
        length = {"qa": 3, "list": 20}[task] + n_prompt // 10  # longer prompts, longer answers
        return Sample(f"x-{task}-{i}", [1] * n_prompt, min(length, 64))

    train = [sample(i, t, 100 + 37 * i) for i in range(12) for t in ("qa", "list")]
    test = [sample(i, t, 120 + 41 * i) for i in range(6) for t in ("qa", "list")]
    ref = reference_predictors(train, test, n_max=64)
    assert ref["task_and_length"]["R2"] > 0.9 > ref["task_mean"]["R2"]
    assert ref["task_mean"]["n"] == 12 and "below_cap" in ref["task_mean"]
    assert "task_and_answer" not in ref  # no reference answers given


def test_oracle_reference_reads_the_reference_answers_length():
    from timebill_ros.train.predictor import Sample, reference_predictors

    # The target answers twice the reference's length, whatever the prompt's length.
    answer = {f"x-list-{i}": 3 + (7 * i) % 25 for i in range(30)}
    samples = [Sample(pid, [1] * (100 + 13 * i), 2 * n) for i, (pid, n) in enumerate(answer.items())]
    free = Sample("x-free-0", [1] * 50, 9)  # no reference answer: left out of the fit
    ref = reference_predictors(samples[:20] + [free], samples[20:], n_max=64, answer_tokens=answer)
    assert ref["task_and_answer"]["R2"] > 0.99 > ref["task_and_length"]["R2"]


def test_the_instruction_reference_reads_the_count_the_prompt_asks_for():
    from timebill_ros.eval import tasks
    from timebill_ros.train.predictor import Sample, reference_predictors

    assert tasks.asked_count("Summarize the first 7 sections of this report in 7 bullet points") == 7
    assert tasks.asked_count("Summarize the first section of this report in one bullet point") == 1
    assert tasks.asked_count("Complete the next 3 lines of this Python code.") == 3
    assert tasks.asked_count("Complete the next line of this Python code.") == 1
    assert tasks.asked_count("Read the log and list every cow it mentions") == 0
    # Summaries answer 12 tokens a bullet point; code answers 5 tokens whatever it is asked.
    asked = {f"x-summary-{i}": 1 + i % 12 for i in range(30)} | {f"x-code-{i}": 1 + i % 5 for i in range(30)}
    samples = [Sample(pid, [1] * 50, 12 * n if "summary" in pid else 5) for pid, n in asked.items()]
    ref = reference_predictors(samples[::2], samples[1::2], n_max=256, asked=asked)
    assert ref["task_and_asked"]["R2"] > 0.99 > ref["task_mean"]["R2"]
    # The README headline sets the shipped predictor beside the best baseline and this ceiling.
    from timebill_ros.eval.publish import predictor_headline

    row = {"full_input": {"R2": 0.5, "kendall_tau": 0.6}}
    table = {"test_examples": 30, "references": ref,
             "predictors": {"buckets16": row, "proxy5": {"full_input": {"R2": 0.2}},
                            "s3_10": {"full_input": {"R2": 0.3}}}}
    assert predictor_headline(table)[1] == "0.50 (best baseline S3-10 0.30; instruction ceiling 1.00), 0.60"
    assert predictor_headline(table)[0].startswith("length predictor on the fine-tuned target")
    named = {**table, "target": "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e+smollm2-tasks-v4-0123456789ab-8e7955e0"}
    assert predictor_headline(named)[0].startswith("length predictor on the v4 target (30 test prompts)")


def test_target_lengths_say_whether_the_target_stops_where_its_answer_ends():
    from timebill_ros.train.predictor import Sample, target_lengths

    answer = {f"test-list-{i}": 5 + 10 * i for i in range(10)} | {f"test-code-{i}": 5 + 10 * i for i in range(10)}
    # list follows its reference (half of it); code loops to the cap on 2 of 10 and ignores the rest.
    samples = [Sample(f"test-list-{i}", [1], answer[f"test-list-{i}"] // 2 + 1) for i in range(10)]
    samples += [Sample(f"test-code-{i}", [1], 64 if i in (3, 7) else 30) for i in range(10)]
    rows = target_lengths(samples + [Sample("test-free-0", [1], 9)], answer, n_max=64)
    assert set(rows) == {"list", "code"}  # a prompt without a reference answer is left out
    assert rows["list"]["corr_with_reference"] == pytest.approx(1.0, abs=0.01) and rows["list"]["capped_share"] == 0.0
    assert rows["code"]["capped_share"] == 0.2 and abs(rows["code"]["corr_with_reference"]) < 0.5


def test_length_metrics_report_kendall_tau_and_the_share_within_50_tokens():
    m = rlp._metrics([10, 100, 200, 300], [20, 90, 260, 250])
    assert m["kendall_tau"] == pytest.approx(2 / 3) and m["within_50_share"] == 0.75
    assert rlp._metrics([10, 100], [50, 50])["kendall_tau"] == 0.0  # a constant predictor orders nothing


def test_the_pessimism_k_is_the_smallest_that_covers_nine_answers_in_ten():
    truth = [10 * i for i in range(1, 11)]  # ratios truth / N_hat: 0.2 .. 2.0 over N_hat = 50
    k = rlp.pessimism_k(truth, [50] * 10)
    assert k == 1.8  # 1.8 x 50 = 90 covers 9 of 10; 1.7 covers 8
    assert rlp.pessimism_k([5, 5], [50, 50]) == 1.0  # never below 1: N_W is at least N_hat


def test_the_node_plans_with_the_predictor_s_k_unless_told_otherwise():
    from timebill_ros.core.planner import PAPER_K
    from timebill_ros.node.params import NodeParams

    assert NodeParams().limits(4096, predictor_k=2.3).k == 2.3
    assert NodeParams().limits(4096).k == PAPER_K  # a predictor without its own k
    assert NodeParams(k=4.0).limits(4096, predictor_k=2.3).k == 4.0


def test_long_distillation_prompts_are_the_comparisons_regime_from_the_splits_own_sources():
    from timebill_ros.eval import tasks
    from timebill_ros.train.predictor import asked_counts, long_examples, predictor_prompts

    base = dict(predictor_prompts("validation", 2))
    grown = dict(predictor_prompts("validation", 2, long=2))
    added = {pid: text for pid, text in grown.items() if pid not in base}
    assert base.items() <= grown.items() and len(added) == 2 * len(tasks.TASKS) + 2 * len(tasks.LONG_ANSWERS)
    examples = long_examples("validation", 2)
    assert {e.id for e in examples} == set(added) and {e.split for e in examples} == {"validation"}
    assert all(tasks.LONG_PROMPTS[0] <= e.target_tokens <= tasks.LONG_PROMPTS[1] for e in examples)
    asked = asked_counts("validation", 0, long=2)
    long_summaries = [asked[e.id] for e in examples if e.id.startswith("validation-summary-2-")]
    assert long_summaries and min(long_summaries) >= min(tasks.LONG_ANSWERS["summary"]["point_counts"])
    with pytest.raises(ValueError, match="shipped"):
        long_examples("test", 1)

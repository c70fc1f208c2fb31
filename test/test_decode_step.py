"""The in-place KV cache (core/kv_cache.py) and the int8 decode step (core/decode_step.py)."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from timebill_ros.core import model as model_module
from timebill_ros.core.decode_step import (
    FloatMatrix,
    Int4Matrix,
    Int8Matrix,
    LeanDecodeStep,
    int4_where_exact,
    unsupported_reason,
)
from timebill_ros.core.eviction import evict
from timebill_ros.core.kv_cache import GrowingCache, GrowingLayer, new_cache
from timebill_ros.core.model import ModelLoadError, load_model


def prompt_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def hf_decode(model, cache, prompt: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Prefill PROMPT into CACHE, then STEPS greedy steps through transformers' forward."""
    out = model(input_ids=prompt, cache=cache, use_cache=True)
    logits, token, trace = out.logits[:, -1], None, []
    for i in range(steps):
        token = int(logits.argmax(-1))
        logits = model(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[prompt.shape[1] + i]]),
                       cache=cache, use_cache=True).logits[:, -1]
        trace.append(logits)
    return trace


def test_the_growing_cache_decodes_like_the_dynamic_one_without_copying(tiny):
    model = tiny.model
    prompt = prompt_ids(40, model.config.vocab_size)
    cache = GrowingCache()
    grown = hf_decode(model, cache, prompt, 6)
    plain = hf_decode(model, DynamicCache(), prompt, 6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grown, plain))
    layer = cache.layers[0]
    assert isinstance(layer, GrowingLayer) and layer.keys.shape[-2] == 46
    buffer = layer.keys.data_ptr()
    with torch.inference_mode():
        model(input_ids=torch.tensor([[7]]), position_ids=torch.tensor([[46]]), cache=cache, use_cache=True)
    assert layer.keys.data_ptr() == buffer and layer.keys.shape[-2] == 47  # written in place, not copied


def test_after_eviction_the_growing_cache_adopts_the_kept_entries(tiny):
    model = tiny.model
    cache = GrowingCache()
    with torch.inference_mode():
        model(input_ids=prompt_ids(40, model.config.vocab_size), cache=cache, use_cache=True)
        scores = {i: torch.rand(1, model.config.num_key_value_heads, 40) for i in range(len(cache.layers))}
        kept = evict(cache, scores, 0.5, 8)
        before = cache.layers[0].keys.clone()
        model(input_ids=torch.tensor([[7]]), position_ids=torch.tensor([[40]]), cache=cache, use_cache=True)
    layer = cache.layers[0]
    assert layer.keys.shape[-2] == kept + 1 and torch.equal(layer.keys[..., :kept, :], before)


def test_sliding_window_models_keep_their_own_cache(tiny):
    assert isinstance(new_cache(tiny.model.config), GrowingCache)
    config = type(tiny.model.config)(**{**tiny.model.config.to_dict(), "use_sliding_window": True,
                                        "sliding_window": 16, "layer_types": None})
    assert new_cache(config) is None


def test_int8_matrix_rounds_each_weight_by_at_most_half_a_step():
    linear = torch.nn.Linear(64, 48, bias=True)
    matrix = Int8Matrix(linear)
    dequantized = matrix.weight.float() * matrix.scales.float()[:, None]
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    # bfloat16 scales add up to 2^-8 relative on top of the half-step rounding
    assert ((dequantized - linear.weight).abs() <= step * 0.5 + linear.weight.abs() * 2 ** -8 + 1e-7).all()
    x = torch.randn(1, 64)
    assert torch.allclose(matrix(x), linear(x), atol=0.05 * linear(x).abs().max().item())


def q4_1_linear(rows: int, cols: int, seed: int = 0) -> torch.nn.Linear:
    """A linear layer whose weights are dequantized Q4_1 blocks, as llama.cpp writes them: per
    block of 32, levels 0..15 (each used at the block's minimum and maximum) * d + m."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 16, (rows, cols // 32, 32), generator=g).float()
    levels[..., 0], levels[..., 1] = 0, 15
    d = torch.rand(rows, cols // 32, 1, generator=g) * 0.01 + 1e-3
    m = -torch.rand(rows, cols // 32, 1, generator=g) * 0.1
    linear = torch.nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        linear.weight.copy_((levels * d + m).view(rows, cols))
    return linear


def test_int4_blocks_give_back_q4_1_weights_and_round_others_by_half_a_level():
    x = torch.randn(3, 128)
    exact = q4_1_linear(96, 128)
    want = x.bfloat16().float() @ exact.weight.t()
    # Only the bfloat16 scales, offsets and activations differ from the Q4_1 weights.
    assert torch.allclose(Int4Matrix(exact)(x), want, atol=0.02 * want.abs().max().item())
    other = torch.nn.Linear(128, 96)
    step = other.weight.detach().view(96, 4, 32)
    half_level = ((step.amax(-1) - step.amin(-1)) / 30).repeat_interleave(32, dim=1)  # half of (max-min)/15
    got, want = Int4Matrix(other)(x), other(x)
    bound = (x.abs() @ half_level.t()) * 1.05 + 0.02 * want.abs().max().item()
    assert ((got - want).abs() <= bound).all() and not torch.allclose(got, want, atol=1e-3)
    with pytest.raises(ValueError, match="multiples of 32"):
        Int4Matrix(torch.nn.Linear(40, 8))


def test_auto_decode_takes_int4_only_where_it_is_exact():
    """Q4_1 blocks go to int4; the same blocks with a rank-8 update merged in (a LoRA
    adapter), plain weights, or inputs not in blocks of 32 go to int8."""
    exact = q4_1_linear(96, 128)
    assert isinstance(int4_where_exact(exact), Int4Matrix)
    assert isinstance(int4_where_exact(exact, q4_1_linear(32, 128)), Int4Matrix)  # stacked (q/k/v)
    merged = q4_1_linear(96, 128)
    with torch.no_grad():
        merged.weight += 0.01 * torch.randn(96, 8) @ torch.randn(8, 128)
    for other in (merged, torch.nn.Linear(128, 96), torch.nn.Linear(40, 8)):
        assert isinstance(int4_where_exact(other), Int8Matrix)
    assert isinstance(int4_where_exact(exact, merged), Int8Matrix)  # one inexact part: all int8


def lean_decode(step: LeanDecodeStep, model, prompt: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Prefill through transformers' forward, then STEPS greedy steps through STEP."""
    cache, trace = GrowingCache(), []
    with torch.inference_mode():
        logits = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]
    for i in range(steps):
        logits = step(cache, int(logits.argmax(-1)), prompt.shape[1] + i)
        trace.append(logits)
    assert cache.layers[0].keys.shape[-2] == prompt.shape[1] + steps
    return trace


def test_the_lean_step_computes_what_the_forward_computes(tiny):
    """On the original weights the lean step equals transformers' forward (q/k/v biases and
    grouped heads included): the RoPE, norms, cache update and head layout are right."""
    model = tiny.model
    prompt = prompt_ids(50, model.config.vocab_size, seed=3)
    reference = hf_decode(model, GrowingCache(), prompt, 8)
    ours = lean_decode(LeanDecodeStep(model, FloatMatrix), model, prompt, 8)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, reference))


def test_a_float16_cache_holds_the_prompt_rounded_and_decodes_like_float32(tiny):
    """KV_DTYPE float16 (what the served steps use): the first step moves the prefill's float32
    entries into a float16 buffer (rounded, nothing else changed), later steps write into it,
    and the logits stay within float16's rounding of the float32 cache's."""
    model = tiny.model
    prompt = prompt_ids(50, model.config.vocab_size, seed=3)
    reference = lean_decode(LeanDecodeStep(model, FloatMatrix), model, prompt, 8)
    step = LeanDecodeStep(model, FloatMatrix, kv_dtype=torch.float16)
    cache = GrowingCache()
    with torch.inference_mode():
        logits = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]
    prefilled = cache.layers[1].keys.clone()
    trace = []
    for i in range(8):
        logits = step(cache, int(logits.argmax(-1)), prompt.shape[1] + i)
        trace.append(logits)
    layer = cache.layers[1]
    assert layer.keys.dtype == torch.float16 and layer._key_buffer.dtype == torch.float16
    assert torch.equal(layer.keys[..., :50, :], prefilled.half())
    assert layer.keys.data_ptr() == layer._key_buffer.data_ptr()  # still views: no copy per step
    for got, expected in zip(trace, reference):
        assert int(got.argmax(-1)) == int(expected.argmax(-1))
        assert torch.allclose(got, expected, atol=2e-3 * expected.abs().max().item())
    assert step.describe().endswith("; K/V float16")


def test_the_int8_step_follows_the_float_forward(tiny_model_dir):
    """Same greedy tokens and logits within the int8 + bfloat16 rounding, on a model with q/k/v
    biases and grouped heads; a wrong RoPE, norm or head layout would be far off."""
    loaded = load_model(str(tiny_model_dir), threads=1, quantization="int8-decode")
    assert loaded.dtype == "float32+int8-decode" and isinstance(loaded.lean_step, LeanDecodeStep)
    model = loaded.model
    prompt = prompt_ids(50, model.config.vocab_size, seed=3)
    reference = hf_decode(model, GrowingCache(), prompt, 8)
    for got, expected in zip(lean_decode(loaded.lean_step, model, prompt, 8), reference):
        assert int(got.argmax(-1)) == int(expected.argmax(-1))
        assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_an_architecture_the_step_does_not_know_is_refused_with_the_reason(tiny_model_dir, tiny, monkeypatch):
    config = tiny.model.config
    config.hidden_act = "gelu"
    try:
        assert "SiLU" in unsupported_reason(tiny.model)
    finally:
        config.hidden_act = "silu"
    assert unsupported_reason(tiny.model) is None
    monkeypatch.setattr(model_module, "resolve_device", lambda spec: torch.device("cuda"))
    with pytest.raises(ModelLoadError, match="CPU only"):
        load_model(str(tiny_model_dir), threads=1, quantization="int8-decode", device="cuda")


def test_a_calibration_of_the_lean_step_is_keyed_by_its_version():
    """A calibration that timed an older decode step must not be found for the current one."""
    from timebill_ros.core.calibration import CalibrationKey
    from timebill_ros.core.decode_step import STEP_VERSION, calibration_tag

    assert calibration_tag("int8-decode") == f"lean{STEP_VERSION}" and calibration_tag("") == ""
    plain = CalibrationKey("m", "float32+int8-decode", 2, "x")
    keyed = CalibrationKey("m", "float32+int8-decode", 2, "x", step=calibration_tag("int8-decode"))
    assert plain.filename() != keyed.filename() and keyed.filename().endswith(f"__lean{STEP_VERSION}.json")

"""A lean one-token decode step on int8 or int4 weights (quantization "auto-decode", the
node's default, "int8-decode" or "int4-decode").

On a CPU a decode step of a small model is not arithmetic. Profiled on SmolLM2-135M (2
threads, float32, 512-token cache): ~33 ms reading 540 MB of weights through 211 matmuls,
~11 ms copying the cache (`torch.cat`, fixed by core/kv_cache.py) and ~15 ms of Python and
small operations in transformers' generic modules, against llama.cpp's 17 ms a step.

This step does the same arithmetic with less of both:
- weights as int8 with one scale per output row (symmetric), multiplied by torch's CPU
  kernel `aten._weight_int8pack_mm` (bfloat16 activations): a quarter of the bytes; or
  (int4-decode) the layers as 4-bit blocks of 32 with a scale and offset each, the layout
  of a Q4_1 GGUF, by `aten._weight_int4pack_mm_for_cpu`: an eighth of the bytes, exact for
  weights that came from Q4_1 blocks (builtin:smollm2), 4-bit rounding for any others;
  or (auto-decode) each matrix as int4 where that is exact and as int8 where it is not: the
  int4 speed without its rounding (a fine-tuned model whose adapter was merged into every
  matrix, builtin:smollm2-tasks, gets int8 throughout);
- q/k/v fused into one matrix and gate/up into another: 5 matmuls a layer instead of 7;
- one plain loop over the layers (RMSNorm, RoPE, cache update, SDPA with a KV group's
  queries as rows): no module hooks, masks or output records;
- the K/V cache in float16 from the first decode step on (as llama.cpp keeps it by
  default): at 2,048 tokens attention reads the cache for a third of the step, and half
  the bytes made the step ~10 % faster there (26.3 vs 29.4 ms, 16 rounds side by side;
  equal within noise at 512). The cache's float32 entries from prefill are rounded once,
  on that first step (core/kv_cache.py adopts the new dtype).
Prefill keeps transformers' forward on the model's own weights (many rows a matmul: there
the float kernels are fast and exact), so the prompt's cache is the model's own and only
decoded tokens see the int8 rounding (<= half of 1/127 of a row's largest weight) and the
bfloat16 activations. Its cost in quality is measured on the task suite (README).

Supported: Llama- and Qwen2-style decoders (model_type llama / qwen2 / mistral without a
sliding window): RMSNorm, SiLU-gated MLP without bias, optional q/k/v bias. Other
architectures are refused at load with the reason.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from timebill_ros.core.eviction import apply_rope
from timebill_ros.core.kv_cache import full_attention_only

SUPPORTED_TYPES = ("llama", "qwen2", "mistral")
# Raise when a change makes the step faster or slower: calibrations are keyed by it, so a
# calibration that timed an older step is made again instead of planning with stale times.
# 2: grouped queries as rows, not repeated K/V; 3: float16 K/V; 4: K/V dtype chosen, converted before step 1
STEP_VERSION = 4


def calibration_tag(quantization: str) -> str:
    """What a calibration of a model loaded with QUANTIZATION is keyed by beyond its dtype."""
    return f"lean{STEP_VERSION}" if quantization in LEAN_QUANTIZATIONS else ""


class _PackedMatrix:
    """Stacked weights multiplied by one of torch's packed CPU kernels on bfloat16 activations."""

    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in] (float) -> [rows, out] in x's dtype."""
        y = self._matmul(x.to(torch.bfloat16)).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8Matrix(_PackedMatrix):
    """Several nn.Linear weights stacked by output row, stored as int8 with per-row scales."""

    def __init__(self, *linears: nn.Linear) -> None:
        weight, self.bias, self.splits = _stack(linears)
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        self.weight = torch.round(weight / scales[:, None]).to(torch.int8).contiguous()
        self.scales = scales.to(torch.bfloat16)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)


class Int4Matrix(_PackedMatrix):
    """Several nn.Linear weights stacked by output row as 4-bit levels with a scale and an
    offset per block of 32 inputs (the layout of a Q4_1 GGUF): half the bytes of int8.

    A Q4_1 block stores 16 levels from the block's minimum to its maximum, so weights
    dequantized from one (builtin:smollm2's layers) come back exactly, apart from the
    bfloat16 scales and offsets the kernel takes; any other weights are rounded to 4 bits."""

    GROUP = 32

    def __init__(self, *linears: nn.Linear, blocks: Q4Blocks | None = None) -> None:
        weight, self.bias, self.splits = _stack(linears)
        blocks = blocks or Q4Blocks.of(weight)
        self.error_in_levels = blocks.error_in_levels
        rows, cols = weight.shape
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(blocks.levels.view(rows, cols), 1)
        # The kernel computes (level - 8) * scale + zero, so zero = low + 8 * scale; [blocks, rows, 2].
        self.scales_zeros = torch.stack([blocks.scales, blocks.low + 8 * blocks.scales], dim=-1) \
            .transpose(0, 1).contiguous().to(torch.bfloat16)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, self.GROUP, self.scales_zeros)


@dataclass(frozen=True)
class Q4Blocks:
    """A weight matrix cut into blocks of 32 inputs, each as 16 levels from its minimum to its
    maximum (Q4_1), and how far the weights sit from those levels."""

    levels: torch.Tensor  # [rows, blocks, 32] int32 in 0..15
    scales: torch.Tensor  # [rows, blocks]
    low: torch.Tensor  # [rows, blocks]
    error_in_levels: float

    @classmethod
    def of(cls, weight: torch.Tensor) -> "Q4Blocks":
        """WEIGHT [rows, cols] in blocks; ValueError when cols is not a multiple of 32."""
        rows, cols = weight.shape
        if cols % Int4Matrix.GROUP:
            raise ValueError(f"int4 blocks need inputs in multiples of {Int4Matrix.GROUP}, this matrix has {cols}")
        blocks = weight.view(rows, cols // Int4Matrix.GROUP, Int4Matrix.GROUP)
        low = blocks.amin(dim=-1)
        scales = ((blocks.amax(dim=-1) - low) / 15.0).clamp(min=torch.finfo(torch.float32).tiny)
        in_levels = (blocks - low[..., None]) / scales[..., None]
        levels = torch.round(in_levels).clamp(0, 15)
        # Largest distance of a weight from its level, in levels: ~0 for Q4_1 blocks, up to 0.5 otherwise.
        error = float((in_levels - levels).abs().max())
        return cls(levels.to(torch.int32), scales, low, error)


# A matrix whose weights sit this close to their 4-bit levels holds Q4_1 blocks (the float
# rounding of a dequantized GGUF is ~1e-5 of a level); real weights scatter up to half a level.
EXACT_LEVELS = 1e-3


def int4_where_exact(*linears: nn.Linear) -> Int4Matrix | Int8Matrix:
    """An Int4Matrix if the weights are 4-bit blocks of 32 (so int4 loses nothing), else an
    Int8Matrix; the blocks are measured once and packed only when exact."""
    try:
        blocks = Q4Blocks.of(_stack(linears)[0])
    except ValueError:  # inputs not in blocks of 32: they cannot have come from Q4_1 either
        return Int8Matrix(*linears)
    return Int4Matrix(*linears, blocks=blocks) if blocks.error_in_levels <= EXACT_LEVELS else Int8Matrix(*linears)


class FloatMatrix:
    """The same stacking on the original weights (a copy): the step's arithmetic without the
    int8 rounding, which tests compare with transformers' forward exactly."""

    def __init__(self, *linears: nn.Linear) -> None:
        self.weight, self.bias, self.splits = _stack(linears)
        self.weight = self.weight.to(linears[0].weight.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _stack(linears: tuple[nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """(weights stacked by output row in float32, stacked biases or None, output sizes)."""
    weight = torch.cat([lin.weight.detach().float() for lin in linears])
    biases = [lin.bias for lin in linears]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b.detach() if b is not None else torch.zeros(lin.out_features) for b, lin in zip(biases, linears)])
    return weight, bias, [lin.out_features for lin in linears]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why MODEL cannot take this decode step, or None if it can."""
    config = model.config
    kind = getattr(config, "model_type", "?")
    if kind not in SUPPORTED_TYPES:
        return f"model_type '{kind}' (supported: {', '.join(SUPPORTED_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return "its MLP is not SiLU-gated without bias"
    if not full_attention_only(config):
        return "it attends through a sliding window or mixes layer types"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    layer = model.model.layers[0]
    if hasattr(layer.self_attn, "q_norm"):
        return "its attention normalises queries and keys"
    return None


class LeanDecodeStep:
    """model(input_ids=[[token]], position_ids=[[position]], cache=cache).logits[:, -1], leaner;
    MATRIX makes each layer matrix from its nn.Linears (Int8Matrix, Int4Matrix or
    int4_where_exact serve, FloatMatrix checks the arithmetic), HEAD the output layer (MATRIX
    when not given). KV_DTYPE: the dtype the cache holds keys and values in from this step on
    (None: the model's own, which keeps the arithmetic equal to the forward's)."""

    def __init__(self, model: nn.Module, matrix: Callable = Int8Matrix, head: Callable | None = None,
                 kv_dtype: torch.dtype | None = None) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the lean decode step does not support this model: {reason}")
        body = model.model
        self.embed, self.rotary, self.final_norm = body.embed_tokens, body.rotary_emb, body.norm
        self.layers = [_Layer(layer, matrix) for layer in body.layers]
        self.lm_head = (head or matrix)(model.lm_head)
        self.kv_dtype = kv_dtype

    def with_kv_dtype(self, kv_dtype: torch.dtype | None) -> "LeanDecodeStep":
        """The same packed weights with another K/V cache dtype (nothing is copied)."""
        other = copy.copy(self)
        other.kv_dtype = kv_dtype
        return other

    def describe(self) -> str:
        """Which kernels hold the weights, e.g. 'int4 x 120, int8 x 1' (logged at load, in benchmarks)."""
        kinds = [type(m).__name__.removesuffix("Matrix").lower() for layer in self.layers
                 for m in (layer.qkv, layer.o, layer.gate_up, layer.down)] + \
            [type(self.lm_head).__name__.removesuffix("Matrix").lower()]
        weights = ", ".join(f"{kind} x {kinds.count(kind)}" for kind in sorted(set(kinds)))
        return weights if self.kv_dtype is None else f"{weights}; K/V {str(self.kv_dtype).removeprefix('torch.')}"

    @classmethod
    def for_quantization(cls, model: nn.Module, quantization: str) -> "LeanDecodeStep":
        """The step a lean QUANTIZATION (a key of LEAN_QUANTIZATIONS) names, with a float16 K/V cache."""
        return cls(model, *LEAN_QUANTIZATIONS[quantization], kv_dtype=SERVED_KV_DTYPE)

    @torch.inference_mode()
    def __call__(self, cache: object, token: int, position: int) -> torch.Tensor:
        """Logits [1, vocab] of the token after TOKEN at POSITION; appends its K/V to CACHE."""
        hidden = self.embed(torch.tensor([[token]]))[0]  # [1, hidden]
        cos, sin = self.rotary(hidden[None], torch.tensor([[position]]))
        cos, sin = cos[0, :, None], sin[0, :, None]  # [1, 1, head_dim] broadcast over heads
        for idx, layer in enumerate(self.layers):
            hidden = layer(hidden, cache.layers[idx], cos, sin, self.kv_dtype)
        return self.lm_head(_rms_norm(hidden, self.final_norm))


class _Layer:
    """One decoder layer's decode-step weights and arithmetic."""

    def __init__(self, layer: nn.Module, matrix: Callable) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = matrix(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o = matrix(attn.o_proj)
        self.gate_up = matrix(mlp.gate_proj, mlp.up_proj)
        self.down = matrix(mlp.down_proj)
        self.norm_in, self.norm_post = layer.input_layernorm, layer.post_attention_layernorm
        self.scaling, self.head_dim = attn.scaling, attn.head_dim
        q_size, k_size, v_size = self.qkv.splits
        self.heads, self.kv_heads = q_size // self.head_dim, k_size // self.head_dim
        self.qk_v = (q_size + k_size, v_size)  # queries and keys apart from values

    def __call__(self, hidden: torch.Tensor, cache_layer: object, cos: torch.Tensor, sin: torch.Tensor,
                 kv_dtype: torch.dtype | None) -> torch.Tensor:
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        qk, v = self.qkv(_rms_norm(hidden, self.norm_in)).split(self.qk_v, dim=-1)
        # Queries and keys are rotated together: one set of operations instead of two.
        qk = apply_rope(qk.view(heads + kv_heads, 1, head_dim), cos, sin)[None]  # [1, heads + kv_heads, 1, head_dim]
        key, value = qk[:, heads:], v.view(1, kv_heads, 1, head_dim)
        if kv_dtype is not None:
            key, value = key.to(kv_dtype), value.to(kv_dtype)
        keys, values = cache_layer.update(key, value)
        # The one query of each head as a row of its KV group ([1, kv_heads, group, head_dim]):
        # grouped-query attention without repeating keys and values per query head, which
        # SDPA's enable_gqa does (a third of the step at 4k tokens on SmolLM2).
        q = qk[:, :heads].reshape(1, kv_heads, heads // kv_heads, head_dim).to(keys.dtype)
        attended = F.scaled_dot_product_attention(q, keys, values, scale=self.scaling).to(hidden.dtype)
        hidden = hidden + self.o(attended.reshape(1, heads * head_dim))
        gate, up = self.gate_up(_rms_norm(hidden, self.norm_post)).split(self.gate_up.splits, dim=-1)
        return hidden + self.down(F.silu(gate) * up)


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' LlamaRMSNorm (normalised in float32, scaled in x's dtype) as torch's fused op."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm.weight * F.rms_norm(x.float(), norm.weight.shape, None, norm.variance_epsilon).to(x.dtype)


# The served steps' cache dtype (llama.cpp's default too); measured on the task suite (README).
SERVED_KV_DTYPE = torch.float16

# quantization name -> (layer matrices, output layer). The output layer stays int8 under
# int4-decode: in a Q4_1 GGUF the token embeddings it shares are not Q4_1 blocks, and a
# 4-bit rounding of the logits' weights is the costliest place to lose precision.
LEAN_QUANTIZATIONS: dict[str, tuple[Callable, Callable]] = {
    "auto-decode": (int4_where_exact, Int8Matrix),
    "int8-decode": (Int8Matrix, Int8Matrix),
    "int4-decode": (Int4Matrix, Int8Matrix),
}

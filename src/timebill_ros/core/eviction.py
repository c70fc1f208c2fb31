"""SnapKV scoring and physical KV-cache eviction, once, after prefill (TimeBill section 4).

SnapKV (arXiv 2404.14469): the last `window` prompt tokens (the observation window)
attend to the earlier prompt tokens; that attention, averaged over the window,
smoothed with a 1-D average pool and averaged within each GQA group, ranks the cache
entries of every KV head. The window itself is always kept.

The scores are computed by a forward hook on each attention layer during the last
prefill chunk (the hook sees the layer's input and the full cache); the ratio alpha
is only decided after prefill, so `evict` then keeps the top (1 - alpha) share and
physically shrinks every layer's keys and values: decode time is linear in what stays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SnapKV:
    """SnapKV scoring settings: observation window and pooling kernel (paper defaults)."""

    window: int = 32
    kernel: int = 5

    def window_attention(
        self, attn: nn.Module, hidden: torch.Tensor, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Attention of the last `window` queries to all keys, [B, heads, window, N] (causal)."""
        bsz, kv_heads, n_keys, head_dim = keys.shape
        w = self.window
        query = attn.q_proj(hidden[:, -w:]).view(bsz, w, -1, head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3-style query norm comes before RoPE
            query = attn.q_norm(query)
        cos, sin = cos[:, -w:].unsqueeze(1), sin[:, -w:].unsqueeze(1)
        query = apply_rope(query, cos, sin)
        groups = query.shape[1] // kv_heads
        expanded = keys.repeat_interleave(groups, dim=1)
        logits = torch.matmul(query, expanded.transpose(2, 3)) / math.sqrt(head_dim)
        # Query j of the window sits at position n_keys - w + j and sees keys up to it.
        mask = torch.full((w, n_keys), float("-inf"), device=keys.device).triu(n_keys - w + 1)
        return F.softmax(logits.float() + mask, dim=-1)

    def score(
        self, attn: nn.Module, hidden: torch.Tensor, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Importance of every cache entry per KV head, [B, kv_heads, N]; the window scores highest."""
        bsz, kv_heads, n_keys, _ = keys.shape
        weights = self.window_attention(attn, hidden, keys, cos, sin)[..., : n_keys - self.window]
        scores = weights.mean(dim=-2)
        scores = F.avg_pool1d(scores, kernel_size=self.kernel, padding=self.kernel // 2, stride=1)
        scores = scores.view(bsz, kv_heads, -1, n_keys - self.window).mean(dim=2)
        # The window is pinned with +inf. kvpress pads with the max score instead, which
        # lets a tie drop a window entry; the method says the window is always kept.
        return F.pad(scores, (0, self.window), value=float("inf"))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half convention (as transformers): x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def kept_count(n_x: int, alpha: float, window: int) -> int:
    """Entries kept of an N_x-token prompt at ratio alpha: floor((1-alpha)*N_x), never below the window."""
    return min(n_x, max(int(n_x * (1.0 - alpha)), window, 1))


class UnsupportedModelError(RuntimeError):
    """The model's attention cannot be scored by SnapKV; the message names the model."""


class EvictionError(RuntimeError):
    """Eviction was asked for but cannot be done (no scores); never silently skipped."""


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every decoder layer: modules with a separate q_proj and a layer_idx."""
    return [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "layer_idx")]


def mlp_modules(model: nn.Module) -> list[nn.Module]:
    """The feed-forward block of every decoder layer (a layer's `mlp` beside its `self_attn`)."""
    return [m.mlp for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


@dataclass
class SnapKVScorer:
    """Forward hooks that record SnapKV scores of every attention layer while `armed`."""

    press: SnapKV
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    armed: bool = False
    _handles: list = field(default_factory=list)

    def attach(self, model: nn.Module, name: str = "") -> "SnapKVScorer":
        """Register one hook per attention module; UnsupportedModelError unless every layer has one."""
        modules = attention_modules(model)
        layers = getattr(model.config, "num_hidden_layers", None)
        if not modules or (layers is not None and len(modules) != layers):
            raise UnsupportedModelError(
                f"model {name or type(model).__name__}: SnapKV found {len(modules)} attention modules with a "
                f"separate q_proj and a layer_idx for {layers} layers; this architecture (e.g. a fused QKV "
                "projection) cannot be scored, so eviction cannot be done"
            )
        for module in modules:
            self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not self.armed:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cos, sin = kwargs["position_embeddings"]
        keys = cache.layers[module.layer_idx].keys
        if hidden.shape[1] < self.press.window or keys.shape[2] <= self.press.window:
            return  # too short to score: nothing will be evicted
        self.scores[module.layer_idx] = self.press.score(module, hidden, keys, cos, sin)


def kept_indices(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Positions of the N_KEEP highest scores per KV head, [B, kv_heads, n_keep], in position order."""
    return scores.topk(n_keep, dim=-1).indices.sort(dim=-1).values


def evict(cache: object, scores: dict[int, torch.Tensor], alpha: float, window: int,
          check: Callable[[], None] = lambda: None, kept_scores: dict[int, torch.Tensor] | None = None) -> int:
    """Keep the top (1 - alpha) share of every layer's cache by score; return the kept length.

    Entries are gathered in position order; RoPE is already inside the keys, so decoding
    must go on with the true position ids (N_x, N_x + 1, ...), not the shortened length.
    CHECK is called before each layer (the engine's cancel check: a kill need not wait for
    the whole eviction). KEPT_SCORES, when given, receives each layer's scores of the kept
    entries (what `evict_again` ranks by).
    """
    layers = cache.layers
    n_x = layers[0].keys.shape[2]
    n_keep = kept_count(n_x, alpha, window)
    if n_keep >= n_x:
        return n_x
    missing = [i for i in range(len(layers)) if i not in scores or scores[i].shape[-1] != n_x]
    if missing:
        raise EvictionError(f"alpha {alpha:.2f} asks to keep {n_keep} of {n_x} entries, but {len(missing)} of "
                            f"{len(layers)} layers have no SnapKV scores for this prompt (first: layer {missing[0]})")
    for idx, layer in enumerate(layers):
        check()
        kept = kept_indices(scores[idx], n_keep)
        if kept_scores is not None:
            kept_scores[idx] = scores[idx].gather(-1, kept)
        gather = kept.unsqueeze(-1).expand(-1, -1, -1, layer.keys.shape[-1])
        layer.keys = layer.keys.gather(2, gather).contiguous()
        layer.values = layer.values.gather(2, gather).contiguous()
    return n_keep


def evict_again(cache: object, kept_scores: dict[int, torch.Tensor], n_prompt: int, n_keep: int,
                check: Callable[[], None] = lambda: None) -> int:
    """A second eviction during decoding: of each layer's first N_PROMPT entries (the prompt
    entries the first eviction kept, KEPT_SCORES their SnapKV scores) keep the N_KEEP best,
    and every entry decoded since; KEPT_SCORES is narrowed to match. Returns N_KEEP."""
    for idx, layer in enumerate(cache.layers):
        check()
        kept = kept_indices(kept_scores[idx], n_keep)
        kept_scores[idx] = kept_scores[idx].gather(-1, kept)
        gather = kept.unsqueeze(-1).expand(-1, -1, -1, layer.keys.shape[-1])
        layer.keys = torch.cat([layer.keys[:, :, :n_prompt].gather(2, gather), layer.keys[:, :, n_prompt:]], dim=2)
        layer.values = torch.cat([layer.values[:, :, :n_prompt].gather(2, gather), layer.values[:, :, n_prompt:]],
                                 dim=2)
    return n_keep

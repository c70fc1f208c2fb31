"""Causal attention for a prefill chunk that follows cached ones, without a mask.

A chunk of C queries after P cached positions attends to P + C keys: the first P without a
mask, the last C causally. transformers hands SDPA an explicit C x (P + C) mask for it, and
with a mask the CPU kernel computes every block and cannot skip the masked triangle: chunked
prefill of 2,048 tokens in chunks of 1,024 cost 11 % more than one forward here, all of it in
attention. Splitting the keys at P runs two mask-free flash kernels (the past unmasked, the
chunk with `is_causal`) and merges them by their log-sum-exp, which is exact:
    out = out_past * exp(lse_past - lse) + out_chunk * exp(lse_chunk - lse),
    lse = logaddexp(lse_past, lse_chunk).
The split runs only inside `split_chunks()` (the engine's prefill: batch 1, no padding, so the
mask it ignores is exactly that causal pattern) and only on CPU, where torch's flash kernel
returns the log-sum-exp; everything else goes to transformers' SDPA unchanged.

Between the two kernels `split_chunks(check)` calls CHECK (the engine's cancel check): the
attention of a later chunk is the longest block of prefill, and a kill that lands in it
then waits for half of it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

NAME = "timebill_sdpa"
_ENABLED: ContextVar[bool] = ContextVar("timebill_split_chunks", default=False)
_CHECK: ContextVar[Callable[[], None] | None] = ContextVar("timebill_split_check", default=None)


@contextmanager
def split_chunks(check: Callable[[], None] | None = None) -> Iterator[None]:
    """Within this block, chunks with cached positions before them take the split attention,
    calling CHECK (which may raise to stop prefill) between its two halves."""
    token, check_token = _ENABLED.set(True), _CHECK.set(check)
    try:
        yield
    finally:
        _ENABLED.reset(token)
        _CHECK.reset(check_token)


def chunk_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function: the split for a later prefill chunk, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    if not (_ENABLED.get() and 1 < q_len < kv_len and query.device.type == "cpu" and dropout == 0.0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return _split(query, key, value, scaling), None


def _split(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """[B, C, H, D] attention of C chunk queries to P cached keys + the chunk's own C keys."""
    from transformers.integrations.sdpa_attention import repeat_kv

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    b, heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    rep, past = heads // kv_heads, key.shape[2] - q_len
    # Unmasked, the query heads of one GQA group can share their KV head as one longer query.
    out_past, lse_past = flash(query.reshape(b, kv_heads, rep * q_len, d), key[:, :, :past], value[:, :, :past],
                               0.0, False, scale=scaling)
    out_past, lse_past = out_past.reshape(b, heads, q_len, d), lse_past.reshape(b, heads, q_len)
    check = _CHECK.get()
    if check is not None:
        check()
    out_chunk, lse_chunk = flash(query, repeat_kv(key[:, :, past:], rep), repeat_kv(value[:, :, past:], rep),
                                 0.0, True, scale=scaling)
    lse = torch.logaddexp(lse_past, lse_chunk)
    out = (out_past * (lse_past - lse).exp().unsqueeze(-1).to(out_past.dtype)
           + out_chunk * (lse_chunk - lse).exp().unsqueeze(-1).to(out_chunk.dtype))
    return out.transpose(1, 2).contiguous()


def install(model: torch.nn.Module) -> bool:
    """Register the attention function and switch MODEL to it where it runs SDPA; True if switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, chunk_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA for the fallback
    model.set_attn_implementation(NAME)
    return True

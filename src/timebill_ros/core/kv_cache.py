"""A KV cache that grows in place, so a decode step writes one entry instead of copying all.

transformers' DynamicLayer appends by `torch.cat`, which copies the whole layer cache on
every decode step: on SmolLM2 at 2,048 tokens that is ~24 MB of copying per token, a
tenth of the step. Here each layer keeps a buffer with spare room (doubling when full)
and exposes `keys` / `values` as views of its filled part, so attention reads the same
numbers and a step writes only its own entry.

Eviction (core/eviction.py) replaces `keys` / `values` with gathered tensors; the next
update notices they are no longer views of the buffer and adopts them into a new one. An
update in another dtype (float16 from the lean decode step after a float32 prefill)
converts the layer's entries into a new buffer the same way.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# Room added beyond what is needed when a buffer is (re)allocated: a decode of this many
# tokens after prefill or eviction never reallocates.
HEADROOM = 512


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of a buffer with spare capacity."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new states after the filled part; return views of everything filled."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled = self.get_seq_length()
        end = filled + key_states.shape[-2]
        # A writer in another dtype (the lean decode step's float16 after a float32 prefill)
        # moves the whole layer to it once.
        if not self._owns_keys() or end > self._key_buffer.shape[-2] or self._key_buffer.dtype != key_states.dtype:
            self._reallocate(key_states, value_states, filled, capacity=max(2 * filled, end + HEADROOM))
        self._key_buffer[..., filled:end, :] = key_states
        self._value_buffer[..., filled:end, :] = value_states
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values

    def convert(self, dtype: torch.dtype) -> None:
        """Hold keys and values in DTYPE from now on (converted in one copy into a buffer with
        room to grow), so the first decode step in that dtype writes one entry instead of
        converting the whole layer."""
        if not self.is_initialized or self.keys.dtype == dtype:
            return
        filled = self.keys.shape[-2]
        buffers = []
        for states in (self.keys, self.values):
            buffer = states.new_empty((*states.shape[:-2], filled + HEADROOM, states.shape[-1]), dtype=dtype)
            buffer[..., :filled, :] = states  # the copy converts
            buffers.append(buffer)
        self._key_buffer, self._value_buffer = buffers
        self.keys, self.values = self._key_buffer[..., :filled, :], self._value_buffer[..., :filled, :]

    def _owns_keys(self) -> bool:
        """Whether `keys` is still the buffer's view (eviction or cropping replace it)."""
        return (self._key_buffer is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == self._key_buffer.data_ptr())

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, filled: int, capacity: int) -> None:
        shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
        keys = key_states.new_empty(shape)
        values = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
        if filled:
            keys[..., :filled, :] = self.keys
            values[..., :filled, :] = self.values
        self._key_buffer, self._value_buffer = keys, values


class GrowingCache(DynamicCache):
    """A DynamicCache of GrowingLayers (full attention on every layer)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def convert_cache(cache: object, dtype: torch.dtype | None, check: Callable[[], None] = lambda: None) -> None:
    """Hold CACHE's keys and values in DTYPE from now on (the decode step's K/V dtype), layer by
    layer, calling CHECK before each (the engine's cancel check); a no-op for DTYPE None or a
    cache that cannot convert (the model's own, for sliding-window architectures)."""
    if dtype is None or not hasattr(cache, "layers"):
        return
    for layer in cache.layers:
        check()
        if hasattr(layer, "convert"):
            layer.convert(dtype)


def full_attention_only(config: object) -> bool:
    """Whether every layer attends to the whole context (no sliding window, no hybrid layers)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
    # Qwen2-style configs carry a sliding_window that only use_sliding_window switches on.
    sliding = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    return layer_types == {"full_attention"} and not sliding


def new_cache(config: object) -> Cache | None:
    """A GrowingCache for a model whose layers all attend to the full context; None (the
    model's own cache) for sliding-window or hybrid architectures, which need their layer types."""
    return GrowingCache() if full_attention_only(config) else None

"""A length predictor that reads the target's own prefill: a linear probe on one decoder
layer's hidden state at the prompt's last position.

TimeBill's predictor is a separate small LM run beside prefill (section 1). On a CPU the
target's prefill is most of a goal and the predictor shares its two cores; ours is cut from
the target (its first 2 layers, core.predictor), and on the v9 target it orders the tasks
but hardly reads the count a summary asks for ("in 2 bullet points": N_hat ~110 tokens for an
answer of ~30). The target itself, after prefill, has read the whole prompt with all its
layers, and its plan for the answer is in its hidden state: a ridge regression on one
layer's state at the last prompt position, on log(1 + tokens), trained on the same distilled
lengths (`timebill train-rlp`, name `probe`), costs one dot product after prefill and no
thread beside it. It knows nothing before prefill: the first plan (made beside prefill) uses
`PredictorSpec.prior_tokens`, and the plan made after prefill, the one alpha is chosen from,
uses the probe (core.engine reads the layer through `LayerTap`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from timebill_ros.core.predictor import PredictorSpec

WEIGHTS = "probe.json"


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers in order (modules holding both self_attn and mlp)."""
    return [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


class LayerTap:
    """A forward hook on one decoder layer keeping its output at the last position of the last
    forward through it while `armed` (prefill's last chunk ends with the prompt's last token).
    ARMED (default: always) is asked at each forward: the engine passes its SnapKV scorer's
    state, so the tap reads prefill's last chunk only, as the scorer does, and decode steps that
    run through the layer copy nothing."""

    def __init__(self, model: nn.Module, layer: int, armed: Callable[[], bool] = lambda: True) -> None:
        layers = decoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ValueError(f"the length probe reads decoder layer {layer}, but the model has {len(layers)}")
        self.last: torch.Tensor | None = None
        self._armed = armed
        self._handle = layers[layer].register_forward_hook(self._hook)

    @property
    def armed(self) -> bool:
        """Does the next forward through the layer get read?"""
        return self._armed()

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        if not self.armed:
            return
        hidden = output[0] if isinstance(output, tuple) else output
        self.last = hidden[0, -1].detach().float().clone()

    def detach(self) -> None:
        """Remove the hook."""
        self._handle.remove()


class HiddenStateProbe:
    """`predict(prompt_ids)`: the prior (nothing is read before prefill);
    `predict_from_hidden(h)`: N_hat from layer `spec.probe_layer`'s state after prefill."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.spec = PredictorSpec.load(self.folder)
        weights = json.loads((self.folder / WEIGHTS).read_text())
        self.weights = torch.tensor(weights["weights"], dtype=torch.float32)
        self.bias = float(weights["bias"])

    @property
    def reads_layer(self) -> int:
        """The decoder layer whose output the engine taps for this predictor."""
        return self.spec.probe_layer

    @property
    def pessimism_k(self) -> float:
        """The k chosen for this predictor on its validation split."""
        return self.spec.pessimism_k

    def predict(self, prompt_ids: list[int]) -> int:
        """Before prefill: the prior (the training lengths' mean)."""
        return self.spec.prior_tokens

    def predict_from_hidden(self, hidden: torch.Tensor) -> int:
        """N_hat from the tapped layer's state at the prompt's last position."""
        if hidden.numel() != self.weights.numel():
            raise ValueError(f"the probe has {self.weights.numel()} weights, the hidden state {hidden.numel()} values")
        log_tokens = float(hidden.reshape(-1).float() @ self.weights) + self.bias
        return tokens_from_log(log_tokens, self.spec.n_max)


def tokens_from_log(log_tokens: float, n_max: int) -> int:
    """log(1 + N) -> N, in [1, N_MAX] (a probe's output can overshoot either end)."""
    return int(min(n_max, max(1, round(math.expm1(min(log_tokens, math.log1p(n_max)))))))


def save(folder: Path, spec: PredictorSpec, weights: list[float], bias: float) -> None:
    """Write the probe: predictor.json (its spec) and its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(folder)
    (folder / WEIGHTS).write_text(json.dumps({"weights": weights, "bias": bias}))

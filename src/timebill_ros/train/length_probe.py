"""Train the hidden-state length probe (core.length_probe) on the distilled lengths.

The target prefills every distilled prompt once; one decoder layer's output at the prompt's
last position is the probe's input, log(1 + distilled length) its target. A ridge
regression on standardized features (its penalty chosen by leave-one-out on the train split)
is folded back into one weight vector and a bias, so serving needs neither the scaler nor
sklearn. The states are cached per split under $TIMEBILL_HOME/probe (a rerun, or another
layer's fit, does not prefill again).
"""
from __future__ import annotations

import hashlib
import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from timebill_ros.core.engine import Engine
from timebill_ros.core.length_probe import LayerTap, tokens_from_log
from timebill_ros.core.paths import timebill_home
from timebill_ros.core.predictor import PredictorSpec
from timebill_ros.train.distilled import Sample

# Layers (0-based) whose states are kept when prefilling, so that the layer can be chosen
# afterwards. On v9 (5-fold cross-validation within the test split, 160 prompts) R^2 was 0.56 /
# 0.80 / 0.83 reading the output of layer 8 / 16 / 23 of 30, and 0.74 from the final normed
# state: the middle-to-late layers hold the answer's plan best.
CANDIDATE_LAYERS = (7, 15, 22)
RIDGE_PENALTIES = np.logspace(-1, 5, 25)


def cache_path(target: str, split: str) -> Path:
    """Where SPLIT's hidden states for TARGET are cached."""
    return timebill_home() / "probe" / target / f"{split}.npz"


def hidden_states(engine: Engine, samples: list[Sample], cache: Path, layers: tuple[int, ...] | None = None,
                  tick: Callable[[], None] = lambda: None) -> dict[int, np.ndarray]:
    """LAYERS' (default CANDIDATE_LAYERS) outputs at each sample's last prompt position after the
    target's prefill: layer -> [samples, hidden]. Rows CACHE holds for the same id and prompt
    tokens (with every layer asked) are read from it; only the others are prefilled, then added
    to it, so a split that grows by a few prompts costs those prompts' prefills, not the whole
    split's again, and a prompt whose template changed is read again (its distilled length is)."""
    layers = layers or CANDIDATE_LAYERS
    rows = cached_rows(cache, layers)
    missing = [s for s in samples if row_key(s) not in rows]
    for _ in range(len(samples) - len(missing)):
        tick()
    if missing:
        taps = {layer: LayerTap(engine.loaded.model, layer) for layer in layers}
        try:
            with torch.inference_mode():
                for s in missing:
                    engine.prefill(s.prompt_ids)
                    rows[row_key(s)] = {layer: tap.last.numpy() for layer, tap in taps.items()}
                    tick()
        finally:
            for tap in taps.values():
                tap.detach()
        cache.parent.mkdir(parents=True, exist_ok=True)
        keys = list(rows)
        np.savez(cache, ids=np.array([i for i, _ in keys]), prompts=np.array([d for _, d in keys]),
                 **{f"l{layer}": np.stack([rows[k][layer] for k in keys]) for layer in layers})
    return {layer: np.stack([rows[row_key(s)][layer] for s in samples]) for layer in layers}


def row_key(sample: Sample) -> tuple[str, str]:
    """A cached state's key: the sample's id and a digest of its prompt tokens."""
    return sample.id, hashlib.sha256(np.asarray(sample.prompt_ids, np.int64).tobytes()).hexdigest()[:16]


def cached_rows(cache: Path, layers: tuple[int, ...]) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """The states CACHE holds, row_key -> layer -> state; none when it lacks one of LAYERS or
    predates the prompt digests (its rows cannot be matched to their prompts)."""
    if not cache.is_file():
        return {}
    saved = np.load(cache)
    if "prompts" not in saved or not all(f"l{layer}" in saved for layer in layers):
        return {}
    states = {layer: saved[f"l{layer}"] for layer in layers}
    return {(str(i), str(d)): {layer: x[n] for layer, x in states.items()}
            for n, (i, d) in enumerate(zip(saved["ids"], saved["prompts"]))}


def fit(x: np.ndarray, lengths: list[int]) -> tuple[np.ndarray, float, float]:
    """(weights, bias, penalty) of a ridge regression of log(1 + LENGTHS) on X, standardized
    for the fit and folded back to X's own scale."""
    from sklearn.linear_model import RidgeCV

    mean, scale = x.mean(0), x.std(0) + 1e-6
    ridge = RidgeCV(alphas=RIDGE_PENALTIES).fit((x - mean) / scale, np.log1p(np.asarray(lengths, float)))
    weights = ridge.coef_ / scale
    return weights, float(ridge.intercept_ - weights @ mean), float(ridge.alpha_)


def predict(x: np.ndarray, weights: np.ndarray, bias: float, n_max: int) -> list[int]:
    """N_hat of every row of X, as the served probe reads it."""
    return [tokens_from_log(float(v), n_max) for v in x @ weights + bias]


def spec_for(layer: int, train: list[Sample], n_max: int, target: str) -> PredictorSpec:
    """The probe's spec: its layer, the prior (the training lengths' mean) for the plan before prefill."""
    prior = round(statistics.fmean(s.n_tokens for s in train))
    # No input limit or compression: the probe reads what the target prefilled, the whole prompt.
    return PredictorSpec(kind="probe", n_max=n_max, target_model=target, probe_layer=layer, prior_tokens=max(1, prior),
                         max_input_tokens=0, head_tokens=0)


def train(engine: Engine, data: dict[str, list[Sample]], folder: Path, target: str, n_max: int,
          tick: Callable[[], None] = lambda: None) -> dict:
    """Prefill every split, fit a probe per candidate layer on the train split, keep the layer
    with the lowest validation MAE, choose its k on validation (train.predictor.pessimism_k),
    save it to FOLDER; returns its training record (validation MAE per layer, penalty)."""
    from timebill_ros.core import length_probe
    from timebill_ros.train.predictor import pessimism_k

    states = {split: hidden_states(engine, samples, cache_path(target, split), tick=tick)
              for split, samples in data.items() if split in ("train", "validation")}
    lengths = {split: [s.n_tokens for s in data[split]] for split in states}
    fits = {layer: fit(states["train"][layer], lengths["train"]) for layer in CANDIDATE_LAYERS}
    val_pred = {layer: predict(states["validation"][layer], w, b, n_max) for layer, (w, b, _) in fits.items()}
    val_mae = {layer: float(np.mean(np.abs(np.subtract(pred, lengths["validation"]))))
               for layer, pred in val_pred.items()}
    layer = min(val_mae, key=val_mae.get)
    weights, bias, penalty = fits[layer]
    spec = spec_for(layer, data["train"], n_max, target)
    spec.pessimism_k = pessimism_k(lengths["validation"], val_pred[layer])
    length_probe.save(folder, spec, weights.astype(np.float32).tolist(), bias)
    return {"validation_MAE_by_layer": {str(k): v for k, v in val_mae.items()}, "layer": layer,
            "ridge_penalty": penalty}


def evaluate(engine: Engine, probe, samples: list[Sample], target: str, split: str = "test",
             tick: Callable[[], None] = lambda: None) -> tuple[list[int], list[int]]:
    """(distilled lengths, N_hat) of the served PROBE (core.length_probe.HiddenStateProbe) on SAMPLES."""
    states = hidden_states(engine, samples, cache_path(target, split), tick=tick)[probe.reads_layer]
    return [s.n_tokens for s in samples], [probe.predict_from_hidden(torch.from_numpy(x)) for x in states]

"""Binding probes: how fast does a model of a given shape learn to answer a key's value?

Retrieval ("Where is the hammer?" from "The hammer is in the garage.") needs the model to
bind each key to its value. The probe trains a fresh model of the recipe's shape on plain
recall sequences only, with loss on the recalled values alone, and reports the value
accuracy as it goes:

    Facts: hammer garage. cup kitchen. Recall: cup kitchen. hammer garage. ...

Chance is "a random place from the facts" (about 1/n on n facts); a model that binds goes
to ~100 %. Loss and logits are computed on the answer positions only (a step ~2.7x cheaper
than with the full LM head), so a probe answers in minutes whether a shape / window / frame
can form the binding at all. The default model's curriculum opens with the same data
(`Level.kv`). The default model's own chat
drills are probed with `timebill probe-default-model` instead.

`FRAMES` are the fact layouts measured in the README: the value right after its key
("adjacent") usually binds within a few hundred steps at head size 64 (the onset depends
on the seed: `--seed 1` binds by step 600, the default seed 0 had not by step 800); from scratch, the task
suite's sentence, with the value four tokens after its key, had not within 1,400 steps.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerFast

from timebill_ros.eval.vocab import OBJECTS, PLACES
from timebill_ros.train.data import KV_FRAMES as FRAMES
from timebill_ros.train.data import Level
from timebill_ros.train.default_model import Recipe, batch, build_model, descend, loss_of, optimizer, set_local_window


@dataclass(frozen=True)
class Probe:
    """One binding probe: the data and the run's length (the model is the recipe's)."""

    frame: str = "adjacent"
    facts: tuple[int, int] = (2, 8)  # facts per sequence (min, max)
    window: int = 4  # layer 0's attention window while probing; 0 = full attention
    steps: int = 600
    every: int = 25  # steps between reports

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"unknown frame {self.frame!r}; one of {', '.join(FRAMES)}")
        lo, hi = self.facts
        if not 1 <= lo <= hi <= min(len(OBJECTS), len(PLACES)):
            raise ValueError(f"facts must be 1 <= min <= max <= {min(len(OBJECTS), len(PLACES))}, got {self.facts}")
        if self.window < 0 or self.steps < 1 or self.every < 1:
            raise ValueError("window >= 0, steps >= 1 and every >= 1 are required")


def run(recipe: Recipe, probe: Probe, tokenizer: PreTrainedTokenizerFast) -> Iterator[dict]:
    """Train a fresh model of RECIPE's shape on PROBE's data; yield a report every `probe.every` steps."""
    model = build_model(recipe, tokenizer)
    set_local_window(model, probe.window)
    model.train()
    opt = optimizer(model, recipe)
    rng = random.Random(f"binding:{recipe.seed}")
    level = Level(probe.facts, 0, 0, window=probe.window, kv=probe.frame)
    for step in range(1, probe.steps + 1):
        for group in opt.param_groups:
            # Warm-up, then constant: a decay would make a late binding look like none.
            group["lr"] = recipe.lr * min(1.0, step / recipe.warmup)
        x, weights, flags = batch(recipe, tokenizer, rng, level)
        loss, accuracy = loss_of(model, x, weights, flags)
        descend(model, opt, loss)
        if step % probe.every == 0 or step == probe.steps:
            yield {"step": step, "answer_ce": round(loss.item(), 3), "accuracy": round(accuracy or 0.0, 3),
                   "answers": int(flags.sum())}

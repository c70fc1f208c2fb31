"""Binding probes: how fast does a model of a given shape learn to answer a key's value?

Retrieval ("Where is the hammer?" from "The hammer is in the garage.") needs the model to
bind each key to its value. The probe trains a fresh model of the recipe's shape on plain
recall sequences only, with loss on the recalled values alone, and reports the value
accuracy as it goes:

    Facts: hammer garage. cup kitchen. Recall: cup kitchen. hammer garage. ...

Chance is "a random place from the facts" (about 1/n on n facts); a model that binds goes
to ~100 %. Loss and logits are computed on the answer positions only, which makes a step
~2.7x cheaper than a training step of the default model, so a probe answers in minutes
whether a shape / window / frame can form the binding at all. The default model's own chat
drills are probed with `timebill probe-default-model` instead.

`FRAMES` are the fact layouts measured in the README: the value right after its key
("adjacent") binds within a few hundred steps at head size 64; the task suite's sentence,
with the value four tokens after its key, had not within 1,400 steps.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from timebill_ros.eval.vocab import FACT_FRAME, OBJECTS, PLACES
from timebill_ros.train.default_model import Recipe, build_model, set_local_window

SENTENCE = FACT_FRAME.format(object="{o}", place="{p}")
# name: (how a fact is written among the facts, how it is restated in the recall part)
FRAMES = {
    "adjacent": ("{o} {p}.", "{o} {p}."),
    "gap2": ("{o} in {p}.", "{o} in {p}."),
    "gap3": ("{o} is in {p}.", "{o} is in {p}."),
    "sentence": (SENTENCE, SENTENCE),
    "sentence-adjacent": (SENTENCE, "{o} {p}."),  # the recalled key is then the current token
}


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


def sequence(rng: random.Random, tokenizer, probe: Probe) -> tuple[list[int], list[bool]]:
    """Token ids of one facts-then-recall sequence, and flags on the first token of each
    recalled value (the positions that are scored)."""
    fact_frame, recall_frame = FRAMES[probe.frame]
    n = rng.randint(*probe.facts)
    facts = list(zip(rng.sample(OBJECTS, n), rng.sample(PLACES, n)))
    ids, flags = [], []

    def add(text: str, scored: bool = False) -> None:
        enc = tokenizer(text)["input_ids"]
        ids.extend(enc)
        flags.extend([scored] + [False] * (len(enc) - 1))

    add("Facts: " + " ".join(fact_frame.format(o=o, p=p) for o, p in facts) + "\nRecall:")
    before, after = recall_frame.split("{p}")
    # Asked with replacement, so "a value not recalled yet" is no shortcut (train.data says why).
    for obj, place in rng.choices(facts, k=max(2, n)):
        add(" " + before.format(o=obj).strip())
        add(" " + place, scored=True)
        add(after)
    return ids, flags


def batch(rng: random.Random, tokenizer, probe: Probe, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids and answer flags filling about TOKENS tokens."""
    seqs, total = [], 0
    while total < tokens:
        seqs.append(sequence(rng, tokenizer, probe))
        total += len(seqs[-1][0])
    width = max(len(ids) for ids, _ in seqs)
    x = torch.full((len(seqs), width), tokenizer.pad_token_id)
    flags = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (ids, f) in enumerate(seqs):
        x[i, : len(ids)] = torch.tensor(ids)
        flags[i, : len(f)] = torch.tensor(f)
    return x, flags


def answer_loss(model, x: torch.Tensor, flags: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy and accuracy on the flagged tokens; the LM head runs on those alone."""
    hidden = model.model(input_ids=x).last_hidden_state[:, :-1]
    scored = flags[:, 1:]
    logits = model.lm_head(hidden[scored]).float()
    target = x[:, 1:][scored]
    loss = torch.nn.functional.cross_entropy(logits, target)
    return loss, (logits.argmax(-1) == target).float().mean().item()


def run(recipe: Recipe, probe: Probe, tokenizer: PreTrainedTokenizerFast) -> Iterator[dict]:
    """Train a fresh model of RECIPE's shape on PROBE's data; yield a report every `probe.every` steps."""
    model = build_model(recipe, tokenizer)
    set_local_window(model, probe.window)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)
    rng = random.Random(f"binding:{recipe.seed}")
    for step in range(1, probe.steps + 1):
        for group in opt.param_groups:
            # Warm-up, then constant: a decay would make a late binding look like none.
            group["lr"] = recipe.lr * min(1.0, step / recipe.warmup)
        x, flags = batch(rng, tokenizer, probe, recipe.tokens_per_step)
        loss, accuracy = answer_loss(model, x, flags)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % probe.every == 0 or step == probe.steps:
            yield {"step": step, "answer_ce": round(loss.item(), 3), "accuracy": round(accuracy, 3),
                   "answers": int(flags.sum())}

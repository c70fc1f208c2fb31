"""Probe a training checkpoint: first-answer-token accuracy on retrieval drills, split by
the number of facts, the question's direction and whether it is a drill's first question.

This split is what exposed a shortcut: a run at 55 % overall answered the *last* question
of a drill at 100 % and the *first* at chance ("a place not answered yet"). Accuracy on
first questions cannot be gained by elimination, so read that column first.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from timebill_ros.train.data import LEVELS, REVERSE_FRAME, Level, drill
from timebill_ros.train.default_model import Recipe, build_model, encode, set_local_window


def load_checkpoint(workdir: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast, int]:
    """The model of WORKDIR's last checkpoint, its tokenizer and its step."""
    recipe = Recipe(**json.loads((workdir / "recipe.json").read_text()))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(workdir / "tokenizer")
    model = build_model(recipe, tokenizer)
    state = torch.load(workdir / "checkpoint.pt", weights_only=False)
    model.load_state_dict(state["model"])
    set_local_window(model, recipe.window_at(LEVELS[state.get("progress", {}).get("level", 0)]))  # as trained
    return model.eval(), tokenizer, int(state["step"])


@torch.no_grad()
def drill_accuracy(model, tokenizer, facts: tuple[int, ...] = (1, 2, 3, 4, 8), drills: int = 40,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """{"<n> facts": {"forward first": acc, "forward later": acc, "reverse first": ..., ...}}."""
    out: dict[str, dict[str, float]] = {}
    for n in facts:
        rng = random.Random(f"probe:{seed}:{n}")
        hits: dict[str, list[int]] = defaultdict(list)
        for _ in range(drills):
            chat = drill(rng, Level((n, n), 0, 0, reversed=0.5))
            ids, _, first = encode(tokenizer, chat, 0.0)
            predicted = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
            questions = [m["content"].rsplit("Question: ", 1)[-1] for m in chat if m["role"] == "user"]
            answers = [i for i, flag in enumerate(first) if flag]
            for k, (pos, question) in enumerate(zip(answers, questions)):
                direction = "reverse" if question.startswith(REVERSE_FRAME.split("{")[0]) else "forward"
                hits[f"{direction} {'first' if k == 0 else 'later'}"].append(int(predicted[pos - 1] == ids[pos]))
        out[f"{n} facts"] = {key: round(sum(v) / len(v), 3) for key, v in sorted(hits.items())}
    return out

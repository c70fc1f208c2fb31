"""Training conversations for the default model, drawn from the task suite's train split.

Retrieval QA is multi-turn (several questions about the same documents), so one
sequence carries several retrieval signals: dense supervision is what lets a small
model form the copy-from-context circuit in a CPU-sized training budget.
"""
from __future__ import annotations

import random

from timebill_ros.eval import tasks

MIX = (("drill", 0.3), ("qa", 0.35), ("code", 0.15), ("list", 0.2))


def spaced(answer: str) -> str:
    """A word answer with a leading space, so its first token is the very token the
    context holds (" garage", not "garage"): copying from context is then an identity
    copy. Without it the model sat at a constant answer for 900 steps."""
    return " " + answer


def conversation(rng: random.Random, target: int, split: str = "train") -> list[dict[str, str]]:
    """One chat (user/assistant turns) of about TARGET prompt tokens."""
    task = rng.choices([t for t, _ in MIX], weights=[w for _, w in MIX])[0]
    if task == "drill":
        return drill(rng)
    if task == "qa":
        questions = rng.randint(1, 8)
        text, pairs = tasks.make_qa(rng, split, target, questions=questions)
        first_q, first_a = pairs[0]
        messages = [
            {"role": "user", "content": "Read the documents and answer the question with one word.\n\n"
                                        f"{text}\n\nQuestion: {first_q}"},
            {"role": "assistant", "content": spaced(first_a)},
        ]
        for q, a in pairs[1:]:
            messages += [{"role": "user", "content": f"Question: {q}"}, {"role": "assistant", "content": spaced(a)}]
        return messages
    prompt, answer = tasks.MAKERS[task](rng, split, target)
    return [{"role": "user", "content": prompt},
            {"role": "assistant", "content": spaced(answer) if task == "list" else answer}]


def drill(rng: random.Random) -> list[dict[str, str]]:
    """Short, dense retrieval: many facts, little filler, many questions. Forms the
    look-up-and-copy circuit early; the long-document QA then reuses it."""
    text, pairs = tasks.make_qa(rng, "train", rng.randint(40, 160), questions=rng.randint(4, 8))
    first_q, first_a = pairs[0]
    messages = [{"role": "user", "content": f"Read the documents and answer the question with one word.\n\n"
                                            f"{text}\n\nQuestion: {first_q}"},
                {"role": "assistant", "content": spaced(first_a)}]
    for q, a in pairs[1:]:
        messages += [{"role": "user", "content": f"Question: {q}"}, {"role": "assistant", "content": spaced(a)}]
    return messages


def corpus_sample(n: int, seed: int = 0) -> list[str]:
    """Plain text for training the tokenizer: N train conversations, flattened."""
    rng = random.Random(f"tokenizer:{seed}")
    out = []
    for _ in range(n):
        for m in conversation(rng, tasks.target_length(rng)):
            out.append(m["content"])
    return out

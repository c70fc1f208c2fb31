"""Training conversations for the default model, drawn from the task suite's train split.

Training follows a curriculum of `Level`s. It opens with plain key-value recall, where the
binding of a key to its value forms (see LEVELS), then short retrieval chats with no filler
(one fact, then more and more), then filler between the facts, and only then the task
suite's long documents, code and lists. Without a short opening, three runs of ~1200 steps
sat at a constant answer (README model card).

Two things in the drills are there because a probe of a stalled run showed shortcuts:
- questions are drawn *with* replacement: asked each fact once, the model learned "a place
  not answered yet" (100 % on the last question, chance on the first) instead of binding;
- questions are forward only ("Where is the hammer?"). Reversed ones ("What is in the
  garage?" -> " hammer", `Level.reversed`) were meant to train the head that binds a fact's
  object to its place; in run C2 (README) they did not, and the model mixed up which kind of
  word to answer. The probe still asks both kinds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from timebill_ros.eval import tasks
from timebill_ros.eval.vocab import FACT_FRAME, OBJECTS, PLACES, QUESTION_FRAME

REVERSE_FRAME = "What is in the {place}?"
SENTENCE = FACT_FRAME.format(object="{o}", place="{p}")
# Key-value recall frames (`Level.kv`, `timebill probe-binding`): how a fact is written among
# the facts, and how it is restated in the recall part.
KV_FRAMES = {
    "adjacent": ("{o} {p}.", "{o} {p}."),
    "gap2": ("{o} in {p}.", "{o} in {p}."),
    "gap3": ("{o} is in {p}.", "{o} is in {p}."),
    "sentence": (SENTENCE, SENTENCE),
    "sentence-adjacent": (SENTENCE, "{o} {p}."),  # the recalled key is then the current token
}

MIX = (("drill", 0.3), ("qa", 0.35), ("code", 0.15), ("list", 0.2))


@dataclass(frozen=True)
class Level:
    """One rung of the curriculum."""

    facts: tuple[int, int]  # facts per drill (min, max)
    filler: int  # most filler sentences in a drill
    max_target: int  # longest task-suite prompt in tokens; 0 = drills only
    reversed: float = 0.0  # share of reversed drill questions ("What is in the garage?")
    recall: float = 0.0  # share of drills answered by restating facts in a random order
    window: int = 0  # layer 0 sees only this many recent tokens (a training scaffold); 0 = full attention
    kv: str = ""  # a KV_FRAMES name: plain key-value recall instead of chats, loss on the values only


# The curriculum opens with plain key-value recall (`Level.kv`, loss on the values only): with
# the value right after its key and layer 0 local over 4 tokens, a 2-head model binds keys to
# values within 300-600 steps in 5 of 6 runs (`timebill probe-binding`; one seed stalled).
# Widening the window to 8 and writing the facts as the task's sentences then costs nothing
# (the binding carries over at once), and so does moving on to chat drills: in the probes,
# chats went from chance to 94-100 % within 150 steps, where every run that started on chats
# sat at 1/n for thousands of steps (README).
# The chat drills keep layer 0 local over 8 tokens ("hammer?<|im_end|>\n<|im_start|>assistant\n"
# fits), then the window widens step by step to the full attention the model ships with: in a
# probe, dropping an 8-token window at once sent chat drills from 99 % back to chance (20 %)
# for 300 steps and more; layer 0 must learn to stay local on its own.
LEVELS = (
    Level((2, 8), 0, 0, window=4, kv="adjacent"),
    Level((2, 8), 0, 0, window=8, kv="adjacent"),
    Level((2, 8), 0, 0, window=8, kv="sentence-adjacent"),
    Level((1, 1), 0, 0, window=8),
    Level((2, 3), 0, 0, recall=0.5, window=8),
    Level((2, 6), 0, 0, recall=0.5, window=8),
    Level((3, 12), 0, 0, recall=0.5, window=8),
    Level((3, 12), 0, 0, recall=0.5, window=16),
    Level((3, 12), 0, 0, recall=0.5, window=32),
    Level((3, 12), 8, 0, recall=0.3, window=64),
    Level((3, 12), 8, 0, recall=0.3, window=128),
    Level((3, 12), 8, 0, recall=0.3),
    Level((3, 12), 8, 512),
    Level((3, 12), 8, 1024),
    Level((3, 12), 8, 2000),
)


def spaced(answer: str) -> str:
    """A word answer with a leading space, so its first token is the very token the
    context holds (" garage", not "garage"): copying from context is then an identity copy."""
    return " " + answer


def conversation(rng: random.Random, target: int, level: Level = LEVELS[-1]) -> list[dict]:
    """One chat (user/assistant turns) of about TARGET prompt tokens at LEVEL.

    Retrieval answers carry `"retrieval": True`, so training can track their accuracy."""
    task = "drill" if not level.max_target else rng.choices([t for t, _ in MIX], weights=[w for _, w in MIX])[0]
    if task == "drill":
        return drill(rng, level)
    if task == "qa":
        text, pairs = tasks.make_qa(rng, "train", min(target, level.max_target), questions=rng.randint(1, 8))
        return qa_turns(text, pairs)
    prompt, answer = tasks.MAKERS[task](rng, "train", min(target, level.max_target))
    return [{"role": "user", "content": prompt},
            {"role": "assistant", "content": spaced(answer) if task == "list" else answer}]


def qa_turns(text: str, pairs: list[tuple[str, str]]) -> list[dict]:
    """Documents and a first question, then one turn per further question: several
    retrieval answers per sequence (dense supervision)."""
    messages: list[dict] = []
    for i, (q, a) in enumerate(pairs):
        user = f"{tasks.QA_INSTRUCTION}{text}\n\nQuestion: {q}" if i == 0 else f"Question: {q}"
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": spaced(a), "retrieval": True}]
    return messages


def drill(rng: random.Random, level: Level) -> list[dict]:
    """Short, dense retrieval: a few facts, little or no filler, many questions."""
    n = rng.randint(*level.facts)
    facts = list(zip(rng.sample(OBJECTS, n), rng.sample(PLACES, n)))  # distinct places: reverse is unambiguous
    parts = [FACT_FRAME.format(object=o, place=p) for o, p in facts]
    pool = tasks.sentences("train")
    for _ in range(rng.randint(0, level.filler)):
        parts.insert(rng.randint(0, len(parts)), rng.choice(pool))
    document = "Document 1:\n" + " ".join(parts)
    if level.recall and rng.random() < level.recall:  # no draw when off: streams stay as they were
        return recall(rng, document, facts)
    pairs = []
    for o, p in rng.choices(facts, k=rng.randint(1, max(2, n))):
        reverse = rng.random() < level.reversed
        pairs.append((REVERSE_FRAME.format(place=p), o) if reverse else (QUESTION_FRAME.format(object=o), p))
    return qa_turns(document, pairs)


def recall(rng: random.Random, document: str, facts: list[tuple[str, str]]) -> list[dict]:
    """The document's facts restated in a random order (with repeats). Every place in the
    answer needs the same binding as a question, but a restated fact is a plain sentence, so
    the object is a few tokens back, as in the document: a denser, simpler signal. (Runs G,
    E2: no binding within 1,400-2,700 steps with them either.)"""
    said = rng.choices(facts, k=rng.randint(len(facts), 2 * len(facts)))
    answer = " " + " ".join(FACT_FRAME.format(object=o, place=p) for o, p in said)
    return [{"role": "user", "content": f"Read the document and repeat its facts in any order.\n\n{document}"},
            {"role": "assistant", "content": answer}]


def kv_recall(rng: random.Random, frame: str, facts: tuple[int, int]) -> list[tuple[str, bool]]:
    """One key-value recall sequence as text pieces, True on each recalled value:

        Facts: hammer garage. cup kitchen. Recall: cup kitchen. hammer garage. ...

    Values are asked with replacement, so "a value not recalled yet" is no shortcut."""
    fact_frame, recall_frame = KV_FRAMES[frame]
    n = rng.randint(*facts)
    pairs = list(zip(rng.sample(OBJECTS, n), rng.sample(PLACES, n)))
    pieces = [("Facts: " + " ".join(fact_frame.format(o=o, p=p) for o, p in pairs) + "\nRecall:", False)]
    before, after = recall_frame.split("{p}")
    for obj, place in rng.choices(pairs, k=max(2, n)):
        pieces += [(" " + before.format(o=obj).strip(), False), (" " + place, True), (after, False)]
    return pieces


def encode_pieces(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Token ids of text pieces, and flags on the first token of each piece marked True."""
    ids, flags = [], []
    for text, marked in pieces:
        enc = tokenizer(text)["input_ids"]
        ids.extend(enc)
        flags.extend([marked] + [False] * (len(enc) - 1))
    return ids, flags


def corpus_sample(n: int, seed: int = 0) -> list[str]:
    """Text for training the tokenizer: N train conversations, each turn after its role name
    as in the chat template, so "assistant" is one token. (Split into three, it put the asked
    object 8 tokens before the answer position, out of reach of the local first layer.)"""
    rng = random.Random(f"tokenizer:{seed}")
    out = []
    for _ in range(n):
        for m in conversation(rng, tasks.target_length(rng)):
            out.append(f"{m['role']}\n{m['content']}")
    return out

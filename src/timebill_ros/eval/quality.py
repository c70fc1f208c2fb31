"""Quality of a model on the task suite, with the full KV cache and under eviction.

For each test example: the task metric at every fixed alpha (0 = full cache), with the
context removed, and the agreement (ROUGE-L) of each evicted answer with the model's own
full-cache answer, which shows what eviction costs whatever the model's absolute level.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from timebill_ros.core.engine import Engine
from timebill_ros.core.jobs import CancelToken, Request, Result
from timebill_ros.core.model import encode_prompt
from timebill_ros.eval.metrics import rouge_l, score
from timebill_ros.eval.tasks import Example

ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.95)
NO_CONTEXT = "no_context"


def without_context(example: Example) -> str:
    """The prompt's instruction and question with the documents / code / log removed."""
    head, _, rest = example.prompt.partition("\n\n")
    if example.task == "qa":
        return head + "\n\n" + rest[rest.rfind("Question:"):]
    return head + "\n"


@dataclass
class QualityReport:
    """Mean scores per task and setting, plus agreement with the full-cache answers."""

    scores: dict = field(default_factory=dict)  # task -> setting -> mean metric
    agreement: dict = field(default_factory=dict)  # task -> alpha -> mean ROUGE-L vs alpha = 0
    # task -> nominal alpha -> {"applied_alpha": mean 1 - kept/N_x, "kept_tokens": mean, "prompt_tokens": mean}:
    # a fixed alpha is capped so the SnapKV window stays, so short prompts evict less than asked.
    applied: dict = field(default_factory=dict)
    examples: int = 0
    answers: list = field(default_factory=list)


def answer(engine: Engine, prompt: str, max_new_tokens: int, alpha: float) -> Result:
    """Greedy answer with a fixed eviction ratio and no deadline."""
    ids = encode_prompt(engine.loaded.tokenizer, prompt)
    request = Request(ids, budget=1e9, max_new_tokens=max_new_tokens, fixed_alpha=alpha)
    return engine.run(request, CancelToken())


def evaluate(engine: Engine, examples: list[Example], alphas=ALPHAS, max_new_tokens: int = 384,
             tick: Callable[[], None] = lambda: None) -> QualityReport:
    """Score EXAMPLES at every alpha and without context."""
    per: dict = {}
    agree: dict = {}
    kept: dict = {}
    report = QualityReport(examples=len(examples))
    for ex in examples:
        full = None
        for alpha in alphas:
            result = answer(engine, ex.prompt, max_new_tokens, alpha)
            text = result.text
            kept.setdefault(ex.task, {}).setdefault(str(alpha), []).append(
                (result.kept_prompt_tokens, result.prompt_tokens))
            full = text if alpha == 0.0 else full
            per.setdefault(ex.task, {}).setdefault(str(alpha), []).append(score(ex.task, text, ex.answer))
            if alpha != 0.0 and full is not None:
                agree.setdefault(ex.task, {}).setdefault(str(alpha), []).append(rouge_l(text, full))
            report.answers.append({"id": ex.id, "alpha": alpha, "answer": text, "tokens": len(result.token_ids)})
            tick()
        text = answer(engine, without_context(ex), max_new_tokens, 0.0).text
        per[ex.task].setdefault(NO_CONTEXT, []).append(score(ex.task, text, ex.answer))
        tick()
    report.scores = {t: {s: statistics.fmean(v) for s, v in d.items()} for t, d in per.items()}
    report.agreement = {t: {a: statistics.fmean(v) for a, v in d.items()} for t, d in agree.items()}
    report.applied = {t: {a: applied_alpha(v) for a, v in d.items()} for t, d in kept.items()}
    return report


def applied_alpha(kept_and_prompt: list[tuple[int, int]]) -> dict:
    """Mean alpha really applied (1 - kept / N_x), mean kept and mean prompt tokens."""
    return {"applied_alpha": statistics.fmean(1 - k / n for k, n in kept_and_prompt),
            "kept_tokens": statistics.fmean(k for k, _ in kept_and_prompt),
            "prompt_tokens": statistics.fmean(n for _, n in kept_and_prompt)}

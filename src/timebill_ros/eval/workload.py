"""Workloads for the paper's experiments (section 5/6), as lists of timed requests.

Jobs arrive periodically, one per budget period (the paper's setup: the budget is the
period of the control loop that asks). Every compared method is a set of request
overrides on the one engine: a baseline is a setting, not a copy of the decode loop.

Budgets come in levels. With automatic budgets a level is a quantile of each task's own
vanilla predicted time ("q10" .. "q90"), so every task sweeps from vanilla mostly failing
to mostly completing, whatever its prompt and answer lengths; the seconds differ per task.
A request's level travels in its request_id ("policy/level/method/example").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timebill_ros.core.timing import TimingModel
from timebill_ros.eval.tasks import Example

# name -> overrides of a TimedGenerate goal / Request
METHODS: dict[str, dict] = {
    "vanilla": {"fixed_alpha": 0.0},
    "fixed_0.25": {"fixed_alpha": 0.25},
    "fixed_0.5": {"fixed_alpha": 0.5},
    "fixed_0.75": {"fixed_alpha": 0.75},
    "fixed_0.95": {"fixed_alpha": 0.95},
    "timebill": {},  # the node's k: its length predictor's own (PAPER_K when it has none)
    # An upper bound no paper reports: TimeBill told the true response length (N_W = N), so
    # the gap to "timebill" is what the length predictor costs.
    "timebill_true_length": {"k": 1.0, "expected_response_tokens": "true"},
}
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
# The quantized-model baseline: plain inference (no eviction) on a node started with
# quantization: int8. Its bag is replayed against that node; the method is a label here.
QUANTIZED = {"int8": {"fixed_alpha": 0.0}}
K_SWEEP = {f"timebill_k{k}": {"k": float(k)} for k in range(1, 9)}
GAP_S = 1.0  # quiet time between blocks (the replay also waits for a block's overrun to end)


@dataclass(frozen=True)
class GoalId:
    """An evaluation goal's request id, "policy/level/method/example": what the bags carry and
    the traces key their outcomes by, so a node's result and a traced outcome meet on it."""

    policy: str
    level: str
    method: str
    example: str

    def __str__(self) -> str:
        return f"{self.policy}/{self.level}/{self.method}/{self.example}"

    @property
    def block(self) -> str:
        """The (policy, level, method) block: the goals that replay as one Skip-Next sequence."""
        return f"{self.policy}/{self.level}/{self.method}"

    @classmethod
    def parse(cls, request_id: object) -> GoalId | None:
        """REQUEST_ID's parts, or None where it is not an evaluation goal's (a user's own id)."""
        parts = str(request_id or "").split("/", 3)
        return cls(*parts) if len(parts) == 4 else None


@dataclass
class TimedRequest:
    """A request and when it arrives (seconds from the workload's start)."""

    at: float
    fields: dict


def distilled_lengths(path: Path) -> dict[str, int]:
    """Response lengths of the target per example id, from `timebill train-rlp`'s distillation."""
    from timebill_ros.train.distilled import read_distilled

    return {sample_id: s.n_tokens for sample_id, s in read_distilled(path).items()}


def choose_budgets(timing: TimingModel, prompt_tokens: list[int], answer_tokens: list[int],
                   quantiles=QUANTILES) -> dict[str, float]:
    """Budget levels at quantiles of vanilla's predicted end-to-end time over one task's
    prompts, so the sweep goes from vanilla mostly failing to vanilla mostly completing."""
    times = [timing.end_to_end(n, 0.0, max(1, a)) for n, a in zip(prompt_tokens, answer_tokens)]
    return {f"q{round(100 * q)}": round(float(np.quantile(times, q)), 3) for q in quantiles}


def fixed_budgets(seconds: list[float], tasks: list[str]) -> dict[str, dict[str, float]]:
    """The same budgets for every task, each its own level."""
    return {task: {f"{s:g}s": float(s) for s in seconds} for task in tasks}


def build(examples: list[Example], budgets: dict[str, dict[str, float]], methods: dict[str, dict],
          policies: list[str], max_new_tokens: int, start: float = 0.0,
          true_lengths: dict[str, int] | None = None) -> list[TimedRequest]:
    """Every (policy, budget level, method) block over EXAMPLES, arriving one per budget period.
    BUDGETS: task -> level -> seconds. TRUE_LENGTHS (example id -> the target's response
    length) fills the true-length method's estimate."""
    out, t = [], start
    levels = list(next(iter(budgets.values())))
    for policy in policies:
        for level in levels:
            for name, overrides in methods.items():
                for ex in examples:
                    budget = budgets[ex.task][level]
                    fields = {"request_id": str(GoalId(policy, level, name, ex.id)), "task": ex.task, "method": name,
                              "prompt": ex.prompt, "budget": float(budget), "max_new_tokens": max_new_tokens,
                              "k": -1.0, "alpha_max": -1.0, "fixed_alpha": -1.0, "overrun_policy": policy,
                              "on_infeasible": "best_effort", "reference": ex.answer, **overrides}
                    if fields.get("expected_response_tokens") == "true":
                        fields["expected_response_tokens"] = _true_length(true_lengths, ex, max_new_tokens)
                    out.append(TimedRequest(t, fields))
                    t += budget
                t += GAP_S
    return out


def _true_length(true_lengths: dict[str, int] | None, ex: Example, max_new_tokens: int) -> int:
    if not true_lengths or ex.id not in true_lengths:
        raise ValueError(f"the true-length method needs the target's response length for {ex.id}: distil it "
                         "with `timebill train-rlp --target <model>` (its test split)")
    return max(1, min(max_new_tokens, true_lengths[ex.id]))

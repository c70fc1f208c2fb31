"""Response-length predictors: anything with `predict(prompt_ids) -> N_hat` tokens.

The trained bucket classifier (TimeBill section 1) plugs in here. Until it is
trained for a model, `FixedLengthPredictor` gives the same configurable guess for
every prompt; the pessimistic factor k then carries all the uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class LengthPredictor(Protocol):
    """Predicts the number of response tokens the target model will produce."""

    def predict(self, prompt_ids: list[int]) -> int:
        """N_hat for this prompt, in tokens."""
        ...


@dataclass(frozen=True)
class FixedLengthPredictor:
    """The same prediction for every prompt."""

    tokens: int = 64

    def predict(self, prompt_ids: list[int]) -> int:
        """Always `tokens`."""
        return self.tokens

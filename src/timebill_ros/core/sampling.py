"""Output control: how each token is chosen (greedy or seeded top-p sampling) and where
stop strings end a response. The plan does not depend on either: it bounds the length."""
from __future__ import annotations

import torch

from timebill_ros.core.jobs import Sampling


class TokenChooser:
    """Picks the next token from the logits of one position, per a Sampling."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.generator = None
        if sampling.temperature > 0 and sampling.seed >= 0:
            self.generator = torch.Generator().manual_seed(sampling.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """The chosen token id (LOGITS of shape [vocab] or [1, vocab])."""
        logits = logits.reshape(-1)
        if self.sampling.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.sampling.temperature, dim=-1)
        ordered, order = probs.sort(descending=True)
        # The smallest head of the distribution holding top_p (the most likely token always stays).
        ordered[(ordered.cumsum(-1) - ordered) >= self.sampling.top_p] = 0.0
        pick = torch.multinomial(ordered / ordered.sum(), 1, generator=self.generator)
        return int(order[pick])


class StopStrings:
    """Finds the first stop string in a response as it grows, and cuts the text there."""

    def __init__(self, tokenizer, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        # A string of L characters spans at most L tokens (+1 for a token that starts before it).
        self.tail = max((len(s) for s in self.stops), default=0) + 1

    def hit(self, tokens: list[int]) -> bool:
        """True once the response's tail holds a stop string."""
        if not self.stops:
            return False
        text = self.tokenizer.decode(tokens[-self.tail:], skip_special_tokens=True)
        return any(s in text for s in self.stops)

    def cut(self, text: str) -> str:
        """TEXT up to (not including) the first stop string it holds."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return text[:min(found)] if found else text

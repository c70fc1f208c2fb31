"""The distillation cache of `timebill train-rlp`: the target's answer length per prompt.

Kept apart from the predictor training (torch, transformers, sklearn) because the evaluation
harness reads it too, for its true-length arm."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Sample:
    """One distilled example."""

    id: str
    prompt_ids: list[int]
    n_tokens: int


def read_distilled(cache: Path) -> dict[str, Sample]:
    """The answers a distillation cache holds; a killed run leaves its last gzip stream
    unterminated and maybe half a line: everything complete before that is kept."""
    done: dict[str, Sample] = {}
    if not cache.exists():
        return done
    try:
        with gzip.open(cache, "rt") as f:
            for line in f:
                d = json.loads(line)
                done[d["id"]] = Sample(**d)
    except (EOFError, gzip.BadGzipFile, json.JSONDecodeError):
        pass
    return done

"""`timebill eval-quality`: the model card's numbers, reproduced from the shipped weights."""
from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.model import load_model
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel
from timebill_ros.eval import tasks
from timebill_ros.eval.quality import NO_CONTEXT, evaluate
from timebill_ros.node.params import NodeParams


def run_quality(model_path: str, split: str, limit: int, alphas: list[float], threads: int, out: str,
                dtype: str = NodeParams.dtype, quantization: str = NodeParams.quantization) -> dict:
    """Evaluate and write JSON; print a table (task x setting). The weights default to the node's."""
    loaded = load_model(model_path, threads=threads, dtype=dtype, quantization=quantization)
    engine = Engine(loaded, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(), EngineConfig())
    examples = tasks.load(split)
    if limit:
        examples = tasks.first_per_task(examples, limit)
    with tqdm(total=len(examples) * (len(alphas) + 1), desc="eval-quality", unit="answer") as bar:
        report = evaluate(engine, examples, alphas, tick=lambda: bar.update(1))
    engine.close()
    data = {"model": loaded.name, "dtype": loaded.dtype, "split": split, "examples": report.examples,
            "scores": report.scores,
            "agreement_with_full_cache": report.agreement, "applied": report.applied,
            "answers": report.answers}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(data, indent=2))
    settings = [str(a) for a in alphas] + [NO_CONTEXT]
    click.echo("task   " + " ".join(f"{s:>10}" for s in settings))
    for task, row in report.scores.items():
        click.echo(f"{task:<6} " + " ".join(f"{row.get(s, float('nan')):>10.3f}" for s in settings))
        applied = report.applied[task]
        click.echo("  applied alpha " + " ".join(f"{applied[str(a)]['applied_alpha']:>10.2f}" for a in alphas))
    click.echo(f"saved {out}")
    return data

"""`timebill train-rlp`: distil, train and evaluate the response-length predictors."""
from __future__ import annotations

import json
from pathlib import Path

import click
import torch
from tqdm import tqdm

from timebill_ros.core.calibration import Calibration, load_or_calibrate, machine_id
from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.model import load_model
from timebill_ros.core.predictor import FixedLengthPredictor, PredictorSpec, load_classifier
from timebill_ros.core.timing import TimingModel
from timebill_ros.node.params import NodeParams
from timebill_ros.train import predictor as rlp
from timebill_ros.train import save_without_card


def target_engine(model_path: str, threads: int, max_new_tokens: int) -> tuple[Engine, Calibration]:
    """The target model's engine and calibration (made now if missing: input compression needs
    it), profiled as far as the node's longest prompt plus the answers distilled here."""
    engine = Engine(load_model(model_path, threads=threads), TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(),
                    EngineConfig())
    longest = NodeParams.max_prompt_tokens + max_new_tokens
    return engine, load_or_calibrate(engine, points=12, announce=click.echo, max_length=longest)


def run_train_rlp(model_path: str, out: str, names: list[str], per_task: int, free: int, epochs: int,
                  layers: int, max_new_tokens: int, threads: int, retrain: bool, results: str,
                  lora_rank: int = 0, long_per_task: int = 0) -> dict:
    """Distil (cached), train what is missing (or everything with RETRAIN), evaluate; write JSON.
    LONG_PER_TASK: prompts a task of the comparison's regime (train.predictor.long_examples) added
    to the train split, half as many to validation (where k is chosen); the test split stays the shipped one."""
    engine, cal = target_engine(model_path, threads, max_new_tokens)
    target_dir, tok = engine.loaded.path, engine.loaded.tokenizer
    folder = Path(out) if out else target_dir / "rlp"
    # Test first: its answers alone say whether the target's lengths are learnable (target_lengths).
    sets = {"test": rlp.predictor_prompts("test", 0),
            "validation": rlp.predictor_prompts("validation", 20, long=long_per_task // 2),
            "train": rlp.predictor_prompts("train", per_task, free=free, long=long_per_task)}
    test_answers = rlp.reference_answer_tokens(tok, "test", 0)
    data = {}
    for split, prompts in sets.items():
        with tqdm(total=len(prompts), desc=f"distilling {split} (target answers)", unit="prompt") as bar:
            data[split] = rlp.distill(engine, prompts, max_new_tokens, folder / "distill" / f"{split}.jsonl.gz",
                                      tick=lambda: bar.update(1))
        if split == "test":  # known before the long train distillation: is there anything to learn
            echo_target_lengths(rlp.target_lengths(data["test"], test_answers, max_new_tokens))
    prefill_budget = cal.planning_timing().prefill  # the compression budget, exactly as the node serves
    table = {}
    for name in names:
        path = folder / name
        if name == "probe":  # reads the target's own prefill (core.length_probe): no network to train
            table[name] = probe_row(engine, path, data, retrain, max_new_tokens)
            continue
        spec = rlp.spec_for(name, data["train"], max_new_tokens, engine.loaded.name)
        if lora_rank and spec.kind != "classes":  # ship an adapter, rebuilt on the target at load
            spec.backbone, spec.backbone_layers = model_path, layers
        if retrain or not (path / "predictor.json").exists():
            model = rlp.build_model(name, spec, target_dir, layers, len(tok), tok.pad_token_id,
                                    lora_rank if spec.backbone else 0)
            with tqdm(total=epochs * len(data["train"]), desc=f"training {name}", unit="example") as bar:
                history = rlp.fit(model, spec, data["train"], data["validation"], epochs=epochs,
                                  lr=3e-4 if spec.kind != "classes" else 1e-3, tick=lambda: bar.update(1))
            save_without_card(model, path)
            spec.save(path)
            (path / "training.json").write_text(json.dumps(history, indent=2))
            # Timed as served (a LoRA adapter merged), for the input compression rule.
            lengths = sorted({n for n in (64, 256, 512, 1024, spec.max_input_tokens) if n <= spec.max_input_tokens})
            served = load_classifier(path, spec).eval()
            spec.time_coefficients = rlp.profile_time(served, lengths, len(tok))
            spec.pessimism_k = rlp.pessimism_k(*rlp.predictions(served, spec, data["validation"])[:2])
            spec.save(path)
        spec = PredictorSpec.load(path)
        model = load_classifier(path, spec).eval()
        full = rlp.evaluate(model, spec, data["test"])
        hidden = rlp.evaluate(model, spec, data["test"], budget=lambda n_x: spec.input_budget(prefill_budget(n_x)))
        table[name] = {"full_input": full, "compressed_input": hidden, "pessimism_k": spec.pessimism_k}
        if (path / "training.json").is_file():  # how training went: a flat validation MAE = nothing learnt
            table[name]["training"] = json.loads((path / "training.json").read_text())
    answers = {**rlp.reference_answer_tokens(tok, "train", per_task, long=long_per_task), **test_answers}
    # The machine that made the distilled answers (greedy lengths matched across CPU kinds so far).
    report = {"target": engine.loaded.name, "machine": machine_id(), "max_new_tokens": max_new_tokens,
              "train_examples": len(data["train"]), "long_per_task": long_per_task,
              "validation_examples": len(data["validation"]), "test_examples": len(data["test"]),
              "target_lengths": rlp.target_lengths(data["test"], answers, max_new_tokens), "predictors": table,
              "references": rlp.reference_predictors(
                  data["train"], data["test"], max_new_tokens, answers,
                  {**rlp.asked_counts("train", per_task, long=long_per_task), **rlp.asked_counts("test", 0)})}
    Path(results).parent.mkdir(parents=True, exist_ok=True)
    Path(results).write_text(json.dumps(report, indent=2))
    click.echo(f"{'predictor':<12}{'MAE':>8}{'RMSE':>8}{'R2':>8}   compressed: {'MAE':>7}{'R2':>7} truncated")
    for name, row in table.items():
        f, c = row["full_input"], row["compressed_input"]
        click.echo(f"{name:<12}{f['MAE']:8.2f}{f['RMSE']:8.2f}{f['R2']:8.3f}   {c['MAE']:18.2f}{c['R2']:7.3f}"
                   f" {c['truncated_share']:8.0%}")
    engine.close()
    torch.set_num_threads(threads)
    return report


def probe_row(engine: Engine, path: Path, data: dict, retrain: bool, max_new_tokens: int) -> dict:
    """Fit the hidden-state probe (unless one is saved at PATH and not RETRAIN) and evaluate it
    on the test split: Table 1's row, its input the whole prompt (nothing is compressed)."""
    from timebill_ros.core.length_probe import HiddenStateProbe
    from timebill_ros.train import length_probe

    target = engine.loaded.name
    total = sum(len(data[s]) for s in ("train", "validation", "test"))
    with tqdm(total=total, desc="probe: target prefills (cached)", unit="prompt") as bar:
        if retrain or not (path / "predictor.json").exists():
            record = length_probe.train(engine, data, path, target, max_new_tokens, tick=lambda: bar.update(1))
            (path / "training.json").write_text(json.dumps(record, indent=2))
        else:
            bar.update(len(data["train"]) + len(data["validation"]))
        probe = HiddenStateProbe(path)
        truth, pred = length_probe.evaluate(engine, probe, data["test"], target, tick=lambda: bar.update(1))
    row = {**rlp.length_metrics(truth, pred, max_new_tokens), "n": len(truth), "truncated_share": 0.0}
    return {"full_input": row, "compressed_input": row, "pessimism_k": probe.pessimism_k,
            "training": json.loads((path / "training.json").read_text())}


def echo_target_lengths(rows: dict[str, dict]) -> None:
    """One line per task: the target's answers at the cap, and their length's correlation with the reference's."""
    for task, row in rows.items():
        click.echo(f"target {task:<8} {row['capped_share']:5.1%} of test answers at the cap, length correlation "
                   f"with the reference {row['corr_with_reference']:.2f} (mean {row['mean_tokens']:.0f} tokens, "
                   f"reference {row['reference_mean_tokens']:.0f})")

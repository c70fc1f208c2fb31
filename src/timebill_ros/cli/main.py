"""`timebill`: the command-line entry point. Each command imports what it needs lazily,
so `timebill calibrate` works without a ROS environment and `timebill --help` is fast."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from timebill_ros.cli.traces import ANSWERS_OPTION, eval_traces_cmd, parse_prompt_tokens, parse_tasks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Time-budgeted LLM inference for ROS 2 (TimeBill)."""


@cli.command()
@click.argument("prompt")
@click.option("--budget", type=float, required=True, help="Time budget in seconds, from goal acceptance.")
@click.option("--feedback", is_flag=True, help="Print the feedback stream (like ros2 action send_goal --feedback).")
@click.option("--max-new-tokens", type=int, default=0, show_default=True, help="0 = the node's default.")
@click.option("--k", type=float, default=-1.0, help="Pessimistic factor k (negative = node default).")
@click.option("--alpha-max", type=float, default=-1.0, help="Largest eviction ratio (negative = node default).")
@click.option("--fixed-alpha", type=float, default=-1.0, help="Baseline: a fixed eviction ratio.")
@click.option("--policy", "overrun_policy", default="", help="kill | skip_next ('' = node default).")
@click.option("--on-infeasible", default="", help="reject | best_effort ('' = node default).")
@click.option("--system-prompt", default="", help="A system message put first ('' = the node's).")
@click.option("--stop", multiple=True, help="A stop string (repeat for several); the response ends at the first.")
@click.option("--temperature", type=float, default=-1.0, help="0 = greedy; > 0 samples (negative = node default).")
@click.option("--top-p", type=float, default=-1.0, help="Nucleus mass in (0, 1] (negative = node default).")
@click.option("--seed", type=int, default=-1, help="Sampler seed: the same seed gives the same text.")
@click.option("--ignore-eos", is_flag=True, help="Worst-case run: generate max_new_tokens tokens, ignoring EOS.")
@click.option("--json-schema", default="", help="A JSON Schema (text, or @file) the answer must follow; the "
                                              "parsed object is printed.")
@click.option("--grammar", default="", help="A grammar the answer must follow: Lark, GBNF, or regex:<pattern> "
                                          "(text, or @file).")
@click.option("--action", "action_name", default="timebill/generate", show_default=True)
@click.option("--server-timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the server.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--wait-ready", type=float, default=0.0, show_default=True,
              help="Seconds to keep sending the goal again while the node answers that it is still starting "
                   "(loading the model or calibrating on first start).")
def send(prompt: str, budget: float, feedback: bool, server_timeout: float, action_name: str, as_json: bool,
         wait_ready: float, **goal) -> None:
    """Send PROMPT as a TimedGenerate goal; exit code 0 only when it SUCCEEDED."""
    from pathlib import Path

    from timebill_ros.cli.send import send_goal

    for name in ("json_schema", "grammar"):  # @file reads the text from a file
        if goal[name].startswith("@"):
            goal[name] = Path(goal[name][1:]).read_text()

    raise SystemExit(send_goal(prompt, budget, feedback, server_timeout, action_name, as_json, goal, wait_ready))


@cli.command()
@click.option("--params-file", type=click.Path(exists=True, dir_okay=False),
              help="Take model_path, dtype, quantization, kv_cache_dtype, threads, prefill_chunk, "
                   "calibration_path, predictor_path from the node's YAML.")
@click.option("--model", "model_path", help="Model dir, .gguf or builtin:NAME  [default: builtin:smollm2]")
@click.option("--dtype", help="float32 | bfloat16 | float16  [default: float32]")
@click.option("--quantization", help="'' | int8 | auto-decode | int8-decode | int4-decode  [default: auto-decode]")
@click.option("--kv-cache-dtype", help="auto | float32 | bfloat16 | float16: auto measures them here and keeps the "
                                       "fastest within the quality bound  [default: auto]")
@click.option("--threads", type=int, help="torch threads, as the node's `threads`  [default: 2]")
@click.option("--device", help="cpu | cuda | cuda:N | auto, as the node's `device`  [default: cpu]")
@click.option("--prefill-chunk", type=int, help="As the node's prefill_chunk  [default: 1024]")
@click.option("--predictor", "predictor_path",
              help="The node's predictor_path: its slow-down of prefill is measured and planned with  [default: '']")
@click.option("--out", "calibration_path", type=click.Path(), help="Output JSON (default: where the node looks).")
@click.option("--points", type=int, default=24, show_default=True, help="Lengths profiled (every third held out).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Prefill repeats per length (median).")
@click.option("--max-length", type=int, default=0, help="Longest prompt profiled (0 = the model's context).")
@click.option("--check", is_flag=True,
              help="Only check: exit 0 when a calibration of these settings (prefill_chunk included) "
                   "exists, 1 when not.")
def calibrate(params_file: str | None, points: int, repeats: int, max_length: int, check: bool, **given) -> None:
    """Profile the model on this machine and fit the execution-time model."""
    from timebill_ros.cli.calibrate import CalibrationTarget, check_calibration, run_calibration

    target = CalibrationTarget.from_sources(params_file, given)
    if check:
        raise SystemExit(check_calibration(target))
    run_calibration(target, points, repeats, max_length)


@cli.command("build-tiny-model")
@click.argument("out_dir", type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--hidden", type=int, default=64, show_default=True)
def build_tiny_model_cmd(out_dir: str, seed: int, layers: int, hidden: int) -> None:
    """Write a tiny seeded random Qwen2 chat model (for tests and timing, not quality)."""
    from timebill_ros.core.tiny_model import build_tiny_model

    click.echo(build_tiny_model(out_dir, seed=seed, layers=layers, hidden=hidden))


def recipe_options(command):
    """The recipe overrides shared by the commands that train a default-model shape."""
    for option in reversed((
        click.option("--layers", type=int, default=None, help="Override the recipe's layer count."),
        click.option("--hidden", type=int, default=None, help="Override the recipe's hidden size."),
        click.option("--heads", type=int, default=None, help="Override the recipe's query heads."),
        click.option("--kv-heads", type=int, default=None, help="Override the recipe's KV heads (fewer than --heads)."),
        click.option("--lr", type=float, default=None, help="Override the recipe's peak learning rate."),
    )):
        command = option(command)
    return command


def recipe_with(seed: int, **overrides):
    """`Recipe` with the given overrides (None = the recipe's value); the MLP follows --hidden."""
    from dataclasses import replace

    from timebill_ros.train.default_model import Recipe

    recipe = replace(Recipe(seed=seed), **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("hidden") is not None:
        recipe = replace(recipe, intermediate=3 * overrides["hidden"])
    return recipe


@cli.command("train-default-model")
@click.option("--workdir", type=click.Path(), default=".timebill/train-default", show_default=True,
              help="Checkpoints, tokenizer and metrics; a rerun resumes from here.")
@click.option("--out", type=click.Path(), default="", help="Export folder (default: the packaged model folder).")
@click.option("--steps", type=int, default=None, help="Training steps (default: the recipe's).")
@recipe_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--max-minutes", type=float, default=0, help="Stop (and export) after this long; 0 = no limit.")
@click.option("--eval-every", type=int, default=250, show_default=True, help="Steps between validation QA checks.")
@click.option("--export-only", is_flag=True, help="Export the last checkpoint without training.")
def train_default_model(workdir: str, out: str, steps: int | None, seed: int, threads: int,
                        max_minutes: float, eval_every: int, export_only: bool, **shape) -> None:
    """Train the embedded default chat model from scratch (seeded, resumable, CPU).

    Without overrides it trains `train.default_model.Recipe`, the curriculum recipe that
    produced the shipped weights (about 35 minutes on 2 cores)."""
    from pathlib import Path

    from timebill_ros.train.default_model import DEFAULT_MODEL_DIR, train

    recipe = recipe_with(seed, steps=steps, **shape)
    out_dir = Path(out) if out else DEFAULT_MODEL_DIR
    train(recipe, Path(workdir), out_dir, threads=threads,
          max_minutes=max_minutes or None, eval_every=eval_every, export_only=export_only)
    click.echo(f"exported {out_dir}")


@cli.command("probe-default-model")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), default=".timebill/train-default",
              show_default=True, help="A train-default-model workdir (its last checkpoint is probed).")
@click.option("--drills", type=int, default=40, show_default=True, help="Drills per fact count.")
@click.option("--threads", type=int, default=2, show_default=True)
def probe_default_model(workdir: str, drills: int, threads: int) -> None:
    """Retrieval-drill accuracy of a training checkpoint, by fact count and question kind (JSON)."""
    import json
    from pathlib import Path

    import torch

    from timebill_ros.train.probe import drill_accuracy, load_checkpoint

    torch.set_num_threads(threads)
    model, tokenizer, step = load_checkpoint(Path(workdir))
    click.echo(json.dumps({"step": step, "accuracy": drill_accuracy(model, tokenizer, drills=drills)}, indent=2))


@cli.command("probe-binding")
@click.option("--workdir", type=click.Path(), default=".timebill/binding", show_default=True,
              help="Where the probe's tokenizer is fitted once and reused.")
@click.option("--frame", type=click.Choice(["adjacent", "gap2", "gap3", "sentence", "sentence-adjacent"]),
              default="adjacent", show_default=True, help="How facts are written (train.binding.FRAMES).")
@click.option("--facts", nargs=2, type=click.IntRange(min=1), default=(2, 8), show_default=True,
              help="Fewest and most facts in a sequence.")
@click.option("--window", type=click.IntRange(min=0), default=4, show_default=True,
              help="Layer 0's attention window while probing (0 = full attention).")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True)
@click.option("--every", type=click.IntRange(min=1), default=25, show_default=True, help="Steps between reports.")
@recipe_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def probe_binding(workdir: str, frame: str, facts: tuple[int, int], window: int, steps: int, every: int,
                  seed: int, threads: int, **shape) -> None:
    """Train a fresh model of the recipe's shape on key-value recall only and print its answer
    accuracy as JSON lines: can this shape / window / frame learn to bind at all, in minutes?"""
    import json
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from timebill_ros.train.binding import Probe, run
    from timebill_ros.train.default_model import workdir_tokenizer

    try:
        probe = Probe(frame=frame, facts=tuple(facts), window=window, steps=steps, every=every)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    recipe = recipe_with(seed, **shape)
    torch.set_num_threads(threads)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    tokenizer = workdir_tokenizer(recipe, Path(workdir))
    with tqdm(total=steps, desc=f"binding probe ({frame})", unit="step") as bar:
        for report in run(recipe, probe, tokenizer):
            bar.update(report["step"] - bar.n)
            bar.write(json.dumps({**report, "frame": frame, "heads": recipe.heads, "window": window}))


@cli.command("make-tasks")
@click.option("--out", type=click.Path(), default="", help="Folder (default: the packaged data/tasks).")
@click.option("--test", "n_test", type=int, default=40, show_default=True, help="Examples per task, test split.")
@click.option("--validation", "n_val", type=int, default=40, show_default=True, help="Examples per task, validation.")
@click.option("--seed", type=int, default=0, show_default=True)
def make_tasks(out: str, n_test: int, n_val: int, seed: int) -> None:
    """Generate the task suite's validation and test splits (deterministic) as JSONL."""
    import platform
    from pathlib import Path

    from timebill_ros.eval import tasks

    folder = Path(out) if out else tasks.SHIPPED
    for split, n in (("validation", n_val), ("test", n_test)):
        path = tasks.save(tasks.generate(split, n, seed), folder / f"{split}.jsonl.gz")
        click.echo(f"{split}: {len(tasks.TASKS) * n} examples -> {path}")
    # The generator reads the standard library: record which one, so a test can insist on
    # an exact match where the same Python runs it.
    manifest = {"python": platform.python_version(), "seed": seed, "per_task": {"validation": n_val, "test": n_test}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


@cli.command("eval-quality")
@click.option("--model", "model_path", default="builtin:default", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=int, default=0, help="Examples per task (0 = all).")
@click.option("--alphas", default="0,0.25,0.5,0.75,0.95", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--out", type=click.Path(), default="results/quality.json", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="As the node's dtype parameter (to choose it by quality as well as speed).")
@click.option("--quantization", default="auto-decode", show_default=True,
              help="As the node's quantization parameter: '' | int8 | auto-decode | int8-decode | int4-decode.")
def eval_quality(model_path: str, split: str, limit: int, alphas: str, threads: int, out: str, dtype: str,
                 quantization: str) -> None:
    """Task-suite scores with the full KV cache, under eviction, and without context."""
    from timebill_ros.cli.quality import run_quality

    run_quality(model_path, split, limit, [float(a) for a in alphas.split(",")], threads, out, dtype, quantization)


@cli.command("train-rlp")
@click.option("--target", "model_path", default="builtin:default", show_default=True, help="The target model.")
@click.option("--out", type=click.Path(), default="", help="Predictor folder (default: <target>/rlp).")
@click.option("--predictors",
              default=",".join(("buckets16", "buckets32", "buckets64", "regression", "proxy5", "s3_10")),
              show_default=True)
@click.option("--per-task", type=int, default=120, show_default=True,
              help="Train prompts per task (the shipped distillation has 120).")
@click.option("--free", type=int, default=30, show_default=True, help="Extra free-form train prompts (shipped: 30).")
@click.option("--long-per-task", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train prompts a task of 1,000-3,000 tokens as make eval draws them, as many asking for long "
                   "answers as make eval-long does; half as many of each join validation (v9's probe: 20).")
@click.option("--epochs", type=int, default=12, show_default=True,
              help="At most; training stops after 3 epochs without a better validation MAE.")
@click.option("--layers", type=int, default=2, show_default=True, help="Target layers the SLM backbone keeps.")
@click.option("--max-new-tokens", type=int, default=384, show_default=True, help="As served (N_max).")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--retrain", is_flag=True, help="Train even where a trained predictor exists.")
@click.option("--lora-rank", type=int, default=0, show_default=True,
              help="> 0: train the SLM predictors as LoRA adapters (shippable for a large target); 0: fully.")
@click.option("--results", type=click.Path(), default="results/rlp.json", show_default=True)
def train_rlp(model_path: str, out: str, predictors: str, per_task: int, free: int, epochs: int, layers: int,
              max_new_tokens: int, threads: int, retrain: bool, results: str, lora_rank: int,
              long_per_task: int) -> None:
    """Distil the target's response lengths, train the predictors, print the MAE/RMSE/R^2 table.

    With shipped predictors and distillation data this only re-evaluates (fast); --retrain trains anew.
    """
    from timebill_ros.cli.rlp import run_train_rlp

    run_train_rlp(model_path, out, predictors.split(","), per_task, free, epochs, layers, max_new_tokens, threads,
                  retrain, results, lora_rank, long_per_task)


@cli.command("rlp-layers")
@click.option("--target", "model_path", default="builtin:smollm2-tasks", show_default=True)
@click.option("--candidates", default="1,2,3,4", show_default=True, help="Layer counts to measure.")
@click.option("--lengths", default="512,1024,2048", show_default=True, help="Prompt lengths (tokens).")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--out", type=click.Path(), default="results/rlp_layers.json", show_default=True)
def rlp_layers(model_path: str, candidates: str, lengths: str, threads: int, out: str) -> None:
    """Measure, per predictor layer count, its time against the target's prefill and its slow-down
    of prefill when run beside it: choose the most layers that stay hidden (< 10 % slow-down)."""
    from tqdm import tqdm

    from timebill_ros.core.engine import Engine
    from timebill_ros.core.model import load_model
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.core.timing import TimingModel
    from timebill_ros.train.predictor import measure_layers

    engine = Engine(load_model(model_path, threads=threads), TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor())
    engine.warm_up()
    counts = [int(c) for c in candidates.split(",")]
    with tqdm(total=len(counts), desc="predictor layers", unit="count") as bar:
        rows = measure_layers(engine, counts, [int(n) for n in lengths.split(",")], tick=lambda: bar.update(1))
    engine.close()
    hidden = [r["layers"] for r in rows if r["prefill_slowdown_beside"] < 1.10 and r["predictor_over_prefill"] < 1]
    data = {"target": model_path, "threads": threads, "rows": rows, "chosen_layers": max(hidden, default=None),
            "rule": "most layers whose predictor finishes within prefill and slows it by < 10 %"}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(data, indent=2))
    for r in rows:
        click.echo(f"layers {r['layers']}: predictor/prefill {r['predictor_over_prefill']:.3f}, "
                   f"prefill beside it x{r['prefill_slowdown_beside']:.3f}")
    click.echo(f"chosen: {data['chosen_layers']} layers -> {out}")


@cli.group()
def bag() -> None:
    """Workload bags: make them from the task suite, replay them against a running node."""


@bag.command("make")
@click.argument("out", type=click.Path())
@click.option("--storage", type=click.Choice(["mcap", "sqlite3"]), default="mcap", show_default=True)
@click.option("--per-task", type=int, default=10, show_default=True, help="Test-split examples per task.")
@click.option("--budgets", default="auto", show_default=True,
              help="auto (levels at quantiles of each task's vanilla predicted time), comma-separated seconds "
                   "(the same for every task), or a --budgets-out JSON of another bag.")
@click.option("--methods", default=",".join(("vanilla", "fixed_0.25", "fixed_0.5", "fixed_0.75", "fixed_0.95",
                                             "timebill", "timebill_true_length")), show_default=True)
@click.option("--k-sweep/--no-k-sweep", default=True, show_default=True, help="k = 1..8 at the middle level.")
@click.option("--policies", default="kill", show_default=True, help="kill and/or skip_next, comma-separated.")
@click.option("--params-file", type=click.Path(exists=True), default="config/timebill.yaml", show_default=True,
              help="The node's params: model, threads, calibration (for auto budgets), max_new_tokens.")
@click.option("--budgets-out", type=click.Path(), default="", help="Also write the chosen budgets here (JSON).")
@click.option("--levels", default="0.1,0.3,0.5,0.7,0.9", show_default=True,
              help="Quantiles of each task's vanilla predicted time that --budgets auto makes levels of.")
@click.option("--tasks", "task_names", default="", callback=parse_tasks,
              help="Comma-separated tasks of the suite (default: all).")
@click.option("--prompt-tokens", default="test", show_default=True, callback=parse_prompt_tokens,
              help="'test': the shipped test split's prompts; LOW,HIGH: the prompts `timebill eval-traces "
                   "--prompt-tokens LOW,HIGH` measures (the same goals, to check the traces against the node).")
@ANSWERS_OPTION
def bag_make(out: str, storage: str, per_task: int, budgets: str, methods: str, k_sweep: bool, policies: str,
             params_file: str, budgets_out: str, levels: str, task_names: tuple[str, ...],
             prompt_tokens: tuple[int, int] | None, answers: str) -> None:
    """Write a workload bag of requests from the task suite's test split."""
    from timebill_ros.cli.bag import make_workload

    requests, chosen, path = make_workload(Path(out), storage, per_task, budgets, methods, k_sweep,
                                           policies.split(","), params_file,
                                           quantiles=tuple(float(q) for q in levels.split(",")),
                                           task_names=task_names, prompt_tokens=prompt_tokens, answers=answers)
    if budgets_out:
        Path(budgets_out).write_text(json.dumps(chosen))
    click.echo(f"{len(requests)} requests, budgets (task -> level -> s) {chosen}, {requests[-1].at:.0f}s of "
               f"arrivals -> {path}")


@bag.command("replay")
@click.argument("bag_in", type=click.Path(exists=True))
@click.option("--out", "bag_out", type=click.Path(), required=True, help="Result bag to write (must not exist).")
@click.option("--rate", type=float, default=1.0, show_default=True, help="Arrival-time speed factor.")
@click.option("--storage", type=click.Choice(["mcap", "sqlite3"]), default="mcap", show_default=True)
@click.option("--wait", "wait_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the last results.")
@click.option("--skip-idle", is_flag=True,
              help="While the node has answered everything sent, send the next request now and move the rest of "
                   "the schedule earlier (saves idle time; a job still meets an idle node, overlaps stay).")
def bag_replay(bag_in: str, bag_out: str, rate: float, storage: str, wait_s: float, skip_idle: bool) -> None:
    """Play BAG_IN's requests against the running node and record every result into --out."""
    from timebill_ros.cli.bag import replay

    summary = replay(Path(bag_in), Path(bag_out), rate, storage, wait_s, skip_idle)
    click.echo(json.dumps(summary))
    if summary["lost"]:
        raise SystemExit(1)


@cli.command("eval")
@click.argument("result_bags", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default="results/eval", show_default=True)
def eval_cmd(result_bags: tuple[str, ...], out: str) -> None:
    """Scores, completion, deadline misses and alpha per method and budget; plots; claim check.

    A request in several RESULT_BAGS counts once, as the last of them has it."""
    from timebill_ros.cli.bag import evaluate_bags
    from timebill_ros.eval.workload import METHODS, QUANTIZED

    data = evaluate_bags([Path(p) for p in result_bags], Path(out), list(METHODS) + list(QUANTIZED))
    for policy, claim in data["claims"].items():
        highest = claim["timebill_highest_score_at_every_budget"]
        click.echo(f"[{policy}] TimeBill highest score at every budget: {highest}")
        if "completion_gap_vs_fixed_0.95_pts" in claim:
            gap = claim["completion_gap_vs_fixed_0.95_pts"]
            click.echo(f"[{policy}] completion minus fixed 0.95's (points): {gap}")
        if "k_sweep_shape" in claim:
            click.echo(f"[{policy}] k sweep: {claim['k_sweep_shape']} (peak at k={claim['k_sweep_peak_k']})")
    click.echo(f"saved {out}/eval.json and {len(data['plots'])} plots")


@cli.command("publish")
@click.option("--results", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Where make bench / make eval / eval-quality / train-rlp wrote their JSON.")
@click.option("--docs", type=click.Path(file_okay=False), default="docs/results", show_default=True)
@click.option("--readme", type=click.Path(dir_okay=False, exists=True), default="README.md", show_default=True)
def publish(results: str, docs: str, readme: str) -> None:
    """Copy measured JSON and plots into docs/results and regenerate the README's tables from them."""
    from timebill_ros.eval.publish import publish as run_publish

    copied = run_publish(Path(results), Path(docs), Path(readme))
    click.echo(f"copied {len(copied)} file(s) to {docs}: {', '.join(copied) or 'none'}; {readme} tables regenerated")


@cli.command("train-target")
@click.option("--workdir", type=click.Path(), default=".timebill/train-target", show_default=True,
              help="Checkpoints; a rerun resumes from here.")
@click.option("--out", type=click.Path(), default="", help="Adapter folder (default: the packaged one).")
@click.option("--steps", type=int, default=None, help="Training steps (default: the recipe's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--max-minutes", type=float, default=0, help="Stop (and export) after this long; 0 = no limit.")
def train_target_cmd(workdir: str, out: str, steps: int | None, seed: int, threads: int, max_minutes: float) -> None:
    """Fine-tune SmolLM2-135M-Instruct on the task suite (LoRA; seeded, resumable, CPU).

    Writes the adapter that `builtin:smollm2-tasks` merges at load."""
    from dataclasses import replace

    from timebill_ros.train.target import TARGET_ADAPTER_DIR, TargetRecipe, train_target

    recipe = TargetRecipe(seed=seed)
    recipe = replace(recipe, steps=steps) if steps else recipe
    out_dir = train_target(recipe, Path(workdir), Path(out) if out else TARGET_ADAPTER_DIR, threads=threads,
                           max_minutes=max_minutes or None)
    click.echo(f"exported {out_dir}")


cli.add_command(eval_traces_cmd)  # a command that lives in a module of its own


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()

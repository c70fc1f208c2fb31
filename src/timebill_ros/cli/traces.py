"""`timebill eval-traces`: the paper's comparison from measured traces (eval.traces).

Each test prompt runs once per alpha of the grid on an in-process engine set up as the node
is (the params file's model, weights, decode kernels, predictor and calibration); every
method's outcome at every budget level and under both overrun policies is then computed
from those runs. The traces are saved, so the table can be recomputed without the model.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click


def parse_tasks(ctx, param, value: str) -> tuple[str, ...]:
    """A click callback: comma-separated task names of the suite ('' = all of them)."""
    from timebill_ros.eval import tasks

    chosen = tuple(value.split(",")) if value else tasks.TASKS
    if unknown := set(chosen) - set(tasks.TASKS):
        raise click.BadParameter(f"unknown task(s) {sorted(unknown)}; known: {', '.join(tasks.TASKS)}")
    return chosen


def parse_prompt_tokens(ctx, param, value: str) -> tuple[int, int] | None:
    """A click callback: 'LOW,HIGH' prompt tokens, or 'test' for the shipped test split."""
    if value == "test":
        return None
    try:
        low, high = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH tokens (e.g. 1000,3000) or 'test', got {value!r}") from None
    if not 16 <= low <= high:
        raise click.BadParameter(f"need 16 <= LOW <= HIGH, got {low},{high}")
    return low, high


def parse_alphas(ctx, param, value: str) -> tuple[float, ...] | None:
    """A click callback: the comma-separated alpha grid to measure ('' = traces.ALPHA_GRID). It
    must hold 0 and every fixed arm's alpha: those arms run exactly there."""
    from timebill_ros.eval import traces

    if not value:
        return None
    try:
        grid = tuple(sorted({float(v) for v in value.split(",")}))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated alphas (e.g. 0,0.25,0.5,0.75,0.95), "
                                 f"got {value!r}") from None
    if not all(0.0 <= a < 1.0 for a in grid):
        raise click.BadParameter(f"alphas must lie in [0, 1), got {value!r}")
    fixed = {m.fixed_alpha for m in traces.METHODS if m.fixed_alpha is not None}
    if missing := sorted(fixed - set(grid)):
        raise click.BadParameter(f"the grid must hold the fixed arms' alphas; missing {missing}")
    return grid


# Shared by eval-traces and bag make: both must draw the same prompts for the node check.
ANSWERS_OPTION = click.option(
    "--answers", type=click.Choice(["any", "long"]), default="any", show_default=True,
    help="'long': prompts that ask for the upper part of each task's answer lengths (code 5-8 lines, lists of "
         "20-60 items, summaries of 6-12 points; no QA), so decode is a larger share of a goal "
         "(eval.tasks.LONG_ANSWERS).")


def node_params(params_file: str):
    """The node's parameters as PARAMS_FILE sets them (defaults for the rest)."""
    from timebill_ros.cli.calibrate import params_file_values
    from timebill_ros.node.params import NodeParams

    given = params_file_values(params_file)
    return NodeParams(**{k: v for k, v in given.items() if k in NodeParams.__dataclass_fields__})


def sized_as_asked(tokenizer, prompt_tokens: tuple[int, int] | None, max_prompt_tokens: int):
    """A prompt -> bool for tasks.evaluation_examples: whether the prompt, as the node encodes
    it, has PROMPT_TOKENS' LOW to HIGH tokens and no more than the node takes (it refuses a
    longer one: the first run measured a 3,380-token prompt the node then rejected 20 times)."""
    from timebill_ros.core.model import encode_prompt

    if prompt_tokens is None:
        return None
    low, high = prompt_tokens[0], min(prompt_tokens[1], max_prompt_tokens)
    return lambda prompt: low <= len(encode_prompt(tokenizer, prompt)) <= high


def comparison_examples(tokenizer, per_task: int, task_names: tuple[str, ...],
                        prompt_tokens: tuple[int, int] | None, max_prompt_tokens: int, answers: str = "any",
                        split: str = "test"):
    """The comparison's prompts (tasks.evaluation_examples) sized as the node encodes them
    (`sized_as_asked`): eval-traces measures them and bag make sends the same goals to the node.
    A request the suite cannot make (long answers for QA) is a usage error, with its reason."""
    from timebill_ros.eval import tasks

    try:
        return tasks.evaluation_examples(per_task, task_names, prompt_tokens,
                                         sized_as_asked(tokenizer, prompt_tokens, max_prompt_tokens), answers, split)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def served_engine(params_file: str, params, tokenizer=None):
    """An engine as the node configured by PARAMS_FILE (read into PARAMS) serves; TOKENIZER,
    when given, is the model's own, already loaded."""
    from timebill_ros.core.engine import Engine
    from timebill_ros.core.kernels import apply as apply_kernels
    from timebill_ros.core.model import load_model
    from timebill_ros.core.predictor import load_predictor

    calibration = stored_calibration(params_file)
    loaded = load_model(params.model_path, dtype=params.dtype, threads=params.threads,
                        quantization=params.quantization, device=params.device, tokenizer=tokenizer)
    if choice := calibration.kernel_choice():
        apply_kernels(loaded, choice.chosen, params.quantization)
    timing = calibration.planning_timing()
    predictor = load_predictor(params.predictor_path, timing.prefill, params.fixed_prediction_tokens)
    engine = Engine(loaded, timing, predictor, params.engine_config())
    engine.warm_up()
    return engine


def stored_calibration(params_file: str):
    """The calibration `timebill calibrate` stored for the node PARAMS_FILE configures."""
    from timebill_ros.cli.calibrate import CalibrationTarget
    from timebill_ros.core.calibration import Calibration

    return Calibration.load(CalibrationTarget.from_sources(params_file, {}).path())


def planning_k(params) -> float:
    """The pessimism k the node PARAMS configure plans with: its k parameter when set, else the
    one stored with its predictor (0: none, or a fixed prediction; the planner then takes the
    paper's), read from its predictor.json without loading the network."""
    from timebill_ros.core.predictor import PredictorSpec, predictor_folder

    if params.k:
        return params.k
    return PredictorSpec.load(predictor_folder(params.predictor_path)).pessimism_k if params.predictor_path else 0.0


def k_from(params, digest: str) -> str:
    """Where the k the node PARAMS plan with comes from: "validation" (its k parameter is the one
    the validation split's traces chose for this target and its predictor of DIGEST,
    `validation_k`), "parameter" (another k parameter) or "predictor" (none set: the predictor's own)."""
    if not params.k:
        return "predictor"
    chosen = validation_k(params.model_path, digest)
    return "validation" if chosen and abs(chosen[0] - params.k) < 1e-9 else "parameter"


# Where `make eval` looks for the k chosen on validation: this machine's own run, then the published one.
VALIDATION_REPORTS = (Path("results/eval-validation/traces_eval.json"),
                      Path("docs/results/traces_eval_validation.json"))


def validation_k(model: str, digest: str,
                 reports: tuple[Path, ...] | None = None) -> tuple[float, Path] | None:
    """(the k the validation split's traces score best with, the report it comes from): the
    first of REPORTS (eval-traces --split validation; VALIDATION_REPORTS, from the working
    directory, by default) made for this MODEL with the predictor of DIGEST
    (`eval.traces.validation_choice`); None when none is."""
    from timebill_ros.eval.traces import validation_choice

    for path in VALIDATION_REPORTS if reports is None else reports:
        if path.is_file() and (k := validation_choice(json.loads(path.read_text()), model, digest)) is not None:
            return k, path
    return None


def traced_prompts(engine: Callable, params, examples, out: Path, *, alphas: tuple[float, ...],
                   prefill_samples: int, n_hat_from: str) -> tuple[list, float | None]:
    """(the EXAMPLES' traces, the minutes measuring them took): OUT/traces.json when it holds
    exactly these prompts, alphas and prefill samples (with N_hat read again when another
    predictor than N_HAT_FROM read it), else measured now on ENGINE() (the node's, loaded once)."""
    from tqdm import tqdm

    from timebill_ros.eval import traces

    saved, report = out / "traces.json", out / "traces_eval.json"
    started = time.monotonic()
    prompts = traces.from_json(json.loads(saved.read_text())) if saved.exists() else []
    if prompts and {p.example_id for p in prompts} == {e.id for e in examples} \
            and all(set(p.traces) == set(alphas) and len(p.prefill_samples) == prefill_samples for p in prompts):
        # Reused without loading the model (~40 s): the minutes are those of the run that
        # measured them, not of this reading.
        measured = json.loads(report.read_text()).get("measure_minutes") if report.exists() else None
        if all(p.n_hat_from == n_hat_from for p in prompts):
            return prompts, measured
        # Another predictor read N_hat: its own N_hat, over the same decodes.
        click.echo(f"{saved}: N_hat was read by another predictor than {params.predictor_path or 'the fixed one'}; "
                   "reading it again (one prefill a prompt)")
        with tqdm(total=len(prompts), desc="N_hat", unit="prompt") as bar:
            prompts = traces.reread_n_hat(engine(), examples, prompts, n_hat_from, tick=lambda: bar.update(1))
    else:
        with tqdm(total=len(examples) * len(alphas), desc="traces", unit="run") as bar:
            prompts = traces.measure(engine(), examples, alphas=alphas, max_new_tokens=params.max_new_tokens,
                                     prefill_samples=prefill_samples, n_hat_from=n_hat_from,
                                     tick=lambda: bar.update(1))
        measured = (time.monotonic() - started) / 60
    saved.write_text(json.dumps(traces.to_json(prompts)))
    return prompts, measured


def with_second_evictions(engine: Callable, params, examples, prompts: list, out: Path,
                          wanted: dict[str, set]) -> list:
    """PROMPTS holding every second-eviction run of WANTED (eval.traces.second_evictions_wanted),
    the missing ones measured now on ENGINE() (the node's, loaded once) and saved with the
    traces in OUT/traces.json; the model is not loaded when none is missing."""
    from tqdm import tqdm

    from timebill_ros.eval import traces

    held = {p.example_id: {t.second_eviction_key for t in p.second_evictions} for p in prompts}
    if not (missing := sum(len(runs - held[ex_id]) for ex_id, runs in wanted.items())):
        return prompts
    with tqdm(total=missing, desc="second evictions", unit="run") as bar:
        prompts = traces.measure_second_evictions(engine(), examples, prompts, wanted,
                                                  max_new_tokens=params.max_new_tokens, tick=lambda: bar.update(1))
    (out / "traces.json").write_text(json.dumps(traces.to_json(prompts)))
    return prompts


def run_traces(params_file: str, per_task: int, out: Path, quantiles: tuple[float, ...] | None = None,
               alphas: tuple[float, ...] | None = None, task_names: tuple[str, ...] = (),
               prompt_tokens: tuple[int, int] | None = None, agree: tuple[Path, ...] = (),
               agree_again: tuple[Path, ...] = (), agree_replan: tuple[Path, ...] = (), prefill_samples: int = 1,
               answers: str = "any", split: str = "test") -> dict:
    """Measure (or reuse OUT/traces.json), evaluate, write OUT/traces_eval.json; returns it.
    ANSWERS "long": prompts asking for the long answers of eval.tasks.LONG_ANSWERS; SPLIT: whose
    sources the prompts come from (validation: to choose a setting such as k without the test prompts).
    AGREE: result bags of the same goals replayed through timebill_node, checked against the traces;
    AGREE_AGAIN: the same bag replayed once more, checked against AGREE (the node against itself);
    AGREE_REPLAN: the same bag through the node with its in-goal re-plan on, checked against
    the traces' replay of it (`in_goal_replan_kill`);
    PREFILL_SAMPLES: prefills measured per prompt (their median is the prompt's)."""

    from timebill_ros.core.calibration import machine_id
    from timebill_ros.core.model import load_tokenizer
    from timebill_ros.core.online import online_timing_from
    from timebill_ros.core.planner import PAPER_K
    from timebill_ros.core.predictor import predictor_digest
    from timebill_ros.eval import tasks, traces, workload
    from timebill_ros.node.params import NodeParams

    alphas, quantiles = alphas or traces.ALPHA_GRID, quantiles or workload.QUANTILES
    out.mkdir(parents=True, exist_ok=True)
    report = out / "traces_eval.json"
    params = node_params(params_file)
    longest = params.max_prompt_tokens
    if prompt_tokens and prompt_tokens[1] > longest:  # the node would refuse them; the calibration stops there
        raise click.ClickException(
            f"prompts of up to {prompt_tokens[1]} tokens, but {params_file} sets max_prompt_tokens "
            f"{longest}: raise it (the calibration then covers the longer prompts) or pass "
            f"--prompt-tokens within it")
    tokenizer = load_tokenizer(params.model_path)
    examples = comparison_examples(tokenizer, per_task, task_names or tasks.TASKS, prompt_tokens,
                                   params.max_prompt_tokens, answers, split)
    n_hat_from = predictor_digest(params.predictor_path, params.fixed_prediction_tokens)
    loaded: list = []  # the node's engine, loaded once and only when a run must be measured

    def engine():
        if not loaded:
            loaded.append(served_engine(params_file, params, tokenizer))
        return loaded[0]

    # What planning reads is the node's own: its calibration, its k (or its predictor's), its SnapKV window.
    calibration, k = stored_calibration(params_file), planning_k(params)
    timing, planned_k = calibration.planning_timing(), k or PAPER_K  # k 0: neither the node's nor its predictor's
    # The node's in-goal re-plan, replayed beside the paper's single plan: its own replan_steps, or its default.
    replan = {"k": planned_k, "n_max": params.max_new_tokens, "min_kept": params.snapkv_window,
              "steps": params.replan_steps or NodeParams().replan_steps, "alpha_max": params.alpha_max}
    try:
        prompts, measured = traced_prompts(engine, params, examples, out, alphas=alphas,
                                           prefill_samples=prefill_samples, n_hat_from=n_hat_from)
        levels = traces.budget_levels(prompts, quantiles)
        prompts = with_second_evictions(engine, params, examples, prompts, out,
                                        traces.second_evictions_wanted(prompts, levels, timing, **replan))
    finally:
        for e in loaded:
            e.close()
    outcomes = traces.goal_outcomes(prompts, levels, timing, n_max=params.max_new_tokens,
                                    min_kept=params.snapkv_window, predictor_k=k)
    table = traces.evaluate(outcomes)
    data = {"model": params.model_path, "predictor": params.predictor_path, "predictor_digest": n_hat_from,
            "machine": machine_id(), "per_task": per_task, "answers": answers, "split": split,
            "prompt_tokens": list(prompt_tokens) if prompt_tokens else f"{split} split",
            "timebill_k": planned_k, "timebill_k_from": k_from(params, n_hat_from),
            "alpha_grid": list(alphas), "prefill_samples": prefill_samples, "levels": levels, "table": table,
            "claims": {policy: traces.claims(table, policy) for policy in table},
            "decode_share_of_vanilla": traces.decode_share(prompts, levels),
            "mechanism": traces.mechanism(prompts, planned_k),
            "by_task": traces.by_task(outcomes, prompts),
            "paired_gaps_kill": traces.paired_gaps(outcomes, table),
            "completion_gaps_kill": traces.completion_gaps(outcomes, table),
            "hindsight_kill": traces.hindsight(prompts, levels),
            "plan_losses_kill": traces.plan_losses(prompts, levels, outcomes),
            "k_sweep": (sweep := traces.k_sweep(prompts, levels, timing, table, n_max=params.max_new_tokens,
                                                min_kept=params.snapkv_window,
                                                ks=tuple(sorted({*traces.SWEEP_K, planned_k})))),
            "best_k": traces.best_k(sweep),
            "machine_pace": (pace := traces.machine_pace(prompts, timing, calibration.fitted_timing())),
            "at_traced_pace_kill": traces.at_traced_pace(prompts, levels, timing, table, pace, k=planned_k,
                                                         n_max=params.max_new_tokens, min_kept=params.snapkv_window),
            "in_goal_replan_kill": traces.with_in_goal_replan(
                prompts, levels, timing, table, outcomes=outcomes, **replan,
                node_records=replanning_records(agree_replan, params, n_hat_from) if agree_replan else None),
            "online_timing_kill": {
                "estimator": params.timing_estimator, "miss_rate": params.timing_miss_rate,
                **traces.with_online_timing(prompts, levels, lambda: online_timing_from(
                    calibration, window=params.online_window, enabled=True, estimator=params.timing_estimator,
                    miss_rate=params.timing_miss_rate), table, k=planned_k, n_max=params.max_new_tokens,
                    min_kept=params.snapkv_window)},
            "measure_minutes": measured}
    if agree:
        check_answered_by(agree + agree_again, params, n_hat_from)
        records = node_records(agree)
        at_node_prefill = traces.agreement_at_node_prefill(
            prompts, levels, timing, records, n_max=params.max_new_tokens, min_kept=params.snapkv_window, predictor_k=k)
        data["node_agreement"] = {**traces.agreement(outcomes, records), **traces.node_pace(prompts, records),
                                  "at_node_prefill": at_node_prefill, "bags": [str(b) for b in agree]}
        if agree_again:
            again = node_records(agree_again)
            data["node_agreement"]["node_with_itself"] = {
                **traces.self_agreement(records, again), "again_with_traces_pct": traces.agreement(
                    outcomes, again)["agree_pct"], "bags": [str(b) for b in agree_again]}
    report.write_text(json.dumps(data, indent=2))
    return data


def check_answered_by(paths: tuple[Path, ...], params, digest: str) -> None:
    """Refuse result bags (PATHS) whose node planned with another target, predictor or k than
    PARAMS and the predictor of DIGEST: agreement with traces planned otherwise says nothing.
    Bags replayed before the node was recorded (cli.bag._node_planning) pass with a warning."""
    import math

    for path in paths:
        node = answering_node(path)
        if not node:
            click.echo(f"WARNING: {path} does not say which node answered it: its planning is not checked", err=True)
            continue
        differ = [f"{key} {node.get(key)!r} (traces: {want!r})"
                  for key, want in (("model_path", params.model_path), ("predictor_path", params.predictor_path))
                  if node.get(key) != want]
        if not math.isclose(float(node.get("k", -1.0)), params.k):
            differ.append(f"k {node.get('k')!r} (traces: {params.k!r})")
        if node.get("predictor_digest") not in (None, digest):  # None: the node's predictor is not on this machine
            differ.append(f"predictor digest {node['predictor_digest']} (traces: {digest})")
        if differ:
            raise click.ClickException(f"{path} was answered by a node that planned with another " + ", ".join(differ)
                                       + ": replay the bag against a node started with the traces' params file")


def answering_node(path: Path) -> dict:
    """The planning parameters of the node that answered result bag PATH ({} for bags replayed
    before nodes were recorded, cli.bag._node_planning)."""
    from timebill_ros.eval import bags

    return json.loads(bags.custom_data(path).get(bags.NODE_KEY) or "{}")


def replanning_records(paths: tuple[Path, ...], params, digest: str) -> list[dict]:
    """The result records of PATHS, answered by a node that planned as PARAMS (`check_answered_by`)
    but with its in-goal re-plan on; a bag from a node that plans once is refused."""
    check_answered_by(paths, params, digest)
    for path in paths:
        node = answering_node(path)
        if not node.get("replan_steps"):
            raise click.ClickException(f"{path} was answered by a node with replan_steps "
                                       f"{node.get('replan_steps', 'unknown')}: --agree-replan needs one that "
                                       "re-plans (replan_steps > 0)")
    return node_records(paths)


def node_records(paths: tuple[Path, ...]) -> list[dict]:
    """The result records of PATHS (bags recorded by `timebill bag replay`), one per request."""
    from timebill_ros.eval import bags

    if not (records := bags.result_records(list(paths))):
        raise click.ClickException(f"no results in {', '.join(map(str, paths))}")
    return records


@click.command("eval-traces")
@click.option("--params-file", type=click.Path(exists=True), default="config/timebill.yaml", show_default=True,
              help="The node's parameters: the model, weights, kernels and predictor to measure.")
@click.option("--per-task", type=int, default=12, show_default=True, help="Prompts per task.")
@click.option("--tasks", "task_names", default="", callback=parse_tasks,
              help="Comma-separated tasks of the suite (default: all).")
@click.option("--prompt-tokens", default="1000,3000", show_default=True, callback=parse_prompt_tokens,
              help="LOW,HIGH: prompts made from the split's sources at these lengths (eviction buys decode "
                   "time on long caches); 'test': the shipped split's own prompts.")
@click.option("--out", type=click.Path(file_okay=False), default="results/eval", show_default=True)
@click.option("--alphas", default="", callback=parse_alphas,
              help="The alpha grid to measure, comma-separated (default: eval.traces.ALPHA_GRID, ten alphas "
                   "from 0 to 0.95); planned alphas round up to it, so a coarser grid is cheaper and "
                   "plans more eviction.")
@click.option("--prefill-samples", type=click.IntRange(1, 10), default=3, show_default=True,
              help="Prefills measured per prompt, spread over its alpha runs; every goal on the prompt uses "
                   "their median (one sample taken in a slow second of the host decides every goal near a "
                   "deadline on that prompt).")
@click.option("--agree", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Result bag(s) of the same goals replayed through timebill_node (bag make --prompt-tokens "
                   "with --budgets OUT/levels.json): how often node and traces agree on complete.")
@click.option("--agree-again", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="The same goals' bag replayed through the node a second time: how often the node agrees "
                   "with itself, about the most the traces can agree with it on this host.")
@click.option("--agree-replan", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="The same goals' bag replayed through the node with its in-goal re-plan on (replan_steps > 0): "
                   "how often it agrees with the traces' replay of the re-plan.")
@ANSWERS_OPTION
@click.option("--split", type=click.Choice(("test", "validation")), default="test", show_default=True,
              help="Whose sources the prompts come from: validation to choose a setting (k) on, test to report.")
def eval_traces_cmd(params_file: str, per_task: int, task_names: tuple[str, ...],
                    prompt_tokens: tuple[int, int] | None, out: str, alphas: tuple[float, ...] | None,
                    agree: tuple[Path, ...], agree_again: tuple[Path, ...], agree_replan: tuple[Path, ...],
                    prefill_samples: int, answers: str, split: str) -> None:
    """Every method at every budget and policy, computed from one run per prompt and alpha."""
    if (agree or agree_replan) and split != "test":
        raise click.UsageError("--agree checks the test prompts bag make sends; it takes --split test")
    if agree_again and not agree:
        raise click.UsageError("--agree-again compares a second replay with the first: give --agree too")
    data = run_traces(params_file, per_task, Path(out), task_names=task_names, prompt_tokens=prompt_tokens,
                      alphas=alphas, agree=agree, agree_again=agree_again, agree_replan=agree_replan,
                      prefill_samples=prefill_samples, answers=answers, split=split)
    (Path(out) / "levels.json").write_text(json.dumps(data["levels"], indent=2))  # for bag make --budgets
    for policy, methods in data["table"].items():
        click.echo(f"[{policy}] mean score (standard error) per level")
        for name, cells in methods.items():
            click.echo(f"  {name:<22}" + " ".join(f"{c['score']:.3f}({c['score_se']:.3f})" for c in cells.values()))
        for claim, row in data["claims"][policy].items():
            if isinstance(row, dict):
                click.echo(f"  claim {claim}: {'held' if row['held'] else 'NOT held'}")
    best = data["best_k"]
    click.echo(f"k with the best mean Kill score over the levels on these {data['split']} prompts: {best['k']:g} ("
               + ", ".join(f"k {key} {mean:.3f}" for key, mean in best["mean_score"].items()) + ")")
    if not (pace := data["machine_pace"])["steady"]:
        click.echo(f"WARNING: the machine's speed moved while the traces were measured (prefill "
                   f"{pace['prefill_over_fit_min']:.2f}x to {pace['prefill_over_fit_max']:.2f}x the plan's time "
                   f"model): outcomes near a deadline follow the host's load; measure again on a quiet machine",
                   err=True)
    if agreed := data.get("node_agreement"):
        clear = agreed["clear_of_deadline"]
        click.echo(f"node agreement on complete / incomplete: {agreed['agree_pct']:.1f} % of {agreed['goals']} goals"
                   + (f" ({clear['agree_pct']:.1f} % of the {clear['goals']} not within {clear['near']:.0%} of their"
                      " deadline)" if clear["goals"] else ""))
        if itself := agreed.get("node_with_itself"):
            click.echo(f"the node replayed again agrees with itself on {itself['agree_pct']:.1f} % of "
                       f"{itself['goals']} goals (and with the traces on {itself['again_with_traces_pct']:.1f} %)")
    if agreed := data["in_goal_replan_kill"].get("node_agreement"):
        click.echo(f"the node with its in-goal re-plan on agrees with the traces' replay of it on "
                   f"{agreed['agree_pct']:.1f} % of {agreed['goals']} goals")
    click.echo(f"saved {out}/traces_eval.json")

"""Publish measured results: copy them into docs/results and regenerate README tables.

Every figure the README shows comes from a JSON file in docs/results. `timebill publish`
copies what `make bench`, `make eval`, `timebill eval-quality` and `timebill train-rlp`
wrote under results/ into docs/results, then rewrites each README block between
`<!-- results:NAME -->` and `<!-- /results:NAME -->` from those files. A test renders
the blocks again from docs/results and fails when the README differs, so a figure cannot
drift from its source.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path
from typing import Callable

from timebill_ros.eval import tasks
from timebill_ros.eval.metrics import score
from timebill_ros.eval.publish_sweep import eval_claims, eval_table, pct
from timebill_ros.eval.traces import best_fixed, validation_choice

# Published with one entry per machine id: a run on another CPU adds to the figures instead of
# replacing them (docs/results/<name> = {"benchmark", "by_machine": {machine id: run}}).
PER_MACHINE = {"llamacpp.json"}
# results/<source> -> docs/results/<name>; missing sources are left as they are.
SOURCES = {
    "bench/ete_mape.json": "ete_mape.json",
    "bench/wcet_coverage.json": "wcet_coverage.json",
    "bench/decode_overhead.json": "decode_overhead.json",
    "bench/eviction_share.json": "eviction_share.json",
    "bench/planning_time.json": "planning_time.json",
    "bench/prefill_overhead.json": "prefill_overhead.json",
    "bench/kill_latency.json": "kill_latency.json",
    "bench/gil_stalls.json": "gil_stalls.json",
    "bench/kill_latency_chunk2048.json": "kill_latency_chunk2048.json",
    "bench/predictor_overhead.json": "predictor_overhead.json",
    "bench/llamacpp.json": "llamacpp.json",
    "bench/online_timing.json": "online_timing.json",
    "bench/load.json": "load.json",
    "bench/soak.json": "soak.json",
    "bench/faults.json": "faults.json",
    "bench/first_goal.json": "first_goal.json",
    "bench/timing_under_load.json": "timing_under_load.json",
    "bench/timing_under_load_repeat.json": "timing_under_load_repeat.json",
    "bench/noise_floor.json": "noise_floor.json",
    "bench/tracker_replay.json": "tracker_replay.json",
    "bench/structured.json": "structured.json",
    "bench/first_start.json": "first_start.json",
    "bench/node_overhead.json": "node_overhead.json",
    "demo.json": "demo.json",
    "quality.json": "quality.json",
    "quality_smollm2.json": "quality_smollm2.json",
    "quality_smollm2_tasks.json": "quality_smollm2_tasks.json",
    "quality_smollm2_tasks_float32.json": "quality_smollm2_tasks_float32.json",
    "quality_smollm2_tasks_bfloat16.json": "quality_smollm2_tasks_bfloat16.json",
    "quality_smollm2_tasks_int4.json": "quality_smollm2_tasks_int4.json",
    "rlp.json": "rlp.json",
    "rlp_smollm2_tasks.json": "rlp_smollm2_tasks.json",
    "rlp_layers.json": "rlp_layers.json",
    "rlp_smollm2_tasks_v3.json": "rlp_smollm2_tasks_v3.json",
    "rlp_smollm2_tasks_v9.json": "rlp_smollm2_tasks_v9.json",
    "quality_smollm2_tasks_v3.json": "quality_smollm2_tasks_v3.json",
    "quality_smollm2_tasks_v9.json": "quality_smollm2_tasks_v9.json",
    "eval/traces_eval.json": "traces_eval.json",
    "eval-long/traces_eval.json": "traces_eval_long.json",
    "eval-large/traces_eval.json": "traces_eval_large.json",
    "eval-validation/traces_eval.json": "traces_eval_validation.json",
    "eval/eval.json": "eval.json",
    "eval/budget_sweep_kill.png": "budget_sweep_kill.png",
    "eval/budget_sweep_skip_next.png": "budget_sweep_skip_next.png",
    "eval/k_sweep_kill.png": "k_sweep_kill.png",
    "eval/k_sweep_skip_next.png": "k_sweep_skip_next.png",
}
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _ms(x: float) -> str:
    return f"{1000 * x:.1f} ms" if x >= 1e-3 else f"{1e6 * x:.1f} us"


def _coverage_rows(cov: dict) -> list[tuple[str, str, str, str]]:
    """WCET coverage per plan, per timing arm (static calibration / the node's online timing)."""
    # Before the arms: one static arm at the top level.
    arms = {a: cov[a] for a in ("static", "online") if a in cov} or {"static": cov}
    runs = cov.get("runs_per_arm", cov.get("runs"))
    labels = {"static": "the stored calibration", "online": "online timing (the node's default)"}
    rows = []
    for arm, data in arms.items():
        for name, label in (("first_plan", "first plan (predicted prefill)"), ("replan", "re-plan (after prefill)")):
            c = data[name]
            rows.append((f"WCET coverage of the {label}, {labels[arm]}, {runs} runs forced to N_W, k = {cov['k']:g}",
                         f"{pct(c['coverage'])} (mean slack {pct(c['mean_slack_share'])}, "
                         f"worst {pct(c['min_slack_share'])})", ">= 99 %, mean slack <= 15 %", "wcet_coverage"))
    return rows


def bench_table(load: Callable[[str], dict]) -> str:
    """The engine benchmarks' table (make bench)."""
    ete, cov, dec = load("ete_mape.json"), load("wcet_coverage.json"), load("decode_overhead.json")
    ev, plan, kill, pred = load("eviction_share.json"), load("planning_time.json"), load("kill_latency.json"), \
        load("predictor_overhead.json")
    rows = [
        ("model, weights (dtype+quantization), threads",
         f"`{ete['model']}`, {ete.get('dtype', 'float32')}, {ete['threads']}", "", ""),
        (f"prefill time-model error, MAPE on {len(ete['lengths'])} fresh lengths",
         f"{ete['prefill_mape_pct']:.1f} % (calibration's held-out: {ete['calibration_prefill_mape_pct']:.1f} %)",
         "<= 3 % (paper: 1.22 % on a GPU)", "ete_mape"),
        ("decode-step time-model error, MAPE",
         f"{ete['decode_step_mape_pct']:.1f} % (calibration's held-out: {ete['calibration_decode_mape_pct']:.1f} %)",
         "<= 3 % (paper: 1.69 %)", "ete_mape"),
    ]
    rows += _coverage_rows(cov)
    same = f", both {dec['compared_dtype']} through transformers' forward" if "compared_dtype" in dec else ""
    rows.append((f"time per token, engine vs `model.generate`, both {dec['new_tokens']} tokens after "
                 f"{dec['prompt_tokens']} prompt tokens, alpha 0{same}",
                 f"{_ms(dec['engine_s_per_token']['median'])} vs {_ms(dec['generate_s_per_token']['median'])} "
                 f"({dec['engine_over_generate_pct']:+.1f} %)", "overhead < 5 %", "decode_overhead"))
    if "default_engine_s_per_token" in dec:
        lean = dec["default_engine_s_per_token"]["median"]
        rows.append((f"the same tokens on the default engine ({dec['default_dtype']}: the lean decode step)",
                     f"{_ms(lean)} ({dec['generate_s_per_token']['median'] / lean:.2f}x faster than `generate`)",
                     "", "decode_overhead"))
    for n, steps in dec["decode_step_s_by_prompt_and_alpha"].items():
        rows.append((f"decode step after a {n}-token prompt at alpha 0 / 0.5 / 0.9",
                     " / ".join(_ms(steps[a]) for a in ("0.0", "0.5", "0.9"))
                     + f" (speed-up {steps['0.0'] / steps['0.5']:.2f}x / {steps['0.0'] / steps['0.9']:.2f}x)", "",
                     "decode_overhead"))
    pre = load("prefill_overhead.json")
    checks = pre.get("cancel_checks", "before every attention block")
    stat = pre.get("statistic", "median")  # min: the fastest of each arm's runs
    rows.append((f"engine prefill (chunks of {pre['prefill_chunk']}, SnapKV, cancel checks {checks}) vs one "
                 f"plain forward, {pre['prompt_tokens']} tokens, {stat} of {pre['engine_s']['n']} runs each",
                 f"{pre['engine_s'][stat]:.3f} s vs {pre['one_forward_s'][stat]:.3f} s "
                 f"({pre['overhead_pct']:+.1f} %)", "overhead < 3 %", "prefill_overhead"))
    if len(pre.get("by_chunk", {})) > 1:
        rows.append(("the same per chunk size (chunk: overhead)", ", ".join(
            f"{c}: {v['overhead_pct']:+.1f} %" for c, v in pre["by_chunk"].items()), "", "prefill_overhead"))
    if "masked_attention" in pre:  # before core/attention.py: transformers' masked SDPA for later chunks
        rows.append((f"the same, chunks of {pre['prefill_chunk']} with transformers' masked attention instead of "
                     "the mask-free split", f"{pre['masked_attention']['engine_s'][stat]:.3f} s "
                     f"({pre['masked_attention']['overhead_pct']:+.1f} %)", "", "prefill_overhead"))
    for row in ev["rows"]:
        rows.append((f"eviction at alpha {ev['alpha']:g} / prefill, {row['n_x']} tokens",
                     f"{pct(row['evict_share_of_prefill'])} ({_ms(row['evict_s'])})", "< 5 %", "eviction_share"))
    rows.append(("one alpha* plan (median)", _ms(plan["plan_s"]["median"]), "< 1 ms", "planning_time"))
    runs = [("kill_latency", kill)]
    try:  # the same with one prefill chunk up to 2k tokens (bench/kill_latency.py --prefill-chunk 2048)
        runs.append(("kill_latency_chunk2048", load("kill_latency_chunk2048.json")))
    except FileNotFoundError:
        pass
    for source, run in runs:
        chunk = f", prefill_chunk {run['prefill_chunk']}" if run.get("prefill_chunk") else ""
        for phase, data in run["phases"].items():
            where = f"{run['long_prompt_tokens']}-token prompts" if phase == "prefill" else "short prompts"
            value = (f"{_ms(data['p50_s'])} / {_ms(data['p99_s'])}" if data["p99_s"] is not None
                     else f"no goal killed ({data['statuses']})")
            rows.append((f"kill latency during {phase} at {run['control_rate_hz']:g} Hz ({where}{chunk}; "
                         f"{run['goals_per_phase']} goals), p50 / p99",
                         value, f"<= one period + one step = {_ms(run['bound_s'])}", source))
    rows.append((f"length predictor beside prefill (`{pred.get('model', '?')}`, {pred['prompts']} test prompts): "
                 "hidden / prefill slow-down / inputs compressed",
                 f"{pct(pred['hidden_share'], 0)} / {pred['overhead_pct_median']:+.0f} % / "
                 f"{pct(pred['truncated_share'], 0)}", "", "predictor_overhead"))
    try:
        runs = machine_entries(load("llamacpp.json"))  # only after make bench-llamacpp
    except FileNotFoundError:
        runs = []
    for llama in runs:
        rows += llamacpp_rows(llama)
    lines = ["| what | measured | target | JSON (docs/results) |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d and f'`{d}.json`'} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def machine_entries(data: dict) -> list[dict]:
    """The runs of a per-machine JSON (PER_MACHINE), one per machine id, oldest format included."""
    return list(data["by_machine"].values()) if "by_machine" in data else [data]


def llamacpp_rows(llama: dict) -> list[tuple[str, str, str, str]]:
    """One machine's llama.cpp comparison rows, each naming the machine and our kernels."""
    rows, where = [], f"[{llama['machine']}]"
    for row in llama["rows"]:
        n = row["tokens"]
        rows.append((f"{where} prefill of {n} tokens, ours ({llama['dtype']}) vs llama.cpp "
                     f"({llama['llama_cpp_quantization']})",
                     f"{row['ours_prefill_s']:.3f} s vs {row['llama_cpp_prefill_s']:.3f} s "
                     f"({row['prefill_ratio_ours_over_llama_cpp']:.2f}x)", "ours faster (< 1x)", "llamacpp"))
        # "int4 x 120, int8 x 1; K/V float16" -> " (int4 x 120, int8 x 1 matrices; K/V float16)"
        matrices, _, cache = llama.get("decode_step_weights", "").partition("; ")
        weights = f" ({matrices} matrices{'; ' + cache if cache else ''})" if matrices else ""
        chosen = " chosen by calibration" if llama.get("kernel_choice") else ""
        rows.append((f"{where} decode step with a {n}-entry cache, ours{weights}{chosen} vs llama.cpp",
                     f"{_ms(row['ours_decode_step_s'])} vs {_ms(row['llama_cpp_decode_step_s'])} "
                     f"({row['decode_ratio_ours_over_llama_cpp']:.2f}x)", "<= 1.5x", "llamacpp"))
        if "ours_float_forward_decode_step_s" in row:
            plain = row["ours_float_forward_decode_step_s"]
            rows.append((f"{where} the same step before the lean step (transformers' forward, "
                         f"{llama['float_forward_dtype']} weights) vs llama.cpp",
                         f"{_ms(plain)} ({plain / row['llama_cpp_decode_step_s']:.2f}x)", "", "llamacpp"))
        if "ours_other_lean_decode_step_s" in row:
            rows.append((f"{where} the same step on {llama['other_lean_dtype']} weights (not the default) vs "
                         "llama.cpp", f"{_ms(row['ours_other_lean_decode_step_s'])} "
                         f"({row['other_lean_ratio_over_llama_cpp']:.2f}x)", "", "llamacpp"))
    return rows


# Full-cache targets for a task-competent target (issue 15; the summary's, issue 29)
QUALITY_TARGETS = {"qa": 0.8, "list": 0.6, "code": 0.35, "summary": 0.25}


def quality_targets(q: dict) -> str:
    """Whether each task measured meets its full-cache target and beats its no-context score,
    and how much the heaviest eviction measured costs it."""
    parts = []
    for task, target in QUALITY_TARGETS.items():
        if not (row := q["scores"].get(task)):
            continue
        heaviest = max((a for a in row if a != "no_context"), key=float)
        full, bare, heavy = row["0.0"], row["no_context"], row[heaviest]
        verdict = "met" if full >= target and full > bare else "not met"
        drop = f", {heavy:.3f} at alpha {float(heaviest):g}" if heaviest != "0.0" else ""
        parts.append(f"{task} {verdict} ({full:.3f} vs target {target}, {bare:.3f} without the context{drop})")
    return "Targets (issues 15, 29): " + "; ".join(parts) + ".\n"


# The default settings' run first; the others are measured against the float32 one.
WEIGHT_RUNS = ("quality_smollm2_tasks.json", "quality_smollm2_tasks_bfloat16.json",
               "quality_smollm2_tasks_int4.json", "quality_smollm2_tasks_float32.json")


def weights_table(load: Callable[[str], dict]) -> str:
    """The task suite on builtin:smollm2-tasks per dtype / quantization: scores with the full
    cache and at alpha 0.95, and how many answers equal float32's (the default is chosen here).
    Runs may have answered different numbers of prompts (--limit); every row is scored again
    from its answers on the prompts all runs share, so the rows compare like with like."""
    runs = {}
    for source in WEIGHT_RUNS:
        try:
            runs[source] = load(source)
        except FileNotFoundError:
            continue
    common = set.intersection(*({a["id"] for a in q["answers"]} for q in runs.values())) if runs else set()
    references = {ex.id: ex for ex in tasks.load("test")}
    float32 = next((q for q in runs.values() if q.get("dtype", "float32") == "float32"), None)
    reference = {(a["id"], a["alpha"]): a["answer"] for a in float32["answers"]} if float32 else {}
    lines = ["| weights (dtype+quantization) | qa F1: alpha 0 / 0.95 | code edit sim.: alpha 0 / 0.95 | "
             "list ROUGE-L: alpha 0 / 0.95 | answers equal to float32's | JSON |", "|---|---|---|---|---|---|"]
    for source, q in runs.items():
        scores = scores_on(q["answers"], common, references)
        cells = " | ".join(f"{scores[t]['0.0']:.3f} / {scores[t]['0.95']:.3f}" for t in ("qa", "code", "list"))
        same = [reference.get((a["id"], a["alpha"])) == a["answer"] for a in q["answers"]
                if (a["id"], a["alpha"]) in reference and a["id"] in common]
        lines.append(f"| {q.get('dtype', 'float32')} | {cells} | {sum(same)} of {len(same)} | `{source}` |")
    return "\n".join(lines) + f"\n\nScored on the {len(common)} test prompts every run answered.\n"


def scores_on(answers: list[dict], ids: set[str], references: dict[str, tasks.Example],
              alphas: tuple[float, ...] = (0.0, 0.95)) -> dict:
    """Task -> alpha (as in eval-quality's JSON) -> mean score of ANSWERS to the test prompts IDS,
    scored again against REFERENCES (test prompt id -> its Example)."""
    per: dict = {}
    for a in answers:
        if a["id"] in ids and a["alpha"] in alphas:
            ex = references[a["id"]]
            per.setdefault(ex.task, {}).setdefault(str(a["alpha"]), []).append(score(ex.task, a["answer"], ex.answer))
    return {task: {alpha: statistics.fmean(v) for alpha, v in d.items()} for task, d in per.items()}


def quality_table(load: Callable[[str], dict], source: str = "quality.json", targets: bool = False) -> str:
    """Task scores vs nominal alpha, with the alpha really applied (timebill eval-quality)."""
    q = load(source)
    alphas = [a for a in next(iter(q["scores"].values())) if a != "no_context"]
    metric = {"qa": "QA F1", "code": "edit similarity", "list": "ROUGE-L", "summary": "ROUGE-L"}
    head = "| task (metric) | " + " | ".join(f"alpha {float(a):g}" for a in alphas) + " | no context |"
    lines = [head, "|" + "---|" * (len(alphas) + 2)]
    for task, row in q["scores"].items():
        cells = " | ".join(f"{row[a]:.3f}" for a in alphas)
        lines.append(f"| {task} ({metric.get(task, task)}) | {cells} | {row['no_context']:.3f} |")
    for task, row in q.get("applied", {}).items():
        cells = " | ".join(f"{row[a]['applied_alpha']:.2f} ({row[a]['kept_tokens']:.0f} of "
                           f"{row[a]['prompt_tokens']:.0f})" for a in alphas)
        lines.append(f"| {task}: alpha applied (kept of prompt tokens, mean) | {cells} | |")
    agree = q["agreement_with_full_cache"]
    cells = " | ".join("1" if a == "0.0" else f"{sum(t[a] for t in agree.values()) / len(agree):.3f}" for a in alphas)
    lines.append(f"| agreement with the full-cache answer (ROUGE-L, mean of tasks) | {cells} | |")
    tail = f"\n\n{q['examples']} test prompts, model `{q['model']}` (`docs/results/{source}`).\n"
    return "\n".join(lines) + tail + ("\n" + quality_targets(q) if targets else "")


RLP_NAMES = {"buckets16": "SLM, 16-token buckets (TimeBill)", "buckets32": "SLM, 32-token buckets",
             "buckets64": "SLM, 64-token buckets", "regression": "SLM regression",
             "proxy5": "ProxyModel-style, 5 classes (small encoder, from scratch)",
             "s3_10": "S3-style, 10 classes (small encoder, from scratch)",
             "probe": "probe on the target's own prefill (ridge on one layer's state; reads the whole prompt)"}
OUR_SHORT = {"probe": "prefill probe", "buckets16": "SLM"}
RLP_SHORT = {"regression": "regression", "proxy5": "ProxyModel-5", "s3_10": "S3-10", "buckets32": "buckets32",
             "buckets64": "buckets64"}
REFERENCE_NAMES = {"task_mean": "reference: the task's mean length (knows the task)",
                   "task_and_length": "reference: linear fit on task + prompt length (knows the task)",
                   "task_and_answer": "oracle: linear fit on task + the reference answer's length (knows the answer)",
                   "task_and_asked": "ceiling of reading the instruction: fit on task + the count it asks for, "
                                     "per task (knows the task)"}


def rlp_table(load: Callable[[str], dict], source: str = "rlp.json") -> str:
    """Table 1: the length predictors (timebill train-rlp)."""
    r = load(source)
    capped = any(row["full_input"].get("below_cap") for row in r["predictors"].values())
    # Kendall's tau and the share within 50 tokens (issue 29) exist in results made since they were added.
    ranked = all("kendall_tau" in row["full_input"] for row in r["predictors"].values())
    lines = ["| predictor | MAE | RMSE | R^2 |" + (" Kendall tau | within 50 tokens | k |" if ranked else "")
             + " input compressed as served: MAE / R^2 / inputs compressed |"
             + (" without the answers that ran to the cap: MAE / R^2 |" if capped else ""),
             "|---|---|---|---|" + ("---|---|---|" if ranked else "") + "---|" + ("---|" if capped else "")]

    def ranks(f: dict, k: float | None = None) -> str:
        """Tau, the share within 50 tokens and the pessimism k (set on validation: k x N_hat covers 90 %)."""
        if not ranked:
            return ""
        if "kendall_tau" not in f:
            return " | | |"
        return f" {f['kendall_tau']:.3f} | {pct(f['within_50_share'], 0)} | {f'{k:.2f}' if k else ''} |"

    for name, row in r["predictors"].items():
        f, c = row["full_input"], row["compressed_input"]
        below = f.get("below_cap")
        k = row.get("pessimism_k")
        lines.append(f"| {RLP_NAMES.get(name, name)} | {f['MAE']:.1f} | {f['RMSE']:.1f} | {f['R2']:.3f} |{ranks(f, k)} "
                     f"{c['MAE']:.1f} / {c['R2']:.3f} / {pct(c['truncated_share'], 0)} |"
                     + (f" {below['MAE']:.1f} / {below['R2']:.3f} |" if capped and below else " |" if capped else ""))
    for name, f in r.get("references", {}).items():  # not predictors: what prompt features explain
        below = f.get("below_cap")
        lines.append(f"| _{REFERENCE_NAMES.get(name, name)}_ | {f['MAE']:.1f} | {f['RMSE']:.1f} | {f['R2']:.3f} |"
                     f"{ranks(f)} |" + (f" {below['MAE']:.1f} / {below['R2']:.3f} |" if capped and below
                                         else " |" if capped else ""))
    text = f"\n\n{r['test_examples']} test prompts, target `{r['target']}`."
    histories = {RLP_NAMES.get(n, n): row["training"]["val_mae_by_epoch"] for n, row in r["predictors"].items()
                 if row.get("training", {}).get("val_mae_by_epoch")}
    if histories:
        text += " Validation MAE by training epoch: " + "; ".join(
            f"{n} {' -> '.join(f'{m:.1f}' for m in h)}" for n, h in histories.items()) + "."
    if capped:
        f = next(iter(r["predictors"].values()))["full_input"]
        text += (f" {pct(f['capped_share'], 0)} of the test answers ran to the {r['max_new_tokens']}-token cap; "
                 f"they hold {pct(f['capped_variance_share'], 0)} of the lengths' variance.")
    if lengths := r.get("target_lengths"):  # does the target stop where its answer ends (issue 29)
        rows = [f"| {task} | {pct(row['capped_share'], 1)} | {row['corr_with_reference']:.2f} | "
                f"{row['mean_tokens']:.0f} ({row['reference_mean_tokens']:.0f}) |" for task, row in lengths.items()]
        text += ("\n\n| task | the target's answers at the cap | length correlation with the reference | "
                 "mean tokens (reference) |\n|---|---|---|---|\n" + "\n".join(rows))
    return "\n".join(lines) + text + "\n"


def rlp_layers_table(load: Callable[[str], dict]) -> str:
    """timebill rlp-layers: predictor time and prefill slow-down per backbone layer count."""
    r = load("rlp_layers.json")
    lines = ["| predictor layers | predictor time / prefill time (worst length) | prefill beside the predictor |",
             "|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['layers']} | {row['predictor_over_prefill']:.3f} | "
                     f"x{row['prefill_slowdown_beside']:.3f} |")
    chosen = r["chosen_layers"]
    return "\n".join(lines) + (f"\n\nTarget `{r['target']}`, {r['threads']} threads; rule: {r['rule']}: "
                               + (f"**{chosen} layers**." if chosen else "**no layer count meets it**.") + "\n")


def reliability_table(load: Callable[[str], dict]) -> str:
    """make load, make soak and make faults."""
    ld, sk = load("load.json"), load("soak.json")
    statuses = lambda d: ", ".join(f"{n} {name}" for name, n in d.items())  # noqa: E731
    past = ""
    if "ended_past_bound_at_the_node" in ld:
        past = (f"; ended later than deadline + control period + decode step ({_ms(ld['bound_s'])}): "
                f"{ld['ended_past_bound_at_the_node']} at the node (worst "
                f"{_ms(ld['worst_end_after_deadline_at_the_node_s'])} after its deadline), "
                f"{ld['ended_past_bound_at_the_client']} as the clients saw it (worst "
                f"{_ms(ld['worst_end_after_deadline_at_the_client_s'])}, DDS included)")
    rows = [f"| load (`{ld['model']}`, `{ld['machine']}`): {ld['clients']} clients, {ld['goals_sent']} goals in "
            f"{ld['seconds']:g} s | {statuses(ld['terminal_statuses'])}; lost {ld['lost']}; succeeded goals that "
            f"missed their deadline {ld['succeeded_deadline_misses']}; kill latency p50 "
            f"{_ms(ld['kill_latency_p50_s'])}, p99 {_ms(ld['kill_latency_p99_s'])}{past} |",
            f"| soak (`{sk['model']}`, `{sk['machine']}`): {sk['goals']} goals in a row | {statuses(sk['statuses'])}; "
            f"resident memory {sk['rss_growth_mb_per_100_goals_after_warmup']:+.2f} MB per 100 goals after warm-up; "
            f"threads {sk['threads_first_last'][0]} -> {sk['threads_first_last'][1]}; open files "
            f"{sk['fds_first_last'][0]} -> {sk['fds_first_last'][1]} |"]
    try:
        f = load("faults.json")
        k, r = f["killed_client"], f["node_restart"]
        rows.append(f"| a client killed mid-goal (`{f['model']}`, `{f['machine']}`) | the next goal from another "
                    f"client: {k['next_goal_status']} in {k['next_goal_seconds']:.2f} s; node alive: "
                    f"{k['node_alive']} |")
        rows.append(f"| the node stopped (SIGTERM) under `timebill send` (`{f['model']}`) | node exit "
                    f"{r['node_exit_code']}; `timebill send` exit {r['send_exit_code']} "
                    f"{r['send_returned_s_after_stop']:.2f} s after the stop, `{r['send_status_line']}`; after a "
                    f"restart `timebill send --wait-ready` exit {r['after_restart_send_exit_code']}, "
                    f"`{r['after_restart_status_line']}` |")
    except FileNotFoundError:
        pass
    try:
        fs = load("first_start.json")
        if "goals_while_starting" in fs:
            rows.append(f"| goals sent while the shipped node starts (`{fs['machine']}`; the first the moment "
                        f"`wait_for_server` returns, then one every {fs.get('probe_every_s', 1.0):g} s; first start "
                        f"and restart) | "
                        f"{fs['goals_while_starting']} answered REJECTED \"node is starting ...\": from sending to "
                        f"the result p50 {_ms(fs['answer_while_starting_p50_s'])}, worst "
                        f"{_ms(fs['answer_while_starting_max_s'])}; the first goals "
                        f"{' / '.join(_ms(x) for x in fs['first_goal_after_server_seen_s'])} |")
    except FileNotFoundError:
        pass
    return "| run | result |\n|---|---|\n" + "\n".join(rows) + "\n"


def demo_transcript(load: Callable[[str], dict], head: int = 4) -> str:
    """`make demo`'s output (scripts/demo.sh): the first feedback lines, the last, the result."""
    d = load("demo.json")
    lines = d["transcript"]
    feedback = [line for line in lines if line.startswith("[")]
    rest = [line for line in lines if not line.startswith("[")]
    shown = feedback if len(feedback) <= head + 1 else [*feedback[:head], "...", feedback[-1]]
    return (f"`make demo` on `{d['machine']}` ({d['time'][:10]}, `{d['model']}`, budget {d['budget_s']:g} s, "
            f"exit code {d['exit_code']}):\n\n```text\n" + "\n".join(shown + rest) + "\n```\n")


def node_overhead_table(load: Callable[[str], dict]) -> str:
    """bench/node_overhead.py: the node's phase times over the engine's in-process ones."""
    o = load("node_overhead.json")
    lines = [f"`{o['model']}` on `{o['machine']}`, {o['forced_tokens']} forced tokens, {o['repeats']} pairs a case, "
             "alternating node and in-process goal by goal; median of the per-pair ratios.\n",
             "| case | prefill, node / in-process | decode step, node / in-process | in-process step |",
             "|---|---|---|---|"]
    for case, r in [*o["by_case"].items(), ("all", {"node_over_in_process_prefill": o["node_over_in_process_prefill"],
                                                    "node_over_in_process_step": o["node_over_in_process_step"]})]:
        step = f"{r['in_process_step_ms']:.1f} ms" if "in_process_step_ms" in r else ""
        lines.append(f"| {case} | {r['node_over_in_process_prefill']:.2f}x | {r['node_over_in_process_step']:.2f}x "
                     f"| {step} |")
    return "\n".join(lines) + "\n"


def timing_under_load_table(load: Callable[[str], dict], name: str = "timing_under_load.json") -> str:
    """bench/timing_under_load.py: each online estimator's promises through the node, per load phase."""
    t = load(name)
    lines = [f"`{t['model']}` on `{t['machine']}`, {t['per_phase']} goals per phase sent to each node (forced "
             f"arm: {t['forced_tokens']} tokens under skip_next; natural arm: up to {t['natural_max_tokens']} "
             "tokens under kill).\n",
             "| estimator | phase | first-plan coverage (forced) | mean slack | fixed bound's slack (floor) | "
             "broken promises (natural) | natural completion | alpha in (0, alpha_max) | re-plans | goals to adapt |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def cell(value, fmt="{:.0f} %"):
        return "n/a" if value is None else fmt.format(value)
    for est, data in t["estimators"].items():
        for phase, r in [("all", data["overall"]), *data["phases"].items()]:
            floor = oracle_slack_pct(t, est, phase) if phase != "all" else None
            lines.append(f"| {est} | {phase.replace('_', ' ')} | {cell(r['first_plan_coverage_pct'], '{:.1f} %')} "
                         f"({r['forced_measured']}) | {cell(r['mean_slack_pct'])} | {cell(floor)} | "
                         f"{r['broken_promises']} of {r['natural_promised']} "
                         f"({cell(r['broken_promises_pct'], '{:.1f} %')}) | "
                         f"{cell(r['natural_completion_pct'])} | {cell(r['alpha_strictly_inside_pct'])} | "
                         f"{r['replanned']} | {cell(r.get('goals_to_adapt'), '{}')} |")
    return "\n".join(lines) + ("\n\nFixed bound's slack: the mean slack of one bound fixed for the whole phase at "
                                "the 99 % quantile of its forced goals' own time over the fit, known in advance "
                                "(an oracle): what a steady bound with that coverage cannot go below on this "
                                "phase's noise. n/a without the fit in the JSON.\n")


def oracle_slack_pct(t: dict, estimator: str, phase: str, cover: float = 0.99) -> float | None:
    """The mean slack (%, over the goals it covers, as the node's) of an oracle's fixed bound on
    PHASE's forced goals of ESTIMATOR's node in T (bench/timing_under_load.py's JSON): the fit
    times the COVER quantile of the goals' own measured / fit ratios (prefill raised by the
    predictor's contention, eviction at the first plan's alpha, the forced tokens). None when T
    predates the fit."""
    from timebill_ros.core.timing import TimingModel

    if "calibration_fit" not in t:
        return None
    fit = TimingModel(**t["calibration_fit"]).scaled(max(1.0, t.get("prefill_contention", 1.0)), 1.0)
    goals = [g for g in t["goals"][estimator][phase] if g["arm"] == "forced" and g["first_wcet_s"]]
    if not goals:
        return None
    ratios = sorted(g["total_s"] / fit.goal_time(g["prompt_tokens"], g["first_alpha"], t["forced_tokens"])
                    for g in goals)
    bound = statistics.quantiles(ratios, n=100, method="inclusive")[round(100 * cover) - 1] if len(ratios) > 1 \
        else ratios[0]
    return 100.0 * statistics.fmean(1.0 - r / bound for r in ratios if r <= bound)


def timing_headline(tl: dict) -> tuple[str, str, str, str]:
    """The headline row of bench/timing_under_load.py: the node's default estimator, as issue 28
    states its targets (coverage overall and in the worst phase, slack when idle, promises)."""
    from timebill_ros.node.params import NodeParams

    est = NodeParams().timing_estimator
    est = est if est in tl["estimators"] else next(iter(tl["estimators"]))
    data = tl["estimators"][est]
    c, phases = data["overall"], data["phases"]
    worst = min(r["first_plan_coverage_pct"] for r in phases.values() if r["first_plan_coverage_pct"] is not None)
    idle = " / ".join(f"{phases[p]['mean_slack_pct']:.0f}" for p in ("idle", "idle_again") if p in phases)
    return (f"`{est}` bound, node, {c['goals']} goals, changing load: coverage of forced N_W (worst phase), "
            "idle / idle-again slack, broken promises",
            f"{c['first_plan_coverage_pct']:.1f} % ({worst:.1f} %), {idle} %, {c['broken_promises']} of "
            f"{c['natural_promised']}", ">= 99 % (97 %), <= 25 %, <= 1 %", tl["machine"])


def noise_floor_table(load: Callable[[str], dict]) -> str:
    """bench/noise_floor.py beside the time model's error on fresh lengths (ete_mape)."""
    nf = load("noise_floor.json")
    try:
        ete = load("ete_mape.json")
    except FileNotFoundError:
        ete = {}
    lag = nf["predicted_from_runs_seconds_before"]
    rows = ["| phase | error predicting a run from identical runs "
            f"{lag[0] / 60:g}-{lag[1] / 60:g} min earlier (noise floor) | time model on fresh lengths (ete_mape) |",
            "|---|---|---|"]
    for phase, key in (("prefill", "prefill_mape_pct"), ("decode_step", "decode_step_mape_pct")):
        d = nf[phase]
        fit = f"{ete[key]:.1f} %" if key in ete else "n/a"
        rows.append(f"| {phase.replace('_', ' ')} ({d['min_s'] * 1000:.1f}-{d['max_s'] * 1000:.1f} ms over "
                    f"{nf['minutes']:g} min) | mean {d['mean_pct']:.1f} %, p90 {d['p90_pct']:.1f} % ({d['runs']} runs) "
                    f"| {fit} |")
    if "prefill_mape_under_100_tokens_pct" in ete:
        rows.append(f"| prefill under 100 tokens | | {ete['prefill_mape_under_100_tokens_pct']:.1f} % |")
    return f"`{nf['model']}`, {nf['prompt_tokens']}-token prefill + {nf['decode_steps']} steps, " \
           f"`{nf['machine']}`.\n\n" + "\n".join(rows) + "\n"


def tracker_replay_table(load: Callable[[str], dict]) -> str:
    """bench/tracker_replay.py: the bound replayed on the measured idle noise."""
    tr = load("tracker_replay.json")
    rows = ["| bound | prefill share of the goal | eta | goals missed | mean slack |", "|---|---|---|---|---|"]
    for r in tr["rows"]:
        rows.append(f"| {r['variant'].replace('_', '-')} | {r['prefill_share']:g} | {r.get('eta', 'n/a')} | "
                    f"{r['miss_pct']:.1f} % | {r['mean_slack_pct']:.1f} % |")
    return (f"Replayed on `{tr['source']}` (measured on `{tr['source_machine']}`), {tr['rows'][0]['goals']} goals, "
            f"target miss rate {tr['target_miss_pct']:g} %.\n\n" + "\n".join(rows) + "\n")


def structured_table(load: Callable[[str], dict]) -> str:
    """bench/structured_bench.py."""
    st = load("structured.json")
    rows = [("tokenizer compiled for the grammar library (once per node)", f"{st['tokenizer_build_s']:.2f} s"),
            *[(f"compile `{name}` (its longest answer in tokens)",
               f"{_ms(c['median_s'])} ({c['longest_tokens'] if c['longest_tokens'] else 'unbounded'})")
              for name, c in st["compile"].items()],
            ("mask per decode step (median over the task's steps) / a decode step at 512 cached tokens",
             f"{_ms(st['mask_step_s_median'])} / {_ms(st['decode_step_s_at_512'])} "
             f"({st['mask_share_of_step_at_512_pct']:.1f} %; target < 10 %)"),
            (f"robot-command task, {st['prompts']} prompts: valid / exact match",
             f"{st['valid_pct']:.0f} % / {st['exact_match_pct']:.0f} %"),
            ("WCET coverage with N_W from the schema (first plan)", f"{st['wcet_coverage_pct']:.0f} % "
             f"({st['n_w_from_schema']} of {st['prompts']} planned from the schema)")]
    return (f"`{st['model']}`, {st['library']}, `{st['machine']}`.\n\n| what | measured |\n|---|---|\n"
            + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n")


def online_table(load: Callable[[str], dict]) -> str:
    """make bench's online-timing run: static vs online calibration, per load phase."""
    o = load("online_timing.json")
    lines = [f"Model `{o['model']}`, {o['tokens_per_goal']} tokens per goal, prompts {o['prompt_lengths']} tokens, "
             f"window {o['window']}, load on core {o['load_core']}.\n",
             "| phase | arm | goals | first-plan WCET coverage (all / from the 3rd goal) | broken promises "
             "(planned feasible, ran late) | late in all | mean alpha | slow-down planned with (prefill / decode) "
             "| goals to adapt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for phase in ("idle", "loaded", "idle_again"):
        for arm in ("static", "online"):
            r = o["arms"][arm][phase]
            lines.append(f"| {phase.replace('_', ' ')} | {arm} | {r['goals']} | {r['first_plan_coverage_pct']:.0f} % "
                         f"/ {r['first_plan_coverage_from_goal_3_pct']:.0f} % "
                         f"| {r['broken_promises']} | {r['late']} | {r['mean_alpha']:.2f} "
                         f"| {r['mean_prefill_factor']:.2f} / {r['mean_decode_factor']:.2f} "
                         f"| {r['goals_to_adapt'] if arm == 'online' else '(does not adapt)'} |")
    online = o["arms"]["online"]
    coverage = [online[ph]["first_plan_coverage_pct"] for ph in ("idle", "loaded", "idle_again")]
    # Load on: goals until every later first plan covered its goal. Load off: goals until the
    # planned slow-down came back within 25 % of where it stood at the end of the idle phase.
    level = lambda run: max(run["prefill_factor"], run["decode_factor"])  # noqa: E731
    idle = level(online["idle"]["runs"][-1])
    back = next((i for i, run in enumerate(online["idle_again"]["runs"]) if level(run) <= 1.25 * idle),
                len(online["idle_again"]["runs"]))
    adapt = [online["loaded"]["goals_to_adapt"], back]
    lines += ["", f"Goals (online model): first-plan coverage >= 99 % in every phase: "
              f"{'met' if min(coverage) >= 99 else 'not met'} ({' / '.join(f'{c:.0f} %' for c in coverage)}); "
              f"adaptation within 5 goals after each change: {'met' if max(adapt) <= 5 else 'not met'} "
              f"({adapt[0]} goals after the load started, until every later first plan covered its goal; "
              f"{adapt[1]} after it stopped, until the slow-down was back within 25 % of the idle phase's "
              f"{idle:.2f})."]
    lines += ["", "Estimators replayed on the static arm's per-goal slow-down ratios (share of goals whose "
              "ratio the estimate from the goals before it, times the calibration margin, bounded; mean "
              "over-estimate):", "", "| estimator | prefill bounded / over | decode bounded / over |",
              "|---|---|---|"]
    replay = o["estimator_replay"]
    for name in replay["prefill"]:
        cells = [f"{replay[ph][name]['bounded_pct']:.0f} % / {replay[ph][name]['mean_overestimate_pct']:+.0f} %"
                 for ph in ("prefill", "decode")]
        lines.append(f"| {name.replace('_', ' ')} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def params_table(load: Callable[[str], dict] | None = None) -> str:
    """The node's parameters, from their one definition (node.params.NodeParams)."""
    from dataclasses import fields

    from timebill_ros.node.params import NodeParams

    lines = ["| parameter | default | allowed | while serving | meaning |", "|---|---|---|---|---|"]
    for f in fields(NodeParams):
        meta = f.metadata
        if meta["choices"]:
            allowed = ", ".join(f"`{c}`" if c else '""' for c in meta["choices"])
        elif meta["low"] is not None:
            allowed = f"{meta['low']:g} .. {meta['high']:g}"
        else:
            allowed = {bool: "true, false", str: "text"}.get(type(f.default), "")
        default = f"`{f.default}`" if f.default != "" else '""'
        if isinstance(f.default, bool):
            default = f"`{str(f.default).lower()}`"
        changes = "yes" if meta["runtime"] else "read-only"  # the note under the table names the command
        lines.append(f"| `{f.name}` | {default} | {allowed} | {changes} | {meta['description'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def headline_table(load: Callable[[str], dict]) -> str:
    """The README's few headline rows, each naming the machine and the settings it was measured with."""
    rows: list[tuple[str, str, str, str]] = []

    def optional(name: str) -> dict | None:
        try:
            return load(name)
        except FileNotFoundError:
            return None

    for llama in machine_entries(optional("llamacpp.json") or {"by_machine": {}}):
        steps = " / ".join(f"{r['decode_ratio_ours_over_llama_cpp']:.2f}x" for r in llama["rows"])
        prefill = " / ".join(f"{r['prefill_ratio_ours_over_llama_cpp']:.2f}x" for r in llama["rows"])
        lengths = " / ".join(str(r["tokens"]) for r in llama["rows"])
        rows.append((f"decode step / prefill vs llama.cpp, SmolLM2 at {lengths} tokens "
                     f"({llama.get('decode_step_weights', llama['dtype'])})", f"{steps} / {prefill}",
                     "<= 1.5x / < 1x", llama["machine"]))
    if kill := optional("kill_latency.json"):
        p99 = " / ".join(f"{_ms(d['p99_s'])}" for d in kill["phases"].values() if d["p99_s"] is not None)
        rows.append((f"kill latency p99 after the deadline ({' / '.join(kill['phases'])}, `{kill['model']}`)", p99,
                     f"<= {_ms(kill['bound_s'])}", kill["machine"]))
    if cov := optional("wcet_coverage.json"):
        arms = " / ".join(pct(cov[a]["first_plan"]["coverage"]) for a in ("static", "online") if a in cov)
        rows.append(("first plan's WCET coverage, static / online timing (goals forced to N_W)", arms, ">= 99 %",
                     cov["machine"]))
    if tl := optional("timing_under_load.json"):
        rows.append(timing_headline(tl))
    # The newest target's Table 1 once it is published (v9, issue 29), else v3's.
    if rlp := optional("rlp_smollm2_tasks_v9.json") or optional("rlp_smollm2_tasks_v3.json"):
        rows.append(predictor_headline(rlp))
    # make eval's run, then make eval-large's (twice the prompts) where it was published.
    for name in ("traces_eval.json", "traces_eval_large.json"):
        if tr := optional(name):
            rows.append(comparison_headline(tr))
    if st := optional("structured.json"):
        rows.append(("structured answers: valid / mask over a decode step at 512 tokens",
                     f"{st['valid_pct']:.0f} % / {st['mask_share_of_step_at_512_pct']:.1f} %", "100 % / < 10 %",
                     st["machine"]))
    if fs := optional("first_start.json"):
        rows.append(("shipped node, no calibration: start to first served goal (first start / restart)",
                     f"{fs['first_start_to_served_s']:.0f} s / {fs['restart_to_served_s']:.0f} s", "< 90 s",
                     fs["machine"]))
    if first := optional("first_goal.json"):
        rows.append((f"a fresh node's first goal's prefill over its fifth's (`{first['model']}`, "
                     f"{first['nodes']} nodes)", f"{first['first_over_fifth_median']:.2f}x (worst "
                     f"{first['first_over_fifth_max']:.2f}x)", f"<= {first['target']:g}x", first["machine"]))
    if ld := optional("load.json"):
        past = ld.get("ended_past_bound_at_the_node")
        rows.append((f"load: {ld['clients']} clients x {ld['goals_sent']} goals (`{ld['model']}`)",
                     f"lost {ld['lost']}" + (f", ended past deadline + period + step {past}" if past is not None
                                            else ""), "0, 0", ld["machine"]))
    if sk := optional("soak.json"):
        rows.append((f"soak: {sk['goals']} goals (`{sk['model']}`), resident memory growth",
                     f"{sk['rss_growth_mb_per_100_goals_after_warmup']:+.2f} MB per 100 goals", "< 1 MB",
                     sk["machine"]))
    lines = ["| what | measured | target | machine |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | `{d}` |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def predictor_headline(r: dict) -> tuple[str, str, str, str]:
    """Table 1's headline (issue 29): our predictors' R^2 and rank correlation (the probe on
    the target's prefill where measured, then the 16-bucket SLM) against the best baseline and
    the ceiling of reading the instruction's count."""
    rows = r["predictors"]
    ours = [(name, rows[name]["full_input"]) for name in ("probe", "buckets16") if name in rows]
    others = {n: row["full_input"]["R2"] for n, row in rows.items() if n not in dict(ours)}
    best = max(others, key=others.get) if others else None
    parts = [f"best baseline {RLP_SHORT.get(best, best)} {others[best]:.2f}" if best else "no baseline measured"]
    if ceiling := r.get("references", {}).get("task_and_asked"):
        parts.append(f"instruction ceiling {ceiling['R2']:.2f}")
    version = re.search(r"\+smollm2-tasks-(v\d+)", r.get("target", ""))  # which shipped adapter it was distilled from
    target = version.group(1) if version else "fine-tuned"
    names = " / ".join(OUR_SHORT[name] for name, _ in ours)
    r2 = " / ".join(f"{f['R2']:.2f}" for _, f in ours)
    tau = " / ".join(f"{f['kendall_tau']:.2f}" for _, f in ours)
    return (f"length predictor on the {target} target ({r['test_examples']} test prompts): R^2, Kendall tau ({names})",
            f"{r2} ({'; '.join(parts)}), {tau}", ">= 0.72, ahead of baselines", r.get("machine", "-"))


def comparison_headline(r: dict, policy: str = "kill") -> tuple[str, str, str, str]:
    """The paper's comparison (issue 29) from traces, as its three claims and the node check."""
    c = r["claims"][policy]
    agree = r.get("node_agreement", {}).get("agree_pct")
    k = f"k {r['timebill_k']:g}" + (" chosen on validation" if r.get("timebill_k_from") == "validation" else "")
    replan = r.get("in_goal_replan_kill")
    return (f"comparison under {policy.replace('_', '-').title()} (`{r['model']}`, {r['per_task']} prompts a task, "
            f"{k}): levels >= every fixed alpha / gap to true length / completion vs fixed 0.95 / node agrees"
            + ("; the same with in-goal re-plan" if replan and policy == "kill" else ""),
            _three_claims(c) + " / " + (f"{agree:.1f} %" if agree is not None else "not checked")
            + (f"; {_three_claims(replan['claims'])}" if replan and policy == "kill" else ""),
            ">= 4 of 5 / <= 0.05 / <= 5 pts / >= 95 %", r.get("machine", "-"))


def _three_claims(c: dict) -> str:
    """The comparison's three claims (eval.traces.claims) in a headline cell: levels ahead,
    the widest gap to the true-length arm, the widest completion gap to fixed 0.95."""
    ahead = c["ahead_of_every_fixed_alpha"]
    gap = max(c["within_0.05_of_true_length"]["true_length_minus_timebill"].values())
    done = max(abs(g) for g in c["completion_within_5_pts_of_fixed_0.95"]["timebill_minus_fixed_0.95_pts"].values())
    return f"{len(ahead['levels_held'])} of {len(ahead['per_level'])} / {gap:.2f} / {done:.0f} pts"


def traces_table(load: Callable[[str], dict], policy: str = "kill", source: str = "traces_eval.json") -> str:
    """The comparison from measured traces (timebill eval-traces, SOURCE): score (standard error)
    / completion per method and level (under Kill, then the hindsight ceiling), then the claims,
    what adapting alpha could buy and the node-agreement check."""
    r = load(source)
    methods = r["table"][policy]
    levels = list(next(iter(methods.values())))
    seconds = {lv: statistics.fmean(r["levels"][t][lv] for t in r["levels"]) for lv in levels}
    lines = [f"| method ({policy.replace('_', '-').title()}) | "
             + " | ".join(f"{lv} (mean {seconds[lv]:.1f} s)" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name, cells in methods.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{c['score']:.3f} ({c['score_se']:.3f}) / {pct(c['completion'], 0)} / "
            + ("-" if c["alpha_mean"] is None else f"{c['alpha_mean']:.2f}") for c in cells.values()) + " |")
    ceiling = r.get("hindsight_kill") if policy == "kill" else None
    if ceiling:
        lines.append("| *hindsight: each prompt's best alpha (ceiling)* | " + " | ".join(
            f"{c['score']:.3f} ({c['score_se']:.3f}) / {pct(c['completion'], 0)} / {c['alpha_mean']:.2f}"
            for c in ceiling.values()) + " |")
    n = next(iter(next(iter(methods.values())).values()))["n"]
    share = ", ".join(f"{t} {pct(v, 0)}" for t, v in r["decode_share_of_vanilla"].items())
    span = "-".join(map(str, r["prompt_tokens"])) if isinstance(r["prompt_tokens"], list) else r["prompt_tokens"]
    k = f"k {r['timebill_k']:.2f}" + (", chosen on validation" if r.get("timebill_k_from") == "validation" else "")
    text = (f"\n\nTarget `{r['model']}`, predictor `{r['predictor']}` ({k}); {n} goals a cell "
            f"({r['per_task']} prompts a task, prompts of {span} tokens); alphas measured "
            f"{', '.join(f'{a:g}' for a in r['alpha_grid'])} (planned alphas rounded up to them); vanilla's decode "
            f"share of its time: {share}. Cells: mean score (standard error) / completion / mean alpha."
            f"{_measured_on(r)}\n")
    claims = r.get("claims", {}).get(policy, {})
    for claim, row in claims.items():
        if isinstance(row, dict):
            numbers = {k: v for k, v in row.items() if k != "held"}
            text += f"\n- {claim.replace('_', ' ')}: **{'held' if row['held'] else 'not held'}** ({_brief(numbers)})"
    if policy == "kill" and (paired := r.get("paired_gaps_kill")):
        text += ("\n- TimeBill minus the level's best fixed alpha, goal by goal on the same prompts (paired standard "
                 "error): " + ", ".join(f"{lv} {g['difference']:+.3f} ({g['paired_se']:.3f})"
                                        for lv, g in paired.items()) + _decided(paired))
    if policy == "kill" and (done := r.get("completion_gaps_kill")):
        text += ("\n- TimeBill's completion minus fixed 0.95's, goal by goal (paired standard error), points: "
                 + ", ".join(f"{lv} {g['difference']:+.1f} ({g['paired_se']:.1f})" for lv, g in done.items())
                 + _decided(done))
    if ceiling and (ahead := claims.get("ahead_of_every_fixed_alpha")):
        headroom = {lv: ceiling[lv]["score"] - row["best_fixed_score"] for lv, row in ahead["per_level"].items()}
        text += ("\n- what choosing alpha per prompt could buy at all (hindsight minus the best fixed alpha): "
                 + ", ".join(f"{lv} {v:+.3f}" for lv, v in headroom.items()))
    if agree := r.get("node_agreement"):
        text += (f"\n- the node and the traces agree on complete / incomplete for {agree['agree_pct']:.1f} % of "
                 f"{agree['goals']} goals replayed through bags (target >= 95 %); traces complete where the node "
                 f"was not: {agree['trace_complete_node_not']}, the reverse: {agree['node_complete_trace_not']}")
        if agree.get("node_over_trace_prefill"):  # why they disagree mostly one way
            text += (f"; the node ran the same prefill {agree['node_over_trace_prefill']:.2f}x and decode "
                     f"{agree['node_over_trace_decode']:.2f}x the traces' time (medians)")
        if (clear := agree.get("clear_of_deadline")) and clear["goals"]:  # the rest are the host's coin flips
            text += (f"; on the {clear['goals']} goals whose traced work ends more than {pct(clear['near'], 0)} of "
                     f"the budget from the deadline they agree on {clear['agree_pct']:.1f} %")
        if (same := agree.get("at_node_prefill")) and same["goals"]:  # the host's prefill pace taken out
            text += (f"; with each goal's traced outcome recomputed from the prefill the node took, on "
                     f"{same['agree_pct']:.1f} % of {same['goals']}")
        if itself := agree.get("node_with_itself"):  # what the host's noise alone flips
            text += (f"; the same goals replayed through the node again: the node agrees with itself on "
                     f"{itself['agree_pct']:.1f} % of {itself['goals']} (about the most any prediction of its "
                     f"outcome can reach on this host), and that second run with the traces on "
                     f"{itself['again_with_traces_pct']:.1f} %")
    return "\n".join(lines) + text + "\n"


def _decided(paired: dict) -> str:
    """Which paired differences lie two standard errors from 0, and how many goals a level the
    others would need at their spread (eval.traces.goals_to_decide); "" for files before it."""
    rows = {lv: g for lv, g in paired.items() if "decided" in g}
    if not rows:
        return ""
    decided = [lv for lv, g in rows.items() if g["decided"]]
    need = [f"{lv} ~{g['goals_to_decide']:,}" for lv, g in rows.items() if not g["decided"] and g["goals_to_decide"]]
    return (f"; decided (two paired standard errors from 0) at {', '.join(decided) or 'no level'}"
            + (f"; goals a level the rest would need at this spread: {', '.join(need)}" if need else ""))


def _decided_at(paired: dict) -> str:
    """The levels of PAIRED (eval.traces.paired_gaps) whose difference is decided, in words."""
    return ", ".join(f"{lv} ({g['difference']:+.3g})" for lv, g in paired.items() if g["decided"]) or "no level"


def _measured_on(r: dict) -> str:
    """Where and how steadily the traces were measured (older files lack some of it)."""
    text = f" Measured on `{r['machine']}`" if r.get("machine") else ""
    if samples := r.get("prefill_samples"):
        text += f"; each prompt's prefill the median of {samples} measured"
    if pace := r.get("machine_pace"):
        text += (f"; prefill ran {pace['prefill_over_fit_min']:.2f}-{pace['prefill_over_fit_max']:.2f}x the "
                 f"plan's time model across prompts ({'steady' if pace['steady'] else 'NOT steady: a slow spell'})")
        if "decode_over_plan_median" in pace:  # how often a plan to the deadline's edge is late
            text += (f", a decode of {pace['decode_min_tokens']} tokens or more {pace['decode_over_plan_median']:.2f}x "
                     f"(median; 90th percentile {pace['decode_over_plan_p90']:.2f}x, most "
                     f"{pace['decode_over_plan_max']:.2f}x; {pct(pace['decode_over_plan_share'], 0)} over 1)")
        if "decode_over_calibration" in pace:  # the margins apart from the host's pace
            text += (f"; against the calibration's fit without its margins, prefill ran "
                     f"{pace['prefill_over_calibration']:.2f}x and decode {pace['decode_over_calibration']:.2f}x "
                     f"(medians: the host's pace against its calibration's)")
    return text + "." if text else ""


def traces_mechanism_table(load: Callable[[str], dict], shown: tuple[str, ...] = ("0", "0.5", "0.75", "0.9", "0.95"),
                           source: str = "traces_eval.json") -> str:
    """Why the comparison comes out as it does (eval.traces.mechanism): per task and alpha,
    without deadlines, the score, the time over vanilla's (and its decode step's and answer
    length's, when measured) and the answers run to the cap; then how well N_hat knew the length."""
    r = load(source)
    if not (mech := r.get("mechanism")):
        return "_Not measured: this traces_eval.json predates the mechanism figures._\n"
    lines = ["| task | " + " | ".join(f"alpha {a}" for a in shown) + " | N_hat MAE (true mean) | k x N_hat covers |",
             "|---|" + "---|" * len(shown) + "---|---|"]
    for task, m in mech.items():
        cells = [f"{m['score_by_alpha'][a]:.2f} / {m['time_over_vanilla_by_alpha'][a]:.2f}x{_split(m, a)} / "
                 f"{pct(m['capped_share_by_alpha'][a], 0)}" if a in m["score_by_alpha"] else "-" for a in shown]
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {m['n_hat_mae']:.1f} ({m['true_tokens_mean']:.0f}) | "
                     f"{pct(m['k_n_hat_covers_share'], 0)} |")
    return ("\n".join(lines) + f"\n\nThe same {r['per_task']} prompts a task, no deadline. Cells: mean score / mean "
            "time over vanilla's on the same prompt (in brackets, medians over the prompts: the decode step's "
            "over vanilla's, the answer's length over vanilla's) / answers run to the cap. k = "
            f"{r['timebill_k']:.2f}.\n")


def _split(mech: dict, alpha: str) -> str:
    """The "(step x, length x)" split of ALPHA's time over vanilla's, when the mechanism measured it."""
    step, length = (mech.get(f"{what}_over_vanilla_by_alpha", {}).get(alpha) for what in ("step", "length"))
    if step is None or length is None:
        return ""
    return f" ({step:.2f}x, {length:.2f}x)"


def traces_by_task_table(load: Callable[[str], dict]) -> str:
    """The Kill table's scores split by task (eval.traces.by_task): TimeBill, the true-length
    arm and the best fixed alpha (vanilla included) of that task at each level."""
    r = load("traces_eval.json")
    if not (tasks := r.get("by_task")):
        return "_Not measured: this traces_eval.json predates the per-task split._\n"
    levels = list(next(iter(tasks.values()))["timebill"])
    lines = ["| task | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for task, methods in tasks.items():
        cells = []
        for level in levels:
            score = {m: cell[level]["score"] for m, cell in methods.items()}
            best = best_fixed(methods, level)
            cells.append(f"{score['timebill']:.2f} / {score['timebill_true_length']:.2f} / "
                         f"{score[best]:.2f} ({best.replace('fixed_', '')})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + f"\n\nUnder Kill, {r['per_task']} prompts a task. Cells: mean score of TimeBill / "
            "the true-length arm / the best fixed alpha of that task and level (which).\n")


def traces_k_sweep_table(load: Callable[[str], dict], source: str = "traces_eval.json",
                         validation: str | None = "traces_eval_validation.json") -> str:
    """TimeBill under Kill planned with each pessimism k on the same traces (eval.traces.k_sweep):
    its score per level and the three claims with it in TimeBill's place; the node's k and the k
    VALIDATION's run (eval-traces --split validation) scores best with are marked."""
    r = load(source)
    if not (sweep := r.get("k_sweep")):
        return "_Not measured: this traces_eval.json predates the k sweep._\n"
    chosen = validation_k(load, validation, r) if validation and validation != source else None
    levels = list(next(iter(sweep.values()))["cells"])
    lines = ["| k | " + " | ".join(levels) + " | levels ahead of every fixed alpha | largest gap to true length "
             "| completion vs fixed 0.95 (level furthest) |", "|---|" + "---|" * (len(levels) + 3)]
    for k, row in sweep.items():
        c = row["claims"]
        gaps = c["within_0.05_of_true_length"]["true_length_minus_timebill"].values()
        completion = c["completion_within_5_pts_of_fixed_0.95"]["timebill_minus_fixed_0.95_pts"].values()
        marks = [m for m, hit in (("the node's", abs(float(k) - r["timebill_k"]) < 1e-9),
                                  ("best on validation", chosen is not None and abs(float(k) - chosen) < 1e-9)) if hit]
        lines.append(f"| {k}{' (' + ', '.join(marks) + ')' if marks else ''} | "
                     + " | ".join(f"{row['cells'][lv]['score']:.3f}" for lv in levels)
                     + f" | {len(c['ahead_of_every_fixed_alpha']['levels_held'])} of {len(levels)} "
                     f"| {max(gaps):.3f} | {max(completion, key=abs):+.0f} pts |")
    where = ("the test prompts themselves: it shows what each k does here, and chooses nothing"
             if r.get("split", "test") == "test" else "the validation prompts: the k to plan the test prompts with is "
             f"the best mean over the levels, {r['best_k']['k']:g}")
    note = ("" if chosen is None else f" Best on validation: the k with the best mean score over the levels on the "
            f"validation split's own traces ({validation}), {chosen:g}: chosen for what this target loses to eviction "
            "and to kills, where the node's looks at the lengths alone.")
    return ("\n".join(lines) + f"\n\nUnder Kill, {r['per_task']} prompts a task, mean score per level; the "
            f"node plans with k = {r['timebill_k']:g}, {k_origin(r)}. Swept on {where}.{note}\n")


def k_origin(report: dict) -> str:
    """Where a traces report's k came from: the node's k parameter (the validation split's choice,
    or another), or its predictor's rule."""
    if report.get("timebill_k_from") == "validation":
        return "set by the node's k parameter to the k that scored best on the validation split's prompts"
    if report.get("timebill_k_from") == "parameter":
        return "set by the node's k parameter"
    return "its predictor's (90 % of the validation answers within k x N_hat)"


def validation_k(load: Callable[[str], dict], validation: str, report: dict) -> float | None:
    """The k VALIDATION's traces score best with (eval.traces.best_k) when they were made for
    REPORT's target and predictor (`eval.traces.validation_choice`, as `make eval` takes it);
    None where not measured or made for another."""
    try:
        return validation_choice(load(validation), report.get("model"), report.get("predictor_digest"))
    except FileNotFoundError:
        return None


def traces_plan_loss_table(load: Callable[[str], dict], source: str = "traces_eval.json") -> str:
    """Where the plans lose score under Kill (eval.traces.plan_losses): each goal's planned alpha
    against the least eviction that would have finished it."""
    r = load(source)
    if not (losses := r.get("plan_losses_kill")):
        return "_Not measured: this traces_eval.json predates the plan losses._\n"
    kinds = list(next(iter(losses.values())))
    lines = ["| method | " + " | ".join(kinds) + " | shortfall |", "|---|" + "---|" * (len(kinds) + 1)]
    for method, row in losses.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[k]['goals']} / {row[k]['score_lost']:+.3f}" for k in kinds)
                     + f" | {sum(v['score_lost'] for v in row.values()):+.3f} |")
    return ("\n".join(lines) + "\n\nUnder Kill, every level's goals. Cells: goals / score lost per goal of all, "
            "against each goal run at the smallest measured alpha whose traced work fits its budget (known after "
            "the fact); shortfall: their sum, the mean score that arm leads the method by." + _at_pace(r) + "\n")


def _at_pace(r: dict) -> str:
    """TimeBill replanned as if calibrated at the traces' own pace (eval.traces.at_traced_pace),
    with the node's in-goal re-plan (eval.traces.with_in_goal_replan), then with its online
    timing (eval.traces.with_online_timing); "" for files before them."""
    text = ""
    if row := r.get("at_traced_pace_kill"):
        text += _replanned(f"Replanned as if calibrated at the pace the traces ran (the plan's decode "
                           f"x{row['decode_factor']:.2f}, margins kept)", row)
    if row := r.get("in_goal_replan_kill"):
        text += _replanned(f"With the node's in-goal re-plan (replan_steps {row['replan_steps']}, off in the "
                           f"compared node as in the paper; {row['replanned']} of {row['goals']} goals evicted again, "
                           f"from runs measured to do so{_pace_of(row)}, {row['replanned_completed']} of them then "
                           f"complete; {row['replans_after']} would have re-planned once more, not replayed)", row)
        if agreed := row.get("node_agreement"):
            text += (f" The node with its re-plan on, replaying the node check's TimeBill goals, agrees with this "
                     f"replay on {agreed['agree_pct']:.1f} % of {agreed['goals']} (on whether a goal re-plans, "
                     f"{agreed['replans_agree_pct']:.1f} %; it re-planned {agreed['replanned_by_node']}).")
        if "paired_gaps" in row:
            text += (f" Goal by goal, its gap to the best fixed alpha is decided (two paired standard errors from 0) "
                     f"at {_decided_at(row['paired_gaps'])}, its completion's to fixed 0.95 at "
                     f"{_decided_at(row['completion_gaps'])}.")
    if row := r.get("online_timing_kill"):
        text += _replanned(f"Planned with the node's online timing ({row['estimator']}, miss rate "
                           f"{pct(row['miss_rate'], 0)}; goal after goal through each level, no in-goal re-plan)", row)
    return text


def _pace_of(row: dict) -> str:
    """", at Nx the traces' pace" for the second-eviction runs of ROW, when any was measured."""
    return f" at {row['runs_over_traces_pace']:.2f}x the traces' pace" if row.get("runs_over_traces_pace") else ""


def _replanned(how: str, row: dict) -> str:
    """One sentence: HOW TimeBill was planned, its Kill scores per level and its claims (ROW)."""
    c = row["claims"]
    ahead, completion = c["ahead_of_every_fixed_alpha"], c["completion_within_5_pts_of_fixed_0.95"]
    worst = min(completion["timebill_minus_fixed_0.95_pts"].items(), key=lambda kv: kv[1])
    return (f" {how}, TimeBill scores " + " / ".join(f"{cell['score']:.3f}" for cell in row["cells"].values())
            + f", ahead of every fixed alpha at {len(ahead['levels_held'])} of {len(ahead['per_level'])} levels, "
            f"completion vs fixed 0.95 {worst[1]:+.0f} pts at its furthest ({worst[0]}).")


def _brief(numbers: dict) -> str:
    """A claim's numbers on one line, floats to 3 digits."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return str(v)
    return "; ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in numbers.items())


TABLES = {"headline": headline_table, "params": params_table, "online": online_table,
          "bench": bench_table, "quality": quality_table, "rlp": rlp_table, "eval": eval_table,
          "eval_skip_next": lambda load: eval_table(load, "skip_next"), "eval_claims": eval_claims,
          "quality_smollm2": lambda load: quality_table(load, "quality_smollm2.json"),
          "quality_smollm2_tasks": lambda load: quality_table(load, "quality_smollm2_tasks.json", targets=True),
          "quality_smollm2_tasks_v3": lambda load: quality_table(load, "quality_smollm2_tasks_v3.json", targets=True),
          "quality_smollm2_tasks_v9": lambda load: quality_table(load, "quality_smollm2_tasks_v9.json", targets=True),
          "weights": weights_table,
          "rlp_smollm2_tasks": lambda load: rlp_table(load, "rlp_smollm2_tasks.json"),
          "rlp_layers": rlp_layers_table,
          "rlp_smollm2_tasks_v3": lambda load: rlp_table(load, "rlp_smollm2_tasks_v3.json"),
          "rlp_smollm2_tasks_v9": lambda load: rlp_table(load, "rlp_smollm2_tasks_v9.json"),
          "traces": traces_table, "traces_mechanism": traces_mechanism_table, "traces_by_task": traces_by_task_table,
          "traces_k_sweep": traces_k_sweep_table,
          "traces_plan_loss": traces_plan_loss_table,
          "traces_long_plan_loss": lambda load: traces_plan_loss_table(load, source="traces_eval_long.json"),
          "traces_long": lambda load: traces_table(load, source="traces_eval_long.json"),
          "traces_large": lambda load: traces_table(load, source="traces_eval_large.json"),
          "traces_large_plan_loss": lambda load: traces_plan_loss_table(load, source="traces_eval_large.json"),
          "traces_long_mechanism": lambda load: traces_mechanism_table(load, source="traces_eval_long.json"),
          "traces_long_k_sweep": lambda load: traces_k_sweep_table(load, source="traces_eval_long.json",
                                                                   validation=None),
          "traces_validation_k_sweep": lambda load: traces_k_sweep_table(load, source="traces_eval_validation.json"),
          "traces_skip_next": lambda load: traces_table(load, "skip_next"),
          "reliability": reliability_table, "timing_under_load": timing_under_load_table,
          "timing_under_load_repeat": lambda load: timing_under_load_table(load, "timing_under_load_repeat.json"),
          "noise_floor": noise_floor_table, "tracker_replay": tracker_replay_table,
          "structured": structured_table, "node_overhead": node_overhead_table,
          "demo": demo_transcript}


def render(readme: str, docs: Path) -> str:
    """A page's text (README or docs/*.md) with every results block regenerated from the JSON in DOCS."""
    def load(name: str) -> dict:
        return json.loads((docs / name).read_text())

    def block(match: re.Match) -> str:
        try:
            body = TABLES[match.group("name")](load)
        except FileNotFoundError as exc:  # measured by a run nobody has made yet: say so
            body = f"_Not measured yet: `docs/results/{Path(exc.filename).name}` is missing._\n"
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(block, readme)


def merge_per_machine(new: dict, old: dict | None) -> dict:
    """OLD's runs (either format) with NEW's machine's run replaced by NEW."""
    entries = {run["machine"]: run for run in machine_entries(old)} if old else {}
    entries[new["machine"]] = new
    return {"benchmark": new["benchmark"], "by_machine": entries}


def publish(results: Path, docs: Path, readme: Path) -> list[str]:
    """Copy RESULTS into DOCS (fixing the plot paths eval.json names), regenerate README's
    blocks; returns the files copied."""
    docs.mkdir(parents=True, exist_ok=True)
    copied = []
    for source, name in SOURCES.items():
        if not (results / source).is_file():
            continue
        if name in PER_MACHINE:
            merged = merge_per_machine(json.loads((results / source).read_text()),
                                       json.loads((docs / name).read_text()) if (docs / name).is_file() else None)
            (docs / name).write_text(json.dumps(merged, indent=2))
        else:
            shutil.copyfile(results / source, docs / name)
        copied.append(name)
    if (docs / "eval.json").is_file():  # plots are published beside it
        data = json.loads((docs / "eval.json").read_text())
        data["plots"] = [f"docs/results/{Path(p).name}" for p in data.get("plots", [])]
        (docs / "eval.json").write_text(json.dumps(data, indent=2))
    for page in pages(readme):
        page.write_text(render(page.read_text(), docs))
    return copied


def pages(readme: Path) -> list[Path]:
    """README and the docs pages beside it: every file whose results blocks are generated."""
    return [readme, *sorted((readme.parent / "docs").glob("*.md"))]
